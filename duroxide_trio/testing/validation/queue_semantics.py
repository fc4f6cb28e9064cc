"""Queue semantics: FIFO, peek-lock, atomic worker ack, delayed visibility and early messages.

Deliberate difference from duroxide (``test_orphan_queue_messages_dropped``): messages for an instance
that does not exist yet are **kept**, not dropped. A client may enqueue events right after
``start_orchestration``, before the first turn created the instance row; they stay queued, are not
returned by fetch while the instance has neither a row nor a pending start, and are delivered with (or
after) the start. ``test_messages_for_unstarted_instance_kept`` asserts that contract.
"""

from __future__ import annotations

import anyio

from ...history import QueueMessage, TimerDue
from ...providers.base import Provider, ProviderFactory, now_ms
from ._support import (
    activity,
    activity_result,
    create_instance,
    expect,
    expect_eq,
    expect_error,
    expect_no_orch,
    expect_no_work,
    external,
    fresh_provider,
    lock_timeout,
    meta,
    must_fetch_orch,
    must_fetch_work,
    ok,
    past,
    peers,
    start_item,
    started,
)


async def test_worker_queue_fifo_ordering(factory: ProviderFactory) -> None:
    """Five worker items come out in enqueue order."""
    async with fresh_provider(factory) as p:
        for i in range(1, 6):
            await ok(p.enqueue_for_worker(activity("inst-A", i, name=f"Act{i}")), f"enqueue {i}")
        order = [(await must_fetch_work(p, what=f"fetch {i}")).item.id for i in range(1, 6)]
        expect_eq(order, [1, 2, 3, 4, 5], "worker queue order")
        await expect_no_work(p, "worker queue after five fetches")


async def test_worker_peek_lock_semantics(factory: ProviderFactory) -> None:
    """Fetch locks but does not remove an item (it comes back after abandon); only ack removes it."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue")
        lease = await must_fetch_work(p)
        await expect_no_work(p, "fetch while the item is locked")
        await ok(p.abandon_work_item(lease.lock_token), "abandon")
        again = await must_fetch_work(p, what="fetch after abandon (fetch must not have removed the item)")
        expect_eq(again.item, lease.item, "the item after abandon")
        await ok(p.ack_work_item(again.lock_token, None), "ack")
        await expect_no_work(p, "worker queue after ack")
        await expect_error(p.abandon_work_item(again.lock_token), "abandon after ack (the item is gone)")


async def test_worker_ack_atomicity(factory: ProviderFactory) -> None:
    """A worker ack removes the item and enqueues its completion in one step; a rejected ack does neither."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_worker(activity("inst-A", 2)), "enqueue")
        lease = await must_fetch_work(p)
        await expect_error(
            p.ack_work_item("bogus-token", activity_result("inst-A", 2)), "worker ack with a bogus token"
        )
        await expect_no_orch(p, "orchestrator queue after a rejected worker ack")
        await ok(p.ack_work_item(lease.lock_token, activity_result("inst-A", 2, result='"42"')), "worker ack")
        await expect_no_work(p, "worker queue after the ack")
        item = await must_fetch_orch(p, "inst-A", what="the completion")
        expect_eq(
            [(type(m).__name__, getattr(m, "id", None), getattr(m, "result", None)) for m in item.messages],
            [("ActivityResult", 2, '"42"')],
            "completion enqueued by the worker ack",
        )


async def test_timer_delayed_visibility(factory: ProviderFactory) -> None:
    """A TimerDue is invisible before its fire_at_ms, whether enqueued directly or by an ack; so is a
    message enqueued with a delay. All become visible once their time passed."""
    delay = min(0.5, lock_timeout(factory) / 2)
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        fire_at = now_ms() + int(delay * 1000)
        await ok(p.enqueue_for_orchestrator(TimerDue("inst-A", 1, 2, fire_at)), "enqueue a future timer")
        await expect_no_orch(p, "fetch before the timer fires")
        await create_instance(p, "inst-B", orchestrator_items=[TimerDue("inst-B", 1, 2, fire_at)])
        await ok(p.enqueue_for_orchestrator(external("inst-B", "Later"), delay), "enqueue with delay")
        await expect_no_orch(p, "fetch before the timers fire (timer written by an ack, delayed event)")
        await anyio.sleep(past(delay))
        seen: dict[str, list[str]] = {}
        for _ in range(2):
            item = await must_fetch_orch(p, what="fetch after the timers fired")
            seen[item.instance_id] = sorted(type(m).__name__ for m in item.messages)
        expect_eq(seen.get("inst-A"), ["TimerDue"], "inst-A's batch after its timer fired")
        expect_eq(seen.get("inst-B"), ["ExternalRaised", "TimerDue"], "inst-B's batch after its timer fired")


async def test_lost_lock_token_handling(factory: ProviderFactory) -> None:
    """Items whose lock token was lost (a crashed holder) become available again after the lock expires."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        await must_fetch_orch(p, "inst-A", lock=lt)
        await must_fetch_work(p, lock=lt)
        await expect_no_orch(p, "orchestration fetch while locked")
        await expect_no_work(p, "worker fetch while locked")
        await anyio.sleep(past(lt))
        await must_fetch_orch(p, "inst-A", what="orchestration fetch after the lost lock expired")
        await must_fetch_work(p, what="worker fetch after the lost lock expired")


async def test_worker_item_immediate_visibility(factory: ProviderFactory) -> None:
    """Worker items are visible at once, whether enqueued directly or by an orchestration ack."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-X", 1)), "enqueue_for_worker")
        await must_fetch_work(p, what="fetch right after enqueue_for_worker")
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        lease = await must_fetch_work(p, what="fetch right after the ack that scheduled it")
        expect_eq((lease.item.instance, lease.item.id), ("inst-A", 2), "activity scheduled by the ack")


async def test_worker_delayed_visibility_skips_future_items(factory: ProviderFactory) -> None:
    """An unlocked item whose visibility lies in the future is skipped; later items are served."""
    delay = min(0.5, lock_timeout(factory) / 2)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue 1")
        await ok(p.enqueue_for_worker(activity("inst-A", 2)), "enqueue 2")
        first = await must_fetch_work(p)
        expect_eq(first.item.id, 1, "first item")
        await ok(p.abandon_work_item(first.lock_token, delay), "abandon 1 with delay")
        second = await must_fetch_work(p, what="fetch while item 1 is delayed")
        expect_eq(second.item.id, 2, "the item served while item 1 is delayed")
        await expect_no_work(p, "fetch while item 1 is delayed and item 2 locked")
        await anyio.sleep(past(delay))
        again = await must_fetch_work(p, what="fetch after the delay")
        expect_eq(again.item.id, 1, "item 1 after its delay")


async def test_messages_for_unstarted_instance_kept(factory: ProviderFactory) -> None:
    """(Our contract, not duroxide's.) QueueMessages and events for an instance without a row or a
    pending start are neither returned nor dropped; once the start is enqueued they are delivered with it.
    For an existing instance they are delivered normally."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_orchestrator(QueueMessage("ghost", "q", '"1"')), "enqueue QueueMessage")
        await ok(p.enqueue_for_orchestrator(external("ghost", "Early")), "enqueue ExternalRaised")
        await expect_no_orch(p, "fetch of messages for an instance that does not exist")
        await expect_no_orch(p, "second fetch (the messages must be neither returned nor dropped)")
        expect_eq(
            await ok(p.get_instance_info("ghost"), "get_instance_info"), None, "enqueue must not create it"
        )
        # they must not block other instances either (no head-of-line blocking)
        await ok(p.enqueue_start(start_item("real")), "enqueue_start of another instance")
        other = await must_fetch_orch(p, "real", what="fetch behind the early messages")
        await ok(
            p.ack_orchestration_item(other.lock_token, 1, [started()], [], [], meta()),
            "ack of the other instance",
        )
        await ok(p.enqueue_start(start_item("ghost")), "enqueue_start")
        item = await must_fetch_orch(p, "ghost", what="fetch after the start")
        kinds = sorted(type(m).__name__ for m in item.messages)
        expect_eq(kinds, ["ExternalRaised", "QueueMessage", "StartOrchestration"], "the start's batch")
        await ok(p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta()), "first ack")
        await ok(
            p.enqueue_for_orchestrator(QueueMessage("ghost", "q", '"2"')), "enqueue for the existing instance"
        )
        again = await must_fetch_orch(p, "ghost", what="QueueMessage for an existing instance")
        expect(
            [(type(m), getattr(m, "data", None)) for m in again.messages] == [(QueueMessage, '"2"')],
            f"QueueMessage for an existing instance must be delivered, got {again.messages!r}",
        )


async def test_concurrent_worker_fetch_no_duplicates(factory: ProviderFactory) -> None:
    """Concurrent worker fetchers (several connections where the store allows) never get the same item
    twice, and together they drain the queue."""
    n = 20
    async with fresh_provider(factory) as p:
        for i in range(n):
            await ok(p.enqueue_for_worker(activity("inst-A", i + 1)), f"enqueue {i}")
        got: list[int] = []
        async with peers(factory, p, 4) as providers:

            async def _worker(provider: Provider) -> None:
                while len(got) <= 2 * n:  # bounded, so a provider that hands out duplicates fails fast
                    lease = await provider.fetch_work_item(30.0, 0.0)
                    if lease is None:
                        return
                    got.append(lease.item.id)
                    await provider.ack_work_item(lease.lock_token, None)

            async with anyio.create_task_group() as tg:
                for k in range(8):
                    tg.start_soon(_worker, providers[k % len(providers)])
        expect_eq(sorted(got), list(range(1, n + 1)), "activities fetched (each exactly once)")
