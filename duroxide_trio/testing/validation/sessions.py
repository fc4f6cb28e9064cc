"""Sessions: items with a ``session_id`` run on one owner at a time, one item at a time, in scheduling
order; an unowned session is claimed by the fetch that takes its first item; ``renew_sessions`` keeps a
busy owner's sessions and releases idle ones; an expired session moves to another owner.

Needs ``ProviderCapabilities(worker_routing=True)`` (``fetch_routed_work_items``, ``renew_sessions``).
"""

from __future__ import annotations

import anyio

from ...providers.base import Provider, ProviderFactory, TagFilter, WorkerRouting
from ._support import (
    LONG,
    activity_result,
    expect,
    expect_eq,
    fetch_routed,
    fresh_provider,
    lease_ids,
    lock_timeout,
    ok,
    past,
    peers,
    routed_activity,
    routed_of,
)


def owner(
    name: str, *, session_lock: float = LONG, max_sessions: int = 100, tags: TagFilter | None = None
) -> WorkerRouting:
    """The routing of session owner ``name`` (every tag unless ``tags``)."""
    return WorkerRouting(
        tags=tags if tags is not None else TagFilter.any(), owner=name, session_lock_timeout=session_lock,
        max_sessions=max_sessions,
    )


A = owner("owner-a")
B = owner("owner-b")


async def _enqueue(p: Provider, *items: tuple[int, str | None]) -> None:
    for i, session in items:
        await ok(p.enqueue_for_worker(routed_activity("inst", i, session_id=session)), "enqueue_for_worker")


async def _ack(p: Provider, token: str, activity_id: int) -> None:
    await ok(p.ack_work_item(token, activity_result("inst", activity_id)), "ack_work_item")


async def test_session_items_one_at_a_time(factory: ProviderFactory) -> None:
    """Of three items of one session, a fetch takes only the first; the next after the first is acked."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"), (3, "s1"))
        first = await fetch_routed(p, A)
        expect_eq(lease_ids(first), [("inst", 1)], "first fetch of a three-item session")
        expect_eq(await fetch_routed(p, A), [], "fetch while the session's item is in flight")
        await _ack(p, first[0].lock_token, 1)
        expect_eq(lease_ids(await fetch_routed(p, A)), [("inst", 2)], "fetch after the first item's ack")


async def test_session_items_in_scheduling_order(factory: ProviderFactory) -> None:
    """A session's items run in the order they were enqueued."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"), (3, "s1"), (4, "s1"))
        order: list[int] = []
        for _ in range(4):
            (lease,) = await fetch_routed(p, A)
            order.append(lease.item.id)
            await _ack(p, lease.lock_token, lease.item.id)
        expect_eq(order, [1, 2, 3, 4], "order the session's items ran in")


async def test_unowned_session_claimed_on_first_fetch(factory: ProviderFactory) -> None:
    """The first fetch of a session item claims the session: another owner gets none of its items, even
    after the first one is acked."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"))
        (lease,) = await fetch_routed(p, A)
        await _ack(p, lease.lock_token, 1)
        expect_eq(await fetch_routed(p, B), [], "another owner fetching an owned session")
        expect_eq(lease_ids(await fetch_routed(p, A)), [("inst", 2)], "the owner fetching its session")


async def test_different_sessions_run_in_parallel(factory: ProviderFactory) -> None:
    """Items of different sessions are fetched together (one per session)."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s2"), (3, "s1"), (4, "s2"), (5, "s3"))
        expect_eq(lease_ids(await fetch_routed(p, A)), [("inst", 1), ("inst", 2), ("inst", 5)], "fetched items")


async def test_sessions_spread_over_owners(factory: ProviderFactory) -> None:
    """Two owners take different sessions; each keeps its own."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s2"), (3, "s1"), (4, "s2"))
        (a1,) = await fetch_routed(p, A, max_items=1)
        (b1,) = await fetch_routed(p, B, max_items=1)
        expect_eq((a1.item.id, b1.item.id), (1, 2), "first items of owners A and B")
        await _ack(p, a1.lock_token, 1)
        await _ack(p, b1.lock_token, 2)
        expect_eq(lease_ids(await fetch_routed(p, B)), [("inst", 4)], "owner B's next item")
        expect_eq(lease_ids(await fetch_routed(p, A)), [("inst", 3)], "owner A's next item")


async def test_items_without_session_are_not_held_back(factory: ProviderFactory) -> None:
    """A busy or foreign session never blocks items without a session."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"), (3, None), (4, None))
        expect_eq(lease_ids(await fetch_routed(p, A, max_items=1)), [("inst", 1)], "owner A's first fetch")
        expect_eq(lease_ids(await fetch_routed(p, B)), [("inst", 3), ("inst", 4)], "other owner's fetch")


async def test_max_sessions_respected(factory: ProviderFactory) -> None:
    """An owner with ``max_sessions=1`` claims one session per fetch and no more while it owns one, but
    keeps fetching its own session and items without a session."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        one = owner("owner-a", max_sessions=1)
        await _enqueue(p, (1, "s1"), (2, "s2"), (3, "s3"), (4, None), (5, "s1"))
        first = await fetch_routed(p, one)
        expect_eq(lease_ids(first), [("inst", 1), ("inst", 4)], "fetch with max_sessions=1")
        await _ack(p, first[0].lock_token, 1)
        expect_eq(lease_ids(await fetch_routed(p, one)), [("inst", 5)], "fetch of the owned session's next item")
        expect_eq(lease_ids(await fetch_routed(p, B)), [("inst", 2), ("inst", 3)], "another owner's fetch")


async def test_session_moves_after_owner_lock_expires(factory: ProviderFactory) -> None:
    """When the owner stops renewing (it died), its session and its in-flight item move to another owner
    once the locks expire, and the item is redelivered first."""
    timeout = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"))
        await fetch_routed(p, owner("owner-a", session_lock=timeout), lock=timeout)
        expect_eq(await fetch_routed(p, B), [], "another owner while the session lock lives")
        await anyio.sleep(past(timeout))
        moved = await fetch_routed(p, B)
        expect_eq(lease_ids(moved), [("inst", 1)], "another owner after the owner's locks expired")
        expect_eq(moved[0].attempt_count, 2, "attempt count of the redelivered item")
        await _ack(p, moved[0].lock_token, 1)
        expect_eq(await fetch_routed(p, A), [], "the old owner after its session moved")
        expect_eq(lease_ids(await fetch_routed(p, B)), [("inst", 2)], "the new owner's next item")


async def test_renew_keeps_busy_session(factory: ProviderFactory) -> None:
    """``renew_sessions`` extends a session whose item is in flight, past its first lock."""
    timeout = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        routed = routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"))
        (lease,) = await fetch_routed(p, owner("owner-a", session_lock=timeout))
        await anyio.sleep(timeout * 0.6)
        count = await ok(routed.renew_sessions("owner-a", LONG, LONG), "renew_sessions")
        expect_eq(count, 1, "sessions owner A still owns")
        await anyio.sleep(timeout * 0.6)
        await _ack(p, lease.lock_token, 1)
        expect_eq(await fetch_routed(p, B), [], "another owner after the renewed lock's first deadline")


async def test_idle_session_released(factory: ProviderFactory) -> None:
    """``renew_sessions`` releases a session idle for ``idle_timeout``: another owner may claim it."""
    async with fresh_provider(factory) as p:
        routed = routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"))
        (lease,) = await fetch_routed(p, A)
        await _ack(p, lease.lock_token, 1)
        await anyio.sleep(0.05)
        count = await ok(routed.renew_sessions("owner-a", LONG, 0.01), "renew_sessions")
        expect_eq(count, 0, "sessions owner A owns after the idle release")
        expect_eq(lease_ids(await fetch_routed(p, B)), [("inst", 2)], "another owner after the release")


async def test_renew_does_not_release_busy_session(factory: ProviderFactory) -> None:
    """A session with an item in flight is not idle, however long ago it was claimed."""
    async with fresh_provider(factory) as p:
        routed = routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"))
        (lease,) = await fetch_routed(p, A)
        await anyio.sleep(0.05)
        count = await ok(routed.renew_sessions("owner-a", LONG, 0.01), "renew_sessions")
        expect_eq(count, 1, "sessions owner A owns while its item is in flight")
        await _ack(p, lease.lock_token, 1)
        expect_eq(await fetch_routed(p, B), [], "another owner right after the ack")


async def test_renew_touches_only_its_owner(factory: ProviderFactory) -> None:
    """``renew_sessions`` of one owner neither renews nor releases another owner's sessions."""
    async with fresh_provider(factory) as p:
        routed = routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"))
        (lease,) = await fetch_routed(p, A)
        await _ack(p, lease.lock_token, 1)
        await anyio.sleep(0.05)
        expect_eq(await ok(routed.renew_sessions("owner-b", LONG, 0.01), "renew_sessions"), 0, "owner B's count")
        expect_eq(await fetch_routed(p, B), [], "owner B after renewing its own (no) sessions")
        expect_eq(lease_ids(await fetch_routed(p, A)), [("inst", 2)], "owner A's next item")


async def test_abandoned_session_item_keeps_order(factory: ProviderFactory) -> None:
    """An abandoned (delayed) session item is still the session's next: later items wait behind it."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _enqueue(p, (1, "s1"), (2, "s1"))
        (lease,) = await fetch_routed(p, A)
        await ok(p.abandon_work_item(lease.lock_token, 0.3), "abandon_work_item")
        expect_eq(await fetch_routed(p, A), [], "fetch while the first item is delayed")
        await anyio.sleep(0.45)
        expect_eq(lease_ids(await fetch_routed(p, A)), [("inst", 1)], "fetch after the delay")


async def test_sessions_respect_tags(factory: ProviderFactory) -> None:
    """A session item is routed by its tag too."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await ok(p.enqueue_for_worker(routed_activity("inst", 1, session_id="s1", tag="gpu")), "enqueue")
        expect_eq(await fetch_routed(p, owner("owner-a", tags=TagFilter.default_only())), [], "default fetch")
        got = await fetch_routed(p, owner("owner-b", tags=TagFilter.tags("gpu")))
        expect_eq(lease_ids(got), [("inst", 1)], "gpu fetch")
        expect_eq(got[0].item.session_id, "s1", "session id of the fetched item")


async def test_concurrent_owners_never_share_a_session(factory: ProviderFactory) -> None:
    """Two connections racing over three sessions: every session's items go to one owner, in order."""
    async with fresh_provider(factory) as p, peers(factory, p, 2) as (a, b):
        routed_of(p)
        items = [(i, f"s{i % 3}") for i in range(1, 13)]
        await _enqueue(p, *items)
        runs: list[tuple[str, str, int]] = []

        async def work(provider: Provider, routing: WorkerRouting) -> None:
            for _ in range(40):
                leases = await fetch_routed(provider, routing, max_items=2)
                for lease in leases:
                    runs.append((routing.owner, lease.item.session_id or "", lease.item.id))
                    await _ack(provider, lease.lock_token, lease.item.id)
                if not leases:
                    await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(work, a, A)
            tg.start_soon(work, b, B)
        expect_eq(sorted(i for _, _, i in runs), list(range(1, 13)), "items run (each once)")
        for session in ("s0", "s1", "s2"):
            owners = {o for o, s, _ in runs if s == session}
            expect(len(owners) == 1, f"session {session} ran on {sorted(owners)}")
            ids = [i for _, s, i in runs if s == session]
            expect_eq(ids, sorted(ids), f"order of session {session}")
