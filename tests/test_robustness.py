"""Regression tests for the robustness findings: nothing a user sends, and nothing that fails, may stop the
runtime or strand an instance. Each test runs a healthy instance beside the bad one where that matters."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import anyio
import attrs
import pytest
from helpers import FAST, running

import duroxide_trio as dt

pytestmark = pytest.mark.anyio


@attrs.define
class Order:
    sku: str
    qty: int


def base_registry() -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Echo")
    async def echo(ctx: dt.ActivityContext, x: object) -> object:
        return x

    @reg.orchestration("Healthy")
    async def healthy(ctx: dt.OrchestrationContext, x: int) -> int:
        return int(await ctx.schedule_activity("Echo", x)) + 1

    return reg


async def assert_healthy(client: dt.Client, instance_id: str = "healthy") -> None:
    await client.start_orchestration(instance_id, "Healthy", 41)
    state = await client.wait_for_orchestration(instance_id, timeout=20)
    assert state.status is dt.Status.COMPLETED and state.output == 42


async def test_bad_input_fails_that_instance_only(make_provider):
    reg = base_registry()

    @reg.orchestration("Typed")
    async def typed(ctx: dt.OrchestrationContext, order: Order) -> int:
        return order.qty

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("bad", "Typed", {"wrong": 1})
        await assert_healthy(client)
        state = await client.wait_for_orchestration("bad", timeout=20)
        assert state.status is dt.Status.FAILED
        assert state.error.kind == "BadInput" and state.error.category == "application"
        assert "missing field 'sku'" in state.error.message and "Order" in state.error.message


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_base_exceptions_of_orchestration_code_fail_the_instance(make_provider, exc):
    reg = base_registry()

    @reg.orchestration("Raises")
    async def raises(ctx: dt.OrchestrationContext) -> None:
        await ctx.schedule_activity("Echo", 1)
        raise exc("from user code")

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("raiser", "Raises")
        state = await client.wait_for_orchestration("raiser", timeout=20)
        assert state.status is dt.Status.FAILED
        assert exc.__name__ in state.error.message
        await assert_healthy(client)


async def test_base_exception_of_activity_code_is_an_activity_failure(make_provider):
    reg = base_registry()

    @reg.activity("Exits")
    def exits(ctx: dt.ActivityContext) -> None:
        raise SystemExit(3)

    @reg.orchestration("CallsExit")
    async def calls(ctx: dt.OrchestrationContext) -> str:
        try:
            await ctx.schedule_activity("Exits")
        except dt.ActivityFailed as e:
            return e.details.message
        return "no error"

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("x", "CallsExit")
        state = await client.wait_for_orchestration("x", timeout=20)
        assert state.status is dt.Status.COMPLETED and state.output.startswith("SystemExit")
        await assert_healthy(client)


async def test_sync_activity_that_never_returns_does_not_hold_shutdown(make_provider):
    """Shutdown takes the grace period, not the activity's lifetime; the item is given back at once, so a
    fresh runtime finishes it long before its 60 s lock would expire."""
    release = threading.Event()
    started = threading.Event()
    reg = base_registry()

    @reg.activity("Forever")
    def forever(ctx: dt.ActivityContext) -> str:
        started.set()
        release.wait(120)
        return "late"

    @reg.orchestration("WaitsForever")
    async def waits(ctx: dt.OrchestrationContext) -> str:
        return str(await ctx.schedule_activity("Forever"))

    options = attrs.evolve(FAST, worker_lock_timeout=60.0, shutdown_grace=0.5)
    try:
        with anyio.fail_after(20):
            async with running(make_provider, reg, options) as (_, client):
                await client.start_orchestration("w", "WaitsForever")
                await anyio.to_thread.run_sync(started.wait, 10)
        fast = dt.Registry()

        @fast.activity("Forever")
        async def quick(ctx: dt.ActivityContext) -> str:
            return "done"

        fast.merge(reg_without(reg, "Forever"))
        with anyio.fail_after(20):  # far below the 60 s lock: the item was given back
            async with running(make_provider, fast, options) as (_, client):
                state = await client.wait_for_orchestration("w", timeout=15)
        assert state.status is dt.Status.COMPLETED and state.output == "done"
    finally:
        release.set()


def reg_without(reg: dt.Registry, activity: str) -> dt.Registry:
    out = dt.Registry()
    for name in reg.activity_names:
        if name != activity:
            h = reg.get_activity(name)
            assert h is not None
            out.add_activity(h.fn, name)
    for name in reg.orchestration_names:
        for version in reg.versions(name):
            h2 = reg.resolve_orchestration(name, version)
            assert h2 is not None
            out.add_orchestration(h2.fn, name, version=version)
    return out


async def test_watchdog_names_a_turn_that_blocks_the_loop(make_provider, caplog):
    reg = base_registry()

    @reg.orchestration("Spins")
    async def spins(ctx: dt.OrchestrationContext) -> str:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:  # never yields: cannot be pre-empted, must be named
            pass
        return "spun"

    options = attrs.evolve(FAST, blocked_loop_threshold=0.3)
    caplog.set_level(logging.WARNING, logger="duroxide_trio.runtime.watchdog")
    async with running(make_provider, reg, options) as (_, client):
        await client.start_orchestration("spinner", "Spins")
        state = await client.wait_for_orchestration("spinner", timeout=20)
        assert state.status is dt.Status.COMPLETED
        await assert_healthy(client)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "event loop blocked" in text and "'spinner'" in text and "'Spins'" in text, text


async def test_watchdog_explains_an_async_activity_that_blocks_the_loop(make_provider, caplog):
    reg = base_registry()

    @reg.activity("Blocks")
    async def blocks(ctx: dt.ActivityContext) -> str:
        time.sleep(1.2)  # blocking call in an async activity
        return "ok"

    @reg.orchestration("UsesBlocking")
    async def uses(ctx: dt.OrchestrationContext) -> str:
        return str(await ctx.schedule_activity("Blocks"))

    options = attrs.evolve(FAST, blocked_loop_threshold=0.3)
    caplog.set_level(logging.WARNING, logger="duroxide_trio.runtime.watchdog")
    async with running(make_provider, reg, options) as (_, client):
        await client.start_orchestration("b", "UsesBlocking")
        state = await client.wait_for_orchestration("b", timeout=20)
        assert state.status is dt.Status.COMPLETED
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "activity 'Blocks'" in text and "'b'" in text, text


async def test_reserved_sub_marker_and_refused_child_start(make_provider):
    reg = base_registry()

    @reg.orchestration("Child")
    async def child(ctx: dt.OrchestrationContext) -> str:
        return "child"

    @reg.orchestration("Parent")
    async def parent(ctx: dt.OrchestrationContext) -> str:
        try:
            return str(await ctx.schedule_sub_orchestration("Child", instance_id="taken"))
        except dt.SubOrchestrationFailed as e:
            return f"{e.details.kind}: {e.details.message}"

    async with running(make_provider, reg) as (_, client):
        with pytest.raises(ValueError, match="::sub::"):
            await client.start_orchestration("P::sub::2", "Child")
        await client.start_orchestration("taken", "Child")
        assert (await client.wait_for_orchestration("taken", timeout=20)).output == "child"
        await client.start_orchestration("P", "Parent")
        state = await client.wait_for_orchestration("P", timeout=20)
        assert state.status is dt.Status.COMPLETED
        assert state.output.startswith("InstanceAlreadyExists") and "'taken'" in state.output
        # the instance that had the id is untouched
        assert [type(e.kind).__name__ for e in await client.get_history("taken")] == [
            "OrchestrationStarted", "OrchestrationCompleted"]


async def test_events_and_cancel_for_an_unknown_instance_are_refused(make_provider):
    reg = base_registry()

    @reg.orchestration("Waits")
    async def waits(ctx: dt.OrchestrationContext) -> object:
        return await ctx.wait_for_event("go")

    async with running(make_provider, reg) as (_, client):
        for call in (
            client.raise_event("nobody", "go", 1),
            client.enqueue_event("nobody", "q", 1),
            client.cancel_instance("nobody"),
        ):
            with pytest.raises(dt.InstanceNotFound, match="'nobody'"):
                await call
        # a pending start counts: an event raised right after the start is kept
        await client.start_orchestration("later", "Waits")
        await client.raise_event("later", "go", "yes")
        assert (await client.wait_for_orchestration("later", timeout=20)).output == "yes"


async def test_cancel_queued_before_the_first_turn_wins(make_provider):
    reg = base_registry()

    @reg.orchestration("Instant")
    async def instant(ctx: dt.OrchestrationContext) -> str:
        return "finished"

    provider = await make_provider()
    async with provider:
        client = dt.Client(provider, registry=reg)
        await client.start_orchestration("c", "Instant")
        await client.cancel_instance("c", "changed my mind")
        async with dt.open_runtime(provider, reg, FAST):
            state = await client.wait_for_orchestration("c", timeout=20)
    assert state.status is dt.Status.FAILED and state.error.kind == "Cancelled"
    assert "changed my mind" in state.error.message


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("max_attempts", 0, "max_attempts must be an integer from 1"),
        ("orchestration_concurrency", 0, "orchestration_concurrency must be an integer from 1"),
        ("activity_slots", -1, "activity_slots"),
        ("worker_lock_timeout", 0, "worker_lock_timeout must be a number of seconds > 0"),
        ("poll_interval", float("nan"), "poll_interval"),
        ("shutdown_grace", 10**9, "a year"),
        ("max_attempts", True, "max_attempts"),
    ],
)
def test_options_are_validated(field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        dt.RuntimeOptions(**{field: value})


async def test_limits_fail_the_instance_and_write_nothing_oversized(make_provider):
    reg = base_registry()
    big = "x" * (dt.MAX_PAYLOAD_BYTES + 10)

    @reg.activity("Big")
    async def big_result(ctx: dt.ActivityContext) -> str:
        return big

    @reg.orchestration("BigResult")
    async def big_res(ctx: dt.OrchestrationContext) -> str:
        return str(await ctx.schedule_activity("Big"))

    @reg.orchestration("BigStatus")
    async def big_status(ctx: dt.OrchestrationContext) -> None:
        ctx.set_custom_status("s" * (dt.MAX_CUSTOM_STATUS_BYTES + 1))

    @reg.orchestration("Grows")
    async def grows(ctx: dt.OrchestrationContext) -> None:
        chunk = "y" * (1024 * 1024)
        for _ in range(10):
            await ctx.schedule_activity("Echo", chunk)

    async with running(make_provider, reg) as (_, client):
        for iid, name in (("r", "BigResult"), ("s", "BigStatus"), ("g", "Grows")):
            await client.start_orchestration(iid, name)
        for iid in ("r", "s", "g"):
            state = await client.wait_for_orchestration(iid, timeout=30)
            assert state.status is dt.Status.FAILED, iid
            assert (state.error.category, state.error.kind) == ("configuration", "LimitExceeded"), state.error
            assert "limit" in state.error.message and "bytes" in state.error.message
            history = await client.get_history(iid)
            sizes = [len(str(ev.kind)) for ev in history]
            assert max(sizes) < dt.MAX_PAYLOAD_BYTES + 10, iid
            assert [ev.event_id for ev in history] == list(range(1, len(history) + 1))
        g = await client.get_history("g")
        assert sum(len(str(ev.kind)) for ev in g) < dt.MAX_HISTORY_BYTES
        with pytest.raises(dt.LimitExceeded, match="3 MiB"):
            await client.start_orchestration("toolarge", "Healthy", big)
        with pytest.raises(ValueError, match="64 KiB"):
            await client.start_orchestration("i" * (dt.MAX_NAME_BYTES + 1), "Healthy", 1)
        await assert_healthy(client)


async def test_timer_beyond_the_horizon_fails_at_once(make_provider):
    reg = base_registry()

    @reg.orchestration("FarTimer")
    async def far(ctx: dt.OrchestrationContext) -> None:
        await ctx.schedule_timer(1e17)

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("t", "FarTimer")
        state = await client.wait_for_orchestration("t", timeout=10)
        assert state.status is dt.Status.FAILED
        assert "between 0 and" in state.error.message and "1e+17" in state.error.message
        await assert_healthy(client)


async def test_deeply_nested_input_is_a_payload_error(make_provider):
    reg = base_registry()
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    async with running(make_provider, reg) as (_, client):
        with pytest.raises(dt.PayloadError, match="nested too deeply"):
            await client.start_orchestration("deep", "Healthy", deep)
        await assert_healthy(client)


async def test_unreadable_history_fails_with_dense_ids(tmp_path, anyio_backend):
    path = tmp_path / "state.db"
    reg = base_registry()

    @reg.orchestration("Waits")
    async def waits(ctx: dt.OrchestrationContext) -> object:
        return await ctx.wait_for_event("go")

    provider = await dt.SqliteProvider.open(path)
    async with provider, dt.open_runtime(provider, reg, FAST) as runtime:
        client = runtime.client
        await client.start_orchestration("w", "Waits")
        while len(await client.get_history("w")) < 2:
            await anyio.sleep(0.05)
    con = sqlite3.connect(path)
    con.execute("UPDATE history SET event_data = '{broken' WHERE instance_id = 'w' AND event_id = 2")
    con.commit()
    con.close()
    provider = await dt.SqliteProvider.open(path)
    async with provider, dt.open_runtime(provider, reg, FAST) as runtime:
        client = runtime.client
        await client.raise_event("w", "go", 1)
        state = await client.wait_for_orchestration("w", timeout=30)
        assert state.status is dt.Status.FAILED and state.error.kind == "UnreadableHistory"
        assert "cannot read" in state.error.message
        await assert_healthy(client)
    con = sqlite3.connect(path)
    ids = [r[0] for r in con.execute("SELECT event_id FROM history WHERE instance_id = 'w' ORDER BY event_id")]
    con.close()
    assert ids == list(range(1, len(ids) + 1)) and max(ids) < 10


async def test_activity_attempt_is_the_retry_attempt(make_provider):
    seen: list[tuple[int, int]] = []
    reg = base_registry()

    @reg.activity("Flaky")
    async def flaky(ctx: dt.ActivityContext) -> int:
        seen.append((ctx.attempt, ctx.delivery_count))
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt}")
        return ctx.attempt

    @reg.orchestration("Retries")
    async def retries(ctx: dt.OrchestrationContext) -> int:
        policy = dt.RetryPolicy(max_attempts=3, backoff=dt.Backoff.fixed(0.01))
        return int(await ctx.schedule_activity("Flaky", retry=policy))

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("r", "Retries")
        state = await client.wait_for_orchestration("r", timeout=20)
    assert state.output == 3
    assert seen == [(1, 1), (2, 1), (3, 1)]


async def test_a_raising_error_listener_does_not_stop_the_runtime(make_provider):
    reg = base_registry()
    provider = await make_provider()
    async with provider, dt.open_runtime(provider, reg, FAST) as runtime:

        def broken(err: object, exc: object) -> None:
            raise RuntimeError("listener bug")

        runtime.stats.error_listeners.append(broken)
        await dt.Client(provider).start_orchestration("u", "NotRegistered")  # makes the runtime record errors
        await assert_healthy(runtime.client)


async def test_waits_that_time_out_leave_nothing_behind(make_provider):
    reg = base_registry()

    @reg.orchestration("Waits")
    async def waits(ctx: dt.OrchestrationContext) -> object:
        return await ctx.wait_for_event("never")

    async with running(make_provider, reg) as (provider, client):
        await client.start_orchestration("w", "Waits")
        for _ in range(50):
            with pytest.raises(TimeoutError, match=r"within \d+ ms"):
                await client.wait_for_orchestration("w", timeout=0.01)
        assert not [k for k in provider.notifier._events if k.startswith("instance:")]


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_an_activity_that_lost_its_lock_by_blocking_the_loop_says_so(tmp_path, anyio_backend):
    reg = base_registry()

    @reg.activity("Blocks")
    async def blocks(ctx: dt.ActivityContext) -> str:
        time.sleep(2.5)  # longer than the 1 s lock: the renewal cannot run
        return "ok"

    @reg.orchestration("UsesBlocking")
    async def uses(ctx: dt.OrchestrationContext) -> str:
        return str(await ctx.schedule_activity("Blocks"))

    options = attrs.evolve(FAST, worker_lock_timeout=1.0, max_attempts=2, blocked_loop_threshold=0.5)
    provider = await dt.SqliteProvider.open(tmp_path / "s.db")
    async with provider, dt.open_runtime(provider, reg, options) as runtime:
        await runtime.client.start_orchestration("b", "UsesBlocking")
        state = await runtime.client.wait_for_orchestration("b", timeout=40)
    assert state.status is dt.Status.FAILED and state.error.category == "poison"
    assert "blocked the event loop" in state.error.message and "plain def activity" in state.error.message


async def test_asyncio_only_library_in_an_activity_under_trio(tmp_path, anyio_backend):
    """``loop="asyncio"``: asyncio.open_connection to a local server works inside a Trio runtime."""
    import asyncio
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    thread = threading.Thread(target=serve)
    thread.start()
    reg = base_registry()

    @reg.activity("AsyncioCall", loop="asyncio")
    async def asyncio_call(ctx: dt.ActivityContext, text: str) -> str:
        asyncio.get_running_loop()  # fails with "no running event loop" when run on Trio directly
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(text.encode())
        await writer.drain()
        reply = await reader.read(100)
        writer.close()
        await writer.wait_closed()
        return reply.decode()

    @reg.orchestration("UsesAsyncio")
    async def uses(ctx: dt.OrchestrationContext) -> str:
        return str(await ctx.schedule_activity("AsyncioCall", "hello"))

    provider = await dt.SqliteProvider.open(tmp_path / "a.db")
    try:
        async with provider, dt.open_runtime(provider, reg, FAST) as runtime:
            await runtime.client.start_orchestration("a", "UsesAsyncio")
            state = await runtime.client.wait_for_orchestration("a", timeout=20)
    finally:
        thread.join(10)
        server.close()
    assert state.status is dt.Status.COMPLETED and state.output == "HELLO", state.error


def test_loop_option_is_checked():
    reg = dt.Registry()
    with pytest.raises(ValueError, match="loop must be None or 'asyncio'"):
        reg.add_activity(lambda ctx: None, "X", loop="uvloop")
    with pytest.raises(TypeError, match="async def"):
        reg.add_activity(lambda ctx: None, "Y", loop="asyncio")


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_cancellation_reaches_an_asyncio_loop_activity(tmp_path, anyio_backend):
    import asyncio

    cancelled = threading.Event()
    started = threading.Event()
    reg = base_registry()

    @reg.activity("Sleeps", loop="asyncio")
    async def sleeps(ctx: dt.ActivityContext) -> None:
        started.set()
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @reg.orchestration("UsesSleeps")
    async def uses(ctx: dt.OrchestrationContext) -> None:
        await ctx.schedule_activity("Sleeps")

    provider = await dt.SqliteProvider.open(tmp_path / "c.db")
    with anyio.fail_after(20):
        async with provider, dt.open_runtime(provider, reg, attrs.evolve(FAST, shutdown_grace=0.2)) as runtime:
            await runtime.client.start_orchestration("s", "UsesSleeps")
            await anyio.to_thread.run_sync(started.wait, 10)
    assert await anyio.to_thread.run_sync(cancelled.wait, 10)


async def test_lease_renewal_that_raises_a_non_provider_error_is_contained(tmp_path, anyio_backend):
    """A provider bug in lock renewal (a RuntimeError, not a ProviderError) is logged and retried; the
    runtime keeps running and the long activity still completes."""
    from duroxide_trio.testing.faults import Fault, FaultyProvider

    reg = base_registry()
    done = anyio.Event()

    @reg.activity("Long")
    async def long(ctx: dt.ActivityContext) -> str:
        await anyio.sleep(2.5)  # longer than its 2 s lock: it must be renewed
        return "done"

    @reg.orchestration("UsesLong")
    async def uses(ctx: dt.OrchestrationContext) -> str:
        return str(await ctx.schedule_activity("Long"))

    inner = await dt.SqliteProvider.open(tmp_path / "r.db")
    faults = {"renew_work_item_lock": Fault(every=1, limit=1, error=RuntimeError, message="bug")}
    provider = FaultyProvider(inner, faults)
    options = attrs.evolve(FAST, worker_lock_timeout=2.0)
    async with provider, dt.open_runtime(provider, reg, options) as runtime:
        await runtime.client.start_orchestration("l", "UsesLong")
        state = await runtime.client.wait_for_orchestration("l", timeout=30)
        await assert_healthy(runtime.client)
        done.set()
    assert state.status is dt.Status.COMPLETED and state.output == "done"
    assert provider.faults["renew_work_item_lock"].injected == 1


@pytest.mark.postgres
async def test_a_turn_the_storage_refuses_fails_the_instance_with_its_reason(pg_url, pg_schema, anyio_backend):
    """A 10 KB child id fits the 64 KiB name limit but not PostgreSQL's btree index: the parent fails at
    once with the storage's reason (not "turn kept failing" after max_attempts)."""
    import random

    from duroxide_trio.providers.postgres import PostgresProvider

    LONG_ID = "".join(random.Random(7).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=10_000))  # incompressible
    reg = base_registry()

    @reg.orchestration("Child")
    async def child(ctx: dt.OrchestrationContext) -> str:
        return "child"

    @reg.orchestration("LongChildId")
    async def parent(ctx: dt.OrchestrationContext) -> str:
        return str(await ctx.schedule_sub_orchestration("Child", instance_id=LONG_ID))

    provider = await PostgresProvider.connect(pg_url, schema=pg_schema, pool_max=4)
    async with provider, dt.open_runtime(provider, reg, FAST) as runtime:
        await runtime.client.start_orchestration("p", "LongChildId")
        state = await runtime.client.wait_for_orchestration("p", timeout=20)
        await assert_healthy(runtime.client)
    assert state.status is dt.Status.FAILED
    assert (state.error.category, state.error.kind) == ("configuration", "StorageRejected"), state.error
    assert "too long" in state.error.message or "too large" in state.error.message


async def test_automatic_child_ids_stay_unique_across_continue_as_new(make_provider):
    """Found by the property test: after continue-as-new the first child got the id of the previous
    execution's child (same event id) and was refused as already taken."""
    reg = base_registry()

    @reg.orchestration("Kid")
    async def kid(ctx: dt.OrchestrationContext, n: int) -> int:
        return n

    @reg.orchestration("Generations")
    async def generations(ctx: dt.OrchestrationContext, n: int) -> int:
        got = int(await ctx.schedule_sub_orchestration("Kid", n))
        if n == 0:
            return await ctx.continue_as_new(1)
        return got

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("g", "Generations", 0)
        state = await client.wait_for_orchestration("g", timeout=20)
        assert state.status is dt.Status.COMPLETED and state.output == 1, state.error
        assert state.execution_id == 2
