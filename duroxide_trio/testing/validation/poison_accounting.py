"""Poison accounting: the attempt counts a provider keeps, as the runtime relies on them. The runtime fails
an orchestration batch or an activity as poison once its ``attempt_count`` passes ``max_attempts``
(``orchestration._decide``), and abandons with ``ignore_attempt=True`` when a failure was not the
message's fault (shutdown, a lost lock race). So a count must rise on every delivery of the same message
(abandon, lock expiry, a failed ack), fall back by one on ``ignore_attempt``, belong to one message of one
instance (a new message starts at 1, whatever its predecessors went through), grow without a cap, and be
durable (it survives another connection to the same store).

The basics (first fetch is 1, +1 per abandon, ``ignore_attempt`` decrements, a batch reports the max) are
in ``poison``; this category tests the accounting around them.
"""

from __future__ import annotations

import anyio

from ...history import ExternalRaised
from ...providers.base import Provider, ProviderFactory
from ._support import (
    activity,
    activity_result,
    create_instance,
    expect,
    expect_eq,
    expect_error,
    external,
    external_event,
    fresh_provider,
    lock_timeout,
    meta,
    must_fetch_orch,
    must_fetch_work,
    ok,
    open_peer,
    past,
    skip,
    start_item,
    stored_max_attempt_count,
)


async def _abandon_orch(p: Provider, instance: str, times: int, **kwargs: object) -> list[int]:
    counts = []
    for _ in range(times):
        item = await must_fetch_orch(p, instance)
        counts.append(item.attempt_count)
        await ok(p.abandon_orchestration_item(item.lock_token, **kwargs), "abandon_orchestration_item")  # type: ignore[arg-type]
    return counts


async def _abandon_work(p: Provider, times: int, **kwargs: object) -> list[int]:
    counts = []
    for _ in range(times):
        lease = await must_fetch_work(p)
        counts.append(lease.attempt_count)
        await ok(p.abandon_work_item(lease.lock_token, **kwargs), "abandon_work_item")  # type: ignore[arg-type]
    return counts


async def test_orch_count_rises_on_lock_expiry(factory: ProviderFactory) -> None:
    """A batch whose lock expired unacked is redelivered with its attempt count raised."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        first = await must_fetch_orch(p, "inst-A", lock=lt)
        expect_eq(first.attempt_count, 1, "attempt count of the first fetch")
        await anyio.sleep(past(lt))
        again = await must_fetch_orch(p, "inst-A", what="refetch after the lock expired")
        expect_eq(again.attempt_count, 2, "attempt count after lock expiry")


async def test_orch_count_rises_after_failed_ack(factory: ProviderFactory) -> None:
    """An ack refused because the lock expired leaves the messages counted: the next fetch reports 2."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        first = await must_fetch_orch(p, "inst-A", lock=lt)
        await anyio.sleep(past(lt))
        await expect_error(
            p.ack_orchestration_item(first.lock_token, 1, [], [], [], meta()), "ack after lock expiry"
        )
        again = await must_fetch_orch(p, "inst-A", what="refetch after the refused ack")
        expect_eq(again.attempt_count, 2, "attempt count after a refused ack")


async def test_orch_count_has_no_cap(factory: ProviderFactory) -> None:
    """Counts keep rising past any max_attempts the runtime may use (12 deliveries report 1..12)."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        expect_eq(await _abandon_orch(p, "inst-A", 12), list(range(1, 13)), "attempt counts of 12 deliveries")


async def test_orch_abandon_with_delay_counts(factory: ProviderFactory) -> None:
    """An abandon with a delay counts the attempt like one without."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        await ok(p.abandon_orchestration_item(item.lock_token, delay=0.3), "abandon with delay")
        await anyio.sleep(0.45)
        again = await must_fetch_orch(p, "inst-A", what="refetch after the delay")
        expect_eq(again.attempt_count, 2, "attempt count after a delayed abandon")


async def test_orch_ignore_attempt_repeated_stays_at_one(factory: ProviderFactory) -> None:
    """Repeated ``ignore_attempt`` abandons (a runtime shutting down again and again) never count."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        counts = await _abandon_orch(p, "inst-A", 4, ignore_attempt=True)
        expect_eq(counts, [1, 1, 1, 1], "attempt counts across ignore_attempt abandons")
        stored = await stored_max_attempt_count(factory, p, "inst-A")
        if stored is not None:
            expect_eq(stored, 0, "stored attempt count after an ignore_attempt abandon")


async def test_orch_mixed_abandons_accumulate(factory: ProviderFactory) -> None:
    """Plain abandons count and ignore_attempt abandons do not: plain, ignore, plain gives 1, 2, 2, 3."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        counts = await _abandon_orch(p, "inst-A", 1)
        counts += await _abandon_orch(p, "inst-A", 1, ignore_attempt=True)
        counts += await _abandon_orch(p, "inst-A", 1)
        counts += [(await must_fetch_orch(p, "inst-A")).attempt_count]
        expect_eq(counts, [1, 2, 2, 3], "attempt counts across mixed abandons")


async def test_orch_new_message_after_ack_starts_at_one(factory: ProviderFactory) -> None:
    """After an ack consumed a much-retried batch, a new message to the instance starts at attempt 1."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "Old")), "enqueue")
        expect_eq(await _abandon_orch(p, "inst-A", 3), [1, 2, 3], "attempt counts of the old message")
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(item.attempt_count, 4, "attempt count of the fourth delivery")
        await ok(
            p.ack_orchestration_item(item.lock_token, 1, [external_event(2, "Old")], [], [], meta()), "ack"
        )
        await ok(p.enqueue_for_orchestrator(external("inst-A", "New")), "enqueue")
        fresh = await must_fetch_orch(p, "inst-A")
        expect_eq([m.name for m in fresh.messages if isinstance(m, ExternalRaised)], ["New"], "batch")
        expect_eq(fresh.attempt_count, 1, "attempt count of a new message after the ack")


async def test_orch_new_message_joins_retried_batch(factory: ProviderFactory) -> None:
    """A message arriving while a batch is being retried starts at 1; the batch reports the old maximum."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "Old")), "enqueue")
        await _abandon_orch(p, "inst-A", 2)
        await ok(p.enqueue_for_orchestrator(external("inst-A", "New")), "enqueue")
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(
            sorted(m.name for m in item.messages if isinstance(m, ExternalRaised)), ["New", "Old"], "batch"
        )
        expect_eq(item.attempt_count, 3, "batch attempt count (the old message's third delivery)")
        await ok(p.ack_orchestration_item(item.lock_token, 1, [], [], [], meta()), "ack")


async def test_orch_counts_independent_per_instance(factory: ProviderFactory) -> None:
    """Retrying one instance's batch does not raise another instance's count."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start A")
        expect_eq(await _abandon_orch(p, "inst-A", 3), [1, 2, 3], "attempt counts of inst-A")
        await ok(p.enqueue_start(start_item("inst-B")), "enqueue_start B")
        seen: dict[str, int] = {}
        for _ in range(2):
            item = await must_fetch_orch(p)
            seen[item.instance_id] = item.attempt_count
        expect_eq(seen, {"inst-A": 4, "inst-B": 1}, "attempt counts per instance")


async def _reopen_or_skip(factory: ProviderFactory, p: Provider) -> Provider:
    peer = await open_peer(factory, p)
    if peer is None:
        skip("the store cannot be opened a second time (in-memory, and the factory has no open_peer hook)")
    return peer


async def test_orch_count_survives_reopen(factory: ProviderFactory) -> None:
    """Attempt counts are stored: another provider on the same store sees the count go on."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        await _abandon_orch(p, "inst-A", 2)
        other = await _reopen_or_skip(factory, p)
        try:
            item = await must_fetch_orch(other, "inst-A", what="fetch through a reopened provider")
            expect_eq(item.attempt_count, 3, "attempt count seen through a reopened provider")
        finally:
            await other.close()


async def test_worker_count_rises_on_each_abandon(factory: ProviderFactory) -> None:
    """Each plain abandon of a work item counts: 1, 2, 3, 4."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        expect_eq(await _abandon_work(p, 4), [1, 2, 3, 4], "attempt counts of successive deliveries")


async def test_worker_ignore_attempt_repeated_stays_at_one(factory: ProviderFactory) -> None:
    """Repeated ``ignore_attempt`` abandons of a work item never count."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        expect_eq(await _abandon_work(p, 4, ignore_attempt=True), [1, 1, 1, 1], "attempt counts")


async def test_worker_abandon_with_delay_counts(factory: ProviderFactory) -> None:
    """A delayed abandon of a work item counts the attempt."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p)
        await ok(p.abandon_work_item(lease.lock_token, delay=0.3), "abandon with delay")
        await anyio.sleep(0.45)
        again = await must_fetch_work(p, what="refetch after the delay")
        expect_eq(again.attempt_count, 2, "attempt count after a delayed abandon")


async def test_worker_expiry_then_abandon_accumulate(factory: ProviderFactory) -> None:
    """Lock expiry and abandon both count on the same work item: 1, then 2, then 3."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        first = await must_fetch_work(p, lock=lt)
        await anyio.sleep(past(lt))
        second = await must_fetch_work(p, what="refetch after the lock expired")
        await ok(p.abandon_work_item(second.lock_token), "abandon")
        third = await must_fetch_work(p, what="refetch after the abandon")
        expect_eq(
            [first.attempt_count, second.attempt_count, third.attempt_count], [1, 2, 3], "attempt counts"
        )


async def test_worker_failed_ack_keeps_the_count(factory: ProviderFactory) -> None:
    """An ack refused after lock expiry does not reset the count: the next delivery reports 2."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        first = await must_fetch_work(p, lock=lt)
        await anyio.sleep(past(lt))
        await expect_error(
            p.ack_work_item(first.lock_token, activity_result("inst-A", 1)), "ack after expiry"
        )
        again = await must_fetch_work(p, what="refetch after the refused ack")
        expect_eq(again.attempt_count, 2, "attempt count after a refused ack")


async def test_worker_counts_independent_per_item(factory: ProviderFactory) -> None:
    """Retrying one work item leaves the others at attempt 1."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue 1")
        expect_eq(await _abandon_work(p, 3), [1, 2, 3], "attempt counts of the first item")
        await ok(p.enqueue_for_worker(activity("inst-A", 2)), "enqueue 2")
        await ok(p.enqueue_for_worker(activity("inst-B", 1)), "enqueue 3")
        seen = {}
        for _ in range(3):
            lease = await must_fetch_work(p)
            seen[(lease.item.instance, lease.item.id)] = lease.attempt_count
        expect_eq(seen, {("inst-A", 1): 4, ("inst-A", 2): 1, ("inst-B", 1): 1}, "attempt counts per item")


async def test_worker_new_item_after_ack_starts_at_one(factory: ProviderFactory) -> None:
    """An activity enqueued again with the same id after an ack (a retry) starts at attempt 1."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        await _abandon_work(p, 2)
        lease = await must_fetch_work(p)
        expect_eq(lease.attempt_count, 3, "attempt count of the third delivery")
        await ok(p.ack_work_item(lease.lock_token, None), "ack_work_item")
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue the same activity again")
        again = await must_fetch_work(p)
        expect_eq(again.attempt_count, 1, "attempt count of the re-enqueued activity")


async def test_worker_count_survives_reopen(factory: ProviderFactory) -> None:
    """A work item's count is stored: another provider on the same store sees it go on."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        await _abandon_work(p, 2)
        other = await _reopen_or_skip(factory, p)
        try:
            lease = await must_fetch_work(other, what="fetch through a reopened provider")
            expect_eq(lease.attempt_count, 3, "attempt count seen through a reopened provider")
        finally:
            await other.close()


async def test_stored_count_matches_reported(factory: ProviderFactory) -> None:
    """The stored attempt count (factory test hook) equals what fetch reported, after each delivery."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        if await stored_max_attempt_count(factory, p, "inst-A") is None:
            skip("factory has no test_hooks(provider).max_attempt_count to read the stored count")
        for expected in (1, 2, 3):
            item = await must_fetch_orch(p, "inst-A")
            stored = await stored_max_attempt_count(factory, p, "inst-A")
            expect(
                item.attempt_count == expected == stored,
                f"delivery {expected}: fetch reported {item.attempt_count}, stored {stored}",
            )
            await ok(p.abandon_orchestration_item(item.lock_token), "abandon")
