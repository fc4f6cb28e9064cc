"""Eager dispatch end to end (SQLite file and PostgreSQL, both anyio backends): the activities a turn
schedules start in this runtime's free slots straight from the turn's commit, without a worker fetch;
the slots bound them; turned off, or without activity dispatchers, every activity is fetched as before."""

from __future__ import annotations

import anyio
import pytest

import duroxide_trio as dt
from duroxide_trio.stress._counting import CountingProvider
from duroxide_trio.testing.faults import Fault, FaultyProvider

pytestmark = pytest.mark.anyio

FAN = 5


def _registry(running: list[int] | None = None, peak: list[int] | None = None) -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Double")
    async def double(ctx: dt.ActivityContext, x: int) -> int:
        if running is not None and peak is not None:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await anyio.sleep(0.01)
            running[0] -= 1
        return 2 * x

    @reg.orchestration("FanOut")
    async def fan_out(ctx: dt.OrchestrationContext, n: int) -> int:
        first = await ctx.schedule_activity("Double", 0)
        rest = await ctx.join([ctx.schedule_activity("Double", i) for i in range(1, n)])
        return first + sum(rest)

    return reg


async def _run(provider: dt.Provider, reg: dt.Registry, options: dt.RuntimeOptions, ids: list[str]) -> dt.Runtime:
    async with dt.open_runtime(provider, reg, options) as rt:
        for i in ids:
            await rt.client.start_orchestration(i, "FanOut", FAN)
        for i in ids:
            state = await rt.client.wait_for_orchestration(i, timeout=30)
            assert state.status is dt.Status.COMPLETED, state
            assert state.output == 2 * sum(range(FAN))
    return rt


async def test_turn_activities_run_without_a_worker_fetch(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        counting = CountingProvider(provider)
        # A long fallback poll: the activity dispatchers fetch at start and then only when woken.
        options = dt.RuntimeOptions(poll_interval=30.0)
        async with dt.open_runtime(counting, _registry(), options) as rt:  # type: ignore[arg-type]
            await rt.client.start_orchestration("warm", "FanOut", FAN)
            await rt.client.wait_for_orchestration("warm", timeout=30)
            fetches = counting.calls["fetch_routed_work_items"]
            eager = rt.stats.activities_eager
            for i in range(4):
                await rt.client.start_orchestration(f"fan-{i}", "FanOut", FAN)
                state = await rt.client.wait_for_orchestration(f"fan-{i}", timeout=30)
                assert state.output == 2 * sum(range(FAN))
            # Every activity of these four instances came from its turn's commit, none from a fetch.
            assert rt.stats.activities_eager - eager == 4 * FAN
            assert counting.calls["fetch_routed_work_items"] == fetches
            assert rt.stats.activities_completed >= 5 * FAN


async def test_turned_off_every_activity_is_fetched(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        rt = await _run(provider, _registry(), dt.RuntimeOptions(eager_activities=False), ["off-1", "off-2"])
    assert rt.stats.activities_eager == 0
    assert rt.stats.activities_completed == 2 * FAN


async def test_activity_slots_bound_eager_dispatch(make_provider) -> None:
    """With two activity slots, a turn scheduling four activities gets at most two of them eagerly;
    the others wait in the queue, and never more than two run at once."""
    running, peak = [0], [0]
    provider = await make_provider()
    async with provider:
        options = dt.RuntimeOptions(activity_slots=2, poll_interval=0.2)
        rt = await _run(provider, _registry(running, peak), options, ["slots-1", "slots-2", "slots-3"])
    assert peak[0] <= 2
    assert rt.stats.activities_completed == 3 * FAN
    assert rt.stats.activities_eager < 3 * FAN  # the fan-out of four did not fit in two slots


async def test_orchestration_only_runtime_locks_nothing(make_provider) -> None:
    """A runtime without activity dispatchers (``worker_concurrency=0``) asks for nothing: a worker
    runtime on the same database runs every activity."""
    orch_side, worker_side = await make_provider(), await make_provider()
    async with orch_side, worker_side:
        reg = _registry()
        # The worker runtime runs no turn of these instances (their version 1.0.0 is outside 9.x).
        worker_options = dt.RuntimeOptions(poll_interval=0.2, supported_replay_versions=dt.VersionRange.major(9))
        async with dt.open_runtime(worker_side, reg, worker_options) as workers:
            rt = await _run(orch_side, reg, dt.RuntimeOptions(worker_concurrency=0), ["split-1", "split-2"])
            assert rt.stats.activities_eager == 0
            assert rt.stats.orchestration_turns > 0
        assert workers.stats.activities_completed == 2 * FAN


async def test_a_lost_commit_answer_does_not_strand_its_activities(make_provider) -> None:
    """Every turn's commit succeeds but its answer is lost once (the connection dropped after the
    commit): the activities it locked eagerly are given back at once, so the orchestration finishes
    long before the 60 s worker lock would have expired."""
    provider = await make_provider()
    async with provider:
        faulty = FaultyProvider(provider, {"ack_orchestration_item": Fault(every=2, after=True, limit=4)})
        options = dt.RuntimeOptions(worker_lock_timeout=60.0, poll_interval=0.2)
        async with dt.open_runtime(faulty, _registry(), options) as rt:  # type: ignore[arg-type]
            for i in range(2):
                await rt.client.start_orchestration(f"lost-{i}", "FanOut", FAN)
            for i in range(2):
                state = await rt.client.wait_for_orchestration(f"lost-{i}", timeout=20)
                assert state.status is dt.Status.COMPLETED and state.output == 2 * sum(range(FAN))
        assert faulty.faults["ack_orchestration_item"].injected >= 1
