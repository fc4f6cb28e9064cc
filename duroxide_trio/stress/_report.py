"""Reporting: the comparison table, JSON output, tracked results files and the fail-fast crash report.

Every URL that reaches output here has gone through ``mask_url`` first: a password is never printed,
logged or written.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from rich.table import Table

from ._result import StressResult, format_duration, format_ms
from ._runner import ErrorEntry, describe_error, runtime_options

__all__ = [
    "HEADERS",
    "RESULTS_FILE_PREFIX",
    "append_tracking",
    "comparison_rows",
    "comparison_table",
    "db_host",
    "git_info",
    "markdown_table",
    "mask_text",
    "versions",
    "write_crash_report",
    "write_json",
]

HEADERS = (
    "Provider", "Config", "Completed", "Failed", "Infra", "Config", "App", "Success %",
    "Orch/s", "Activity/s", "p50", "p95", "p99", "Peak RSS",
    "Calls/orch", "Xact/orch", "WAL/orch", "Step ovh", "Seed",
)  # fmt: skip
RESULTS_FILE_PREFIX = "stress-test-results-"
#: Regression thresholds against the previous tracked entry of the same configuration.
THROUGHPUT_DROP = 0.20
P50_RISE = 0.50

_DATA_MARK = "<!-- duroxide-stress "


#: Columns the terminal table leaves out, in this order, until it fits the console width (indexes into
#: ``HEADERS``): the failure categories first (``Failed`` still counts them all), then Activity/s, Peak
#: RSS, p95, Completed, then the cost columns (Seed, Step ovh, WAL/orch, Xact/orch). Before any of them,
#: a cost column that is ``—`` in every row (e.g. Xact/orch and WAL/orch on SQLite) is left out.
DROP_ORDER = (4, 5, 6, 9, 13, 11, 2, 18, 17, 16, 15)
#: The cost columns (indexes into ``HEADERS``), left out first when they are empty in every row.
COST_COLUMNS = (14, 15, 16, 17, 18)


def _per_orch(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1024 * 1024:
        return f"{value / (1024 * 1024):.1f} MB"
    if value >= 1024:
        return f"{value / 1024:.1f} KB"
    return f"{value:.0f} B"


def row_label(result: StressResult) -> str:
    """``"<provider> (<scenario>)"``, the first cell of a result's row."""
    return f"{result.provider} ({result.scenario})"


def comparison_rows(results: Sequence[StressResult]) -> list[list[str]]:
    """One row of cells per result, in ``HEADERS`` order; latencies for people (``"92 ms"``, ``"1.5 s"``),
    ``"—"`` when a run has no latency samples."""
    rows = []
    for r in results:
        lat = r.latency_ms
        some = lat.count > 0
        rows.append(
            [
                f"{r.provider} ({r.scenario}, interrupted)" if r.interrupted else row_label(r),
                r.config.concurrency_label,
                str(r.completed),
                str(r.failed),
                str(r.failed_infrastructure),
                str(r.failed_configuration),
                str(r.failed_application),
                f"{r.success_rate:.2f}",
                f"{r.orch_throughput:.2f}",
                f"{r.activity_throughput:.2f}",
                format_ms(lat.p50 if some else None),
                format_ms(lat.p95 if some else None),
                format_ms(lat.p99 if some else None),
                f"{r.peak_rss_mb:.1f} MB",
                _per_orch(r.round_trips_per_orch),
                _per_orch(r.transactions_per_orch),
                _bytes(r.wal_bytes_per_orch),
                format_ms(r.step_overhead_ms),
                format_duration(r.seed_s) if r.seed_s else "—",
            ]
        )
    return rows


def _table(
    results: Sequence[StressResult], title: str, columns: Sequence[int], wrap_label: bool = False
) -> Table:
    table = Table(title=title, title_style="bold", header_style="bold cyan")
    for i in columns:
        table.add_column(
            HEADERS[i], justify="left" if i == 0 else "right", no_wrap=not (wrap_label and i == 0)
        )
    for r, row in zip(results, comparison_rows(results), strict=True):
        style = None if r.passed else ("yellow" if r.interrupted and not r.failed else "red")
        table.add_row(*(row[i] for i in columns), style=style)
    return table


def comparison_table(
    results: Sequence[StressResult], title: str = "Stress test results", *, width: int | None = None
) -> Table:
    """The comparison table (rich). With ``width`` (e.g. ``console.width``) it leaves out the columns of
    ``DROP_ORDER`` one by one until it fits, then lets the first column (provider and scenario) wrap
    between words, so no header or figure is cut short on a narrow terminal; the full table is in
    ``--json``, ``--track`` and the markdown table."""
    columns = list(range(len(HEADERS)))
    table = _table(results, title, columns)
    if width is None:
        return table
    from rich.console import Console

    measure = Console(width=10_000, file=open(os.devnull, "w"))  # noqa: SIM115 - closed below
    try:
        if measure.measure(table).maximum > width:
            rows = comparison_rows(results)
            empty = [i for i in COST_COLUMNS if all(row[i] == "—" for row in rows)]
            columns = [i for i in columns if i not in empty]
            table = _table(results, title, columns)
        for drop in DROP_ORDER:
            if drop not in columns:
                continue
            if measure.measure(table).maximum <= width:
                break
            columns.remove(drop)
            table = _table(results, title, columns)
        if measure.measure(table).maximum > width:
            table = _table(results, title, columns, wrap_label=True)
    finally:
        measure.file.close()
    return table


def markdown_table(results: Sequence[StressResult]) -> str:
    """Every column of the comparison table as a markdown table (for tracked results files)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(results)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# environment facts


def versions() -> dict[str, str]:
    """Python, duroxide-trio, its main dependencies and SQLite versions, for results and crash reports."""
    from importlib import metadata

    out = {"python": platform.python_version(), "implementation": platform.python_implementation()}
    for dist in ("duroxide-trio", "trio", "anyio", "psycopg", "rich", "typer"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    import sqlite3

    out["sqlite"] = sqlite3.sqlite_version
    return out


def db_host(provider: str, url: str | None) -> str:
    """The name of a results file's database: ``sqlite``, ``localhost`` or the remote host name."""
    if provider.startswith("sqlite") or not url:
        return "sqlite" if provider.startswith("sqlite") else "localhost"
    host = ""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        pass
    if not host:
        match = re.search(r"\bhost\s*=\s*(\S+)", url)
        host = match.group(1) if match else ""
    if host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/"):
        return "localhost"
    return re.sub(r"[^A-Za-z0-9._-]", "_", host.split(".")[0] if host.count(".") >= 2 else host)


def git_info(start: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """``(short commit, branch)`` read from the ``.git`` directory above ``start`` (no git process);
    ``("unknown", "unknown")`` outside a checkout."""
    here = Path(start or os.getcwd()).resolve()
    for directory in (here, *here.parents):
        git = directory / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text().strip()
            if text.startswith("gitdir:"):
                git = (directory / text.split(":", 1)[1].strip()).resolve()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
        except OSError:
            break
        if not head.startswith("ref:"):
            return head[:7], "detached"
        ref = head.split(":", 1)[1].strip()
        branch = ref.removeprefix("refs/heads/")
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            ref_file = base / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()[:7], branch
        for base in (git, common):
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0][:7], branch
        return "unknown", branch
    return "unknown", "unknown"


# ---------------------------------------------------------------------------------------------------------
# JSON


def write_json(
    path: str | os.PathLike[str],
    results: Sequence[StressResult],
    *,
    provider: str,
    database_url: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every run (its config and ``StressResult``) with versions, provider and the masked URL."""
    doc: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "provider": provider,
        "database_url": mask_text(database_url or "", database_url) or None,
        "versions": versions(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "passed": bool(results) and all(r.passed for r in results),
        "runs": [
            {
                "config": r.config.as_dict(),
                "runtime_options": attrs.asdict(runtime_options(r.config)),
                "result": r.as_dict(),
            }
            for r in results
        ],
    }
    if extra:
        doc.update(extra)
    doc = _mask_strings(doc, database_url)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


# ---------------------------------------------------------------------------------------------------------
# tracked results


def _key(r: StressResult) -> str:
    c = r.config
    return (
        f"{r.provider}|{r.scenario}|{c.concurrency_label}|mc={c.max_concurrent}|tasks={c.tasks_per_instance}"
        f"|delay={c.activity_delay_ms}|duration={c.duration:g}"
        + (f"|timers={c.timer_backlog}" if c.timer_backlog else "")
        + (f"|history={c.deep_history}" if c.deep_history else "")
    )


def _previous_entries(text: str) -> dict[str, dict[str, Any]]:
    """The latest tracked numbers per configuration key."""
    latest: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith(_DATA_MARK) and line.rstrip().endswith("-->"):
            try:
                data = json.loads(line[len(_DATA_MARK) : line.rstrip().rfind("-->")])
            except ValueError:
                continue
            if isinstance(data, dict) and "key" in data:
                latest[data["key"]] = data
    return latest


def regression_warnings(result: StressResult, previous: dict[str, Any] | None) -> list[str]:
    """Warnings when ``result`` is more than 20 % slower or its p50 more than 50 % higher than ``previous``
    (a tracked entry)."""
    if not previous:
        return []
    warnings = []
    label = f"{row_label(result)} {result.config.concurrency_label}"
    before = float(previous.get("orch_throughput") or 0.0)
    if before > 0 and (before - result.orch_throughput) / before > THROUGHPUT_DROP:
        warnings.append(
            f"{label}: throughput dropped {(before - result.orch_throughput) / before * 100:.0f}% "
            f"({before:.2f} -> {result.orch_throughput:.2f} orch/s; previous run {previous.get('commit', '?')} "
            f"at {previous.get('date', '?')})"
        )
    p50_before = float(previous.get("p50_ms") or 0.0)
    if p50_before > 0 and (result.latency_ms.p50 - p50_before) / p50_before > P50_RISE:
        warnings.append(
            f"{label}: p50 latency rose {(result.latency_ms.p50 - p50_before) / p50_before * 100:.0f}% "
            f"({p50_before:.1f} -> {result.latency_ms.p50:.1f} ms; previous run {previous.get('commit', '?')} "
            f"at {previous.get('date', '?')})"
        )
    return warnings


def append_tracking(
    results_dir: str | os.PathLike[str],
    results: Sequence[StressResult],
    *,
    provider: str,
    database_url: str | None,
    cloud: bool = False,
    commit: str | None = None,
    branch: str | None = None,
    now: datetime | None = None,
    report_file: str | os.PathLike[str] | None = None,
) -> tuple[Path, list[str]]:
    """Append a dated entry to ``stress-test-results-<db-host>.md`` in ``results_dir``; returns the file
    and the regression warnings (throughput down more than 20 %, p50 up more than 50 % against the
    previous entry of the same configuration). ``report_file``: the HTML report of these runs, linked
    from the entry (relative to the results file when it can be)."""
    directory = Path(results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    host = db_host(provider, database_url)
    path = directory / f"{RESULTS_FILE_PREFIX}{host}.md"
    existing = path.read_text() if path.exists() else ""
    previous = _previous_entries(existing)
    if commit is None or branch is None:
        found_commit, found_branch = git_info()
        if found_commit == "unknown":  # run from elsewhere: the checkout this package lives in, if any
            found_commit, found_branch = git_info(Path(__file__).parent)
        commit = commit or found_commit
        branch = branch or found_branch
    when = (now or datetime.now(UTC)).astimezone(UTC)
    date = when.strftime("%Y-%m-%d %H:%M:%S UTC")
    vers = versions()
    environment = f"{'Cloud' if cloud else 'Local'} {provider} ({host})" + (
        f", {mask_text(database_url, database_url)}" if database_url and not provider.startswith("sqlite") else ""
    )
    warnings: list[str] = []
    for r in results:
        warnings += regression_warnings(r, previous.get(_key(r)))

    lines = []
    if not existing:
        lines += [
            f"# duroxide-trio stress test results: {host}",
            "",
            "Appended by `duroxide-trio stress --track` (or `--track-cloud`). Each entry is compared with the "
            "previous entry of the same configuration.",
            "",
        ]
    first = results[0].config if results else None
    lines += [
        "",
        f"## Run: {date}",
        "",
        f"- **Commit**: `{commit}` (branch: `{branch}`)",
        f"- **Environment**: {environment}{' [cloud]' if cloud else ''}",
        f"- **Machine**: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; Python {vers['python']}, "
        f"duroxide-trio {vers.get('duroxide-trio', '?')}, trio {vers.get('trio', '?')}, anyio {vers.get('anyio', '?')}"
        f", backend {results[0].backend if results else '?'}",
    ]
    if first is not None:
        lines.append(
            f"- **Workload**: {first.duration:g}s, {first.max_concurrent} in flight, {first.tasks_per_instance} tasks, "
            f"{first.activity_delay_ms}ms activities"
        )
    if report_file is not None:
        target = Path(report_file).resolve()
        try:
            link = os.path.relpath(target, directory.resolve())
        except ValueError:  # another drive (Windows)
            link = str(target)
        lines.append(f"- **Report**: [{target.name}]({link.replace(os.sep, '/')})")
    lines += ["", "### Results", "", markdown_table(results), ""]
    lines.append("### Comparison with the previous run")
    lines.append("")
    if warnings:
        lines += [f"- ⚠️ {w}" for w in warnings]
    else:
        compared = [r for r in results if _key(r) in previous]
        lines.append(
            "- no regression (throughput within 20 %, p50 within 50 %)"
            if compared
            else "- first entry for this configuration"
        )
    lines.append("")
    for r in results:
        data = {
            "key": _key(r),
            "date": date,
            "commit": commit,
            "orch_throughput": round(r.orch_throughput, 3),
            "activity_throughput": round(r.activity_throughput, 3),
            "p50_ms": round(r.latency_ms.p50, 3),
            "p99_ms": round(r.latency_ms.p99, 3),
            "success_rate": round(r.success_rate, 3),
        }
        lines.append(f"{_DATA_MARK}{json.dumps(data, separators=(',', ':'))} -->")
    lines += ["", "---", ""]
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path, warnings


# ---------------------------------------------------------------------------------------------------------
# crash report


def write_crash_report(
    directory: str | os.PathLike[str],
    *,
    error: BaseException | str,
    traceback_text: str,
    provider: str,
    database_url: str | None,
    config: Any,
    errors: Sequence[ErrorEntry],
    result: StressResult | None = None,
    now: datetime | None = None,
) -> Path:
    """``stress_crash_<datetime>.log``: time, versions, provider, masked URL, config, the exception with
    its traceback, and a summary of the errors seen so far."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"stress_crash_{when.strftime('%Y%m%d_%H%M%S')}.log"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"stress_crash_{when.strftime('%Y%m%d_%H%M%S')}_{n}.log"
    vers = versions()
    expected = [e for e in errors if e.expected]
    unexpected = [e for e in errors if not e.expected]
    config_text = config.describe() if hasattr(config, "describe") else repr(config)
    config_fields = json.dumps(config.as_dict() if hasattr(config, "as_dict") else {}, indent=2)
    lines = [
        "=" * 78,
        "duroxide-trio stress: CRASH REPORT (--fail-fast stopped at the first unexpected error)",
        "=" * 78,
        f"Time:      {when.isoformat(timespec='seconds')}",
        f"Python:    {sys.version.splitlines()[0]}",
        "Versions:  " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"Platform:  {platform.platform()}",
        "",
        "Context",
        "-------",
        f"Provider:  {provider}",
        f"URL:       {mask_text(database_url or '', database_url) or '(embedded)'}",
        f"Backend:   {result.backend if result else '?'}",
        f"Config:    {config_text}",
        config_fields,
        "",
        "Fatal error",
        "-----------",
        mask_text(describe_error(error), database_url),
        "",
        mask_text(traceback_text, database_url).rstrip(),
        "",
        "Error summary at crash",
        "----------------------",
        f"Expected errors (retried lock contention): {len(expected)}",
        f"Unexpected errors: {len(unexpected)}",
    ]
    if result is not None:
        lines.append(
            f"Instances: launched {result.launched}, completed {result.completed}, failed {result.failed} "
            f"(infra {result.failed_infrastructure}, config {result.failed_configuration}, "
            f"app {result.failed_application}, other {result.failed_other})"
        )
    for title, group in (("Unexpected", unexpected), ("Expected", expected)):
        if group:
            lines.append(f"{title} (last {min(len(group), 10)}):")
            for e in group[-10:]:
                at = datetime.fromtimestamp(e.at, UTC).strftime("%H:%M:%S.%f")[:-3]
                lines.append(f"  {at} [{e.role}] {mask_text(e.message, database_url)}")
    lines.append("")
    # A last pass over the whole report: whatever a line quotes, the password is not in the file.
    path.write_text(mask_text("\n".join(lines), database_url))
    return path


def mask_text(text: str, url: str | None) -> str:
    """``text`` with every password masked: URL and conninfo patterns, and every form of the password
    of ``url`` (also of a malformed URL, whose password libpq would cut into pieces)."""
    from .._masking import redact

    return redact(text, url)


def _mask_strings(value: Any, url: str | None) -> Any:
    """Every string inside ``value`` (dicts, lists) passed through :func:`mask_text`."""
    if isinstance(value, str):
        return mask_text(value, url)
    if isinstance(value, dict):
        return {k: _mask_strings(v, url) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_strings(v, url) for v in value]
    return value
