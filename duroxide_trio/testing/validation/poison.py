"""Poison messages: attempt counts start at 1, grow on every redelivery, are per message, can be undone
with ``ignore_attempt`` (never below 0), and a batch reports its maximum.

Also here (from duroxide's capability-filtering category, minus the filter): an instance whose stored
history cannot be decoded keeps being delivered with ``history_error`` while its attempt count climbs,
so the runtime can fail it as poison, and an ack can still append to it. These need the factory's
``corrupt_instance_history(provider, instance_id)`` hook and are skipped without it.
"""

from __future__ import annotations

import anyio

from ...history import ErrorDetails, OrchestrationFailed
from ...providers.base import ExecutionMetadata, ProviderError, ProviderFactory
from ._support import (
    activity,
    corrupt_history,
    create_instance,
    event,
    expect,
    expect_eq,
    external,
    fresh_provider,
    lock_timeout,
    meta,
    must_fetch_orch,
    must_fetch_work,
    ok,
    past,
    start_item,
    started,
    stored_max_attempt_count,
)


async def test_orchestration_attempt_count_starts_at_one(factory: ProviderFactory) -> None:
    """The first fetch of an orchestration message reports attempt 1."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(item.attempt_count, 1, "attempt count of the first fetch")
        await ok(p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta()), "ack")


async def test_orchestration_attempt_count_increments_on_refetch(factory: ProviderFactory) -> None:
    """Each abandon + refetch increments the attempt count: 1, 2, 3."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        counts = []
        for _ in range(3):
            item = await must_fetch_orch(p, "inst-A")
            counts.append(item.attempt_count)
            await ok(p.abandon_orchestration_item(item.lock_token), "abandon")
        expect_eq(counts, [1, 2, 3], "attempt counts of successive fetches")


async def test_worker_attempt_count_starts_at_one(factory: ProviderFactory) -> None:
    """The first fetch of a work item reports attempt 1."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p)
        expect_eq(lease.attempt_count, 1, "attempt count of the first fetch")


async def test_worker_attempt_count_increments_on_lock_expiry(factory: ProviderFactory) -> None:
    """A work item refetched after its lock expired reports attempt 2."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        first = await must_fetch_work(p, lock=lt)
        expect_eq(first.attempt_count, 1, "attempt count of the first fetch")
        await anyio.sleep(past(lt))
        again = await must_fetch_work(p, what="refetch after the lock expired")
        expect_eq(again.attempt_count, 2, "attempt count after lock expiry")


async def test_attempt_count_is_per_message(factory: ProviderFactory) -> None:
    """Attempt counts belong to messages, not to queues or to the provider."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start A")
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker 1")
        for _ in range(2):
            item = await must_fetch_orch(p, "inst-A")
            await ok(p.abandon_orchestration_item(item.lock_token), "abandon A")
            lease = await must_fetch_work(p)
            await ok(p.abandon_work_item(lease.lock_token), "abandon activity 1")
        await ok(p.enqueue_start(start_item("inst-B")), "enqueue_start B")
        await ok(p.enqueue_for_worker(activity("inst-B", 1)), "enqueue_for_worker 2")
        a = await must_fetch_orch(p, "inst-A")
        b = await must_fetch_orch(p, "inst-B")
        expect_eq(
            (a.attempt_count, b.attempt_count), (3, 1), "attempt counts of A (3rd fetch) and B (1st fetch)"
        )
        w1 = await must_fetch_work(p)
        w2 = await must_fetch_work(p)
        counts = {(w.item.instance, w.attempt_count) for w in (w1, w2)}
        expect_eq(counts, {("inst-A", 3), ("inst-B", 1)}, "attempt counts of the two work items")


async def test_abandon_work_item_ignore_attempt_decrements(factory: ProviderFactory) -> None:
    """``abandon_work_item(ignore_attempt=True)`` undoes that fetch's increment."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        first = await must_fetch_work(p)
        await ok(p.abandon_work_item(first.lock_token), "abandon")
        second = await must_fetch_work(p)
        expect_eq(second.attempt_count, 2, "attempt count after a plain abandon")
        await ok(p.abandon_work_item(second.lock_token, ignore_attempt=True), "abandon with ignore_attempt")
        third = await must_fetch_work(p)
        expect_eq(
            third.attempt_count,
            2,
            "attempt count after an ignore_attempt abandon (decremented, re-incremented)",
        )


async def test_abandon_orchestration_item_ignore_attempt_decrements(factory: ProviderFactory) -> None:
    """``abandon_orchestration_item(ignore_attempt=True)`` undoes that fetch's increment."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        first = await must_fetch_orch(p, "inst-A")
        await ok(p.abandon_orchestration_item(first.lock_token), "abandon")
        second = await must_fetch_orch(p, "inst-A")
        expect_eq(second.attempt_count, 2, "attempt count after a plain abandon")
        await ok(
            p.abandon_orchestration_item(second.lock_token, ignore_attempt=True),
            "abandon with ignore_attempt",
        )
        stored = await stored_max_attempt_count(factory, p, "inst-A")
        if stored is not None:
            expect_eq(stored, 1, "stored attempt count after an ignore_attempt abandon")
        third = await must_fetch_orch(p, "inst-A")
        expect_eq(
            third.attempt_count,
            2,
            "attempt count after an ignore_attempt abandon (decremented, re-incremented)",
        )


async def test_ignore_attempt_never_goes_negative(factory: ProviderFactory) -> None:
    """Repeated ``ignore_attempt`` abandons (also a stale repeat with the same token) floor at 0: the next
    fetch still reports 1."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        for round_ in range(2):
            item = await must_fetch_orch(p, "inst-A")
            expect_eq(item.attempt_count, 1, f"orchestration attempt count in round {round_}")
            await ok(
                p.abandon_orchestration_item(item.lock_token, ignore_attempt=True),
                "abandon with ignore_attempt",
            )
            try:
                await p.abandon_orchestration_item(item.lock_token, ignore_attempt=True)
            except ProviderError:
                pass  # a stale token may be rejected; it must not decrement again
            stored = await stored_max_attempt_count(factory, p, "inst-A")
            if stored is not None:
                expect_eq(stored, 0, "stored attempt count after ignore_attempt abandons")
            lease = await must_fetch_work(p)
            expect_eq(lease.attempt_count, 1, f"worker attempt count in round {round_}")
            await ok(
                p.abandon_work_item(lease.lock_token, ignore_attempt=True), "abandon work with ignore_attempt"
            )
            try:
                await p.abandon_work_item(lease.lock_token, ignore_attempt=True)
            except ProviderError:
                pass
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(item.attempt_count, 1, "orchestration attempt count after the rounds")
        lease = await must_fetch_work(p)
        expect_eq(lease.attempt_count, 1, "worker attempt count after the rounds")


async def test_max_attempt_count_across_message_batch(factory: ProviderFactory) -> None:
    """A batch mixing a message fetched before and new ones reports the maximum attempt count."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "Old")), "enqueue Old")
        for _ in range(2):
            item = await must_fetch_orch(p, "inst-A")
            await ok(p.abandon_orchestration_item(item.lock_token), "abandon")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "New1")), "enqueue New1")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "New2")), "enqueue New2")
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(len(item.messages), 3, "batch size")
        expect_eq(
            item.attempt_count, 3, "attempt count of a batch (max over its messages: Old is on its 3rd fetch)"
        )
        stored = await stored_max_attempt_count(factory, p, "inst-A")
        if stored is not None:
            expect_eq(stored, 3, "stored max attempt count")


async def test_fetch_deserialization_error_increments_attempt_count(factory: ProviderFactory) -> None:
    """Each delivery of an instance with undecodable history (abandon or lock expiry) increments attempts."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await corrupt_history(factory, p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A")), "enqueue")
        first = await must_fetch_orch(p, "inst-A", lock=lt)
        expect(first.history_error, "history_error on the first fetch")
        expect_eq(first.attempt_count, 1, "attempt count of the first fetch")
        await anyio.sleep(past(lt))
        second = await must_fetch_orch(p, "inst-A", what="refetch after expiry")
        expect(second.history_error, "history_error after expiry")
        expect_eq(second.attempt_count, 2, "attempt count after expiry")
        await ok(p.abandon_orchestration_item(second.lock_token), "abandon")
        third = await must_fetch_orch(p, "inst-A", what="refetch after abandon")
        expect_eq(third.attempt_count, 3, "attempt count after abandon")


async def test_fetch_deserialization_error_eventually_reaches_poison(factory: ProviderFactory) -> None:
    """``history_error`` stays set while the attempt count climbs past a poison threshold (here 5)."""
    threshold = 5
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await corrupt_history(factory, p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A")), "enqueue")
        counts = []
        for _ in range(threshold + 1):
            item = await must_fetch_orch(p, "inst-A")
            expect(item.history_error, f"history_error on attempt {item.attempt_count}")
            counts.append(item.attempt_count)
            await ok(p.abandon_orchestration_item(item.lock_token), "abandon")
        expect_eq(counts, list(range(1, threshold + 2)), "attempt counts of a corrupted instance")


async def test_ack_appends_event_to_corrupted_history(factory: ProviderFactory) -> None:
    """Ack is append-only: failing a corrupted instance appends OrchestrationFailed and sets its status."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await corrupt_history(factory, p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A")), "enqueue")
        item = await must_fetch_orch(p, "inst-A")
        expect(item.history_error, "history_error")
        failed = OrchestrationFailed(ErrorDetails("poison", "history", "history could not be decoded"))
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [event(99999, failed)],
                [],
                [],
                ExecutionMetadata(status="Failed", output="poison"),
            ),
            "ack onto a corrupted history",
        )
        info = await ok(p.get_instance_info("inst-A"), "get_instance_info")
        expect(info is not None and info.status == "Failed", f"status after the poison ack: {info!r}")
