"""Real processes: a runtime killed with SIGKILL mid-orchestration, and several runtimes on one database."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys

import anyio
import anyio.to_thread
import pytest
from proc_runtime import OPTIONS, build_registry

import duroxide_trio as dt

pytestmark = pytest.mark.anyio

HERE = os.path.dirname(__file__)


def _target(make_provider_kind: str, tmp_path, request) -> list[str]:
    if make_provider_kind == "sqlite":
        return ["sqlite", str(tmp_path / "state.db")]
    return ["postgres", request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")]


def _spawn(target: list[str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "proc_runtime.py"), *target, *extra],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": HERE},
    )


async def _read_line(proc: subprocess.Popen[str], expect: str) -> str:
    line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
    assert line.startswith(expect), f"child printed {line!r}, expected {expect!r}"
    return line


@pytest.fixture(params=["sqlite", "postgres"])
def target_kind(request):
    return request.param


async def test_sigkill_mid_orchestration_then_another_runtime_finishes(target_kind, tmp_path, request):
    target = _target(target_kind, tmp_path, request)
    proc = _spawn(target, "--crash")
    try:
        await _read_line(proc, "ready")
        provider = await _open(target)
        async with provider:
            client = dt.Client(provider)
            await client.start_orchestration("crash-1", "Pipeline", 1)
            await _read_line(proc, "in-activity crash-1")
            os.kill(proc.pid, signal.SIGKILL)
            await anyio.to_thread.run_sync(proc.wait)
            # A fresh runtime on the same database: the dead process's lock expires and the work is redone.
            async with dt.open_runtime(provider, build_registry(None, False), OPTIONS) as rt:
                state = await rt.client.wait_for_orchestration("crash-1", timeout=30)
        assert state.status is dt.Status.COMPLETED
        assert state.output == 10 + 20 + 30 + 40
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_runtime_killed_after_an_eager_ack_leaves_its_activities_to_another(target_kind, tmp_path, request):
    """A runtime dies right after a turn's commit locked activities for it (eager dispatch): they are
    neither lost nor run twice; another runtime takes them once their locks are released (the dead
    process's lease) or expire, and the orchestration completes."""
    target = _target(target_kind, tmp_path, request)
    log = tmp_path / "activities.log"
    proc = _spawn(target, "--die-after-eager", "--log", str(log))
    try:
        await _read_line(proc, "ready")
        provider = await _open(target)
        async with provider:
            client = dt.Client(provider)
            await client.start_orchestration("eager-crash", "Pipeline", 1)
            line = await _read_line(proc, "eager ")
            assert int(line.split()[1]) >= 1  # a turn's commit locked activities for the doomed runtime
            await anyio.to_thread.run_sync(proc.wait)
            assert proc.returncode == 9
            async with dt.open_runtime(provider, build_registry(str(log), False), OPTIONS) as rt:
                state = await rt.client.wait_for_orchestration("eager-crash", timeout=30)
        assert state.status is dt.Status.COMPLETED
        assert state.output == 10 + 20 + 30 + 40
        runs = collections.Counter(" ".join(line.split()[:2]) for line in log.read_text().splitlines())
        assert len(runs) == 4 and max(runs.values()) == 1, runs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_three_processes_share_one_database_without_double_processing(target_kind, tmp_path, request):
    target = _target(target_kind, tmp_path, request)
    log = tmp_path / "activities.log"
    procs = [_spawn(target, "--log", str(log)) for _ in range(3)]
    try:
        for p in procs:
            await _read_line(p, "ready")
        provider = await _open(target)
        n = 300 if target_kind == "postgres" else 60  # PostgreSQL wakes processes by NOTIFY; SQLite polls
        async with provider:  # this process is only a client: the three runtimes share the work
            client = dt.Client(provider)
            for i in range(n):
                await client.start_orchestration(f"multi-{i}", "Pipeline", i)
            states = [
                await client.wait_for_orchestration(f"multi-{i}", timeout=120, poll_interval=0.1) for i in range(n)
            ]
        for i, s in enumerate(states):
            assert s.status is dt.Status.COMPLETED, s
            assert s.output == 10 * (4 * i + 6)
        lines = log.read_text().splitlines()
        runs = collections.Counter(" ".join(line.split()[:2]) for line in lines)
        assert len(runs) == 4 * n
        assert max(runs.values()) == 1, [k for k, v in runs.items() if v > 1]
        pids = {line.split()[2] for line in lines}
        assert len(pids) >= 2  # the work really was shared between processes
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def _open(target: list[str]):
    if target[0] == "sqlite":
        return await dt.SqliteProvider.open(target[1])
    from duroxide_trio.providers.postgres import PostgresProvider

    return await PostgresProvider.connect(target[1], schema=target[2], pool_max=4)
