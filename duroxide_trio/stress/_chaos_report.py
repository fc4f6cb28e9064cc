"""Reporting for chaos runs: the verdict table, the throughput chart with fault marks, the process table,
the live dashboard's extra panels, the crash-report appendix and the tracked results file
``chaos-test-results-<db-host>.md``."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ._chaos_runner import ChaosResult
from ._dashboard import Dashboard
from ._runner import StressMonitor

__all__ = [
    "ChaosDashboard",
    "append_chaos_tracking",
    "chaos_appendix",
    "process_table",
    "throughput_chart",
    "verdict_lines",
    "verdict_table",
]

_STATE_STYLE = {"running": "green", "starting": "cyan", "restarting": "cyan", "stalled": "yellow", "killed": "red",
                "exited": "bold red", "stopped": "dim"}  # fmt: skip
_BLOCKS = " ▁▂▃▄▅▆▇█"


def _causes(cr: ChaosResult) -> str:
    causes = cr.verdict.duplicates_by_cause
    return ", ".join(f"{k} {v}" for k, v in sorted(causes.items())) or "-"


def _s(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def verdict_table(results: Sequence[ChaosResult], title: str = "Chaos verdict") -> Table:
    """A rich table with one row per chaos run: the verdict's figures and PASS / FAIL."""
    table = Table(title=title, header_style="bold", border_style="grey50")
    for name in ("Run", "Procs", "Chaos", "Launched", "Terminal", "Lost", "Stuck", "Wrong", "Twice",
                 "Lost results", "KV", "Sessions", "Dup. exec", "Caused by", "Drain s", "p99 ms", "max ms", "Verdict"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("Run", "Chaos", "Caused by", "Verdict") else "right")
    for cr in results:
        v, r = cr.verdict, cr.result
        table.add_row(
            f"{r.scenario} {r.config.concurrency_label}", str(cr.processes), cr.chaos_label, str(v.launched),
            str(v.terminal), str(v.counts.get("lost", 0)), str(v.counts.get("stuck", 0)),
            str(v.counts.get("wrong_output", 0)), str(v.counts.get("completed_twice", 0)),
            str(v.counts.get("lost_activity_results", 0)), str(v.counts.get("kv_mismatch", 0)),
            f"{v.counts.get('session_violations', 0)} ({v.sessions_moved} moved)",
            f"{v.duplicate_executions} ({v.duplicate_rate:.2f}%)", _causes(cr), _s(v.drain_s),
            f"{r.latency_ms.p99:.0f}", f"{r.latency_ms.max:.0f}",
            Text("PASS", style="bold green") if cr.passed else Text("FAIL", style="bold red"),
        )  # fmt: skip
    return table


def verdict_lines(cr: ChaosResult) -> list[str]:
    """The verdict in plain lines (for logs and the crash report)."""
    v, r = cr.verdict, cr.result
    lines = [
        f"verdict: {'PASS' if cr.passed else 'FAIL'} ({'; '.join(v.reasons) or 'every instance terminal and right'})",
        f"instances: launched {v.launched}, terminal {v.terminal} (completed {v.completed}, failed {v.failed}); "
        f"lost {v.counts.get('lost', 0)}, stuck {v.counts.get('stuck', 0)}, wrong output "
        f"{v.counts.get('wrong_output', 0)}, completed twice {v.counts.get('completed_twice', 0)}, lost activity "
        f"results {v.counts.get('lost_activity_results', 0)}",
        f"activities: {v.logical_activities} logical, {v.activity_executions} executions (ledger), "
        f"{v.duplicate_executions} duplicates ({v.duplicate_rate:.2f}%, max {v.max_executions_per_activity} per "
        f"activity; caused by {_causes(cr)}), unrecorded completions {v.unrecorded_completions}",
        f"key-value state: {v.kv_instances_checked} instances checked against their history, "
        f"{v.counts.get('kv_mismatch', 0)} mismatched; sessions: {v.sessions_examined} ({v.session_executions} "
        f"executions, {v.sessions_moved} moved by a kill or stall), {v.counts.get('session_violations', 0)} "
        "violations (overlap, order, moved without a fault)",
        f"timing: last fault at {_s(v.last_fault_s)}s, all terminal at {_s(v.all_terminal_s)}s, drain "
        f"{_s(v.drain_s)}s; latency p50 {r.latency_ms.p50:.0f} ms, p99 {r.latency_ms.p99:.0f} ms, max "
        f"{r.latency_ms.max:.0f} ms; {r.orch_throughput:.1f} orch/s",
    ]
    return lines


def throughput_chart(cr: ChaosResult, width: int = 120) -> str:
    """Completions per second as a one-line bar chart, fault moments marked underneath (K kill,
    R restart-db, S stall); long runs are folded into buckets of several seconds."""
    points = cr.throughput
    if not points:
        return "(no data)"
    bucket = max(1, -(-len(points) // width))
    values: list[int] = []
    marks: list[str] = []
    for i in range(0, len(points), bucket):
        chunk = points[i : i + bucket]
        values.append(sum(p["completed"] for p in chunk))
        m = "".join(p["faults"] for p in chunk)
        marks.append(m[-1] if m else " ")
    top = max(values) or 1
    bars = "".join(_BLOCKS[round(v / top * (len(_BLOCKS) - 1))] for v in values)
    unit = f"{bucket}s" if bucket > 1 else "1s"
    return (
        f"completions per {unit} (max {top}):\n|{bars}|\n|{''.join(marks)}|  K kill, R restart-db, S stall\n"
    )


def process_table(cr: ChaosResult) -> Table:
    """A rich table of every runtime process of a run (killed ones included)."""
    table = Table(title="Runtime processes", header_style="bold", border_style="grey50")
    for name in ("Process", "PID", "State", "Up s", "Turns", "Activities", "Errors", "Stalls"):
        table.add_column(name, justify="left" if name in ("Process", "State") else "right")
    for p in cr.process_table:
        up = (p["ended_at_s"] or 0.0) - (p["ready_at_s"] or p["started_at_s"])
        table.add_row(
            p["name"], str(p["pid"]), Text(p["state"], style=_STATE_STYLE.get(p["state"], "")), f"{max(up, 0):.1f}",
            str(p["turns"]), str(p["activities"]), f"{p['expected_errors']}/{p['unexpected_errors']}",
            str(p["stalls"]),
        )  # fmt: skip
    return table


def chaos_appendix(cr: ChaosResult | None, timeline: Sequence[dict[str, Any]] | None = None) -> str:
    """Text appended to a crash report: the chaos timeline and the processes."""
    events = cr.timeline if cr is not None else list(timeline or [])
    lines = ["", "Chaos timeline", "--------------"]
    for e in events:
        until = f"-{e['until_s']:.2f}" if e.get("until_s") is not None else ""
        lines.append(f"  {e['at_s']:8.2f}{until:>9}s  {e['kind']:<10} {e['detail']}{'' if e['ok'] else ' (FAILED)'}")
    if not events:
        lines.append("  (no faults yet)")
    if cr is not None:
        lines += ["", "Runtime processes", "-----------------"]
        for p in cr.process_table:
            lines.append(
                f"  {p['name']:<6} pid {p['pid']:<8} {p['state']:<9} turns {p['turns']:<7} activities "
                f"{p['activities']:<7} errors {p['expected_errors']}/{p['unexpected_errors']}"
            )
        lines += ["", *verdict_lines(cr)]
    return "\n".join(lines) + "\n"


def append_chaos_tracking(
    results_dir: str | os.PathLike[str],
    results: Sequence[ChaosResult],
    *,
    provider: str,
    database_url: str | None,
    cloud: bool = False,
) -> Path:
    """Append a dated entry with the chaos specs and the verdict figures to
    ``chaos-test-results-<db-host>.md``."""
    from .._masking import mask_url
    from ._report import db_host, git_info, versions

    directory = Path(results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    host = db_host(provider, database_url)
    path = directory / f"chaos-test-results-{host}.md"
    existing = path.exists()
    commit, branch = git_info()
    if commit == "unknown":
        commit, branch = git_info(Path(__file__).parent)
    vers = versions()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines: list[str] = []
    if not existing:
        lines += [f"# duroxide-trio chaos test results: {host}", "",
                  "Appended by `duroxide-trio stress --processes N --chaos ... --track`.", ""]  # fmt: skip
    lines += [
        "", f"## Run: {when}", "",
        f"- **Commit**: `{commit}` (branch: `{branch}`)",
        f"- **Environment**: {'Cloud' if cloud else 'Local'} {provider} ({host})"
        + (f", {mask_url(database_url)}" if database_url and provider == "postgres" else ""),
        f"- **Machine**: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; Python {vers['python']}",
        "",
        "| Run | Procs | Chaos | Launched | Terminal | Lost | Stuck | Wrong | Twice | Lost results | Dup. exec "
        "| Caused by | Drain s | p50 ms | p99 ms | max ms | Orch/s | Verdict |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for cr in results:
        v, r = cr.verdict, cr.result
        c = r.config
        lines.append(
            f"| {r.scenario} {c.concurrency_label} ({c.duration:g}s, {c.max_concurrent} in flight) | {cr.processes} "
            f"| `{cr.chaos_label}`{'' if cr.liveness else ' (no liveness lease)'} | {v.launched} | {v.terminal} | {v.counts.get('lost', 0)} "
            f"| {v.counts.get('stuck', 0)} | {v.counts.get('wrong_output', 0)} | {v.counts.get('completed_twice', 0)} "
            f"| {v.counts.get('lost_activity_results', 0)} | {v.duplicate_executions} ({v.duplicate_rate:.2f}%) "
            f"| {_causes(cr)} | {_s(v.drain_s)} | {r.latency_ms.p50:.0f} | {r.latency_ms.p99:.0f} "
            f"| {r.latency_ms.max:.0f} | {r.orch_throughput:.1f} | {'PASS' if cr.passed else 'FAIL'} |"
        )
    for cr in results:
        figures = {k: v for k, v in cr.verdict.as_dict().items() if not k.endswith("_ids")}
        data = {"scenario": cr.result.scenario, "chaos": [s.describe() for s in cr.specs],
                "processes": cr.processes, "liveness": cr.liveness, "verdict": figures}  # fmt: skip
        lines.append(f"<!-- chaos-data: {json.dumps(data, separators=(',', ':'))} -->")
    lines += ["", "---", ""]
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path


class ChaosDashboard(Dashboard):
    """The stress dashboard plus a table of runtime processes and the recent chaos events."""

    def render(self, m: StressMonitor) -> Group:
        base = super().render(m)
        return Group(*base.renderables, self._processes(m), self._chaos(m))

    def _processes(self, m: StressMonitor) -> Table:
        pool = getattr(m, "pool", None)
        table = Table(expand=True, header_style="bold", border_style="grey50")
        for name in ("Process", "PID", "State", "Turns", "Activities", "Errors"):
            table.add_column(name, justify="left" if name in ("Process", "State") else "right")
        if pool is None:
            return table
        shown = [wp for wp in pool.processes if wp.state not in ("killed", "stopped")]
        for wp in shown:
            table.add_row(
                f"runtime {wp.name}", str(wp.pid), Text(wp.state, style=_STATE_STYLE.get(wp.state, "")),
                f"{wp.turns:,}", f"{wp.activities:,}", f"{wp.expected_errors}/{wp.unexpected_errors}",
            )  # fmt: skip
        killed = [wp for wp in pool.processes if wp.state == "killed"]
        if killed:
            table.add_row(
                f"{len(killed)} killed", "", Text("killed", style="red"), f"{sum(w.turns for w in killed):,}",
                f"{sum(w.activities for w in killed):,}", "",
            )  # fmt: skip
        return table

    def _chaos(self, m: StressMonitor) -> Panel:
        timeline = getattr(m, "chaos", None)
        specs = getattr(m, "chaos_specs", [])
        body = Text()
        for e in (timeline.events if timeline is not None else [])[-6:]:
            body.append(f"{e.at:7.1f}s  {e.kind:<10} {e.detail}\n", style="yellow" if e.ok else "red")
        if not body.plain:
            body.append("no faults yet", style="dim")
        body.rstrip()
        title = "Chaos · " + (" ".join(s.describe() for s in specs) or "none")
        return Panel(body, title=title, border_style="yellow")
