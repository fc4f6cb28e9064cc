"""``duroxide-trio stress``: run the stress harness and print the comparison table.

With no options it runs the fanout scenario on a temporary SQLite file for 10 seconds (no server needed)
and exits non-zero unless every run reached 100 %.
"""

from __future__ import annotations

import enum
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from . import app
from ._provider import database_url as resolve_database_url
from ._provider import mask_url

__all__ = ["stress"]


class ProviderChoice(enum.StrEnum):
    """``--provider`` values."""
    sqlite = "sqlite"
    sqlite_memory = "sqlite-memory"
    postgres = "postgres"


class BackendChoice(enum.StrEnum):
    """``--backend`` values (anyio backends)."""
    trio = "trio"
    asyncio = "asyncio"


def _scenario_help() -> str:
    from ..stress._scenarios import SCENARIOS

    return "Scenario to run: " + ", ".join(SCENARIOS) + ", or 'all' (one run each)."


def _preset_help() -> str:
    from ..stress._config import PRESETS

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


@app.command("stress")
def stress(
    provider: ProviderChoice = typer.Option(
        None,
        "--provider",
        help="Storage: sqlite (a temporary WAL file, the default), sqlite-memory, or postgres.",
        case_sensitive=False,
        show_default=False,
    ),
    database_url: str = typer.Option(
        None,
        "--database-url",
        help="PostgreSQL URL (default: env DATABASE_URL). With --provider sqlite: a database file to use "
        "instead of a temporary one.",
        show_default=False,
    ),
    scenario: str = typer.Option("fanout", "--scenario", help=_scenario_help()),
    duration: float = typer.Option(
        None, "--duration", help="Seconds of load per run (default: 10).", min=0.1
    ),
    max_concurrent: int = typer.Option(
        None, "--max-concurrent", help="Instances in flight (default: 20).", min=1
    ),
    tasks: int = typer.Option(
        None, "--tasks", help="Tasks per instance (fan-out degree) (default: 5).", min=1
    ),
    activity_delay_ms: int = typer.Option(
        None, "--activity-delay-ms", help="How long each activity sleeps (default: 10).", min=0
    ),
    orch_concurrency: int = typer.Option(
        None, "--orch-concurrency", help="Orchestration dispatcher concurrency (default: 2).", min=1
    ),
    worker_concurrency: int = typer.Option(
        None, "--worker-concurrency", help="Activity dispatcher concurrency (default: 2).", min=1
    ),
    wait_timeout: float = typer.Option(
        None, "--wait-timeout", help="Seconds one instance may take (default: 60).", min=0.1
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
    backend: BackendChoice = typer.Option(BackendChoice.trio, "--backend", help="anyio backend to run on."),
    processes: int = typer.Option(
        None, "--processes", min=1, show_default=False,
        help="Run N runtime worker processes on the same database (PostgreSQL or a SQLite file); the load "
        "driver stays in this process. The verdict then counts from the database (see README, Chaos testing).",
    ),
    chaos: list[str] = typer.Option(
        None, "--chaos", show_default=False,
        help="Chaos spec, repeatable (needs --processes): kill:every=3s | restart-db:every=20s[,mode=fast|"
        "immediate] | faults:rate=0.05 | stall:every=10s,for=2s.",
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
    """Run the stress harness and print the comparison table (exit code 1 unless every run reached 100 %)."""
    from ..stress._config import PRESETS, SUITE_CONCURRENCY, StressConfig
    from ..stress._scenarios import SCENARIOS

    if report_path is not None:
        from ..stress import _html_report as html_report

        try:
            html_report.require_plotly()
        except ImportError as exc:
            raise typer.BadParameter(str(exc), param_hint="--report") from None

    # -- provider ---------------------------------------------------------------------------------------
    explicit_url = database_url
    if provider is None:
        looks_pg = bool(explicit_url) and explicit_url.lower().startswith(("postgres://", "postgresql://"))
        provider = ProviderChoice.postgres if looks_pg else ProviderChoice.sqlite
    kind = provider.value
    url: str | None
    if kind == "postgres":
        url = resolve_database_url(explicit_url)
        from ._stress_chaos import makes_own_cluster

        if not url and not makes_own_cluster(chaos, chaos_own_database):
            raise typer.BadParameter(
                "--provider postgres needs --database-url or the DATABASE_URL environment variable",
                param_hint="--database-url",
            )
        try:
            from ..providers.postgres import PostgresFactory
        except ImportError as exc:
            raise typer.BadParameter(
                f"the PostgreSQL provider is not available: {exc}", param_hint="--provider"
            ) from exc
        factory: Any = PostgresFactory(url or "", schema=None, pool_max=pool_max)
    elif kind == "sqlite-memory":
        from ..providers.sqlite import SqliteFactory

        url = None
        factory = SqliteFactory(":memory:")
    else:
        from ..providers.sqlite import SqliteFactory

        path = _sqlite_path(explicit_url)
        url = path
        factory = SqliteFactory(path)
    shown_url = mask_url(url) if kind == "postgres" else (url or "temporary file")

    # -- configs ----------------------------------------------------------------------------------------
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
    overrides = {
        "duration": duration,
        "max_concurrent": max_concurrent,
        "tasks_per_instance": tasks,
        "activity_delay_ms": activity_delay_ms,
        "orchestration_concurrency": orch_concurrency,
        "worker_concurrency": worker_concurrency,
        "wait_timeout": wait_timeout,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    scenarios = list(SCENARIOS) if scenario == "all" else [scenario]
    configs: list[StressConfig] = []
    for name in scenarios:
        if suite:
            for orch, worker in SUITE_CONCURRENCY:
                configs.append(
                    StressConfig(
                        **(base | {"orchestration_concurrency": orch, "worker_concurrency": worker}),
                        scenario=name,
                    )
                )
        else:
            configs.append(StressConfig(**base, scenario=name))

    if processes is not None or chaos:  # the multi-process (chaos) mode: cli/stress_chaos.py
        from ._stress_chaos import run_chaos_command

        run_chaos_command(
            configs, kind=kind, url=url, processes=processes, chaos=list(chaos or []), own_database=chaos_own_database,
            restart_command=chaos_restart_command, stuck_after=stuck_after, backend=backend.value, fail_fast=fail_fast,
            dashboard=dashboard, json_path=json_path, track=track or track_cloud, cloud=track_cloud,
            results_dir=results_dir, pool_max=pool_max, liveness=liveness,
        )  # fmt: skip
        return

    # -- run --------------------------------------------------------------------------------------------
    use_dashboard = dashboard if dashboard is not None else sys.stdout.isatty()
    out = Console(highlight=False, force_terminal=True if use_dashboard else None)
    if not out.is_terminal:
        out = Console(highlight=False, width=200)  # a pipe or a file: never truncate the table
    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
    out.print(
        f"[bold]duroxide-trio stress[/]: provider [cyan]{kind}[/] ({shown_url}), backend {backend.value}, "
        f"{len(configs)} run{'s' if len(configs) != 1 else ''}"
    )
    outcome = _run_all(
        factory, configs, kind=kind, shown_url=shown_url, url=url, backend=backend.value, fail_fast=fail_fast,
        use_dashboard=use_dashboard, out=out, err=err, results_dir=results_dir,
    )  # fmt: skip
    results, aborted, interrupted = outcome

    # -- report -----------------------------------------------------------------------------------------
    from ..stress import _report as report

    if results:
        out.print()
        out.print(
            report.comparison_table(
                results, title=f"Stress test results ({kind}, {backend.value})", width=out.width
            )
        )
    if json_path is not None:
        report.write_json(
            json_path, results, provider=kind, database_url=url if kind == "postgres" else None,
            extra={"backend": backend.value, "aborted": aborted, "interrupted": interrupted},
        )  # fmt: skip
        out.print(f"JSON written to {json_path}")
    if report_path is not None and results:
        from ..stress import _html_report as html_report

        html_report.write_report(
            report_path, results, provider=kind, database_url=url if kind == "postgres" else None,
            title=f"duroxide-trio stress: {kind}, {backend.value}",
        )  # fmt: skip
        out.print(f"HTML report written to {report_path}")
    if interrupted:
        out.print("[bold yellow]INTERRUPTED[/]: stopped by Ctrl-C; the figures above cover what ran until then")
        raise typer.Exit(130)
    if (track or track_cloud) and results:
        tracked, warnings = report.append_tracking(
            results_dir,
            results,
            provider=kind,
            database_url=url if kind == "postgres" else None,
            cloud=track_cloud,
            report_file=report_path,
        )
        out.print(f"Results appended to {tracked}")
        for w in warnings:
            out.print(f"[bold yellow]WARNING[/] regression: {w}")
    passed = bool(results) and aborted is None and all(r.passed for r in results)
    if passed:
        out.print(
            f"[bold green]PASS[/]: every run reached 100 % ({sum(r.completed for r in results)} instances)"
        )
    else:
        bad = [r for r in results if not r.passed]
        detail = aborted or ", ".join(
            f"{r.scenario} {r.config.concurrency_label} {r.success_rate:.2f}%" for r in bad
        )
        out.print(f"[bold red]FAIL[/]: {detail or 'no run completed'}")
        raise typer.Exit(1)


def _sqlite_path(url: str | None) -> str | None:
    if not url:
        return None
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") - 1 :] if url.startswith("sqlite:////") else url[len("sqlite:///") :]
    if url.startswith("sqlite://"):
        return url[len("sqlite://") :]
    if url.startswith("sqlite:"):
        return url[len("sqlite:") :]
    if "://" in url:
        raise typer.BadParameter(
            f"--provider sqlite takes a file path or sqlite:///path, not {mask_url(url)}",
            param_hint="--database-url",
        )
    return url


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
                message = report.mask_text(describe_error(exc), url)
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
