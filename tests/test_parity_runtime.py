"""Issue 12 items 5 and 6 end to end: async blocks, custom status, duplicate starts, continue-as-new
across a rolling deploy (real providers, both backends)."""

from __future__ import annotations

import logging

import anyio
import attrs
import pytest
from helpers import FAST, running

import duroxide_trio as dt

pytestmark = pytest.mark.anyio


class _GivenBack(logging.Handler):
    """Sets ``event`` once ``times`` log records contain every one of ``fragments``."""

    def __init__(self, *fragments: str, times: int) -> None:
        super().__init__(logging.DEBUG)
        self.fragments, self.left, self.event = fragments, times, anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if all(f in text for f in self.fragments):
            self.left -= 1
            if self.left <= 0:
                self.event.set()


def _registry() -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Add")
    async def add(ctx: dt.ActivityContext, x: int) -> int:
        return x + 1

    return reg


async def test_async_block_in_select_wins_and_loses(make_provider):
    reg = _registry()

    async def two_steps(ctx: dt.OrchestrationContext, x: int) -> int:
        a = await ctx.schedule_activity("Add", x)
        return await ctx.schedule_activity("Add", a)

    @reg.orchestration("Race")
    async def race(ctx: dt.OrchestrationContext, timer: float) -> list:
        index, value = await ctx.select(ctx.schedule_timer(timer), two_steps(ctx, 10))
        both = await ctx.join([two_steps(ctx, 1), two_steps(ctx, 2)])
        return [index, value, both]

    @reg.orchestration("Lose")
    async def lose(ctx: dt.OrchestrationContext) -> int:
        index, _ = await ctx.select(ctx.schedule_timer(0), _forever(ctx))
        return index

    async def _forever(ctx: dt.OrchestrationContext) -> None:
        never = ctx.wait_for_event("never")
        await ctx.schedule_activity("Add", 0)
        await never

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("win", "Race", 3600.0)
        await client.start_orchestration("lose", "Lose")
        state = await client.wait_for_orchestration("win", timeout=15)
        assert state.status is dt.Status.COMPLETED and state.output == [1, 12, [3, 4]]
        state = await client.wait_for_orchestration("lose", timeout=15)
        assert state.status is dt.Status.COMPLETED and state.output == 0
        names = [e.type_name for e in await client.get_history("lose")]
        assert "ExternalSubscribedCancelled" in names


async def test_custom_status_readable_in_code_and_carried_across_continue_as_new(make_provider):
    reg = _registry()

    @reg.orchestration("Counter")
    async def counter(ctx: dt.OrchestrationContext, n: int) -> dict:
        before = ctx.custom_status
        ctx.set_custom_status({"n": n, "before": before})
        if n < 2:
            await ctx.schedule_activity("Add", n)
            return await ctx.continue_as_new(n + 1)
        return ctx.custom_status

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("c", "Counter", 0)
        state = await client.wait_for_orchestration("c", timeout=15)
    inner = {"n": 0, "before": None}
    middle = {"n": 1, "before": inner}
    assert state.output == {"n": 2, "before": middle}
    assert state.custom_status == state.output and state.execution_id == 3


async def test_duplicate_start_never_changes_a_running_instance(make_provider):
    reg = _registry()
    t_running = anyio.Event()

    @reg.activity("MarkRunning")
    async def mark_running(ctx: dt.ActivityContext, x: int) -> int:
        t_running.set()  # scheduled by t's first turn: its commit created the instance
        return x

    @reg.orchestration("Target")
    async def target_v1(ctx: dt.OrchestrationContext, x: int) -> list:
        await ctx.schedule_activity("MarkRunning", x)
        await ctx.wait_for_event("go")
        return ["v1", x]

    @reg.orchestration("Target", version="2.0.0")
    async def target_v2(ctx: dt.OrchestrationContext, x: int) -> list:
        return ["v2", x]

    @reg.orchestration("Starter")
    async def starter(ctx: dt.OrchestrationContext) -> str:
        ctx.start_orchestration("Target", "t", 999, version="2.0.0")
        await ctx.schedule_activity("Add", 0)
        return "sent"

    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("t", "Target", 1, version="1.0.0")
        with pytest.raises(dt.InstanceAlreadyExists):
            await client.start_orchestration("t", "Target", 2, version="2.0.0")
        # The child start must find t running (a start handed over to the runtime may otherwise overtake
        # t's, which was stored before the dispatchers were up and waits for a fetch).
        with anyio.fail_after(15):
            await t_running.wait()
        await client.start_orchestration("s", "Starter")
        assert (await client.wait_for_orchestration("s", timeout=15)).output == "sent"
        state = await client.get_status("t")
        assert (state.status, state.version) == (dt.Status.RUNNING, "1.0.0")
        await client.raise_event("t", "go")
        state = await client.wait_for_orchestration("t", timeout=15)
        assert (state.output, state.version, state.execution_id) == (["v1", 1], "1.0.0", 1)


async def test_continue_as_new_successor_keeps_its_input_across_unregistered_backoff(make_provider):
    old = _registry()
    new = _registry()

    @old.orchestration("Roll")
    async def roll_v1(ctx: dt.OrchestrationContext, x: int) -> int:
        return await ctx.continue_as_new({"carried": x * 10}, version="2.0.0")

    new.add_orchestration(roll_v1, "Roll", version="1.0.0")

    @new.orchestration("Roll", version="2.0.0")
    async def roll_v2(ctx: dt.OrchestrationContext, x: dict) -> dict:
        return {"v2 got": x}

    options = attrs.evolve(FAST, max_attempts=1000)
    given_back = _GivenBack("instance 'r'", "is not registered", times=2)
    log = logging.getLogger("duroxide_trio.runtime.orchestrations")
    log.addHandler(given_back)
    try:
        async with running(make_provider, old, options) as (_, client):
            await client.start_orchestration("r", "Roll", 4)
            with anyio.fail_after(10):  # the successor was fetched and given back (unregistered here) twice
                await given_back.event.wait()
    finally:
        log.removeHandler(given_back)
    async with running(make_provider, new, options) as (_, client):
        state = await client.wait_for_orchestration("r", timeout=15)
    assert state.status is dt.Status.COMPLETED
    assert state.output == {"v2 got": {"carried": 40}} and state.version == "2.0.0"
