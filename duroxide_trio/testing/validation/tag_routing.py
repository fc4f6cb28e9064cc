"""Tag routing: a worker fetch takes only the activity tags its ``TagFilter`` accepts, inside the fetch
(an item no filter accepts waits in the queue and never blocks accepted work behind it).

Needs ``ProviderCapabilities(worker_routing=True)`` (``fetch_routed_work_items``); skipped otherwise.
"""

from __future__ import annotations

import anyio

from ...providers.base import Provider, ProviderFactory, TagFilter, WorkerRouting
from ._support import (
    LONG,
    ack,
    activity_result,
    admin_of,
    create_instance,
    expect,
    expect_eq,
    fetch_routed,
    fresh_provider,
    lease_ids,
    lock_timeout,
    must_fetch_orch,
    new_turn,
    ok,
    past,
    peers,
    routed_activity,
    routed_of,
)

DEFAULT = WorkerRouting(tags=TagFilter.default_only(), owner="w1")
GPU = WorkerRouting(tags=TagFilter.tags("gpu"), owner="w1")
GPU_AND_DEFAULT = WorkerRouting(tags=TagFilter.default_and("gpu"), owner="w1")
ANY = WorkerRouting(tags=TagFilter.any(), owner="w1")


async def _mixed(p: Provider) -> None:
    """Enqueue, in this order: untagged 1, gpu 2, io 3, untagged 4, gpu 5."""
    for i, tag in ((1, None), (2, "gpu"), (3, "io"), (4, None), (5, "gpu")):
        await ok(p.enqueue_for_worker(routed_activity("inst", i, tag=tag)), "enqueue_for_worker")


async def test_default_filter_fetches_only_untagged(factory: ProviderFactory) -> None:
    """``TagFilter.default_only()`` takes untagged items and nothing tagged."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _mixed(p)
        leases = await fetch_routed(p, DEFAULT)
        expect_eq(lease_ids(leases), [("inst", 1), ("inst", 4)], "items fetched by the default filter")
        expect_eq(await fetch_routed(p, DEFAULT), [], "a second default fetch (tagged items must stay)")


async def test_tags_filter_fetches_only_listed_tags(factory: ProviderFactory) -> None:
    """``TagFilter.tags("gpu")`` takes gpu items only: not untagged ones, not other tags."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _mixed(p)
        leases = await fetch_routed(p, GPU)
        expect_eq(lease_ids(leases), [("inst", 2), ("inst", 5)], "items fetched by TagFilter.tags('gpu')")


async def test_default_and_fetches_untagged_and_listed(factory: ProviderFactory) -> None:
    """``TagFilter.default_and("gpu")`` takes untagged and gpu items, not io ones."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _mixed(p)
        leases = await fetch_routed(p, GPU_AND_DEFAULT)
        expect_eq(
            lease_ids(leases), [("inst", 1), ("inst", 2), ("inst", 4), ("inst", 5)],
            "items fetched by TagFilter.default_and('gpu')",
        )


async def test_any_filter_fetches_everything(factory: ProviderFactory) -> None:
    """``TagFilter.any()`` takes every item, oldest first."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _mixed(p)
        leases = await fetch_routed(p, ANY)
        expect_eq([i for _, i in lease_ids(leases)], [1, 2, 3, 4, 5], "items fetched by TagFilter.any()")


async def test_unaccepted_item_waits(factory: ProviderFactory) -> None:
    """An item no fetch accepts stays queued (not locked, not counted as an attempt) until a runtime
    with a matching filter fetches it, at its first delivery."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await ok(p.enqueue_for_worker(routed_activity("inst", 1, tag="io")), "enqueue_for_worker")
        for _ in range(3):
            expect_eq(await fetch_routed(p, GPU_AND_DEFAULT), [], "fetch by a filter without 'io'")
        io = WorkerRouting(tags=TagFilter.tags("io"), owner="w2")
        leases = await fetch_routed(p, io)
        expect_eq(lease_ids(leases), [("inst", 1)], "fetch by TagFilter.tags('io')")
        expect_eq(leases[0].attempt_count, 1, "attempt count of the first matching delivery")


async def test_filter_is_part_of_the_fetch(factory: ProviderFactory) -> None:
    """A one-item fetch finds the accepted item behind many unaccepted ones (the filter is in the
    query, not applied to what an unfiltered fetch returned)."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        for i in range(1, 21):
            await ok(p.enqueue_for_worker(routed_activity("inst", i, tag="io")), "enqueue_for_worker")
        await ok(p.enqueue_for_worker(routed_activity("inst", 21, tag="gpu")), "enqueue_for_worker")
        leases = await fetch_routed(p, GPU, max_items=1)
        expect_eq(lease_ids(leases), [("inst", 21)], "one-item gpu fetch behind 20 io items")


async def test_fetched_lease_carries_its_tag(factory: ProviderFactory) -> None:
    """The fetched item keeps its tag (the activity sees ``ActivityContext.tag``)."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await ok(p.enqueue_for_worker(routed_activity("inst", 1, tag="gpu")), "enqueue_for_worker")
        leases = await fetch_routed(p, GPU)
        expect(len(leases) == 1, f"expected one gpu item, got {lease_ids(leases)}")
        expect_eq(leases[0].item.tag, "gpu", "tag of the fetched item")


async def test_tags_are_case_sensitive(factory: ProviderFactory) -> None:
    """``"GPU"`` is not ``"gpu"``."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await ok(p.enqueue_for_worker(routed_activity("inst", 1, tag="GPU")), "enqueue_for_worker")
        expect_eq(await fetch_routed(p, GPU), [], "TagFilter.tags('gpu') fetching a 'GPU' item")
        upper = WorkerRouting(tags=TagFilter.tags("GPU"), owner="w1")
        expect_eq(lease_ids(await fetch_routed(p, upper)), [("inst", 1)], "TagFilter.tags('GPU')")


async def test_turn_enqueued_tagged_items_are_routed(factory: ProviderFactory) -> None:
    """Tagged activities written by ``ack_orchestration_item`` are routed like enqueued ones."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await create_instance(p, "inst")
        item = await new_turn(p, "inst")
        await ack(p, item, worker_items=[routed_activity("inst", 7, tag="gpu"), routed_activity("inst", 8)])
        expect_eq(lease_ids(await fetch_routed(p, GPU)), [("inst", 7)], "gpu fetch after a turn")
        expect_eq(lease_ids(await fetch_routed(p, DEFAULT)), [("inst", 8)], "default fetch after a turn")


async def test_tagged_item_ack_enqueues_completion(factory: ProviderFactory) -> None:
    """A routed lease acks like any other: the item is gone and its completion reaches the instance."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await create_instance(p, "inst")
        await ok(p.enqueue_for_worker(routed_activity("inst", 1, tag="gpu")), "enqueue_for_worker")
        (lease,) = await fetch_routed(p, GPU)
        await ok(p.ack_work_item(lease.lock_token, activity_result("inst", 1)), "ack_work_item")
        expect_eq(await fetch_routed(p, ANY), [], "worker queue after the ack")
        await must_fetch_orch(p, "inst", what="fetch of the completion")


async def test_abandoned_tagged_item_goes_back_to_matching_filters(factory: ProviderFactory) -> None:
    """An abandoned gpu item is fetched again by a gpu filter, never by the default one."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await ok(p.enqueue_for_worker(routed_activity("inst", 1, tag="gpu")), "enqueue_for_worker")
        (lease,) = await fetch_routed(p, GPU)
        await ok(p.abandon_work_item(lease.lock_token, None), "abandon_work_item")
        expect_eq(await fetch_routed(p, DEFAULT), [], "default fetch after the abandon")
        again = await fetch_routed(p, GPU)
        expect_eq(lease_ids(again), [("inst", 1)], "gpu fetch after the abandon")


async def test_expired_tagged_lock_refetched_by_matching_filter(factory: ProviderFactory) -> None:
    """A gpu item whose lock expired is fetched again by a gpu filter only."""
    timeout = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        routed_of(p)
        await ok(p.enqueue_for_worker(routed_activity("inst", 1, tag="gpu")), "enqueue_for_worker")
        await fetch_routed(p, GPU, lock=timeout)
        await anyio.sleep(past(timeout))
        expect_eq(await fetch_routed(p, DEFAULT), [], "default fetch after the gpu lock expired")
        again = await fetch_routed(p, GPU)
        expect_eq([lease.attempt_count for lease in again], [2], "attempt count of the re-fetched gpu item")


async def test_queue_depths_per_tag(factory: ProviderFactory) -> None:
    """``get_queue_depths().worker_by_tag`` counts ready items per tag (untagged under ``None``); a
    locked item is not ready."""
    async with fresh_provider(factory) as p:
        routed_of(p)
        await _mixed(p)
        depths = await ok(admin_of(p).get_queue_depths(), "get_queue_depths")
        expect_eq(depths.worker_by_tag, {None: 2, "gpu": 2, "io": 1}, "worker_by_tag")
        expect_eq(depths.worker_queue, 5, "worker_queue depth")
        await fetch_routed(p, GPU, max_items=1)
        depths = await ok(admin_of(p).get_queue_depths(), "get_queue_depths")
        expect_eq(depths.worker_by_tag, {None: 2, "gpu": 1, "io": 1}, "worker_by_tag after a gpu fetch")


async def test_two_fetchers_with_different_filters(factory: ProviderFactory) -> None:
    """Two connections on one store, one default and one gpu, split the queue by tag, each item once."""
    async with fresh_provider(factory) as p, peers(factory, p, 2) as (a, b):
        routed_of(p)
        for i in range(1, 11):
            await ok(p.enqueue_for_worker(routed_activity("inst", i, tag="gpu" if i % 2 else None)), "enqueue")
        got_a: list[tuple[str, int]] = []
        got_b: list[tuple[str, int]] = []

        async def drain(provider: Provider, routing: WorkerRouting, out: list[tuple[str, int]]) -> None:
            for _ in range(10):
                out.extend(lease_ids(await fetch_routed(provider, routing, max_items=1, lock=LONG)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, a, DEFAULT, got_a)
            tg.start_soon(drain, b, WorkerRouting(tags=TagFilter.tags("gpu"), owner="w2"), got_b)
        expect_eq(sorted(i for _, i in got_a), [2, 4, 6, 8, 10], "items of the default fetcher")
        expect_eq(sorted(i for _, i in got_b), [1, 3, 5, 7, 9], "items of the gpu fetcher")
