"""Eager dispatch: a turn's ack with ``eager=EagerLock(...)`` locks up to ``max_items`` of the activities it
enqueues that the request accepts (its tag filter, no session, its activity names; not cancelled in the
same turn), in scheduling order, for the caller, in the same transaction, and returns them as ordinary
leases (own token, attempt 1) that ack, renew, abandon and expire like fetched ones; the others stay in
the queue for any fetch. A failed ack locks nothing.

Needs ``ProviderCapabilities(eager_dispatch=True)``; skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from ...history import ActivityExecute
from ...providers.base import (
    EagerCapable,
    EagerLock,
    ExecutionMetadata,
    Provider,
    ProviderError,
    ProviderFactory,
    ScheduledActivity,
    TagFilter,
    WorkItemLease,
    as_eager,
)
from ._support import (
    LONG,
    activity_result,
    create_instance,
    expect,
    expect_eq,
    expect_error,
    expect_permanent,
    external_event,
    fetch_work,
    fresh_provider,
    lease_ids,
    lock_timeout,
    new_turn,
    ok,
    past,
    routed_activity,
    skip,
)


def eager_of(provider: Provider) -> EagerCapable:
    """``provider`` as an eager-dispatch provider, or skip the test."""
    eager = as_eager(provider)
    if eager is None:
        skip("provider does not declare ProviderCapabilities(eager_dispatch=True)")
    return eager


async def _eager_turn(
    p: Provider,
    instance: str,
    items: Sequence[ActivityExecute],
    request: EagerLock | None,
    cancelled: Sequence[ScheduledActivity] = (),
) -> list[WorkItemLease]:
    """One turn of ``instance`` that schedules ``items`` and asks for ``request``; the leases it returned."""
    item = await new_turn(p, instance)
    leases = await ok(
        eager_of(p).ack_orchestration_item(
            item.lock_token,
            item.execution_id,
            [external_event(len(item.history) + 1, "Poke")],
            list(items),
            [],
            ExecutionMetadata(),
            list(cancelled),
            eager=request,
        ),
        "ack_orchestration_item(eager=...)",
    )
    return list(leases or [])


async def _fetch_all(p: Provider, lock: float = LONG) -> list[WorkItemLease]:
    leases = []
    while (lease := await fetch_work(p, lock)) is not None:
        leases.append(lease)
    return leases


def _acts(instance: str, *ids: int, tag: str | None = None) -> list[ActivityExecute]:
    return [routed_activity(instance, i, tag=tag) for i in ids]


async def test_eager_locks_up_to_max_items_in_order(factory: ProviderFactory) -> None:
    """Of three activities, ``max_items=2`` locks the first two (attempt 1, distinct tokens); a fetch
    finds only the third."""
    async with fresh_provider(factory) as p:
        eager_of(p)
        await create_instance(p, "inst")
        leases = await _eager_turn(p, "inst", _acts("inst", 1, 2, 3), EagerLock(2, LONG))
        expect_eq(lease_ids(leases), [("inst", 1), ("inst", 2)], "items locked by the ack")
        expect_eq([lease.attempt_count for lease in leases], [1, 1], "attempt counts of eager leases")
        expect(len({lease.lock_token for lease in leases}) == 2, "each eager lease has its own token")
        expect_eq(lease_ids(await _fetch_all(p)), [("inst", 3)], "items a fetch finds after the eager ack")


async def test_eager_leases_ack_like_fetched_ones(factory: ProviderFactory) -> None:
    """An eager lease is renewed and acked with its token; the completion reaches the orchestrator
    queue and the item is gone."""
    async with fresh_provider(factory) as p:
        eager_of(p)
        await create_instance(p, "inst")
        (lease,) = await _eager_turn(p, "inst", _acts("inst", 1), EagerLock(5, LONG))
        await ok(p.renew_work_item_lock(lease.lock_token, LONG), "renew_work_item_lock of an eager lease")
        await ok(p.ack_work_item(lease.lock_token, activity_result("inst", 1)), "ack_work_item of an eager lease")
        expect_eq(await _fetch_all(p), [], "worker queue after the eager lease was acked")
        item = await new_turn(p, "inst")
        expect(
            any(getattr(m, "id", None) == 1 and type(m).__name__ == "ActivityResult" for m in item.messages),
            f"the eager lease's completion is delivered (messages: {[type(m).__name__ for m in item.messages]})",
        )


async def test_eager_respects_tags_sessions_and_names(factory: ProviderFactory) -> None:
    """Only items the request accepts are locked: not a tag its filter refuses, never a session item,
    not an activity name outside ``activities``; the rest stay for fetches."""
    async with fresh_provider(factory) as p:
        eager_of(p)
        await create_instance(p, "inst")
        items = [
            routed_activity("inst", 1, tag="gpu"),
            routed_activity("inst", 2, session_id="s1"),
            routed_activity("inst", 3, name="Other"),
            routed_activity("inst", 4),
            routed_activity("inst", 5, tag="io"),
        ]
        request = EagerLock(10, LONG, TagFilter.default_and("io"), frozenset({"Act"}))
        leases = await _eager_turn(p, "inst", items, request)
        expect_eq(lease_ids(leases), [("inst", 4), ("inst", 5)], "items locked by a filtered eager ack")
        left = sorted(lease_ids(await _fetch_all(p)))
        expect_eq(left, [("inst", 1), ("inst", 2), ("inst", 3)], "items left in the queue")


async def test_no_request_locks_nothing(factory: ProviderFactory) -> None:
    """Without ``eager`` (or with ``max_items=0``) the ack returns no lease and every item is fetchable."""
    async with fresh_provider(factory) as p:
        eager_of(p)
        await create_instance(p, "inst")
        expect_eq(await _eager_turn(p, "inst", _acts("inst", 1), None), [], "leases of an ack without eager")
        expect_eq(await _eager_turn(p, "inst", _acts("inst", 2), EagerLock(0, LONG)), [], "leases of max_items=0")
        expect_eq(sorted(lease_ids(await _fetch_all(p))), [("inst", 1), ("inst", 2)], "fetchable items")


async def test_cancelled_in_the_same_turn_is_not_locked(factory: ProviderFactory) -> None:
    """An activity scheduled and cancelled in the same turn nets to nothing: not locked, not queued."""
    async with fresh_provider(factory) as p:
        eager_of(p)
        await create_instance(p, "inst")
        leases = await _eager_turn(
            p, "inst", _acts("inst", 1, 2), EagerLock(2, LONG), cancelled=[ScheduledActivity("inst", 1, 1)]
        )
        expect_eq(lease_ids(leases), [("inst", 2)], "items locked when item 1 is cancelled in the turn")
        expect_eq(await _fetch_all(p), [], "worker queue after the turn")


async def test_failed_ack_locks_nothing(factory: ProviderFactory) -> None:
    """An ack with a lost lock raises and neither enqueues nor locks anything."""
    async with fresh_provider(factory) as p:
        eager = eager_of(p)
        await create_instance(p, "inst")
        item = await new_turn(p, "inst")
        err = await expect_error(
            eager.ack_orchestration_item(
                "not-a-token", item.execution_id, [], _acts("inst", 1), [], ExecutionMetadata(), [],
                eager=EagerLock(1, LONG),
            ),
            "ack_orchestration_item with an unknown token and eager",
            ProviderError,
        )
        expect_permanent(err, "ack with an unknown token")
        expect_eq(await _fetch_all(p), [], "worker queue after the failed ack")


async def test_eager_lock_expires_and_moves(factory: ProviderFactory) -> None:
    """An eager lease nobody renews (its runtime crashed) expires after its lock timeout; a fetch then
    takes the item as its second delivery, and the old token no longer acks."""
    async with fresh_provider(factory) as p:
        eager_of(p)
        timeout = lock_timeout(factory)
        await create_instance(p, "inst")
        (lease,) = await _eager_turn(p, "inst", _acts("inst", 1), EagerLock(1, timeout))
        expect_eq(await _fetch_all(p), [], "fetch while the eager lock lives")
        await anyio.sleep(past(timeout))
        moved = await _fetch_all(p)
        expect_eq(lease_ids(moved), [("inst", 1)], "fetch after the eager lock expired")
        expect_eq(moved[0].attempt_count, 2, "attempt count of the delivery after the eager one")
        err = await expect_error(
            p.ack_work_item(lease.lock_token, activity_result("inst", 1)), "ack with the expired eager token"
        )
        expect_permanent(err, "ack with the expired eager token")


async def test_eager_abandon_makes_it_fetchable(factory: ProviderFactory) -> None:
    """An eager lease given back (``abandon_work_item``) is fetched at once."""
    async with fresh_provider(factory) as p:
        eager_of(p)
        await create_instance(p, "inst")
        (lease,) = await _eager_turn(p, "inst", _acts("inst", 1), EagerLock(1, LONG))
        await ok(p.abandon_work_item(lease.lock_token, None, ignore_attempt=True), "abandon_work_item")
        moved = await _fetch_all(p)
        expect_eq(lease_ids(moved), [("inst", 1)], "fetch after the eager lease was abandoned")
        expect_eq(moved[0].attempt_count, 1, "attempt count after an abandon that gives the attempt back")


async def test_release_gives_back_what_a_lost_answer_locked(factory: ProviderFactory) -> None:
    """``release_eager(claim)`` frees the items an eager ack locked under ``claim`` (as when the ack's
    answer was lost after it committed): fetchable at once, the attempt not counted, the old tokens
    dead; other claims' locks are untouched."""
    async with fresh_provider(factory) as p:
        eager = eager_of(p)
        await create_instance(p, "inst")
        lost = await _eager_turn(p, "inst", _acts("inst", 1, 2), EagerLock(2, LONG, claim="c0ffee01"))
        kept = await _eager_turn(p, "inst", _acts("inst", 3), EagerLock(1, LONG, claim="c0ffee02"))
        expect_eq(len(lost) + len(kept), 3, "items locked by the two eager acks")
        expect_eq(await ok(eager.release_eager("c0ffee01"), "release_eager"), 2, "items released")
        expect_eq(await ok(eager.release_eager(""), "release_eager('')"), 0, "items released for no claim")
        moved = await _fetch_all(p)
        expect_eq(sorted(lease_ids(moved)), [("inst", 1), ("inst", 2)], "items fetchable after the release")
        expect_eq([lease.attempt_count for lease in moved], [1, 1], "attempt counts after the release")
        err = await expect_error(
            p.ack_work_item(lost[0].lock_token, activity_result("inst", 1)), "ack with a released eager token"
        )
        expect_permanent(err, "ack with a released eager token")
        await ok(p.ack_work_item(kept[0].lock_token, activity_result("inst", 3)), "ack of the other claim's lease")
