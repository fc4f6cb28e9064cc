"""``duroxide-trio stress``: run the stress harness and print the comparison table.

With no options it runs the fanout scenario on a temporary SQLite file for 10 seconds (no server needed)
and exits non-zero unless every run reached 100 %.

The command only declares its options; :func:`stress_request` turns them into a validated
:class:`StressRequest` (``typer.BadParameter`` for what is wrong) and :func:`run_stress` runs it: the
dashboard or progress lines, the table, ``--json``, ``--report`` and ``--track``. The multi-process
(chaos) mode is in ``_stress_chaos.py``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import attrs
import typer
from rich.console import Console

from . import app
from ._provider import (
    Backend,
    ProviderChoice,
    ProviderKind,
    backend_option,
    choose_provider,
    masked,
    provider_option,
    url_option,
)

if TYPE_CHECKING:
    from ..stress import StressConfig

__all__ = ["StressRequest", "run_stress", "stress", "stress_configs", "stress_request"]


def _scenario_help() -> str:
    from ..stress import SCENARIOS

    return "Scenario to run: " + ", ".join(SCENARIOS) + ", or 'all' (one run each)."


def _preset_help() -> str:
    from ..stress import PRESETS

    parts = [
        f"{name} ({p['duration']:g}s, {p['max_concurrent']} in flight, {p['tasks_per_instance']} tasks, "
        f"{p['orchestration_concurrency']}:{p['worker_concurrency']})"
        for name, p in PRESETS.items()
    ]
    return (
        "Start from a named configuration of the seeds: "
        + "; ".join(parts)
        + ". Explicit options override it."
    )


def _tuning(flag: str, help: str, min: float) -> Any:
    """A number option of the run's configuration: unset (``None``) keeps the preset's or the default."""
    return typer.Option(None, flag, help=help, min=min)


@app.command("stress")
def stress(
    provider: Annotated[ProviderKind | None, provider_option(
        "Storage: sqlite (a temporary WAL file, the default), sqlite-memory, or postgres.", show_default=False
    )] = None,
    database_url: Annotated[str | None, url_option(
        "PostgreSQL URL (default: env DATABASE_URL). With --provider sqlite: a database file to use "
        "instead of a temporary one."
    )] = None,
    scenario: str = typer.Option("fanout", "--scenario", help=_scenario_help()),
    duration: float = _tuning("--duration", "Seconds of load per run (default: 10).", 0.1),
    max_concurrent: int = _tuning("--max-concurrent", "Instances in flight (default: 20).", 1),
    tasks: int = _tuning(
        "--tasks", "Tasks per instance (fan-out degree; for sequential the N activities in a row) (default: 5; "
        "sequential: 3).", 1,
    ),
    activity_delay_ms: int = _tuning("--activity-delay-ms", "How long each activity sleeps (default: 10).", 0),
    orch_concurrency: int = _tuning("--orch-concurrency", "Orchestration dispatcher concurrency (default: 2).", 1),
    worker_concurrency: int = _tuning("--worker-concurrency", "Activity dispatcher concurrency (default: 2).", 1),
    wait_timeout: float = _tuning("--wait-timeout", "Seconds one instance may take (default: 60).", 0.1),
    timer_backlog: int = typer.Option(
        0, "--timer-backlog", min=0, metavar="N",
        help="Before the run, park instances on 30-day durable timers (1000 per instance, through the runtime) "
        "until N timers are pending; they stay pending during the run. The seeding time is reported apart "
        "(Seed) and is not in the measured window.",
    ),
    deep_history: int = typer.Option(
        0, "--deep-history", min=0, metavar="N",
        help="Before the run, run instances of 1000 zero-length timers (2002 history rows each, through the "
        "runtime) to completion until at least N history rows are stored. Seeding time reported apart.",
    ),
    preset: str = typer.Option(None, "--preset", help=_preset_help(), show_default=False),
    suite: bool = typer.Option(False, "--suite", help="Run the 1:1, 2:2 and 4:4 concurrency matrix."),
    json_path: Path = typer.Option(
        None,
        "--json",
        help="Write every run's result, config, versions, provider and masked URL as JSON.",
        dir_okay=False,
        show_default=False,
    ),
    report_path: Path = typer.Option(
        None,
        "--report",
        help="Write a self-contained HTML report with charts (throughput, latency p50/p95/p99, in-flight "
        "per second, failures marked; runs side by side). Needs the 'report' extra (plotly).",
        dir_okay=False,
        show_default=False,
    ),
    track: bool = typer.Option(
        False,
        "--track",
        help="Append a dated entry to stress-test-results-<db-host>.md in --results-dir (linking the "
        "--report file, if any).",
    ),
    track_cloud: bool = typer.Option(
        False, "--track-cloud", help="Like --track, tagged as a cloud environment."
    ),
    results_dir: Path = typer.Option(
        Path("."), "--results-dir", help="Where tracked results and crash reports go.", file_okay=False
    ),
    fail_fast: bool = typer.Option(
        False, "--fail-fast", help="Stop at the first unexpected error and write stress_crash_<datetime>.log."
    ),
    dashboard: bool = typer.Option(
        None,
        "--dashboard/--no-dashboard",
        help="Live dashboard (default: when stdout is a terminal).",
        show_default=False,
    ),
    pool_max: int = typer.Option(
        None,
        "--pool-max",
        envvar="DUROXIDE_PG_POOL_MAX",
        help="PostgreSQL pool size per provider.",
        min=1,
        show_default=False,
    ),
    backend: Annotated[Backend, backend_option()] = Backend.trio,
    processes: int = typer.Option(
        None, "--processes", min=1, show_default=False,
        help="Run N runtime worker processes on the same database (PostgreSQL or a SQLite file); the load "
        "driver stays in this process. The verdict then counts from the database (see README, Chaos testing).",
    ),
    chaos: list[str] = typer.Option(
        None, "--chaos", show_default=False,
        help="Chaos spec, repeatable (needs --processes): kill:every=3s[,target=session] | "
        "restart-db:every=20s[,mode=fast|immediate] | faults:rate=0.05 | stall:every=10s,for=2s.",
    ),
    chaos_own_database: bool = typer.Option(
        False, "--chaos-own-database",
        help="Allow restart-db on the database you gave (with --chaos-restart-command); otherwise restart-db "
        "runs on a throwaway cluster the harness starts and never touches your server.",
    ),
    chaos_restart_command: str = typer.Option(
        None, "--chaos-restart-command", show_default=False,
        help="Command that restarts your PostgreSQL for restart-db with --chaos-own-database; {mode} is "
        "replaced by fast or immediate.",
    ),
    stuck_after: float = typer.Option(
        60.0, "--stuck-after", min=1.0,
        help="Multi-process runs: an instance not terminal this many seconds after the last fault is stuck.",
    ),
    liveness: bool = typer.Option(
        True, "--liveness/--no-liveness",
        help="Multi-process runs: runtime processes hold liveness leases, so a dead process's work moves in "
        "about 1.5 s (--no-liveness: only when its locks expire, to compare).",
    ),
) -> None:
    """Run the stress harness and print the comparison table (exit code 1 unless every run reached 100 %).

    Cost per orchestration, over the measured window (load + drain) divided by the completed instances:
    Calls/orch = provider calls (round trips) made by the runtime and the client, counted by a wrapper
    around the provider; on PostgreSQL Xact/orch = transactions of the database (pg_stat_database
    xact_commit + xact_rollback) and WAL/orch = WAL bytes (pg_current_wal_lsn difference), read from the
    server before the runtime opens and after its connections close, so other load on the same database
    (or, for WAL, the same cluster) is counted too. Step ovh (sequential): (p50 - N x activity delay) / (N+1),
    the overhead per orchestration turn (the start and one turn per completed activity).
    """
    run_stress(stress_request(**locals()))


@attrs.frozen
class StressRequest:
    """A validated ``duroxide-trio stress`` invocation: where, what (the configs, one per run) and how the
    results are shown and kept. ``processes`` (not ``None``) selects the multi-process (chaos) mode."""

    choice: ProviderChoice
    configs: list[StressConfig]
    backend: str = "trio"
    fail_fast: bool = False
    dashboard: bool | None = None
    json_path: Path | None = None
    report_path: Path | None = None
    track: bool = False
    track_cloud: bool = False
    results_dir: Path = Path(".")
    pool_max: int | None = None
    processes: int | None = None
    chaos: list[str] = attrs.field(factory=list)
    chaos_own_database: bool = False
    chaos_restart_command: str | None = None
    stuck_after: float = 60.0
    liveness: bool = True


def stress_request(
    *, provider: ProviderKind | None, database_url: str | None, scenario: str, preset: str | None, suite: bool,
    duration: float | None, max_concurrent: int | None, tasks: int | None, activity_delay_ms: int | None,
    orch_concurrency: int | None, worker_concurrency: int | None, wait_timeout: float | None,
    report_path: Path | None, processes: int | None, chaos: list[str] | None, chaos_own_database: bool,
    backend: Backend, timer_backlog: int = 0, deep_history: int = 0, **rest: Any,
) -> StressRequest:  # fmt: skip
    """The options of the ``stress`` command as a validated :class:`StressRequest`.

    Raises:
        typer.BadParameter: an unknown scenario or preset, PostgreSQL without a URL, ``--report`` without
            plotly.
    """
    from ._stress_chaos import makes_own_cluster

    if report_path is not None:
        from ..stress._html_report import require_plotly

        try:
            require_plotly()
        except ImportError as exc:
            raise typer.BadParameter(str(exc), param_hint="--report") from None
    choice = choose_provider(
        provider, database_url, sqlite_file=True, url_required=not makes_own_cluster(chaos, chaos_own_database)
    )
    overrides = {
        "duration": duration,
        "max_concurrent": max_concurrent,
        "tasks_per_instance": tasks,
        "activity_delay_ms": activity_delay_ms,
        "orchestration_concurrency": orch_concurrency,
        "worker_concurrency": worker_concurrency,
        "wait_timeout": wait_timeout,
        "timer_backlog": timer_backlog or None,
        "deep_history": deep_history or None,
    }
    if (timer_backlog or deep_history) and (processes is not None or chaos):
        raise typer.BadParameter(
            "--timer-backlog and --deep-history seed a single-process run; leave out --processes/--chaos",
            param_hint="--timer-backlog",
        )
    configs = stress_configs(scenario, preset=preset, suite=suite, overrides=overrides)
    return StressRequest(
        choice, configs, backend=backend.value, report_path=report_path, processes=processes,
        chaos=list(chaos or []), chaos_own_database=chaos_own_database, **rest,
    )  # fmt: skip


def stress_configs(
    scenario: str, *, preset: str | None = None, suite: bool = False, overrides: dict[str, Any] | None = None
) -> list[StressConfig]:
    """One config per run: ``scenario`` (or every scenario for ``all``) from ``preset`` with the ``overrides``
    that are not ``None``; with ``suite``, each at every concurrency of the suite matrix.

    Raises:
        typer.BadParameter: an unknown preset or scenario (the message lists the known ones).
    """
    from ..stress import PRESETS, SCENARIOS, SUITE_CONCURRENCY, StressConfig

    if preset is not None and preset not in PRESETS:
        raise typer.BadParameter(
            f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}", param_hint="--preset"
        )
    if scenario != "all" and scenario not in SCENARIOS:
        raise typer.BadParameter(
            f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}, all",
            param_hint="--scenario",
        )
    base: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    runs: list[dict[str, Any]] = (
        [base | {"orchestration_concurrency": orch, "worker_concurrency": worker} for orch, worker in SUITE_CONCURRENCY]
        if suite
        else [base]
    )
    explicit_tasks = (overrides or {}).get("tasks_per_instance") is not None
    configs = []
    for name in list(SCENARIOS) if scenario == "all" else [scenario]:
        default_tasks = SCENARIOS[name].default_tasks
        for fields in runs:
            if default_tasks is not None and not explicit_tasks:
                fields = fields | {"tasks_per_instance": default_tasks}
            configs.append(StressConfig(**fields, scenario=name))
    return configs


def _consoles(dashboard: bool | None) -> tuple[bool, Console, Console]:
    """Whether to show the dashboard, and the stdout and stderr consoles (a pipe or a file never
    truncates the table)."""
    use_dashboard = dashboard if dashboard is not None else sys.stdout.isatty()
    out = Console(highlight=False, force_terminal=True if use_dashboard else None)
    if not out.is_terminal:
        out = Console(highlight=False, width=200)
    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
    return use_dashboard, out, err


def run_stress(request: StressRequest) -> None:
    """Run every config of ``request`` and show, write and track the results; raises ``typer.Exit`` 1
    unless every run reached 100 % (the chaos mode: unless every verdict is clean), 130 on Ctrl-C."""
    use_dashboard, out, err = _consoles(request.dashboard)
    kind, choice = request.choice.kind.value, request.choice
    if request.processes is not None or request.chaos:  # the multi-process (chaos) mode: _stress_chaos.py
        from ._stress_chaos import run_chaos_command

        run_chaos_command(
            request.configs, kind=kind, url=choice.url, processes=request.processes, chaos=request.chaos,
            own_database=request.chaos_own_database, restart_command=request.chaos_restart_command,
            stuck_after=request.stuck_after, backend=request.backend, fail_fast=request.fail_fast,
            use_dashboard=use_dashboard, out=out, err=err, json_path=request.json_path,
            track=request.track or request.track_cloud, cloud=request.track_cloud, results_dir=request.results_dir,
            pool_max=request.pool_max, liveness=request.liveness,
        )  # fmt: skip
        return
    factory = choice.factory(pool_max=request.pool_max)
    out.print(
        f"[bold]duroxide-trio stress[/]: provider [cyan]{kind}[/] ({choice.shown}), backend {request.backend}, "
        f"{len(request.configs)} run{'s' if len(request.configs) != 1 else ''}"
    )
    results, aborted, interrupted = _run_all(
        factory, request.configs, kind=kind, shown_url=choice.shown, url=choice.url, backend=request.backend,
        fail_fast=request.fail_fast, use_dashboard=use_dashboard, out=out, err=err, results_dir=request.results_dir,
    )  # fmt: skip
    _report(request, results, aborted, interrupted, out)


def _report(request: StressRequest, results: list[Any], aborted: str | None, interrupted: bool, out: Console) -> None:
    from ..stress import _report as report

    kind, backend, db_url = request.choice.kind.value, request.backend, request.choice.postgres_url
    if results:
        out.print()
        out.print(report.comparison_table(results, title=f"Stress test results ({kind}, {backend})", width=out.width))
    if request.json_path is not None:
        report.write_json(
            request.json_path, results, provider=kind, database_url=db_url,
            extra={"backend": backend, "aborted": aborted, "interrupted": interrupted},
        )  # fmt: skip
        out.print(f"JSON written to {request.json_path}")
    if request.report_path is not None and results:
        from ..stress import write_html_report

        write_html_report(request.report_path, results, provider=kind, database_url=db_url,
                          title=f"duroxide-trio stress: {kind}, {backend}")  # fmt: skip
        out.print(f"HTML report written to {request.report_path}")
    if interrupted:
        out.print("[bold yellow]INTERRUPTED[/]: stopped by Ctrl-C; the figures above cover what ran until then")
        raise typer.Exit(130)
    if (request.track or request.track_cloud) and results:
        tracked, warnings = report.append_tracking(
            request.results_dir, results, provider=kind, database_url=db_url, cloud=request.track_cloud,
            report_file=request.report_path,
        )  # fmt: skip
        out.print(f"Results appended to {tracked}")
        for w in warnings:
            out.print(f"[bold yellow]WARNING[/] regression: {w}")
    if bool(results) and aborted is None and all(r.passed for r in results):
        out.print(f"[bold green]PASS[/]: every run reached 100 % ({sum(r.completed for r in results)} instances)")
        return
    bad = [r for r in results if not r.passed]
    detail = aborted or ", ".join(f"{r.scenario} {r.config.concurrency_label} {r.success_rate:.2f}%" for r in bad)
    out.print(f"[bold red]FAIL[/]: {detail or 'no run completed'}")
    raise typer.Exit(1)


def _run_all(
    factory: Any,
    configs: list[Any],
    *,
    kind: str,
    shown_url: str,
    url: str | None,
    backend: str,
    fail_fast: bool,
    use_dashboard: bool,
    out: Console,
    err: Console,
    results_dir: Path,
) -> tuple[list[Any], str | None, bool]:
    """Run every config in turn with the dashboard or plain progress lines. Returns the results, the
    message of an abort (fail-fast or an error), and whether Ctrl-C stopped the runs: the first Ctrl-C
    ends the current run early and keeps its partial figures, a second one stops at once."""
    import signal

    import anyio

    from ..stress import _report as report
    from ..stress._dashboard import Dashboard, PlainProgress, summary_panel
    from ..stress._result import format_ms
    from ..stress._runner import StressAborted, describe_error, run

    results: list[Any] = []
    aborted: list[str] = []
    interrupted: list[bool] = []
    current: list[Any] = []  # the running run's monitor, once it reported progress

    def watched(callback: Any) -> Any:
        def on_progress(monitor: Any) -> None:
            current[:] = [monitor]
            callback(monitor)

        return on_progress

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def on_sigint() -> None:
                with anyio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        if not interrupted and current:
                            interrupted.append(True)
                            current[0].interrupt()  # the run returns its partial result
                        else:  # before any run reported, or a second Ctrl-C: stop now
                            interrupted.append(True)
                            tg.cancel_scope.cancel()

            tg.start_soon(on_sigint)
            await runs()
            tg.cancel_scope.cancel()

    async def runs() -> None:
        for i, config in enumerate(configs, 1):
            if interrupted:
                return
            current.clear()
            label = f"run {i}/{len(configs)}: {config.scenario} {config.concurrency_label}"
            try:
                if use_dashboard:
                    with Dashboard(out, provider=kind, url=shown_url, config=config, run_label=label) as dash:
                        result = await run(
                            factory, config, on_progress=watched(dash.update), fail_fast=fail_fast
                        )
                    dash.finish(result)
                else:
                    err.print(f"{label}: {config.describe()}")
                    progress = PlainProgress(sys.stderr, interval=2.0, label=label)
                    result = await run(
                        factory, config, on_progress=watched(progress.update), fail_fast=fail_fast
                    )
                    verdict = "INTERRUPTED" if result.interrupted else "PASS" if result.passed else "FAIL"
                    p50 = format_ms(result.latency_ms.p50 if result.latency_ms.count else None)
                    err.print(
                        f"{label}: {verdict} completed {result.completed}/"
                        f"{result.launched}, {result.orch_throughput:.1f} orch/s, p50 {p50}"
                    )
                results.append(result)
            except StressAborted as exc:
                crash = report.write_crash_report(
                    results_dir, error=exc.error, traceback_text=exc.traceback, provider=kind,
                    database_url=url if kind == "postgres" else None, config=config, errors=exc.errors,
                    result=exc.result,
                )  # fmt: skip
                message = f"{describe_error(exc.error)} (crash report: {crash})"
                results.append(exc.result)
                aborted.append(message)
                out.print(summary_panel(exc.result, kind, shown_url, aborted=message))
                return
            except Exception as exc:  # noqa: BLE001 - e.g. the provider cannot be opened: report it masked
                message = masked(describe_error(exc), url)
                if fail_fast:
                    crash = report.write_crash_report(
                        results_dir, error=exc, traceback_text="".join(traceback.format_exception(exc)),
                        provider=kind, database_url=url if kind == "postgres" else None, config=config, errors=[],
                    )  # fmt: skip
                    message += f" (crash report: {crash})"
                err.print(f"[bold red]error[/] in {label}: {message}")
                aborted.append(message)
                return

    try:
        anyio.run(main, backend=backend)
    except KeyboardInterrupt:  # Ctrl-C before the signal receiver was installed
        interrupted.append(True)
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        interrupted.append(True)
    return results, (aborted[0] if aborted else None), bool(interrupted)
