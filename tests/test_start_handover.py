"""The first turn handed over by the start (SQLite file and PostgreSQL, both anyio backends):
``runtime.client.start_orchestration`` stores the start and locks the new instance's first turn in one
round trip, and the runtime runs it at once, without an orchestration fetch; a start that cannot be handed
over (another client, a stopped runtime, no free turn slot, a version this runtime does not run, a failed
store) is left for any dispatcher, and every instance still completes exactly once."""

from __future__ import annotations

import anyio
import pytest

import duroxide_trio as dt
from duroxide_trio.history import StartOrchestration
from duroxide_trio.providers.base import TurnRequest
from duroxide_trio.stress._counting import CountingProvider
from duroxide_trio.testing.faults import Fault, FaultyProvider

pytestmark = pytest.mark.anyio


def _registry(gate: anyio.Event | None = None) -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Double")
    async def double(ctx: dt.ActivityContext, x: int) -> int:
        return 2 * x

    @reg.activity("Gate")
    async def gate_activity(ctx: dt.ActivityContext, x: int) -> int:
        return x

    @reg.orchestration("Twice")
    async def twice(ctx: dt.OrchestrationContext, x: int) -> int:
        return await ctx.schedule_activity("Double", x)

    @reg.orchestration("V2", version="2.0.0")
    async def v2(ctx: dt.OrchestrationContext, x: int) -> int:
        return x + 2

    return reg


class _RecordingFetches(CountingProvider):
    """Counts calls, and records the instances whose start a fetch returned (a first turn not handed over)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.fetched_starts: list[str] = []

    async def fetch_orchestration_item(self, *args, **kwargs):
        self.calls["fetch_orchestration_item"] += 1
        item = await self._inner.fetch_orchestration_item(*args, **kwargs)
        if item is not None and any(isinstance(m, StartOrchestration) for m in item.messages):
            self.fetched_starts.append(item.instance_id)
        return item


async def test_the_first_turn_runs_without_an_orchestration_fetch(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        counting = _RecordingFetches(provider)
        # A long fallback poll: the dispatchers fetch at start and then only when woken.
        options = dt.RuntimeOptions(poll_interval=30.0)
        async with dt.open_runtime(counting, _registry(), options) as rt:  # type: ignore[arg-type]
            await rt.client.start_orchestration("warm", "Twice", 1)
            await rt.client.wait_for_orchestration("warm", timeout=30)
            handed = rt.stats.starts_handed_over
            stored_only = counting.calls["enqueue_start"]  # e.g. "warm", if the dispatchers were not up yet
            for i in range(5):
                await rt.client.start_orchestration(f"s-{i}", "Twice", i)
            for i in range(5):
                state = await rt.client.wait_for_orchestration(f"s-{i}", timeout=30)
                assert state.status is dt.Status.COMPLETED and state.output == 2 * i
            assert rt.stats.starts_handed_over - handed == 5
            # No fetch returned any of their starts (a fetch woken by a notification may find nothing).
            assert not [i for i in counting.fetched_starts if i.startswith("s-")]
            assert counting.calls["enqueue_start"] == stored_only
            # Taken ids are refused exactly as before, and nothing of the existing instance changes.
            with pytest.raises(dt.InstanceAlreadyExists):
                await rt.client.start_orchestration("s-0", "Twice", 99)
            assert (await rt.client.get_status("s-0")).output == 0


async def test_a_start_right_after_the_runtime_opens_is_handed_over(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        counting = _RecordingFetches(provider)
        async with dt.open_runtime(counting, _registry()) as rt:  # type: ignore[arg-type]
            await rt.client.start_orchestration("first", "Twice", 4)
            assert (await rt.client.wait_for_orchestration("first", timeout=30)).output == 8
            assert rt.stats.starts_handed_over == 1
            assert counting.fetched_starts == []


async def test_other_clients_and_a_stopped_runtime_only_store_the_start(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        async with dt.open_runtime(provider, _registry()) as rt:
            other = dt.Client(provider)
            await other.start_orchestration("plain", "Twice", 3)
            assert (await rt.client.wait_for_orchestration("plain", timeout=30)).output == 6
            assert rt.stats.starts_handed_over == 0
        # Stopped: the start is stored for whichever runtime runs next.
        await rt.client.start_orchestration("after", "Twice", 4)
        assert (await rt.client.get_status("after")).status is dt.Status.NOT_FOUND
        async with dt.open_runtime(provider, _registry()) as again:
            assert (await again.client.wait_for_orchestration("after", timeout=30)).output == 8
        assert rt.stats.starts_handed_over == 0


async def test_with_one_turn_slot_every_start_completes(make_provider) -> None:
    """A start finding the one slot taken (by a turn or a dispatcher's fetch) is stored only; a handed-over
    one holds the slot until its turn ends. Nothing leaks it: every instance completes."""
    provider = await make_provider()
    async with provider:
        options = dt.RuntimeOptions(orchestration_slots=1)
        async with dt.open_runtime(provider, _registry(), options) as rt:
            for i in range(6):
                await rt.client.start_orchestration(f"one-{i}", "Twice", i)
            for i in range(6):
                assert (await rt.client.wait_for_orchestration(f"one-{i}", timeout=30)).output == 2 * i
            for i in range(4):  # one at a time: the slot is free again when the previous one ended
                await rt.client.start_orchestration(f"seq-{i}", "Twice", i)
                assert (await rt.client.wait_for_orchestration(f"seq-{i}", timeout=30)).output == 2 * i


async def test_a_version_this_runtime_does_not_run_is_left_for_one_that_does(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        only_1 = dt.RuntimeOptions(supported_replay_versions=dt.VersionRange(below="2.0.0"))
        async with dt.open_runtime(provider, _registry(), only_1) as rt:
            await rt.client.start_orchestration("v2", "V2", 1, version="2.0.0")
            assert rt.stats.starts_handed_over == 0
            async with dt.open_runtime(await make_provider(), _registry()) as other:
                assert (await other.client.wait_for_orchestration("v2", timeout=30)).output == 3
            assert rt.stats.orchestration_turns == 0


class _Slots:
    """A ``FirstTurnHandoff`` that records what the client hands back."""

    def __init__(self) -> None:
        self.handed: list[object] = []

    def reserve(self) -> _Slots:
        return self

    @property
    def request(self) -> TurnRequest:
        return TurnRequest(30.0, 1)

    async def hand_over(self, item: object) -> None:
        self.handed.append(item)


async def test_a_start_whose_store_fails_raises_and_hands_its_slot_back(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        slots = _Slots()
        faulty = FaultyProvider(provider, {"enqueue_start": Fault(every=1, limit=1, retryable=True)})
        client = dt.Client(faulty, first_turns=slots)  # type: ignore[arg-type]
        with pytest.raises(dt.ProviderError):
            await client.start_orchestration("failed", "Twice", 1)
        assert slots.handed == [None]  # the reserved slot is freed, nothing to run
        assert (await client.get_status("failed")).status is dt.Status.NOT_FOUND
        await client.start_orchestration("locked", "Twice", 2)
        (batch,) = slots.handed[1:]
        assert batch.instance_id == "locked" and batch.attempt_count == 1  # type: ignore[attr-defined]
        with pytest.raises(dt.InstanceAlreadyExists):
            await client.start_orchestration("locked", "Twice", 3)
        assert slots.handed[2:] == [None]
