"""Activity tags and sessions end to end: several real runtimes on one database (SQLite file and
PostgreSQL), both anyio backends, and a session owner killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import anyio
import anyio.to_thread
import pytest
from routing_support import OPTIONS, session_registry

import duroxide_trio as dt

pytestmark = pytest.mark.anyio

HERE = os.path.dirname(__file__)


# --- options and filters -----------------------------------------------------------------------------------


def test_tag_filter_accepts() -> None:
    cases = {
        dt.TagFilter.default_only(): {None: True, "gpu": False, "io": False},
        dt.TagFilter.tags("gpu"): {None: False, "gpu": True, "io": False},
        dt.TagFilter.default_and("gpu"): {None: True, "gpu": True, "io": False},
        dt.TagFilter.any(): {None: True, "gpu": True, "io": True},
    }
    for tag_filter, expected in cases.items():
        assert {tag: tag_filter.accepts(tag) for tag in expected} == expected, repr(tag_filter)
    assert dt.TagFilter.tags({"a", "b"}) == dt.TagFilter.tags("b", "a")
    assert repr(dt.TagFilter.tags("gpu")) == "TagFilter.tags('gpu')"
    assert dt.RuntimeOptions().activity_tags == dt.TagFilter.default_only()


@pytest.mark.parametrize("bad", ["", " \n", "x" * 257, 5, None])
def test_tag_filter_rejects_bad_tags(bad: object) -> None:
    with pytest.raises(ValueError, match="activity tag must be"):
        dt.TagFilter.tags(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activity tag must be"):
        dt.TagFilter.default_and("ok", bad)  # type: ignore[arg-type]


def test_tag_filter_tags_needs_a_tag() -> None:
    with pytest.raises(ValueError, match="at least one tag"):
        dt.TagFilter.tags()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("activity_tags", "gpu", "must be a TagFilter"),
        ("activity_tags", {"gpu"}, "must be a TagFilter"),
        ("max_sessions", 0, "max_sessions must be an integer"),
        ("max_sessions", 1.5, "max_sessions must be an integer"),
        ("session_idle_timeout", 0, "session_idle_timeout must be a number"),
        ("session_idle_timeout", -1.0, "session_idle_timeout must be a number"),
    ],
)
def test_runtime_options_validate_routing(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dt.RuntimeOptions(**{field: value})  # type: ignore[arg-type]


# --- tags --------------------------------------------------------------------------------------------------


def tag_registry(label: str, log: list[tuple[str, str, str | None]]) -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Work")
    async def work(ctx: dt.ActivityContext, name: str) -> str:
        log.append((label, name, ctx.tag))
        return f"{name}@{label}"

    @reg.orchestration("Mixed")
    async def mixed(ctx: dt.OrchestrationContext, n: int) -> list[str]:
        futures = []
        for i in range(n):
            futures.append(ctx.schedule_activity("Work", f"plain-{i}"))
            futures.append(ctx.schedule_activity("Work", f"gpu-{i}", tag="gpu"))
        return list(await ctx.join(futures))

    @reg.orchestration("OnlyIo")
    async def only_io(ctx: dt.OrchestrationContext) -> str:
        return str(await ctx.schedule_activity("Work", "io-0", tag="io"))

    return reg


async def test_two_runtimes_split_work_by_tag(make_provider) -> None:
    """A default runtime and a gpu-only runtime on one database: each activity runs where its tag is
    accepted, never elsewhere."""
    log: list[tuple[str, str, str | None]] = []
    plain_p = await make_provider()
    gpu_p = await make_provider()
    gpu_options = dt.RuntimeOptions(
        **{**_fields(OPTIONS), "activity_tags": dt.TagFilter.tags("gpu")}
    )
    async with plain_p, gpu_p:
        async with dt.open_runtime(plain_p, tag_registry("plain", log), OPTIONS) as plain, dt.open_runtime(
            gpu_p, tag_registry("gpu", log), gpu_options
        ):
            await plain.client.start_orchestration("mixed-1", "Mixed", 5)
            state = await plain.client.wait_for_orchestration("mixed-1", timeout=30)
    assert state.status is dt.Status.COMPLETED, state
    assert sorted(state.output) == sorted([f"plain-{i}@plain" for i in range(5)] + [f"gpu-{i}@gpu" for i in range(5)])
    assert sorted(log) == sorted([("plain", f"plain-{i}", None) for i in range(5)] + [("gpu", f"gpu-{i}", "gpu") for i in range(5)])


async def test_unaccepted_tag_waits_until_a_runtime_accepts_it(make_provider) -> None:
    """An io activity with only default runtimes around waits (visible per tag in the queue depths),
    then runs as soon as an io runtime starts."""
    log: list[tuple[str, str, str | None]] = []
    provider = await make_provider()
    async with provider:
        client = dt.Client(provider)
        async with dt.open_runtime(provider, tag_registry("plain", log), OPTIONS):
            await client.start_orchestration("io-1", "OnlyIo")
            with anyio.fail_after(10):
                while (await client.get_queue_depths()).worker_by_tag.get("io") != 1:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # a few fetch rounds of the default runtime
            assert log == []
            assert (await client.get_queue_depths()).worker_by_tag == {"io": 1}
            status = await client.get_status("io-1")
            assert status.status is dt.Status.RUNNING
        io_options = dt.RuntimeOptions(**{**_fields(OPTIONS), "activity_tags": dt.TagFilter.default_and("io")})
        async with dt.open_runtime(provider, tag_registry("io", log), io_options):
            state = await client.wait_for_orchestration("io-1", timeout=15)
    assert state.status is dt.Status.COMPLETED and state.output == "io-0@io"
    assert log == [("io", "io-0", "io")]


# --- sessions ----------------------------------------------------------------------------------------------


async def test_session_runs_on_one_runtime_one_at_a_time_in_order(make_provider) -> None:
    """Six activities of one session scheduled at once, two runtimes: all run on one runtime, never two
    at a time, in scheduling order, and see their ``session_id``."""
    log: list[tuple[str, int, str | None]] = []
    running = [0, 0]
    a_p = await make_provider()
    b_p = await make_provider()
    async with a_p, b_p:
        async with dt.open_runtime(a_p, session_registry("a", log, running=running), OPTIONS) as a, dt.open_runtime(
            b_p, session_registry("b", log, running=running), OPTIONS
        ):
            await a.client.start_orchestration("sess-1", "InSession", 6)
            state = await a.client.wait_for_orchestration("sess-1", timeout=30)
    assert state.status is dt.Status.COMPLETED and state.output == list(range(6))
    assert [n for _, n, _ in log] == list(range(6))
    assert len({label for label, _, _ in log}) == 1, log
    assert {s for _, _, s in log} == {"s"}
    assert running[1] == 1


async def test_session_released_on_shutdown_moves_at_once(make_provider) -> None:
    """A runtime leaving its block releases its sessions: another runtime takes the session's next
    item without waiting for a lock to expire (the worker lock here is 30 s)."""
    options = dt.RuntimeOptions(**{**_fields(OPTIONS), "worker_lock_timeout": 30.0})
    log: list[tuple[str, int, str | None]] = []
    provider = await make_provider()
    async with provider:
        client = dt.Client(provider)
        async with dt.open_runtime(provider, session_registry("first", log), options):
            await client.start_orchestration("sess-2", "InSession", 2)
            with anyio.fail_after(10):
                while not log:
                    await anyio.sleep(0.02)
        with anyio.fail_after(10):  # far below the 30 s a lock would need to expire
            async with dt.open_runtime(provider, session_registry("second", log), options):
                state = await client.wait_for_orchestration("sess-2", timeout=10)
    assert state.status is dt.Status.COMPLETED
    assert [n for _, n, _ in log] == [0, 1]


def _fields(options: dt.RuntimeOptions) -> dict[str, object]:
    import attrs

    return attrs.asdict(options, recurse=False)


# --- a session owner killed --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def target_kind(request):
    return request.param


def _target(kind: str, tmp_path, request) -> list[str]:
    if kind == "sqlite":
        return ["sqlite", str(tmp_path / "state.db")]
    return ["postgres", request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")]


async def _open(target: list[str]):
    if target[0] == "sqlite":
        return await dt.SqliteProvider.open(target[1])
    from duroxide_trio.providers.postgres import PostgresProvider

    return await PostgresProvider.connect(target[1], schema=target[2], pool_max=4)


async def test_session_moves_after_its_owner_is_killed(target_kind, tmp_path, request) -> None:
    """The owner of a session is SIGKILLed inside the session's first item: after its session lock
    expires a second runtime takes the session over and runs every item, in order."""
    target = _target(target_kind, tmp_path, request)
    provider = await _open(target)  # migrate before the child starts
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "proc_session.py"), *target],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": HERE},
    )
    log: list[tuple[str, int, str | None]] = []
    try:
        async with provider:
            line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
            assert line.startswith("ready"), line
            client = dt.Client(provider)
            await client.start_orchestration("sess-3", "InSession", 3)
            line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
            assert line.startswith("in-session 0"), line
            # A second runtime is already running while the owner lives: it must not touch the session.
            async with dt.open_runtime(provider, session_registry("survivor", log), OPTIONS) as rt:
                await anyio.sleep(0.5)
                assert log == []
                os.kill(proc.pid, signal.SIGKILL)
                await anyio.to_thread.run_sync(proc.wait)
                state = await rt.client.wait_for_orchestration("sess-3", timeout=30)
        assert state.status is dt.Status.COMPLETED and state.output == [0, 1, 2]
        assert log == [("survivor", 0, "s"), ("survivor", 1, "s"), ("survivor", 2, "s")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
