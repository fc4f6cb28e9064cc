"""The live stress dashboard (rich) and the plain progress line used without a terminal.

Both are ``on_progress`` callbacks for :func:`duroxide_trio.stress.run`: they are called on the event
loop thread by the runner's sampler task, so no thread of their own is needed (``Live`` runs with
``auto_refresh=False`` and is refreshed from the callback).
"""

from __future__ import annotations

import time
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ._config import StressConfig
from ._result import StressResult, format_duration, format_ms
from ._runner import StressMonitor

__all__ = ["Dashboard", "PlainProgress", "summary_panel"]

_SPINNER = "◐◓◑◒"
_ROLE_STYLE = {"Launcher": "cyan", "Orchestration dispatchers": "magenta", "Activity dispatchers": "green"}


def _bar(fraction: float, width: int, style: str) -> Text:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(round(fraction * width))
    return Text("█" * full, style=style) + Text("░" * (width - full), style="grey37")


def _progress_bar(fraction: float, width: int = 36) -> Text:
    fraction = min(max(fraction, 0.0), 1.0)
    style = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    done = int(fraction * width)
    bar = Text("━" * done, style=style)
    if done < width:
        bar += Text("╺", style="grey50") + Text("─" * (width - done - 1), style="grey37")
    return bar


class Dashboard:
    """``with Dashboard(...) as dash: await stress.run(..., on_progress=dash.update)``; then
    ``dash.finish(result)`` prints the summary panel that replaces the live view."""

    def __init__(
        self,
        console: Console,
        *,
        provider: str,
        url: str,
        config: StressConfig,
        run_label: str = "",
        refresh_per_second: float = 8.0,
    ) -> None:
        self.console = console
        self.provider = provider
        self.url = url
        self.config = config
        self.run_label = run_label
        self._interval = 1.0 / refresh_per_second
        self._last = 0.0
        self._frame = 0
        # Log records written to stderr during the run appear above the live view.
        self._live = Live(console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> Dashboard:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def update(self, monitor: StressMonitor) -> None:
        """The ``on_progress`` callback: redraw at most ``refresh_per_second`` times (always at the end)."""
        now = time.monotonic()
        if now - self._last < self._interval and monitor.phase not in ("done", "aborted", "interrupted"):
            return
        self._last = now
        self._frame += 1
        self._live.update(self.render(monitor), refresh=True)

    def finish(self, result: StressResult | None, *, aborted: str | None = None) -> None:
        """Print the summary panel (PASS / FAIL, and why a run was aborted) that replaces the live view."""
        self.console.print(summary_panel(result, self.provider, self.url, aborted=aborted))

    # ---------------------------------------------------------------------------------------------------
    def render(self, m: StressMonitor) -> Group:
        """The live view: header, roles, latency and error panels."""
        return Group(self._header(m), self._roles(m), self._latency(m), self._errors(m))

    def _header(self, m: StressMonitor) -> Panel:
        c = m.config
        elapsed = m.elapsed
        fraction = min(elapsed / c.duration, 1.0) if c.duration else 1.0
        phase = {"load": "RUNNING", "draining": "DRAINING", "done": "COMPLETE", "aborted": "ABORTED",
                 "interrupted": "INTERRUPTED"}.get(
            m.phase, m.phase.upper()
        )
        phase_style = {"RUNNING": "bold green", "DRAINING": "bold yellow", "COMPLETE": "bold cyan",
                       "ABORTED": "bold red", "INTERRUPTED": "bold yellow"}.get(phase, "bold")  # fmt: skip
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("Provider", Text(f"{self.provider}  ") + Text(self.url or "(embedded)", style="dim"))
        grid.add_row(
            "Config",
            f"scenario {c.scenario} · {c.max_concurrent} in flight · {c.tasks_per_instance} tasks · "
            f"{c.activity_delay_ms}ms activities · orch:worker {c.concurrency_label} · backend {m.backend}",
        )
        grid.add_row(
            "Elapsed",
            _progress_bar(fraction)
            + Text(f"  {min(elapsed, c.duration):5.1f}s / {c.duration:g}s  ")
            + Text(phase, style=phase_style),
        )
        grid.add_row(
            "Totals",
            Text(f"launched {m.launched}  ")
            + Text(f"completed {m.completed}  ", style="green")
            + Text(f"failed {m.failed}  ", style="red" if m.failed else "dim")
            + Text(f"in flight {m.in_flight}"),
        )
        grid.add_row(
            "Throughput",
            f"{m.throughput():.1f} orch/s · {m.activity_throughput():.1f} activities/s · "
            f"RSS {m.rss_mb:.0f} MB · CPU {m.cpu_percent:.0f}%",
        )
        title = "duroxide-trio stress" + (f" · {self.run_label}" if self.run_label else "")
        return Panel(grid, title=f"[bold]{title}[/]", border_style="blue")

    def _roles(self, m: StressMonitor) -> Table:
        c = m.config
        stats = m.runtime.stats if m.runtime is not None else None
        options = m.runtime.options if m.runtime is not None else None
        elapsed = max(m.elapsed, 1e-9)
        # (role, busy, capacity, ops, what the capacity is)
        rows: list[tuple[str, int, int, int, str]] = [
            ("Launcher", m.in_flight, c.max_concurrent, m.launched, "in flight"),
            (
                "Orchestration dispatchers",
                getattr(stats, "busy_orchestration_workers", 0),
                c.orchestration_concurrency,
                getattr(stats, "orchestration_turns", 0),
                "turns",
            ),
            (
                "Activity dispatchers",
                getattr(stats, "busy_activity_workers", 0),
                getattr(options, "activity_slots", None) or c.worker_concurrency,
                getattr(stats, "activities_completed", 0),
                f"running ({c.worker_concurrency} fetchers)",
            ),
        ]
        rates = [ops / elapsed for (_, _, _, ops, _) in rows]
        top = max(rates + [1e-9])
        table = Table(expand=True, header_style="bold", border_style="grey50")
        table.add_column("Role")
        table.add_column("Status")
        table.add_column("Ops", justify="right")
        table.add_column("Ops/s", justify="right")
        table.add_column("Throughput", ratio=1)
        running = m.phase in ("load", "draining")
        for (role, busy, total, ops, what), rate in zip(rows, rates, strict=True):
            style = _ROLE_STYLE[role]
            spin = _SPINNER[self._frame % len(_SPINNER)] if running and busy else "●" if running else "○"
            table.add_row(
                Text(role, style=style),
                Text(f"{spin} {busy}/{total} {what}", style=style if busy else "dim"),
                f"{ops:,}",
                f"{rate:,.1f}",
                _bar(rate / top, 30, style),
            )
        table.add_section()
        table.add_row(
            Text("Completed instances", style="bold"),
            "",
            f"{m.completed:,}",
            f"{m.completed / elapsed:,.1f}",
            Text(
                f"success {m.completed / (m.completed + m.failed) * 100:.1f}% of finished"
                if m.completed + m.failed
                else "",
                style="bold green" if not m.failed else "bold red",
            ),
        )
        return table

    def _latency(self, m: StressMonitor) -> Panel:
        p = m.latency_percentiles()
        empty = not m.latencies_ms
        text = Text("latency per instance  ")
        for name in ("p50", "p95", "p99", "max"):
            shown = format_ms(None if empty else p[name])
            text += Text(f"{name} ", style="bold") + Text(f"{shown}   ", style="cyan")
        text += Text(f"({len(m.latencies_ms)} samples)", style="dim")
        return Panel(text, border_style="grey50", padding=(0, 1))

    def _errors(self, m: StressMonitor) -> Panel:
        recent = list(m.errors)[-10:]
        body = Text()
        if not recent:
            body.append("no errors", style="dim")
        for e in recent:
            stamp = time.strftime("%H:%M:%S", time.localtime(e.at))
            if e.expected:
                body.append(f">> {stamp} [{e.role}] {e.message[:160]}\n", style="yellow")
            else:
                body.append(f"!! {stamp} [{e.role}] {e.message[:160]}\n", style="red")
        body.rstrip()
        title = f"Errors · expected {m.expected_errors} · unexpected {m.unexpected_errors}"
        return Panel(body, title=title, border_style="red" if m.unexpected_errors else "grey50")


def summary_panel(
    result: StressResult | None, provider: str, url: str, *, aborted: str | None = None
) -> Panel:
    """The static panel with the PASS / FAIL verdict that replaces the live dashboard."""
    passed = result is not None and result.passed and aborted is None
    verdict = "PASS" if passed else "FAIL"
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Provider", f"{provider} {url or '(embedded)'}")
    if result is not None:
        lat = result.latency_ms
        grid.add_row("Config", result.config.describe())
        grid.add_row(
            "Instances",
            f"launched {result.launched}, completed {result.completed}, failed {result.failed} "
            f"(infra {result.failed_infrastructure}, config {result.failed_configuration}, "
            f"app {result.failed_application}, other {result.failed_other})",
        )
        if result.unfinished:
            grid.add_row(
                Text("Unfinished", style="red"),
                f"{result.unfinished} instances had not finished when the run ended (wait timeout "
                f"{result.config.wait_timeout:g}s, drain bound {result.drain_bound_s:g}s)",
            )
        if result.max_loop_stall_s >= 1.0:
            grid.add_row(
                Text("Stalls", style="red"),
                f"the event loop was blocked for up to {result.max_loop_stall_s:.1f}s (one synchronous turn)",
            )
        grid.add_row("Success", f"{result.success_rate:.2f}%")
        grid.add_row(
            "Throughput",
            f"{result.orch_throughput:.2f} orch/s, {result.activity_throughput:.2f} activities/s (load phase "
            f"{format_duration(result.load_duration_s)}); {result.overall_throughput:.2f} orch/s over the "
            f"whole run (drain {format_duration(result.drain_duration_s)})",
        )
        some = lat.count > 0
        grid.add_row(
            "Latency",
            ", ".join(f"{k} {format_ms(getattr(lat, k) if some else None)}" for k in ("p50", "p95", "p99", "max")),
        )
        grid.add_row(
            "Resources",
            f"peak RSS {result.peak_rss_mb:.1f} MB (+{result.rss_growth_mb:.1f} MB during this run), "
            f"CPU {result.cpu_percent:.0f}%",
        )
        grid.add_row(
            "Errors", f"{result.expected_errors} expected (retried), {result.unexpected_errors} unexpected"
        )
        for f in result.failures[:3]:
            grid.add_row(Text("Failure", style="red"), Text(f"{f.instance_id}: {f.kind}: {f.message[:200]}"))
    if aborted:
        grid.add_row(Text("Aborted", style="bold red"), aborted)
    if result is not None and result.interrupted:
        grid.add_row(Text("Interrupted", style="bold yellow"), "stopped early (Ctrl-C): partial figures")
        verdict = "INTERRUPTED"
    style = "green" if passed else "red"
    return Panel(grid, title=f"[bold {style}]{verdict}[/]", border_style=style)


class PlainProgress:
    """Without a terminal: one plain line every ``interval`` seconds."""

    def __init__(self, stream: IO[str], *, interval: float = 2.0, label: str = "") -> None:
        self.stream = stream
        self.interval = interval
        self.label = label
        self._last = time.monotonic()

    def update(self, m: StressMonitor) -> None:
        """The ``on_progress`` callback: write one line every ``interval`` seconds."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        p = m.latency_percentiles()
        empty = not m.latencies_ms
        p50, p99 = (format_ms(None if empty else p[k]) for k in ("p50", "p99"))
        self.stream.write(
            f"[{m.elapsed:6.1f}s/{m.config.duration:g}s] {self.label or m.config.scenario} {m.phase}: "
            f"launched {m.launched} completed {m.completed} failed {m.failed} in-flight {m.in_flight} | "
            f"{m.throughput():.1f} orch/s {m.activity_throughput():.1f} act/s | p50 {p50} "
            f"p99 {p99} | errors {m.expected_errors} expected {m.unexpected_errors} unexpected\n"
        )
        self.stream.flush()

    def __call__(self, m: Any) -> None:
        self.update(m)
