"""``duroxide-trio stress --processes N [--chaos SPEC ...]``: the multi-process (chaos) mode of the stress
command. ``_stress.py`` parses the options and hands over here."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ._provider import masked

__all__ = ["makes_own_cluster", "run_chaos_command"]


def makes_own_cluster(chaos: list[str] | None, own_database: bool) -> bool:
    """Whether the run will start its own throwaway PostgreSQL (restart-db without --chaos-own-database)."""
    return bool(chaos) and not own_database and any(s.strip().lower().startswith("restart-db") for s in chaos or [])


def _restart_command(command: str) -> Any:
    def restart(mode: str) -> None:
        argv = [a.replace("{mode}", mode) for a in shlex.split(command)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"restart command failed ({proc.returncode}): {proc.stderr.strip()[:500]}")

    return restart


@contextlib.contextmanager
def _database(
    kind: str, url: str | None, *, restart_db: bool, own_database: bool, restart_command: str | None,
    err: Console,
) -> Iterator[tuple[str | None, Any, bool]]:  # fmt: skip
    """(url, restart callable or None, whether the harness started the cluster)."""
    if kind != "postgres" or not restart_db:
        yield url, None, False
        return
    if own_database:
        if not restart_command:
            raise typer.BadParameter(
                "restart-db on your own database needs --chaos-restart-command (e.g. "
                "\"pg_ctlcluster 16 main restart -m {mode}\")",
                param_hint="--chaos-restart-command",
            )
        err.print(f"[bold yellow]restart-db will restart YOUR database[/] via: {restart_command}")
        yield url, _restart_command(restart_command), False
        return
    from ..providers.postgres._localcluster import ClusterStartError, ClusterUnavailable, local_cluster

    try:
        with local_cluster(settings={"fsync": "off", "full_page_writes": "off"}) as cluster:
            if url:
                err.print(
                    f"restart-db: not touching {masked(url)}; running on a throwaway cluster at {cluster.url} "
                    "(pass --chaos-own-database to restart your own server)"
                )
            else:
                err.print(f"restart-db: running on a throwaway cluster at {cluster.url}")
            yield cluster.url, cluster.restart, True
    except (ClusterUnavailable, ClusterStartError) as exc:
        raise typer.BadParameter(
            f"restart-db needs a throwaway PostgreSQL from local binaries, which cannot start here: {exc}",
            param_hint="--chaos",
        ) from None


def run_chaos_command(
    configs: list[Any],
    *,
    kind: str,
    url: str | None,
    processes: int | None,
    chaos: list[str],
    own_database: bool,
    restart_command: str | None,
    stuck_after: float,
    backend: str,
    fail_fast: bool,
    use_dashboard: bool,
    out: Console,
    err: Console,
    json_path: Path | None,
    track: bool,
    cloud: bool,
    results_dir: Path,
    pool_max: int | None,
    liveness: bool = True,
) -> None:
    """Run the multi-process (chaos) stress mode with the options ``_stress.py`` parsed (with its consoles); exits 1 unless every
    verdict is clean."""
    from ..stress._chaos import ChaosSpecError, parse_chaos

    if processes is None:
        raise typer.BadParameter("--chaos needs --processes N (runtime processes to apply it to)", param_hint="--chaos")
    if kind == "sqlite-memory":
        raise typer.BadParameter(
            "--processes needs a database the processes can share: --provider sqlite (a file) or postgres",
            param_hint="--provider",
        )
    try:
        specs = [parse_chaos(text) for text in chaos]
    except ChaosSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--chaos") from None
    restart_db = any(s.kind == "restart-db" for s in specs)
    if restart_db and kind != "postgres":
        raise typer.BadParameter("restart-db applies to PostgreSQL only", param_hint="--chaos")

    if restart_db:  # every restart makes each connection log its reconnect: keep the output readable
        import logging

        logging.getLogger("duroxide_trio.providers.postgres").setLevel(logging.ERROR)
    with _database(kind, url, restart_db=restart_db, own_database=own_database, restart_command=restart_command,
                   err=err) as (db_url, restart, harness_cluster):  # fmt: skip
        shown = masked(db_url) if kind == "postgres" and db_url else (url or "temporary file")
        out.print(
            f"[bold]duroxide-trio stress[/]: provider [cyan]{kind}[/] ({shown}), {processes} runtime processes, "
            f"chaos {' '.join(chaos) or 'none'}, backend {backend}, {len(configs)} run{'s' if len(configs) != 1 else ''}"
        )
        results, aborted = _run_all(
            configs, kind=kind, url=db_url, sqlite_path=url if kind == "sqlite" else None, processes=processes,
            specs=specs, restart=restart, harness_cluster=harness_cluster, stuck_after=stuck_after, backend=backend,
            fail_fast=fail_fast, use_dashboard=use_dashboard, out=out, err=err, results_dir=results_dir,
            pool_max=pool_max, shown=shown, liveness=liveness,
        )  # fmt: skip
    _report(results, aborted, kind=kind, url=db_url, harness_cluster=harness_cluster, json_path=json_path,
            track=track, cloud=cloud, results_dir=results_dir, out=out, backend=backend)  # fmt: skip


def _run_all(
    configs: list[Any], *, kind: str, url: str | None, sqlite_path: str | None, processes: int, specs: list[Any],
    restart: Any, harness_cluster: bool, stuck_after: float, backend: str, fail_fast: bool, use_dashboard: bool,
    out: Console, err: Console, results_dir: Path, pool_max: int | None, shown: str, liveness: bool,
) -> tuple[list[Any], str | None]:  # fmt: skip
    import anyio

    from ..stress import _report as report
    from ..stress._chaos_report import ChaosDashboard, chaos_appendix, verdict_lines
    from ..stress._chaos_runner import ChaosTarget, run_chaos
    from ..stress._dashboard import PlainProgress, summary_panel
    from ..stress._runner import StressAborted, describe_error

    results: list[Any] = []
    aborted: list[str] = []

    async def main() -> None:
        for i, config in enumerate(configs, 1):
            label = f"run {i}/{len(configs)}: {config.scenario} {config.concurrency_label} ×{processes}"
            if kind == "postgres":
                assert url is not None
                target = ChaosTarget.postgres(url, pool_max=pool_max, restart=restart, owns_database=harness_cluster)
            else:
                target = ChaosTarget.sqlite(sqlite_path)
            try:
                if use_dashboard:
                    with ChaosDashboard(out, provider=f"{kind} ×{processes}", url=shown, config=config,
                                        run_label=label) as dash:  # fmt: skip
                        cr = await run_chaos(target, config, processes=processes, chaos=specs, stuck_after=stuck_after,
                                             on_progress=dash.update, fail_fast=fail_fast, backend=backend,
                                             liveness=liveness)  # fmt: skip
                else:
                    err.print(f"{label}: {config.describe()}; chaos {' '.join(s.describe() for s in specs) or 'none'}")
                    progress = PlainProgress(sys.stderr, interval=2.0, label=label)
                    cr = await run_chaos(target, config, processes=processes, chaos=specs, stuck_after=stuck_after,
                                         on_progress=progress.update, fail_fast=fail_fast, backend=backend,
                                         liveness=liveness)  # fmt: skip
                for line in verdict_lines(cr):
                    err.print(f"{label}: {line}")
                results.append(cr)
            except StressAborted as exc:
                partial: Any = getattr(exc, "chaos", None)
                crash = report.write_crash_report(
                    results_dir, error=exc.error, traceback_text=exc.traceback, provider=kind,
                    database_url=url if kind == "postgres" else None, config=config, errors=exc.errors,
                    result=exc.result,
                )  # fmt: skip
                with crash.open("a", encoding="utf-8") as f:
                    f.write(chaos_appendix(partial))
                message = f"{describe_error(exc.error)} (crash report: {crash})"
                if partial is not None:
                    results.append(partial)
                aborted.append(message)
                out.print(summary_panel(exc.result, kind, shown, aborted=message))
                return
            except Exception as exc:  # noqa: BLE001 - reported masked
                message = masked(describe_error(exc), url)
                err.print(f"[bold red]error[/] in {label}: {message}")
                aborted.append(message)
                return

    anyio.run(main, backend=backend)
    return results, (aborted[0] if aborted else None)


def _report(
    results: list[Any], aborted: str | None, *, kind: str, url: str | None, harness_cluster: bool,
    json_path: Path | None, track: bool, cloud: bool, results_dir: Path, out: Console, backend: str,
) -> None:  # fmt: skip
    from ..stress import _report as report
    from ..stress._chaos_report import append_chaos_tracking, process_table, throughput_chart, verdict_table

    stress_results = [cr.result for cr in results]
    if results:
        out.print()
        out.print(report.comparison_table(stress_results, title=f"Stress test results ({kind}, {backend})"))
        out.print(verdict_table(results))
        for cr in results:
            out.print(f"[bold]{cr.result.scenario} {cr.result.config.concurrency_label}[/] {throughput_chart(cr)}")
        out.print(process_table(results[-1]))
    db_url = url if kind == "postgres" and not harness_cluster else None
    if json_path is not None:
        report.write_json(
            json_path, stress_results, provider=kind, database_url=db_url,
            extra={"backend": backend, "aborted": aborted, "chaos": [cr.as_dict() for cr in results],
                   "passed": bool(results) and aborted is None and all(cr.passed for cr in results)},
        )  # fmt: skip
        out.print(f"JSON written to {json_path}")
    if track and results:
        path = append_chaos_tracking(results_dir, results, provider=kind, database_url=db_url, cloud=cloud)
        out.print(f"Chaos results appended to {path}")
    passed = bool(results) and aborted is None and all(cr.passed for cr in results)
    if passed:
        out.print(f"[bold green]PASS[/]: every chaos verdict is clean ({sum(cr.verdict.launched for cr in results)} "
                  "instances)")  # fmt: skip
        return
    bad = [cr for cr in results if not cr.passed]
    detail = aborted or "; ".join(f"{cr.result.scenario}: {', '.join(cr.verdict.reasons)}" for cr in bad)
    out.print(f"[bold red]FAIL[/]: {detail or 'no run completed'}")
    raise typer.Exit(1)
