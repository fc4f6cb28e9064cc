"""The next turn handed over by the activity ack (``ProviderCapabilities.ack_fetches_turns``): the turn
after a completion runs without an orchestration fetch, and a runtime that crashes right after such an
ack loses nothing (the lock expires and another runtime runs the turn)."""

from __future__ import annotations

import attrs
import pytest
from helpers import FAST

import duroxide_trio as dt
from duroxide_trio.history import ActivityCompleted, ActivityResult
from duroxide_trio.providers.base import TurnRequest, as_ack_fetching, capabilities_of
from duroxide_trio.stress._counting import CountingProvider

pytestmark = pytest.mark.anyio

STEPS = 3


def _registry() -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Double")
    async def double(ctx: dt.ActivityContext, x: int) -> int:
        return x * 2

    @reg.orchestration("Chain")
    async def chain(ctx: dt.OrchestrationContext, x: int) -> int:
        for _ in range(STEPS):
            x = await ctx.schedule_activity("Double", x)
        return x

    @reg.orchestration("One")
    async def one(ctx: dt.OrchestrationContext, x: int) -> int:
        return await ctx.schedule_activity("Double", x)

    return reg


async def test_turn_after_a_completion_runs_without_a_fetch(make_provider, anyio_backend) -> None:
    inner = await make_provider()
    assert capabilities_of(inner).ack_fetches_turns
    counting = CountingProvider(inner)
    n = 3
    async with inner, dt.open_runtime(counting, _registry(), FAST) as runtime:
        client = runtime.client
        for k in range(n):
            await client.start_orchestration(f"chain-{k}", "Chain", 1)
            state = await client.wait_for_orchestration(f"chain-{k}", timeout=20)
            assert state.status is dt.Status.COMPLETED and state.output == 2**STEPS
        stats = runtime.stats
        # Every completion's ack locked and ran the instance's next turn: only the first turn of each
        # instance was fetched.
        assert stats.turns_handed_over == STEPS * n
        assert stats.orchestration_turns == (STEPS + 1) * n
        assert counting.calls["ack_work_items_and_fetch"] == STEPS * n
        assert counting.calls["ack_work_items"] == 0 and counting.calls["ack_work_item"] == 0
        assert counting.calls["ack_orchestration_item"] == (STEPS + 1) * n


async def test_crash_after_a_handover_ack_loses_nothing(make_provider, anyio_backend) -> None:
    # A runtime without activity dispatchers runs the first turn; its activity waits in the queue.
    provider = await make_provider()
    async with provider:
        async with dt.open_runtime(provider, _registry(), attrs.evolve(FAST, worker_concurrency=0)) as runtime:
            await runtime.client.start_orchestration("crash-1", "One", 21)
            lease = None
            while lease is None:
                generation = provider.notifier.generation("worker")
                lease = await provider.fetch_work_item(30.0)
                if lease is None:
                    await provider.notifier.wait("worker", generation, 1.0)
        # "Another process" runs the activity, acks it with the next turn handed over, then dies before
        # running that turn: it holds the instance's lock (1 s) and nothing else.
        fetching = as_ack_fetching(provider)
        assert fetching is not None
        item = lease.item
        acked = await fetching.ack_work_items_and_fetch(
            [(lease.lock_token, ActivityResult(item.instance, item.execution_id, item.id, "42"))], TurnRequest(1.0, 1)
        )
        assert acked.results == [None] and [i.instance_id for i in acked.items] == ["crash-1"]
    # A fresh runtime on the same store runs the turn once the lock expired.
    survivor = await make_provider()
    async with survivor, dt.open_runtime(survivor, _registry(), FAST) as runtime:
        state = await runtime.client.wait_for_orchestration("crash-1", timeout=20)
        assert state.status is dt.Status.COMPLETED and state.output == 42
        history = await survivor.read("crash-1")
        assert sum(isinstance(e.kind, ActivityCompleted) for e in history) == 1
