"""Provider faults (injected through a wrapper), poison messages and graceful shutdown."""

from __future__ import annotations

import anyio
import attrs
import pytest
from helpers import FAST

import duroxide_trio as dt
from duroxide_trio.testing.faults import Fault, FaultyProvider

pytestmark = pytest.mark.anyio


def pipeline_registry() -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Inc")
    async def inc(ctx: dt.ActivityContext, x: int) -> int:
        return x + 1

    @reg.orchestration("Pipeline")
    async def pipeline(ctx: dt.OrchestrationContext, x: int) -> int:
        for _ in range(3):
            x = await ctx.schedule_activity("Inc", x)
        await ctx.schedule_timer(0.01)
        return x

    return reg


async def test_runtime_survives_transient_provider_errors(make_provider):
    inner = await make_provider()
    faults = {
        "fetch_orchestration_item": Fault(every=3),
        "ack_orchestration_item": Fault(every=4),
        "fetch_work_items": Fault(every=3),
        "ack_work_items": Fault(every=2),
        "enqueue_start": Fault(every=5, limit=1),
    }
    provider = FaultyProvider(inner, faults)
    # Without eager dispatch, so that the worker fetches (and their faults) happen at all.
    options = attrs.evolve(FAST, eager_activities=False)
    async with provider, dt.open_runtime(provider, pipeline_registry(), options) as rt:
        started = []
        for i in range(10):
            for _ in range(3):
                try:
                    await rt.client.start_orchestration(f"f-{i}", "Pipeline", i)
                    started.append(i)
                    break
                except dt.ProviderError as exc:
                    assert exc.retryable
        states = [await rt.client.wait_for_orchestration(f"f-{i}", timeout=30) for i in started]
    assert len(started) == 10
    assert [s.output for s in states] == [i + 3 for i in range(10)]
    assert all(f.injected > 0 for f in faults.values())
    assert rt.stats.provider_errors > 0


async def test_ack_that_commits_but_reports_failure_does_not_duplicate_work(make_provider):
    inner = await make_provider()
    # The activity ack commits, then the caller is told it failed: the runtime must not record twice.
    provider = FaultyProvider(inner, {"ack_work_items": Fault(every=2, after=True)})
    async with provider, dt.open_runtime(provider, pipeline_registry(), FAST) as rt:
        await rt.client.start_orchestration("a-1", "Pipeline", 0)
        state = await rt.client.wait_for_orchestration("a-1", timeout=30)
        history = await rt.client.get_history("a-1")
    assert state.output == 3
    assert [e.type_name for e in history].count("ActivityCompleted") == 3


async def test_poison_orchestration_fails_after_max_attempts(make_provider):
    inner = await make_provider()
    # Every turn's commit fails permanently: the batch is refetched until it is poison.
    provider = FaultyProvider(inner, {"ack_orchestration_item": Fault(every=1, retryable=False, limit=4)})
    opts = dt.RuntimeOptions(orchestrator_lock_timeout=0.3, max_attempts=3, poll_interval=0.1)
    async with provider, dt.open_runtime(provider, pipeline_registry(), opts) as rt:
        await rt.client.start_orchestration("p-1", "Pipeline", 0)
        state = await rt.client.wait_for_orchestration("p-1", timeout=30)
    assert state.status is dt.Status.FAILED
    assert state.error.category == "poison" and "exceeded 3 attempts" in state.error.message


async def test_poison_activity_fails_its_orchestration(make_provider):
    reg = dt.Registry()

    @reg.activity("Hang")
    async def hang(ctx: dt.ActivityContext) -> None:
        await anyio.sleep(3600)  # never acks: the lock expires again and again

    @reg.orchestration("Hangs")
    async def hangs(ctx: dt.OrchestrationContext) -> None:
        await ctx.schedule_activity("Hang")

    opts = dt.RuntimeOptions(worker_lock_timeout=0.2, worker_lock_renewal_buffer=0.1, max_attempts=2,
                             poll_interval=0.1, shutdown_grace=0.2)
    provider = await make_provider()

    class NoRenew(FaultyProvider):
        pass

    # Renewals fail as if another worker stole the lock each time; the activity is redelivered.
    faulty = NoRenew(provider, {"renew_work_item_lock": Fault(every=1, retryable=False)})
    async with faulty, dt.open_runtime(faulty, reg, opts) as rt:
        await rt.client.start_orchestration("h-1", "Hangs")
        state = await rt.client.wait_for_orchestration("h-1", timeout=30)
    assert state.status is dt.Status.FAILED
    assert state.error.category == "poison" and "'Hang'" in state.error.message


async def test_shutdown_abandons_running_activities_for_the_next_runtime(make_provider):
    reg = dt.Registry()
    attempts: list[int] = []
    entered = anyio.Event()

    @reg.activity("Long")
    async def long(ctx: dt.ActivityContext) -> str:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            entered.set()
            await anyio.sleep(3600)
        return "done"

    @reg.orchestration("Job")
    async def job(ctx: dt.OrchestrationContext) -> str:
        return await ctx.schedule_activity("Long")

    opts = dt.RuntimeOptions(worker_lock_timeout=60, shutdown_grace=0.2, poll_interval=0.2)
    provider = await make_provider()
    async with provider:
        with anyio.fail_after(10):
            async with dt.open_runtime(provider, reg, opts) as rt:
                await rt.client.start_orchestration("j-1", "Job")
                await entered.wait()
        # The 60 s lock was given back at shutdown: a new runtime runs it at once.
        with anyio.fail_after(10):
            async with dt.open_runtime(provider, reg, opts) as rt:
                state = await rt.client.wait_for_orchestration("j-1", timeout=10)
    assert state.output == "done"
    assert attempts == [1, 1]  # the abandoned attempt was not counted against max_attempts


async def test_a_result_finished_during_shutdown_is_committed_before_the_runtime_returns(make_provider):
    """An activity that finishes while the runtime stops (within the grace period) has its result stored
    by the time ``open_runtime`` returns: the next runtime completes the orchestration without running the
    activity again (its 60 s lock was neither stranded nor given back)."""
    reg = dt.Registry()
    attempts: list[int] = []
    entered, release = anyio.Event(), anyio.Event()

    @reg.activity("Finishes")
    async def finishes(ctx: dt.ActivityContext) -> str:
        attempts.append(ctx.attempt)
        entered.set()
        await release.wait()
        return "stored"

    @reg.orchestration("Job")
    async def job(ctx: dt.OrchestrationContext) -> str:
        return await ctx.schedule_activity("Finishes")

    opts = dt.RuntimeOptions(worker_lock_timeout=60, shutdown_grace=5, poll_interval=0.2)
    provider = await make_provider()
    async with provider:
        with anyio.fail_after(10):
            async with dt.open_runtime(provider, reg, opts) as rt:
                await rt.client.start_orchestration("s-1", "Job")
                await entered.wait()
                release.set()  # it returns while the runtime is stopping
        with anyio.fail_after(10):
            async with dt.open_runtime(provider, reg, opts) as rt:
                state = await rt.client.wait_for_orchestration("s-1", timeout=8)
    assert state.status is dt.Status.COMPLETED and state.output == "stored"
    assert attempts == [1]


async def test_long_activity_keeps_its_lock_by_renewal(make_provider):
    reg = dt.Registry()
    attempts: list[int] = []

    @reg.activity("Slow")
    async def slow(ctx: dt.ActivityContext) -> str:
        attempts.append(ctx.attempt)
        await anyio.sleep(1.5)  # three lock timeouts long
        return "finished"

    @reg.orchestration("UsesSlow")
    async def uses_slow(ctx: dt.OrchestrationContext) -> str:
        return await ctx.schedule_activity("Slow")

    opts = dt.RuntimeOptions(worker_lock_timeout=0.5, poll_interval=0.1)
    provider = await make_provider()
    async with provider, dt.open_runtime(provider, reg, opts) as rt:
        await rt.client.start_orchestration("slow-1", "UsesSlow")
        state = await rt.client.wait_for_orchestration("slow-1", timeout=20)
    assert state.output == "finished"
    assert attempts == [1]  # never redelivered while it was running


async def test_unknown_orchestration_started_without_registry_ends_as_poison(make_provider):
    provider = await make_provider()
    async with provider, dt.open_runtime(provider, pipeline_registry(), FAST):
        client = dt.Client(provider)  # no registry: the name cannot be checked up front
        await client.start_orchestration("ghost-1", "NoSuchOrchestration", 1)
        state = await client.wait_for_orchestration("ghost-1", timeout=20)
    assert state.status is dt.Status.FAILED
    assert state.error.category == "poison"
    assert "'NoSuchOrchestration' is not registered" in state.error.message
