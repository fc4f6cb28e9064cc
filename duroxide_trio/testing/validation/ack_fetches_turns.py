"""The next turn handed over by the activity ack (``ProviderCapabilities.ack_fetches_turns``):
``ack_work_items_and_fetch`` acks as ``ack_work_items`` does and, in the same transaction, locks the next
turns of the instances the committed completions were sent to, exactly as ``fetch_orchestration_item``
would (every visible message, the lock timeout asked for, the version filter), never an instance locked
by someone else.

Needs ``ProviderCapabilities(ack_fetches_turns=True)``; skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from ...history import ActivityResult, ExternalRaised, WorkItem
from ...providers.base import (
    AckedWithTurns,
    AckFetchesTurns,
    OrchestrationItem,
    Provider,
    ProviderFactory,
    TurnRequest,
    VersionRange,
    WorkItemLease,
    as_ack_fetching,
)
from ._support import (
    LONG,
    ack,
    activity,
    activity_result,
    create_instance,
    describe,
    expect,
    expect_eq,
    external,
    external_event,
    fail,
    fetch_orch,
    fresh_provider,
    lock_timeout,
    must_fetch_orch,
    must_fetch_work,
    ok,
    past,
    skip,
)


def _capable(p: Provider) -> AckFetchesTurns:
    fetching = as_ack_fetching(p)
    if fetching is None:
        skip("the provider does not declare ProviderCapabilities.ack_fetches_turns")
    return fetching


async def _ack_fetch(
    p: Provider, entries: Sequence[tuple[str, WorkItem | None]], max_items: int = 4, *,
    lock: float = LONG, versions: VersionRange | None = None,
) -> AckedWithTurns:
    acked = await ok(
        _capable(p).ack_work_items_and_fetch(entries, TurnRequest(lock, max_items, versions)),
        "ack_work_items_and_fetch",
    )
    expect_eq(len(acked.results), len(entries), "ack results (one per entry)")
    return acked


async def _waiting_activity(p: Provider, instance: str, version: str = "1.0.0") -> WorkItemLease:
    """``instance`` created at ``version`` with one scheduled activity (id 2), fetched (locked)."""
    await create_instance(p, instance, version=version, worker_items=[activity(instance, 2)])
    lease = await must_fetch_work(p, what=f"the activity of {instance!r}")
    expect_eq(lease.item.instance, instance, "the fetched activity's instance")
    return lease


def _only(acked: AckedWithTurns, instance: str, what: str) -> OrchestrationItem:
    if [i.instance_id for i in acked.items] != [instance]:
        fail(f"{what}: expected the next turn of {instance!r} only, got {[describe(i) for i in acked.items]}")
    return acked.items[0]


async def test_ack_hands_over_the_next_turn(factory: ProviderFactory) -> None:
    """The completion is acked and the instance's next turn comes back locked, with its history, every
    visible message (an event enqueued earlier and the completion) and attempt count 1; a fetch then finds
    nothing, and the batch commits with its token."""
    async with fresh_provider(factory) as p:
        _capable(p)
        lease = await _waiting_activity(p, "inst")
        await ok(p.enqueue_for_orchestrator(external("inst", "Early")), "enqueue_for_orchestrator")
        acked = await _ack_fetch(p, [(lease.lock_token, activity_result("inst", 2))])
        expect_eq(acked.results, [None], "ack results")
        item = _only(acked, "inst", "the ack's turns")
        expect_eq([type(m).__name__ for m in item.messages], ["ExternalRaised", "ActivityResult"],
                  "messages of the handed-over batch (in enqueue order)")
        expect_eq(item.attempt_count, 1, "attempt count of the handed-over batch")
        expect_eq(len(item.history), 1, "history of the handed-over batch (OrchestrationStarted)")
        expect_eq((item.orchestration_name, item.execution_id), ("TestOrch", 1), "name and execution")
        expect(await fetch_orch(p) is None, "the instance is locked: a fetch must return nothing")
        await ack(p, item, [external_event(2, "Early")], what="ack of the handed-over batch")
        expect(await fetch_orch(p) is None, "the handed-over batch was committed: nothing is left")


async def test_locked_instance_is_not_handed_over(factory: ProviderFactory) -> None:
    """An instance someone else holds is left alone: the completion is acked and waits for the holder's
    next turn."""
    async with fresh_provider(factory) as p:
        _capable(p)
        lease = await _waiting_activity(p, "inst")
        await ok(p.enqueue_for_orchestrator(external("inst", "Poke")), "enqueue_for_orchestrator")
        held = await must_fetch_orch(p, "inst", what="the holder's fetch")
        acked = await _ack_fetch(p, [(lease.lock_token, activity_result("inst", 2))])
        expect_eq(acked.results, [None], "ack results")
        expect_eq(acked.items, [], "turns handed over for an instance locked by someone else")
        await ack(p, held, [external_event(2, "Poke")], what="the holder's ack")
        item = await must_fetch_orch(p, "inst", what="the turn after the holder's")
        expect(any(isinstance(m, ActivityResult) for m in item.messages),
               f"the completion must wait for the next turn, got {describe(item)}")
        expect(not any(isinstance(m, ExternalRaised) for m in item.messages),
               "the holder's message was consumed by its ack")


async def test_version_filter_applies(factory: ProviderFactory) -> None:
    """The runtime's capability filter is honoured as by the fetch: an instance recorded at 1.0.0 is not
    handed to a 2.x runtime (its completion is still acked), it is to a 1.x one."""
    async with fresh_provider(factory) as p:
        _capable(p)
        lease = await _waiting_activity(p, "v1", "1.0.0")
        acked = await _ack_fetch(p, [(lease.lock_token, activity_result("v1", 2))], versions=VersionRange.major(2))
        expect_eq(acked.results, [None], "ack results")
        expect_eq(acked.items, [], "turns handed to a 2.x runtime for an instance at 1.0.0")
        item = await ok(p.fetch_orchestration_item(LONG, 0.0, versions=VersionRange.major(1)), "fetch (1.x)")
        expect(item is not None and item.instance_id == "v1", f"a 1.x fetch gets 'v1', got {describe(item)}")
    async with fresh_provider(factory) as p:
        lease = await _waiting_activity(p, "v1", "1.0.0")
        acked = await _ack_fetch(p, [(lease.lock_token, activity_result("v1", 2))], versions=VersionRange.major(1))
        _only(acked, "v1", "turns handed to a 1.x runtime")


async def test_at_most_max_items_in_entry_order(factory: ProviderFactory) -> None:
    """Three completions of two instances with room for one turn: the first instance's batch holds both of
    its completions; the other instance is left for a fetch."""
    async with fresh_provider(factory) as p:
        _capable(p)
        await create_instance(p, "a", worker_items=[activity("a", 2), activity("a", 3)])
        await create_instance(p, "b", worker_items=[activity("b", 2)])
        leases = {(lease.item.instance, lease.item.id): lease for lease in
                  [await must_fetch_work(p) for _ in range(3)]}
        entries: list[tuple[str, WorkItem | None]] = [
            (leases["a", 2].lock_token, activity_result("a", 2)),
            (leases["b", 2].lock_token, activity_result("b", 2)),
            (leases["a", 3].lock_token, activity_result("a", 3)),
        ]
        acked = await _ack_fetch(p, entries, max_items=1)
        expect_eq(acked.results, [None, None, None], "ack results")
        item = _only(acked, "a", "turns with max_items=1")
        expect_eq(len(item.messages), 2, "messages of 'a' (both completions)")
        await must_fetch_orch(p, "b", what="the instance left for a fetch")


async def test_lost_ack_hands_over_nothing(factory: ProviderFactory) -> None:
    """An entry whose lock is lost is refused and its completion is not enqueued: no turn for it."""
    async with fresh_provider(factory) as p:
        _capable(p)
        lease = await _waiting_activity(p, "inst")
        await ok(p.ack_work_item(lease.lock_token, None), "ack_work_item (drop)")
        acked = await _ack_fetch(p, [(lease.lock_token, activity_result("inst", 2))])
        expect(acked.results[0] is not None, "the second ack of one lock must be refused")
        expect_eq(acked.items, [], "turns handed over for a refused completion")
        expect(await fetch_orch(p) is None, "nothing was enqueued")


async def test_handed_over_lock_expires(factory: ProviderFactory) -> None:
    """A runtime that crashes after the ack loses nothing: the batch's lock (the timeout asked for) expires
    and a fetch gets every message again, counted as a second attempt."""
    async with fresh_provider(factory) as p:
        _capable(p)
        timeout = lock_timeout(factory)
        lease = await _waiting_activity(p, "inst")
        acked = await _ack_fetch(p, [(lease.lock_token, activity_result("inst", 2))], lock=timeout)
        _only(acked, "inst", "the ack's turns")
        expect(await fetch_orch(p) is None, "the handed-over batch is locked")
        await anyio.sleep(past(timeout))
        item = await must_fetch_orch(p, "inst", what="the fetch after the lock expired")
        expect_eq([type(m).__name__ for m in item.messages], ["ActivityResult"], "messages after the expiry")
        expect_eq(item.attempt_count, 2, "attempt count after the expiry")
