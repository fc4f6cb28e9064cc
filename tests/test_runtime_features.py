"""End-to-end runtime tests: real providers, real runtime, every feature a user relies on."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta

import anyio
import attrs
import pytest
from helpers import FAST, run_one, running

import duroxide_trio as dt

pytestmark = pytest.mark.anyio


def double_registry() -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Double")
    async def double(ctx: dt.ActivityContext, x: int) -> int:
        return x * 2

    @reg.activity("Fail")
    async def fail(ctx: dt.ActivityContext, message: str) -> None:
        raise RuntimeError(message)

    return reg


async def test_fan_out_fan_in(make_provider):
    reg = double_registry()

    @reg.orchestration("FanOut")
    async def fan_out(ctx: dt.OrchestrationContext, n: int) -> int:
        results = await ctx.join([ctx.schedule_activity("Double", i) for i in range(n)])
        return sum(results)

    state = await run_one(make_provider, reg, "FanOut", 10)
    assert state.status is dt.Status.COMPLETED
    assert state.output == 90


async def test_sequential_activities_and_timer(make_provider):
    reg = double_registry()

    @reg.orchestration("Chain")
    async def chain(ctx: dt.OrchestrationContext, x: int) -> dict:
        start = ctx.now()
        a = await ctx.schedule_activity("Double", x)
        await ctx.schedule_timer(timedelta(milliseconds=300))
        b = await ctx.schedule_activity("Double", a)
        elapsed = (ctx.now() - start).total_seconds()
        return {"value": b, "elapsed": elapsed}

    state = await run_one(make_provider, reg, "Chain", 3)
    assert state.status is dt.Status.COMPLETED
    assert state.output["value"] == 12
    assert state.output["elapsed"] >= 0.3  # deterministic time comes from history


async def test_activity_failure_is_catchable(make_provider):
    reg = double_registry()

    @reg.orchestration("Catch")
    async def catch(ctx: dt.OrchestrationContext) -> str:
        try:
            await ctx.schedule_activity("Fail", "boom")
        except dt.ActivityFailed as exc:
            return f"caught {exc.details.category}: {exc.details.message}"
        return "not reached"

    state = await run_one(make_provider, reg, "Catch")
    assert state.output == "caught application: RuntimeError: boom"


async def test_uncaught_failure_fails_instance(make_provider):
    reg = double_registry()

    @reg.orchestration("Uncaught")
    async def uncaught(ctx: dt.OrchestrationContext) -> None:
        await ctx.schedule_activity("Fail", "kaput")

    state = await run_one(make_provider, reg, "Uncaught")
    assert state.status is dt.Status.FAILED
    assert state.error is not None and state.error.category == "application"
    assert "kaput" in state.error.message


async def test_retry_policy_retries_until_success(make_provider):
    reg = dt.Registry()
    calls: list[int] = []

    @reg.activity("Flaky")
    async def flaky(ctx: dt.ActivityContext) -> str:
        calls.append(ctx.attempt)
        if len(calls) < 3:
            raise ValueError(f"try {len(calls)}")
        return "ok"

    @reg.orchestration("Retry")
    async def retry(ctx: dt.OrchestrationContext) -> str:
        policy = dt.RetryPolicy(max_attempts=5, backoff=dt.Backoff.exponential(base=0.05, factor=2, cap=1))
        return await ctx.schedule_activity("Flaky", retry=policy)

    state = await run_one(make_provider, reg, "Retry")
    assert state.output == "ok"
    assert len(calls) == 3


async def test_retry_policy_gives_up_with_last_error(make_provider):
    reg = double_registry()

    @reg.orchestration("GiveUp")
    async def give_up(ctx: dt.OrchestrationContext) -> str:
        try:
            await ctx.schedule_activity("Fail", "always", retry=dt.RetryPolicy(2, dt.Backoff.fixed(0.01)))
        except dt.ActivityFailed as exc:
            return exc.details.message
        return "no"

    state = await run_one(make_provider, reg, "GiveUp")
    assert state.output == "RuntimeError: always"


async def test_retry_timeout_cancels_slow_attempt(make_provider):
    reg = dt.Registry()
    attempts: list[int] = []

    @reg.activity("Slow")
    async def slow(ctx: dt.ActivityContext) -> str:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            await anyio.sleep(30)
        return "fast enough"

    @reg.orchestration("Timeout")
    async def timeout(ctx: dt.OrchestrationContext) -> str:
        return await ctx.schedule_activity("Slow", retry=dt.RetryPolicy(3, dt.Backoff.none(), timeout=0.3))

    state = await run_one(make_provider, reg, "Timeout")
    assert state.output == "fast enough"
    assert len(attempts) == 2


async def test_external_event_raced_against_timer(make_provider):
    reg = dt.Registry()

    @reg.orchestration("Approval")
    async def approval(ctx: dt.OrchestrationContext, timeout: float) -> str:
        index, value = await ctx.select(ctx.wait_for_event("approved"), ctx.schedule_timer(timeout))
        return f"approved by {value}" if index == 0 else "timed out"

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("a1", "Approval", 30.0)
        await client.start_orchestration("a2", "Approval", 0.2)
        await client.raise_event("a1", "approved", "alice")
        s1 = await client.wait_for_orchestration("a1", timeout=10)
        s2 = await client.wait_for_orchestration("a2", timeout=10)
    assert s1.output == "approved by alice"
    assert s2.output == "timed out"


async def test_event_raised_before_wait_is_not_lost(make_provider):
    reg = double_registry()

    @reg.orchestration("Late")
    async def late(ctx: dt.OrchestrationContext) -> list:
        await ctx.schedule_activity("Double", 1)
        first = await ctx.wait_for_event("go")
        second = await ctx.wait_for_event("go")
        return [first, second]

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("e1", "Late")
        await client.raise_event("e1", "go", 1)
        await client.raise_event("e1", "go", 2)
        state = await client.wait_for_orchestration("e1", timeout=10)
    assert state.output == [1, 2]


async def test_queue_events_fifo_and_carried_across_continue_as_new(make_provider):
    reg = dt.Registry()

    @reg.orchestration("Mailbox")
    async def mailbox(ctx: dt.OrchestrationContext, state: dict) -> dict:
        item = await ctx.dequeue_event("inbox")
        got = state["got"] + [item]
        if len(got) < 4:
            return await ctx.continue_as_new({"got": got})
        return {"got": got, "execution": ctx.execution_id}

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("m1", "Mailbox", {"got": []})
        for i in range(4):
            await client.enqueue_event("m1", "inbox", i)
        state = await client.wait_for_orchestration("m1", timeout=10)
        executions = await client.list_executions("m1")
    assert state.output == {"got": [0, 1, 2, 3], "execution": 4}
    assert executions == [1, 2, 3, 4]


async def test_sub_orchestrations_auto_and_explicit_ids(make_provider):
    reg = double_registry()

    @reg.orchestration("Child")
    async def child(ctx: dt.OrchestrationContext, x: int) -> int:
        return await ctx.schedule_activity("Double", x)

    @reg.orchestration("Parent")
    async def parent(ctx: dt.OrchestrationContext) -> list:
        a = ctx.schedule_sub_orchestration("Child", 1)
        b = ctx.schedule_sub_orchestration("Child", 2, instance_id="explicit-child")
        return await ctx.join([a, b])

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("p1", "Parent")
        state = await client.wait_for_orchestration("p1", timeout=10)
        child_state = await client.get_status("explicit-child")
        tree = await client.get_instance_tree("p1")
    assert state.output == [2, 4]
    assert child_state.status is dt.Status.COMPLETED and child_state.parent_instance_id == "p1"
    assert set(tree) == {"p1", "explicit-child", "p1::sub::2"}


async def test_sub_orchestration_failure_surfaces(make_provider):
    reg = double_registry()

    @reg.orchestration("BadChild")
    async def bad_child(ctx: dt.OrchestrationContext) -> None:
        raise ValueError("child broke")

    @reg.orchestration("Parent")
    async def parent(ctx: dt.OrchestrationContext) -> str:
        try:
            await ctx.schedule_sub_orchestration("BadChild")
        except dt.SubOrchestrationFailed as exc:
            return exc.details.message
        return "no"

    state = await run_one(make_provider, reg, "Parent")
    assert state.output == "ValueError: child broke"


async def test_detached_orchestration(make_provider):
    reg = double_registry()

    @reg.orchestration("Worker")
    async def worker(ctx: dt.OrchestrationContext, x: int) -> int:
        return x + 1

    @reg.orchestration("Launcher")
    async def launcher(ctx: dt.OrchestrationContext) -> str:
        ctx.start_orchestration("Worker", "detached-1", 41)
        return "launched"

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("l1", "Launcher")
        assert (await client.wait_for_orchestration("l1", timeout=10)).output == "launched"
        detached = await client.wait_for_orchestration("detached-1", timeout=10)
    assert detached.output == 42
    assert detached.parent_instance_id is None


async def test_continue_as_new_new_execution_empty_history(make_provider):
    reg = dt.Registry()

    @reg.orchestration("Counter")
    async def counter(ctx: dt.OrchestrationContext, n: int) -> int:
        await ctx.schedule_timer(0.01)
        if n < 3:
            return await ctx.continue_as_new(n + 1)
        return n

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("c1", "Counter", 0)
        state = await client.wait_for_orchestration("c1", timeout=10)
        first = await client.get_history("c1", 1)
        last = await client.get_history("c1")
    assert state.output == 3 and state.execution_id == 4
    assert first[-1].type_name == "OrchestrationContinuedAsNew"
    assert last[0].type_name == "OrchestrationStarted" and last[0].kind.input == "3"


async def test_select_loser_activity_is_cancelled(make_provider):
    reg = dt.Registry()
    started = []
    cancelled = []

    @reg.activity("Long")
    async def long(ctx: dt.ActivityContext) -> str:
        started.append(1)
        with anyio.move_on_after(20):
            await ctx.cancelled
            cancelled.append(ctx.cancelled.reason)
        return "late"

    @reg.orchestration("Race")
    async def race(ctx: dt.OrchestrationContext) -> int:
        index, _ = await ctx.select(ctx.schedule_activity("Long"), ctx.schedule_timer(0.2))
        await ctx.schedule_timer(0.5)  # keep running while the loser notices its cancellation
        return index

    opts = dt.RuntimeOptions(worker_lock_timeout=0.4, poll_interval=0.2, activity_cancellation_grace=0.2)
    async with running(make_provider, reg, opts) as (_, client):
        await client.start_orchestration("r1", "Race")
        state = await client.wait_for_orchestration("r1", timeout=10)
        history = await client.get_history("r1")
    assert state.output == 1
    assert "ActivityCancelRequested" in [e.type_name for e in history]
    assert started and cancelled  # the activity saw ctx.cancelled


async def test_custom_status_and_deterministic_uuid(make_provider):
    reg = dt.Registry()

    @reg.orchestration("Status")
    async def status(ctx: dt.OrchestrationContext) -> list:
        ids = [str(ctx.new_uuid())]
        ctx.set_custom_status({"step": 1})
        await ctx.schedule_timer(0.01)
        ids.append(str(ctx.new_uuid()))
        ctx.set_custom_status({"step": 2})
        return ids

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("s1", "Status")
        state = await client.wait_for_orchestration("s1", timeout=10)
    assert state.custom_status == {"step": 2}
    assert state.custom_status_version == 2
    ids = state.output
    assert len(set(ids)) == 2 and all(uuid.UUID(i) for i in ids)


async def test_cancel_instance_cancels_children_and_activities(make_provider):
    reg = dt.Registry()

    @reg.activity("Block")
    async def block(ctx: dt.ActivityContext) -> None:
        await ctx.cancelled

    @reg.orchestration("Child")
    async def child(ctx: dt.OrchestrationContext) -> None:
        await ctx.wait_for_event("never")

    @reg.orchestration("Parent")
    async def parent(ctx: dt.OrchestrationContext) -> None:
        a = ctx.schedule_activity("Block")
        c = ctx.schedule_sub_orchestration("Child", instance_id="kid")
        await ctx.join([a, c])

    async with running(make_provider, reg) as (provider, client):
        await client.start_orchestration("p", "Parent")
        while (await client.get_status("kid")).status is not dt.Status.RUNNING:
            await anyio.sleep(0.02)
        await client.cancel_instance("p", "user asked")
        state = await client.wait_for_orchestration("p", timeout=10)
        kid = await client.wait_for_orchestration("kid", timeout=10)
        depths = await client.get_queue_depths()
    assert state.status is dt.Status.FAILED
    assert state.error.message == "canceled: user asked"
    assert kid.status is dt.Status.FAILED and kid.error.message == "canceled: parent canceled"
    assert depths.worker_queue == 0  # the in-flight activity was dropped


@attrs.frozen
class Order:
    id: uuid.UUID
    placed: datetime
    items: list[str]


@dataclasses.dataclass
class Receipt:
    order_id: uuid.UUID
    total: int


async def test_typed_payloads_round_trip(make_provider):
    reg = dt.Registry()

    @reg.activity("Price")
    async def price(ctx: dt.ActivityContext, order: Order) -> Receipt:
        assert isinstance(order, Order) and isinstance(order.placed, datetime)
        return Receipt(order.id, len(order.items) * 10)

    @reg.orchestration("Checkout")
    async def checkout(ctx: dt.OrchestrationContext, order: Order) -> Receipt:
        receipt = await ctx.schedule_activity("Price", order)
        assert isinstance(receipt, Receipt)
        return receipt

    order = Order(uuid.uuid4(), datetime(2026, 1, 2, 3, 4, 5), ["a", "b"])
    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("o1", "Checkout", order)
        state = await client.wait_for_orchestration("o1", timeout=10)
    assert state.output == Receipt(order.id, 20)


async def test_sync_activity_runs_in_thread(make_provider):
    reg = dt.Registry()

    @reg.activity("Blocking")
    def blocking(ctx: dt.ActivityContext, x: int) -> int:
        import time

        time.sleep(0.05)
        return x + 1

    @reg.orchestration("UsesSync")
    async def uses_sync(ctx: dt.OrchestrationContext) -> list:
        return await ctx.join([ctx.schedule_activity("Blocking", i) for i in range(3)])

    assert (await run_one(make_provider, reg, "UsesSync")).output == [1, 2, 3]


async def test_versions_latest_exact_and_replay_keeps_recorded_version(make_provider):
    reg = dt.Registry()

    @reg.orchestration("V", version="1.0.0")
    async def v1(ctx: dt.OrchestrationContext) -> str:
        await ctx.wait_for_event("go")
        return "v1"

    @reg.orchestration("V", version="2.0.0")
    async def v2(ctx: dt.OrchestrationContext) -> str:
        await ctx.wait_for_event("go")
        return "v2"

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("latest", "V")
        await client.start_orchestration("exact", "V", version="1.0.0")
        await client.raise_event("latest", "go")
        await client.raise_event("exact", "go")
        assert (await client.wait_for_orchestration("latest", timeout=10)).output == "v2"
        exact = await client.wait_for_orchestration("exact", timeout=10)
    assert exact.output == "v1" and exact.version == "1.0.0"


async def test_existing_instance_replays_with_recorded_version(make_provider):
    old = dt.Registry()

    @old.orchestration("Upgrade", version="1.0.0")
    async def up1(ctx: dt.OrchestrationContext) -> str:
        await ctx.wait_for_event("go")
        return "ran 1.0.0"

    provider = await make_provider()
    async with provider:
        async with dt.open_runtime(provider, old, FAST) as rt:
            await rt.client.start_orchestration("u1", "Upgrade")
            while (await rt.client.get_status("u1")).status is not dt.Status.RUNNING:
                await anyio.sleep(0.02)
        new = dt.Registry()
        new.add_orchestration(up1, "Upgrade", version="1.0.0")

        @new.orchestration("Upgrade", version="2.0.0")
        async def up2(ctx: dt.OrchestrationContext) -> str:
            await ctx.schedule_timer(0.01)  # different shape: would be nondeterministic for 1.0.0 histories
            return "ran 2.0.0"

        async with dt.open_runtime(provider, new, FAST) as rt:
            await rt.client.raise_event("u1", "go")
            state = await rt.client.wait_for_orchestration("u1", timeout=10)
    assert state.output == "ran 1.0.0"


async def test_changed_code_is_nondeterministic(make_provider):
    old = double_registry()

    @old.orchestration("Shape")
    async def shape_v1(ctx: dt.OrchestrationContext) -> int:
        a = await ctx.schedule_activity("Double", 1)
        await ctx.wait_for_event("go")
        return a

    provider = await make_provider()
    async with provider:
        async with dt.open_runtime(provider, old, FAST) as rt:
            await rt.client.start_orchestration("n1", "Shape")
            while len(await provider.read("n1")) < 4:
                await anyio.sleep(0.02)
        new = double_registry()

        @new.orchestration("Shape")
        async def shape_v2(ctx: dt.OrchestrationContext) -> int:
            a = await ctx.schedule_activity("Double", 2)  # input changed
            await ctx.wait_for_event("go")
            return a

        async with dt.open_runtime(provider, new, FAST) as rt:
            await rt.client.raise_event("n1", "go")
            state = await rt.client.wait_for_orchestration("n1", timeout=10)
    assert state.status is dt.Status.FAILED
    assert state.error.category == "configuration"
    assert "nondeterministic" in state.error.message
    assert "input='1'" in state.error.message and "input='2'" in state.error.message


async def test_awaiting_trio_sleep_fails_with_clear_message(make_provider):
    reg = dt.Registry()

    @reg.orchestration("Sleepy")
    async def sleepy(ctx: dt.OrchestrationContext) -> None:
        await anyio.sleep(1)

    state = await run_one(make_provider, reg, "Sleepy")
    assert state.status is dt.Status.FAILED
    assert "not a durable future" in state.error.message and "schedule_timer" in state.error.message


async def test_unregistered_activity_ends_as_poison(make_provider):
    reg = dt.Registry()

    @reg.orchestration("Missing")
    async def missing(ctx: dt.OrchestrationContext) -> None:
        await ctx.schedule_activity("NoSuchActivity")

    state = await run_one(make_provider, reg, "Missing")
    assert state.status is dt.Status.FAILED
    assert state.error.category == "poison"
    assert "NoSuchActivity" in state.error.message and "not registered" in state.error.message


async def test_bad_input_errors_are_clear(make_provider):
    reg = double_registry()

    @reg.orchestration("Echo")
    async def echo(ctx: dt.OrchestrationContext, x: int) -> int:
        return x

    async with running(make_provider, reg) as (_, client):
        with pytest.raises(dt.UnknownOrchestration, match="'Nope' is not registered.*Echo"):
            await client.start_orchestration("x", "Nope")
        with pytest.raises(dt.PayloadError, match="not JSON-serialisable.*object"):
            await client.start_orchestration("x", "Echo", object())
        await client.start_orchestration("dup", "Echo", 1)
        with pytest.raises(dt.InstanceAlreadyExists, match="'dup' already exists"):
            await client.start_orchestration("dup", "Echo", 2)
        assert (await client.wait_for_orchestration("dup", timeout=10)).output == 1
        with pytest.raises(dt.InstanceAlreadyExists):
            await client.start_orchestration("dup", "Echo", 3)
        with pytest.raises(TimeoutError, match="did not finish within"):
            await client.wait_for_orchestration("never-started", timeout=0.1)


def test_registering_twice_is_an_error():
    reg = dt.Registry()

    async def act(ctx: dt.ActivityContext) -> None: ...

    async def orch(ctx: dt.OrchestrationContext) -> None: ...

    reg.add_activity(act, "A")
    with pytest.raises(ValueError, match="activity 'A' is already registered"):
        reg.add_activity(act, "A")
    reg.add_orchestration(orch, "O")
    with pytest.raises(ValueError, match="orchestration 'O' version 1.0.0 is already registered"):
        reg.add_orchestration(orch, "O")
    with pytest.raises(TypeError, match="must be an 'async def'"):
        reg.add_orchestration(lambda ctx: None, "Sync")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version must look like"):
        reg.add_orchestration(orch, "O", version="latest")


async def test_management_delete_and_prune(make_provider):
    reg = dt.Registry()

    @reg.orchestration("Roll")
    async def roll(ctx: dt.OrchestrationContext, n: int) -> int:
        if n < 3:
            return await ctx.continue_as_new(n + 1)
        return n

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("r", "Roll", 0)
        await client.wait_for_orchestration("r", timeout=10)
        assert await client.list_executions("r") == [1, 2, 3, 4]
        pruned = await client.prune_executions("r", keep_last=1)
        assert pruned.executions_deleted == 3
        assert await client.list_executions("r") == [4]
        assert "r" in await client.list_instances(dt.Status.COMPLETED)
        metrics = await client.get_system_metrics()
        assert metrics.completed_instances == 1
        deleted = await client.delete_instance("r")
        assert deleted.instances_deleted == 1
        assert (await client.get_status("r")).status is dt.Status.NOT_FOUND
        with pytest.raises(dt.InstanceNotFound):
            await client.delete_instance("r")
