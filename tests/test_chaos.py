"""Chaos: the multi-process harness under kills, stalls, injected faults and (PostgreSQL) a restart of a
throwaway cluster, judged by the database-based verdict; plus the pieces it is made of (spec parsing,
history examination, the process liveness lease that makes a dead process's work move in ~1.5 s)."""

from __future__ import annotations

import os
import re

import anyio
import pytest

import duroxide_trio as dt
from duroxide_trio.history import (
    ActivityCompleted,
    ActivityExecute,
    ActivityScheduled,
    Event,
    OrchestrationCompleted,
    OrchestrationStarted,
)
from duroxide_trio.stress import ChaosSpecError, ChaosTarget, StressConfig, parse_chaos, run_chaos
from duroxide_trio.stress._verdict import examine_history

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------------------------------------------
# specs and history examination (pure)


@pytest.mark.parametrize("anyio_backend", ["trio"])
def test_chaos_specs_parse_and_reject_nonsense(anyio_backend):
    kill = parse_chaos("kill:every=3s")
    assert (kill.kind, kill.every) == ("kill", 3.0)
    restart = parse_chaos("restart-db:every=20s,mode=immediate")
    assert (restart.every, restart.mode) == (20.0, "immediate")
    faults = parse_chaos("faults:rate=0.05")
    assert faults.rate == 0.05 and faults.after_share == 0.5
    assert kill.target == "any" and parse_chaos("kill:every=2s,target=session").target == "session"
    stall = parse_chaos("stall:every=10s,for=500ms")
    assert (stall.every, stall.duration) == (10.0, 0.5)
    for bad in ("explode:every=1s", "kill", "kill:every=soon", "faults:rate=2", "stall:every=1s",
                "restart-db:every=1s,mode=gentle", "kill:every=1s,bogus=1", "kill:every=1s,target=db",
                "stall:every=1s,for=1s,target=session"):  # fmt: skip
        with pytest.raises(ChaosSpecError):
            parse_chaos(bad)


def _history(*kinds: tuple[object, int | None]) -> list[Event]:
    return [Event(i + 1, kind, source) for i, (kind, source) in enumerate(kinds)]  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["trio"])
def test_examine_history_finds_double_completions_and_lost_results(anyio_backend):
    started = (OrchestrationStarted("X", "1.0.0"), None)
    clean = _history(started, (ActivityScheduled("A"), None), (ActivityCompleted("1"), 2),
                     (OrchestrationCompleted("1"), None))  # fmt: skip
    assert examine_history(clean)[:3] == (1, [], [])
    twice = _history(started, (ActivityScheduled("A"), None), (ActivityCompleted("1"), 2),
                     (ActivityCompleted("1"), 2), (OrchestrationCompleted("1"), None),
                     (OrchestrationCompleted("1"), None))  # fmt: skip
    terminal, again, missing, _ = examine_history(twice)
    assert terminal == 2 and again == [2] and missing == []
    lost = _history(started, (ActivityScheduled("A"), None), (OrchestrationCompleted("1"), None))
    assert examine_history(lost)[2] == [2]


# ---------------------------------------------------------------------------------------------------------
# the liveness lease, in one process: a "dead" peer is simulated by dropping its lease


async def _peer_pair(kind: str, tmp_path, request):
    if kind == "sqlite":
        path = str(tmp_path / "lease.db")
        return await dt.SqliteProvider.open(path), await dt.SqliteProvider.open(path)
    from duroxide_trio.providers.postgres import PostgresProvider

    url, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")
    return (await PostgresProvider.connect(url, schema=schema, pool_max=2),
            await PostgresProvider.connect(url, schema=schema, pool_max=2))  # fmt: skip


async def _drop_lease(provider) -> None:
    """What SIGKILL does to a process's lease, without killing this test process."""
    if isinstance(provider, dt.SqliteProvider):
        fd, provider._lease_fd = provider._lease_fd, None
        os.close(fd)  # the flock goes with the descriptor
    else:
        conn, provider._lease_conn = provider._lease_conn, None
        await conn.close()  # the advisory lock goes with the session


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_dead_process_locks_are_reclaimed_at_once_and_its_late_ack_rejected(kind, tmp_path, request):
    a, b = await _peer_pair(kind, tmp_path, request)
    async with a, b:
        await a.register_process("deadbeef")
        await b.register_process("survivor")
        await a.enqueue_for_worker(ActivityExecute("inst", 1, 7, "Work", None))
        lease = await a.fetch_work_item(lock_timeout=300.0)  # a long lock: expiry would take 5 minutes
        assert lease is not None and lease.lock_token.split(".")[-1].startswith("deadbeef:")
        assert await b.fetch_work_item(lock_timeout=300.0) is None
        assert await b.renew_process_lease("survivor", 60.0, 0.0) == []  # alive: nothing reclaimed
        await _drop_lease(a)
        with anyio.fail_after(5):  # the server ends the dropped session (and its lock) asynchronously
            while (reclaimed := await b.renew_process_lease("survivor", 60.0, 0.0)) == []:
                await anyio.sleep(0.02)
        assert reclaimed == ["deadbeef"]
        stolen = await b.fetch_work_item(lock_timeout=300.0)
        assert stolen is not None and stolen.item.id == 7 and stolen.attempt_count == 2
        with pytest.raises(dt.ProviderError):  # the dead process's late write is rejected
            await a.ack_work_item(lease.lock_token, None)
        await b.ack_work_item(stolen.lock_token, None)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_frozen_process_is_reclaimed_after_stale_heartbeat_then_rejoins(kind, tmp_path, request):
    a, b = await _peer_pair(kind, tmp_path, request)
    async with a, b:
        await a.register_process("frozen1")
        await b.register_process("watcher")
        await a.enqueue_for_worker(ActivityExecute("inst-f", 1, 3, "Work", None))
        lease = await a.fetch_work_item(lock_timeout=300.0)
        assert lease is not None
        await anyio.sleep(0.3)  # "frozen": no heartbeat, but the lease lock is still held
        assert await b.renew_process_lease("watcher", 60.0, 0.0) == []
        assert await b.renew_process_lease("watcher", 0.2, 0.0) == ["frozen1"]
        with pytest.raises(dt.ProviderError):
            await a.renew_work_item_lock(lease.lock_token, 300.0)
        # It wakes up: its next heartbeat registers it again, and it is alive to the others.
        assert await a.renew_process_lease("frozen1", 60.0) == []
        assert await b.renew_process_lease("watcher", 60.0, 0.0) == []


# ---------------------------------------------------------------------------------------------------------
# the CI chaos runs: ~30 s of load each, three runtime processes


def _assert_clean(cr, *, min_instances: int) -> None:
    v = cr.verdict
    detail = f"{v.reasons}; timeline {cr.timeline}; processes {cr.process_table}"
    assert cr.passed, detail
    assert v.launched >= min_instances, detail
    assert v.terminal == v.launched and v.counts == {}, detail
    assert v.activity_executions >= v.logical_activities > 0
    assert v.unrecorded_completions == 0
    kills = [e for e in cr.timeline if e["kind"] == "kill" and e["ok"]]
    assert len(kills) >= 5 and sum(p["state"] == "killed" for p in cr.process_table) == len(kills)
    # Fast recovery: after the last fault every instance is terminal within seconds, not a lock timeout.
    assert v.drain_s is not None and v.drain_s < 10.0, detail
    assert cr.result.latency_ms.max < 25_000, detail  # no activity waited for its 30 s lock to expire


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_chaos_sqlite_kills_stalls_and_faults_leave_a_clean_verdict(anyio_backend, tmp_path):
    config = StressConfig(duration=30, max_concurrent=12, tasks_per_instance=3, scenario="mixed")
    chaos = [parse_chaos(s) for s in ("kill:every=3s", "faults:rate=0.05", "stall:every=9s,for=2s")]
    cr = await run_chaos(ChaosTarget.sqlite(str(tmp_path / "chaos.db")), config, processes=3, chaos=chaos,
                         stuck_after=45, seed=1)  # fmt: skip
    _assert_clean(cr, min_instances=30)
    assert any(e["kind"] == "stall" for e in cr.timeline)


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_chaos_postgres_kills_faults_and_a_restart_leave_a_clean_verdict(anyio_backend):
    import pg_support

    from duroxide_trio.providers.postgres._localcluster import ClusterUnavailable, local_cluster

    try:
        cluster_cm = local_cluster(settings={"fsync": "off", "full_page_writes": "off"})
        cluster = cluster_cm.__enter__()
    except ClusterUnavailable as exc:  # restart-db only ever runs on a cluster the test started itself
        if pg_support.postgres_required():
            pytest.fail(f"no local PostgreSQL binaries for the restart chaos test: {exc}")
        pytest.skip(f"no local PostgreSQL binaries for the restart chaos test: {exc}")
    try:
        config = StressConfig(duration=30, max_concurrent=12, tasks_per_instance=3, scenario="mixed")
        chaos = [parse_chaos(s) for s in ("kill:every=3s", "faults:rate=0.05", "restart-db:every=600s,first=14s")]
        target = ChaosTarget.postgres(cluster.url, restart=cluster.restart, owns_database=True)
        cr = await run_chaos(target, config, processes=3, chaos=chaos, stuck_after=45, seed=2)
    finally:
        cluster_cm.__exit__(None, None, None)
    _assert_clean(cr, min_instances=20)
    restarts = [e for e in cr.timeline if e["kind"] == "restart-db"]
    assert len(restarts) == 1 and restarts[0]["ok"], cr.timeline
    assert cluster.restarts == 1


# ---------------------------------------------------------------------------------------------------------
# sessions and key-value state under kills (issue 12): a session owner killed mid-session, the mixed run's
# key-value state checked against its history


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_chaos_killed_session_owner_moves_its_session_and_kv_state_stays_exact(
    kind, anyio_backend, tmp_path, request
):
    if kind == "sqlite":
        target = ChaosTarget.sqlite(str(tmp_path / "sessions.db"))
    else:
        target = ChaosTarget.postgres(request.getfixturevalue("pg_url"))
    config = StressConfig(duration=12, max_concurrent=12, tasks_per_instance=4, scenario="mixed")
    chaos = [parse_chaos("kill:every=2.5s,target=session")]  # the victim runs a session's activity
    cr = await run_chaos(target, config, processes=3, chaos=chaos, stuck_after=45, seed=4)
    v = cr.verdict
    detail = f"{v.reasons}; timeline {cr.timeline}; processes {cr.process_table}"
    assert cr.passed, detail
    assert v.terminal == v.launched >= 12 and v.counts == {}, detail
    kills = [e for e in cr.timeline if e["kind"] == "kill" and e["ok"]]
    assert len(kills) >= 2 and any(re.search(r"running [1-9]\d* session", e["detail"]) for e in kills), detail
    # A killed owner's session went on in another process (after its claim expired) and completed there:
    # the ledger shows its activities on two processes, one at a time, in order.
    assert v.sessions_examined >= 2 and v.session_executions >= 4 * v.sessions_examined, detail
    assert v.sessions_moved >= 1, detail
    # Every instance's (and child's) stored key-value state is exactly what its history wrote.
    assert v.kv_instances_checked >= v.launched, detail
    assert v.drain_s is not None and v.drain_s < 15.0, detail


def _support_on_path(monkeypatch) -> None:
    """The worker processes import ``chaos_support`` (the broken providers) from this directory."""
    here = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_verdict_fails_a_run_whose_sessions_have_no_affinity(anyio_backend, tmp_path, monkeypatch):
    """A deliberately broken run: the provider hides worker routing, so session items run side by side on
    both processes. The verdict must say so from the ledger (and the outputs show it too)."""
    _support_on_path(monkeypatch)
    target = ChaosTarget.custom("chaos_support:open_without_sessions", {"path": str(tmp_path / "ns.db")})
    config = StressConfig(duration=4, max_concurrent=6, tasks_per_instance=4, scenario="sessions")
    cr = await run_chaos(target, config, processes=2, seed=5)
    v = cr.verdict
    assert not cr.passed
    assert v.counts.get("session_violations", 0) > 0, v.reasons
    assert any("session_violations".replace("_", " ") in r for r in v.reasons)
    assert any("ran on pid" in p or "began" in p or "moved" in p for p in v.session_violations)
    assert v.counts.get("wrong_output", 0) > 0  # the scenario's own check agrees


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_verdict_fails_a_run_whose_store_loses_and_repeats_kv_writes(anyio_backend, tmp_path, monkeypatch):
    """A deliberately broken run: the store drops some key-value writes and applies a counter increment
    twice. The verdict compares every instance's stored state with its history."""
    _support_on_path(monkeypatch)
    target = ChaosTarget.custom("chaos_support:open_lossy_kv", {"path": str(tmp_path / "lossy.db")})
    config = StressConfig(duration=4, max_concurrent=6, tasks_per_instance=3, scenario="kv")
    cr = await run_chaos(target, config, processes=2, seed=6)
    v = cr.verdict
    assert not cr.passed
    assert v.counts.get("kv_mismatch", 0) > 0, v.reasons
    assert any("lost ['last']" in m or "differs ['counter']" in m for m in v.kv_mismatch), v.kv_mismatch[:3]
    assert any("wrong key-value state in the store" in w for w in v.wrong_output), v.wrong_output[:3]


@pytest.mark.parametrize("anyio_backend", ["trio"])
def test_examine_sessions_finds_overlaps_reordering_and_moves_without_a_fault(anyio_backend):
    """Faked ledger rows against the session rules; a move after a kill is allowed (and counted)."""
    from duroxide_trio.stress._chaos import ChaosTimeline
    from duroxide_trio.stress._ledger import LedgerRow
    from duroxide_trio.stress._verdict import examine_sessions

    timeline = ChaosTimeline()
    t0 = int(timeline.origin_wall * 1000)

    def row(act: int, pid: int, start: int, end: int, session: str = "s") -> LedgerRow:
        return LedgerRow("i", 1, act, "Step", pid, 1, t0 + end, session, t0 + start)

    clean = [row(2, 10, 0, 100), row(3, 10, 120, 200), row(4, 10, 220, 300)]
    assert examine_sessions(clean, timeline, set()) == ([], 1, 3, 0)
    overlap = [row(2, 10, 0, 100), row(3, 10, 50, 150)]
    problems = examine_sessions(overlap, timeline, set())[0]
    assert any("activity 3 began on pid 10 while activity 2 ran on pid 10" in p for p in problems), problems
    reordered = [row(3, 10, 0, 100), row(2, 10, 120, 200)]
    (problem,) = examine_sessions(reordered, timeline, set())[0]
    assert "activity 3 began before activity 2" in problem
    moved = [row(2, 10, 0, 100), row(3, 11, 2000, 2100)]
    (problem,) = examine_sessions(moved, timeline, set())[0]
    assert "moved from pid 10 to pid 11" in problem and "neither killed nor stalled" in problem
    # Two processes at once (the broken run's picture) is an overlap even when each one was killed later.
    both = [row(2, 10, 0, 100), row(3, 11, 50, 150)]
    assert any("while activity 2 ran on pid 10" in p for p in examine_sessions(both, timeline, {10, 11})[0])
    timeline.events.append(dt_chaos_event(1.0, "kill", 10))
    assert examine_sessions(moved, timeline, {10}) == ([], 1, 2, 1)
    restarted = ChaosTimeline()
    restarted.events.append(dt_chaos_event(0.5, "restart-db", 0))
    assert examine_sessions(moved, restarted, set())[0] == []  # claims lapse while the server is down
    # A re-run after the owner died (its first execution finished, the ack was lost) is not a violation.
    rerun = [row(2, 10, 0, 100), row(2, 11, 2000, 2100), row(3, 11, 2120, 2200)]
    assert examine_sessions(rerun, timeline, {10}) == ([], 1, 3, 1)
    # Rows without a session are not looked at.
    assert examine_sessions([row(2, 10, 0, 100, session=None), row(2, 11, 50, 150, session=None)],
                            timeline, set()) == ([], 0, 0, 0)  # fmt: skip


def dt_chaos_event(at: float, kind: str, pid: int):
    from duroxide_trio.stress._chaos import ChaosEvent

    return ChaosEvent(at, kind, f"{kind} pid {pid}", pid=pid)


# ---------------------------------------------------------------------------------------------------------
# the CLI


@pytest.mark.parametrize("anyio_backend", ["trio"])
def test_cli_processes_and_chaos_write_the_verdict_per_process_figures_and_tracking(anyio_backend, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "chaos.json"
    cmd = [sys.executable, "-m", "duroxide_trio.cli", "stress", "--processes", "2", "--chaos", "kill:every=1.5s",
           "--duration", "4", "--max-concurrent", "6", "--no-dashboard", "--json", str(out), "--track",
           "--results-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Chaos verdict" in proc.stdout and "Runtime processes" in proc.stdout
    doc = json.loads(out.read_text())
    (run,) = doc["chaos"]
    assert doc["passed"] and run["passed"] and run["chaos"] == ["kill:every=1.5s"]
    assert run["verdict"]["lost"] == 0 and run["verdict"]["stuck"] == 0
    states = {p["state"] for p in run["process_table"]}
    assert "killed" in states and {p["slot"] for p in run["process_table"]} == {0, 1}
    assert all(p["turns"] >= 0 and p["activities"] >= 0 for p in run["process_table"])
    tracked = (tmp_path / "chaos-test-results-sqlite.md").read_text()
    assert "`kill:every=1.5s`" in tracked and "| PASS |" in tracked


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--chaos", "kill:every=1s"], "needs --processes"),
        (["--processes", "2", "--chaos", "restart-db:every=5s"], "PostgreSQL only"),
        (["--processes", "2", "--provider", "sqlite-memory"], "share"),
        (["--processes", "2", "--chaos", "kill:often"], "key=value"),
        (["--processes", "2", "--provider", "postgres", "--database-url", "postgresql://u@127.0.0.1:9/db",
          "--chaos", "restart-db:every=5s", "--chaos-own-database"], "--chaos-restart-command"),
    ],
)
def test_cli_chaos_refuses_what_it_cannot_do(anyio_backend, args, message):
    from typer.testing import CliRunner

    from duroxide_trio.cli import app

    result = CliRunner().invoke(app, ["stress", "--no-dashboard", "--duration", "1", *args])
    assert result.exit_code != 0
    assert message in result.output, result.output


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_fail_fast_stops_at_a_runtime_process_that_dies_on_its_own_and_reports_the_timeline(
    anyio_backend, tmp_path
):
    import signal

    from duroxide_trio.stress import StressAborted
    from duroxide_trio.stress import _report as stress_report
    from duroxide_trio.stress._chaos_report import chaos_appendix

    sent: list[int] = []

    def on_progress(monitor) -> None:
        pool = monitor.pool
        if not sent and monitor.elapsed > 2.5 and pool.running():
            victim = pool.running()[0]
            sent.append(victim.pid)
            os.kill(victim.pid, signal.SIGTERM)  # not the harness's doing: an unexpected exit

    config = StressConfig(duration=20, max_concurrent=4, tasks_per_instance=2)
    with pytest.raises(StressAborted) as caught:
        await run_chaos(ChaosTarget.sqlite(str(tmp_path / "ff.db")), config, processes=2,
                        # one harness kill at 1 s (for the timeline), the next only at ~6 s: the harness must not
                        # happen to kill the process the test stopped, or the exit would count as its own
                        chaos=[parse_chaos("kill:every=5s,first=1s")], fail_fast=True, on_progress=on_progress)  # fmt: skip
    exc = caught.value
    assert "exited unexpectedly" in str(exc.error)
    crash = stress_report.write_crash_report(
        tmp_path, error=exc.error, traceback_text=exc.traceback, provider="sqlite", database_url=None,
        config=config, errors=exc.errors, result=exc.result,
    )  # fmt: skip
    with crash.open("a") as f:
        f.write(chaos_appendix(exc.chaos))
    text = crash.read_text()
    assert "Chaos timeline" in text and "SIGKILL process" in text and f"pid {sent[0]}" in text
    assert exc.result.load_duration_s < 15  # it stopped early


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_chaos_runs_against_a_provider_of_your_own_through_a_factory_path(anyio_backend, tmp_path):
    target = ChaosTarget.custom("duroxide_trio.providers.sqlite:SqliteProvider.open", {"path": str(tmp_path / "own.db")})
    config = StressConfig(duration=5, max_concurrent=6, tasks_per_instance=2)
    cr = await run_chaos(target, config, processes=2, chaos=[parse_chaos("kill:every=1.5s")], seed=3)
    assert cr.passed, cr.verdict.reasons
    assert cr.verdict.activity_executions >= cr.verdict.logical_activities >= 2 * cr.verdict.launched > 0


# ---------------------------------------------------------------------------------------------------------
# hardening found by the chaos runs: commits keep retrying through a database restart


class _Outage:
    """Forwards to ``inner``; the named operations fail transiently for ``seconds`` from their first call
    (what a database restart looks like to a runtime)."""

    def __init__(self, inner, ops: set[str], seconds: float) -> None:
        self._inner, self._ops, self._seconds = inner, ops, seconds
        self._began: float | None = None
        self.failed = 0

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name not in self._ops:
            return attr

        async def call(*args, **kwargs):
            import time

            now = time.monotonic()
            if self._began is None:
                self._began = now
            if now - self._began < self._seconds:
                self.failed += 1
                raise dt.ProviderError.transient(name, "server closed the connection unexpectedly (outage)")
            return await attr(*args, **kwargs)

        return call


@pytest.mark.parametrize("op", ["ack_work_items", "ack_orchestration_item"])
async def test_commits_retry_through_a_two_second_outage_instead_of_waiting_for_the_lock(op, tmp_path):
    import time

    registry = dt.Registry()

    @registry.activity("Double")
    async def double(ctx: dt.ActivityContext, x: int) -> int:
        return 2 * x

    @registry.orchestration("Twice")
    async def twice(ctx: dt.OrchestrationContext, x: int) -> int:
        return await ctx.schedule_activity("Double", x)

    inner = await dt.SqliteProvider.open(tmp_path / "outage.db")
    # The activity ack may be the one that also hands over the next turn: the outage hits both.
    ops = {op, "ack_work_items_and_fetch"} if op == "ack_work_items" else {op}
    provider = _Outage(inner, ops, seconds=2.0)
    options = dt.RuntimeOptions(worker_lock_timeout=60.0, orchestrator_lock_timeout=60.0, poll_interval=0.05)
    async with inner, dt.open_runtime(provider, registry, options) as rt:  # type: ignore[arg-type]
        started = time.monotonic()
        await rt.client.start_orchestration("outage-1", "Twice", 21)
        state = await rt.client.wait_for_orchestration("outage-1", timeout=30)
        took = time.monotonic() - started
    assert state.status is dt.Status.COMPLETED and state.output == 42
    assert provider.failed >= 3
    assert took < 10, f"{op}: took {took:.1f}s (gave up retrying and waited for the lock)"


@pytest.mark.postgres
async def test_advisory_lock_keys_are_scoped_to_the_schema(pg_url):
    """A claim in progress in one schema never blocks the same instance id in another schema."""
    import pg_support

    from duroxide_trio.history import StartOrchestration
    from duroxide_trio.providers.postgres import PostgresProvider
    from duroxide_trio.providers.postgres._queries import hash64

    schemas = [pg_support.new_schema_name(), pg_support.new_schema_name()]
    providers = [await PostgresProvider.connect(pg_url, schema=s, pool_max=2) for s in schemas]
    try:
        for p in providers:
            await p.enqueue_start(StartOrchestration("same-id", "Orch"))
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as side:  # "another fetcher" claiming in schema 0
            key = side.execute("SELECT hashtextextended('same-id', %s)",
                               (hash64(f"duroxide_trio:locks:{schemas[0]}"),)).fetchone()[0]  # fmt: skip
            side.execute("SELECT pg_advisory_lock(%s)", (key,))
            assert await providers[0].fetch_orchestration_item(5.0) is None  # skipped, not waited for
            item = await providers[1].fetch_orchestration_item(5.0)
            assert item is not None and item.instance_id == "same-id"
            side.execute("SELECT pg_advisory_unlock(%s)", (key,))
        again = await providers[0].fetch_orchestration_item(5.0)
        assert again is not None and again.instance_id == "same-id"
    finally:
        for p, s in zip(providers, schemas, strict=True):
            await p.close()
            pg_support.drop_schema(pg_url, s)
