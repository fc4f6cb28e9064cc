"""Lock expiration: orchestration and worker locks expire, renew, abandon and release as specified.

These tests use the factory's short ``lock_timeout`` and sleep just past it where expiry is the point.
"""

from __future__ import annotations

import anyio

from ...providers.base import ExecutionMetadata, OrchestrationItem, Provider, ProviderFactory
from ._support import (
    activity,
    activity_result,
    create_instance,
    expect,
    expect_eq,
    expect_error,
    expect_no_orch,
    expect_no_work,
    expect_permanent,
    external,
    fresh_provider,
    lock_timeout,
    message_names,
    meta,
    must_fetch_orch,
    must_fetch_work,
    ok,
    past,
    peers,
    start_item,
    started,
)


async def test_lock_expires_after_timeout(factory: ProviderFactory) -> None:
    """An instance becomes fetchable again (new token, attempt 2) once its lock timed out."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        first = await must_fetch_orch(p, "inst-A", lock=lt)
        await expect_no_orch(p, "fetch before the lock expired")
        await anyio.sleep(past(lt))
        again = await must_fetch_orch(p, "inst-A", lock=lt, what="fetch after the lock expired")
        expect(again.lock_token != first.lock_token, "a refetch after expiry must get a new token")
        expect_eq(again.attempt_count, 2, "attempt count after expiry")


async def test_abandon_releases_lock_immediately(factory: ProviderFactory) -> None:
    """After abandon the instance is fetchable at once, without waiting for the (long) lock to expire."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A", lock=30.0)
        await ok(p.abandon_orchestration_item(item.lock_token), "abandon")
        await must_fetch_orch(p, "inst-A", what="fetch right after abandon")


async def test_lock_renewal_on_ack(factory: ProviderFactory) -> None:
    """A successful ack releases the lock at once: messages queued during the turn are fetchable immediately."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "E1")), "enqueue E1")
        item = await must_fetch_orch(p, "inst-A", lock=30.0)
        await ok(p.enqueue_for_orchestrator(external("inst-A", "E2")), "enqueue E2 during the turn")
        await ok(p.ack_orchestration_item(item.lock_token, 1, [], [], [], ExecutionMetadata()), "ack")
        after = await must_fetch_orch(p, "inst-A", what="fetch right after the ack")
        expect_eq(message_names(after), ["E2"], "messages after the ack")


async def test_concurrent_lock_attempts_respect_expiration(factory: ProviderFactory) -> None:
    """Concurrent fetchers all get None while the lock is live; after expiry exactly one of them wins."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        await must_fetch_orch(p, "inst-A", lock=lt)
        async with peers(factory, p, 5) as providers:

            async def _round() -> list[OrchestrationItem]:
                got: list[OrchestrationItem] = []

                async def _fetch(provider: Provider) -> None:
                    item = await provider.fetch_orchestration_item(30.0, 0.0)
                    if item is not None:
                        got.append(item)

                async with anyio.create_task_group() as tg:
                    for provider in providers:
                        tg.start_soon(_fetch, provider)
                return got

            before = await _round()
            expect_eq(len(before), 0, "fetchers that got the instance before its lock expired")
            await anyio.sleep(past(lt))
            after = await _round()
            expect_eq(len(after), 1, "fetchers that got the instance after its lock expired")


async def test_worker_lock_renewal_success(factory: ProviderFactory) -> None:
    """Renewing a live worker lock succeeds and the item can still be acked."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p, lock=lock_timeout(factory))
        await ok(p.renew_work_item_lock(lease.lock_token, 30.0), "renew a live lock")
        await ok(p.ack_work_item(lease.lock_token, None), "ack after renewal")


async def test_worker_lock_renewal_invalid_token(factory: ProviderFactory) -> None:
    """Renewing an unknown worker token fails permanently."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        await must_fetch_work(p)
        err = await expect_error(p.renew_work_item_lock("bogus-token", 30.0), "renew with an unknown token")
        expect_permanent(err, "renew with an unknown token")


async def test_worker_lock_renewal_after_expiration(factory: ProviderFactory) -> None:
    """Renewing a worker lock that already expired fails (it is the worker's cancellation signal)."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p, lock=lt)
        await anyio.sleep(past(lt))
        err = await expect_error(
            p.renew_work_item_lock(lease.lock_token, 30.0), "renew after the lock expired"
        )
        expect_permanent(err, "renew after the lock expired")


async def test_worker_lock_renewal_extends_timeout(factory: ProviderFactory) -> None:
    """Renewing at 60 % of the timeout keeps the item locked past its original expiry; the ack succeeds."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p, lock=lt)
        await anyio.sleep(lt * 0.6)
        await ok(p.renew_work_item_lock(lease.lock_token, lt), "renew at 60 %")
        await anyio.sleep(lt * 0.6)  # now past the original expiry, well inside the renewed one
        await expect_no_work(p, "fetch past the original expiry of a renewed lock")
        await ok(p.ack_work_item(lease.lock_token, None), "ack past the original expiry of a renewed lock")


async def test_worker_lock_renewal_after_ack(factory: ProviderFactory) -> None:
    """Renewing after the item was acked fails."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p)
        await ok(p.ack_work_item(lease.lock_token, None), "ack")
        await expect_error(p.renew_work_item_lock(lease.lock_token, 30.0), "renew after ack")


async def test_abandon_work_item_releases_lock(factory: ProviderFactory) -> None:
    """An abandoned work item is fetchable at once (same item, attempt 2)."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 7)), "enqueue_for_worker")
        lease = await must_fetch_work(p, lock=30.0)
        await ok(p.abandon_work_item(lease.lock_token), "abandon")
        again = await must_fetch_work(p, what="fetch right after abandon")
        expect_eq(again.item, lease.item, "the abandoned item")
        expect_eq(again.attempt_count, 2, "attempt count after abandon")
        expect(again.lock_token != lease.lock_token, "a refetch must get a new token")


async def test_abandon_work_item_with_delay(factory: ProviderFactory) -> None:
    """Abandon with a delay hides the item until the delay passed."""
    delay = min(0.5, lock_timeout(factory) / 2)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p, lock=30.0)
        await ok(p.abandon_work_item(lease.lock_token, delay), "abandon with delay")
        await expect_no_work(p, "fetch during the abandon delay")
        await anyio.sleep(past(delay))
        again = await must_fetch_work(p, what="fetch after the abandon delay")
        expect_eq(again.item, lease.item, "the abandoned item")


async def test_worker_ack_fails_after_lock_expiry(factory: ProviderFactory) -> None:
    """A worker ack after its lock expired fails even if nobody refetched; its completion is not enqueued
    and the item is still there to retry."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_worker(activity("inst-A", 2)), "enqueue_for_worker")
        lease = await must_fetch_work(p, lock=lt)
        await anyio.sleep(past(lt))
        err = await expect_error(
            p.ack_work_item(lease.lock_token, activity_result("inst-A", 2)),
            "worker ack after the lock expired",
        )
        expect_permanent(err, "worker ack after the lock expired")
        await expect_no_orch(p, "orchestrator queue after the rejected worker ack")
        again = await must_fetch_work(p, what="refetch after the rejected ack")
        expect_eq(again.attempt_count, 2, "attempt count of the retried item")


async def test_orchestration_lock_renewal_after_expiration(factory: ProviderFactory) -> None:
    """Renewing a live orchestration lock works; renewing one that expired fails."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A", lock=lt)
        await ok(p.renew_orchestration_item_lock(item.lock_token, lt), "renew a live orchestration lock")
        await anyio.sleep(past(lt))
        err = await expect_error(
            p.renew_orchestration_item_lock(item.lock_token, 30.0), "renew an expired orchestration lock"
        )
        expect_permanent(err, "renew an expired orchestration lock")


async def test_orchestration_lock_renewal_extends_timeout(factory: ProviderFactory) -> None:
    """Renewing an orchestration lock at 60 % keeps the instance locked past its original expiry, and the
    turn's ack still succeeds."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A", lock=lt)
        await anyio.sleep(lt * 0.6)
        await ok(p.renew_orchestration_item_lock(item.lock_token, lt), "renew at 60 %")
        await anyio.sleep(lt * 0.6)  # past the original expiry, well inside the renewed one
        await expect_no_orch(p, "fetch past the original expiry of a renewed lock")
        await ok(
            p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta()),
            "ack past the original expiry of a renewed lock",
        )


async def test_abandon_orchestration_item_with_delay(factory: ProviderFactory) -> None:
    """Abandon with a delay releases the lock but hides the batch until the delay passed."""
    delay = min(0.5, lock_timeout(factory) / 2)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A", lock=30.0)
        await ok(p.abandon_orchestration_item(item.lock_token, delay), "abandon with delay")
        await expect_no_orch(p, "fetch during the abandon delay")
        await anyio.sleep(past(delay))
        again = await must_fetch_orch(p, "inst-A", what="fetch after the abandon delay")
        expect_eq(again.attempt_count, 2, "attempt count after a delayed abandon")
