"""Instance locking: one holder per instance, message tagging, concurrent fetchers and crash recovery."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel

from ...history import ActivityResult, StartOrchestration
from ...providers.base import ExecutionMetadata, OrchestrationItem, Provider, ProviderError, ProviderFactory
from ._support import (
    activity_result,
    create_instance,
    expect,
    expect_eq,
    expect_error,
    expect_no_orch,
    external,
    external_event,
    fresh_provider,
    lock_timeout,
    message_names,
    meta,
    must_fetch_orch,
    ok,
    past,
    peers,
    start_item,
    started,
)


async def test_exclusive_instance_lock(factory: ProviderFactory) -> None:
    """While an instance is locked no other fetcher gets it, even when new messages arrive for it."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "E1")), "enqueue E1")
        item = await must_fetch_orch(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "E2")), "enqueue E2 while locked")
        got: list[OrchestrationItem] = []
        async with peers(factory, p, 4) as providers:

            async def _fetch(provider: Provider) -> None:
                for _ in range(3):
                    other = await provider.fetch_orchestration_item(30.0, 0.0)
                    if other is not None:
                        got.append(other)

            async with anyio.create_task_group() as tg:
                for provider in providers:
                    tg.start_soon(_fetch, provider)
        expect_eq([g.instance_id for g in got], [], "instances fetched by others while inst-A was locked")
        await ok(
            p.ack_orchestration_item(
                item.lock_token, 1, [external_event(2, "E1")], [], [], ExecutionMetadata()
            ),
            "ack",
        )
        after = await must_fetch_orch(p, "inst-A", what="fetch after the ack")
        expect_eq(message_names(after), ["E2"], "messages after the ack")


async def test_lock_token_uniqueness(factory: ProviderFactory) -> None:
    """Every fetch hands out a distinct lock token, also for a refetch of the same instance."""
    async with fresh_provider(factory) as p:
        for i in range(5):
            await ok(p.enqueue_start(start_item(f"inst-{i}")), "enqueue_start")
        items = [await must_fetch_orch(p, what=f"fetch {i}") for i in range(5)]
        expect_eq(len({i.instance_id for i in items}), 5, "distinct instances fetched")
        tokens = [i.lock_token for i in items]
        await ok(p.abandon_orchestration_item(items[0].lock_token), "abandon")
        again = await must_fetch_orch(p, items[0].instance_id, what="refetch after abandon")
        tokens.append(again.lock_token)
        expect_eq(len(set(tokens)), len(tokens), f"distinct lock tokens (tokens {tokens!r})")


async def test_invalid_lock_token_rejection(factory: ProviderFactory) -> None:
    """ack, abandon and renew all reject an unknown token and leave the real lock alone."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        await expect_error(
            p.ack_orchestration_item("bogus", 1, [started()], [], [], meta()), "ack with a bogus token"
        )
        await expect_error(p.abandon_orchestration_item("bogus"), "abandon with a bogus token")
        await expect_error(p.renew_orchestration_item_lock("bogus", 30.0), "renew with a bogus token")
        await expect_no_orch(p, "fetch while the real lock is held")
        await ok(
            p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta()),
            "ack with the real token",
        )
        expect(
            await ok(p.get_instance_info("inst-A"), "get_instance_info") is not None,
            "instance after the real ack",
        )


async def test_concurrent_instance_fetching(factory: ProviderFactory) -> None:
    """Concurrent fetchers never receive the same instance twice, and together they get every instance."""
    n = 10
    async with fresh_provider(factory) as p:
        for i in range(n):
            await ok(p.enqueue_start(start_item(f"inst-{i}")), "enqueue_start")
        fetched: list[str] = []
        async with peers(factory, p, 4) as providers:

            async def _worker(provider: Provider) -> None:
                while len(fetched) <= 2 * n:  # bounded, so a provider that hands out duplicates fails fast
                    item = await provider.fetch_orchestration_item(30.0, 0.0)
                    if item is None:
                        return
                    fetched.append(item.instance_id)
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                for k in range(8):
                    tg.start_soon(_worker, providers[k % len(providers)])
        dupes = sorted({i for i in fetched if fetched.count(i) > 1})
        expect_eq(dupes, [], "instances fetched more than once")
        expect_eq(sorted(fetched), sorted(f"inst-{i}" for i in range(n)), "instances fetched")


async def test_completions_arriving_during_lock_blocked(factory: ProviderFactory) -> None:
    """Messages that arrive while an instance is locked are invisible to other fetchers; after the lock
    expires the refetch batch holds the start plus every later message."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        await must_fetch_orch(p, "inst-A", lock=lt)
        for i in (2, 3, 4):
            await ok(p.enqueue_for_orchestrator(activity_result("inst-A", i)), f"enqueue completion {i}")
        async with peers(factory, p, 3) as providers:
            for provider in providers:
                got = await provider.fetch_orchestration_item(30.0, 0.0)
                expect(got is None, f"completions of a locked instance must be invisible, got {got!r}")
        await anyio.sleep(past(lt))
        item = await must_fetch_orch(p, "inst-A", what="refetch after the lock expired")
        expect(
            isinstance(item.messages[0], StartOrchestration),
            f"batch must start with the start, got {item.messages!r}",
        )
        expect_eq(
            [m.id for m in item.messages if isinstance(m, ActivityResult)],
            [2, 3, 4],
            "completions in the refetch batch",
        )
        expect_eq(len(item.messages), 4, "batch size after expiry")
        expect_eq(item.attempt_count, 2, "attempt count of the batch (the start was fetched twice)")


async def test_cross_instance_lock_isolation(factory: ProviderFactory) -> None:
    """A lock on one instance does not block fetching, acking or refetching another."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start A")
        await ok(p.enqueue_start(start_item("inst-B")), "enqueue_start B")
        a = await must_fetch_orch(p, "inst-A")
        b = await must_fetch_orch(p, "inst-B", what="fetch of B while A is locked")
        await ok(
            p.ack_orchestration_item(b.lock_token, 1, [started()], [], [], meta()), "ack B while A is locked"
        )
        await ok(p.enqueue_for_orchestrator(external("inst-B", "Again")), "enqueue for B")
        b2 = await must_fetch_orch(p, "inst-B", what="second fetch of B while A is locked")
        expect_eq(message_names(b2), ["Again"], "B's second batch")
        await ok(p.ack_orchestration_item(a.lock_token, 1, [started()], [], [], meta()), "ack A")


async def test_message_tagging_during_lock(factory: ProviderFactory) -> None:
    """An ack deletes only the messages present at fetch; one that arrived later is the next batch."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "Early")), "enqueue Early")
        item = await must_fetch_orch(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "Late")), "enqueue Late while locked")
        await ok(
            p.ack_orchestration_item(
                item.lock_token, 1, [external_event(2, "Early")], [], [], ExecutionMetadata()
            ),
            "ack",
        )
        after = await must_fetch_orch(p, "inst-A", what="fetch after the ack")
        expect_eq(message_names(after), ["Late"], "messages after the ack")


async def test_ack_only_affects_locked_messages(factory: ProviderFactory) -> None:
    """Two messages that arrive during the first turn (instance not yet created) survive its ack."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "L1")), "enqueue L1")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "L2")), "enqueue L2")
        await ok(p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta()), "first ack")
        after = await must_fetch_orch(p, "inst-A", what="fetch after the first ack")
        expect_eq(message_names(after), ["L1", "L2"], "messages that arrived during the first turn")
        expect_eq(len(after.messages), 2, "batch size (the start was consumed)")
        expect_eq(len(after.history), 1, "history seen by the second turn")


async def test_multi_threaded_lock_contention(factory: ProviderFactory) -> None:
    """Many concurrent workers on a stream of messages for 3 instances: at most one holds an instance at a
    time, every ack succeeds, and every message is processed exactly once."""
    instances = [f"inst-{i}" for i in range(3)]
    per_instance = 8
    async with fresh_provider(factory) as p:
        for iid in instances:
            await create_instance(p, iid)
        holders: dict[str, int] = {}
        processed: list[str] = []
        errors: list[str] = []
        total = len(instances) * per_instance
        producer_done = anyio.Event()

        async with peers(factory, p, 4) as providers:

            async def _produce() -> None:
                for n in range(per_instance):
                    for iid in instances:
                        await providers[0].enqueue_for_orchestrator(external(iid, f"{iid}-m{n}"))
                    await anyio.lowlevel.checkpoint()
                producer_done.set()

            async def _worker(wid: int, provider: Provider) -> None:
                while not errors and len(processed) <= total:
                    item = await provider.fetch_orchestration_item(30.0, 0.0)
                    if item is None:
                        if producer_done.is_set() and not holders:
                            return  # drained: every message was fetched (and its turn acked or in its ack)
                        await anyio.sleep(0.002)  # poll interval of an idle dispatcher
                        continue
                    iid = item.instance_id
                    if iid in holders:
                        errors.append(f"worker {wid} got {iid!r} while worker {holders[iid]} held it")
                        return
                    holders[iid] = wid
                    await anyio.sleep(0.003)  # the turn's work, while holding the lock
                    names = message_names(item)
                    n = len(item.history)
                    delta = [external_event(n + 1 + k, name) for k, name in enumerate(names)]
                    del holders[iid]
                    try:
                        await provider.ack_orchestration_item(
                            item.lock_token, 1, delta, [], [], ExecutionMetadata()
                        )
                    except ProviderError as exc:
                        errors.append(f"worker {wid} ack of {iid!r} failed: {exc}")
                        return
                    processed.extend(names)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_produce)
                    for k in range(8):
                        tg.start_soon(_worker, k, providers[k % len(providers)])
        expect_eq(errors, [], "lock violations")
        expect(producer_done.is_set(), "producer finished")
        expect_eq(
            sorted(processed),
            sorted(f"{i}-m{n}" for i in instances for n in range(per_instance)),
            "processed",
        )
        for iid in instances:
            history = await ok(p.read(iid), "read")
            expect_eq(len(history), 1 + per_instance, f"history length of {iid}")


async def test_multi_threaded_no_duplicate_processing(factory: ProviderFactory) -> None:
    """20 pending starts, 8 concurrent fetch+ack workers: every instance is processed exactly once."""
    n = 20
    async with fresh_provider(factory) as p:
        for i in range(n):
            await ok(p.enqueue_start(start_item(f"inst-{i}")), "enqueue_start")
        processed: list[str] = []
        errors: list[str] = []
        async with peers(factory, p, 4) as providers:

            async def _worker(provider: Provider) -> None:
                while len(processed) <= 2 * n:  # bounded, so a provider that redelivers fails fast
                    item = await provider.fetch_orchestration_item(30.0, 0.0)
                    if item is None:
                        return
                    processed.append(item.instance_id)
                    try:
                        await provider.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta())
                    except ProviderError as exc:
                        errors.append(f"ack of {item.instance_id!r}: {exc}")

            async with anyio.create_task_group() as tg:
                for k in range(8):
                    tg.start_soon(_worker, providers[k % len(providers)])
        expect_eq(errors, [], "ack errors")
        expect_eq(
            sorted(processed),
            sorted(f"inst-{i}" for i in range(n)),
            "instances processed (each exactly once)",
        )
        for i in range(n):
            expect_eq(len(await ok(p.read(f"inst-{i}"), "read")), 1, f"history length of inst-{i}")


async def test_multi_threaded_lock_expiration_recovery(factory: ProviderFactory) -> None:
    """A holder "crashes" (never acks); concurrent pollers get nothing until the lock expires, then exactly
    one of them gets the instance with a new token; the crashed holder's late ack fails."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "Work")), "enqueue")
        crashed = await must_fetch_orch(p, "inst-A", lock=lt)
        locked_at = time.monotonic()
        winners: list[tuple[float, OrchestrationItem]] = []
        async with peers(factory, p, 4) as providers:

            async def _poll(provider: Provider) -> None:
                deadline = time.monotonic() + lt + 10.0
                while time.monotonic() < deadline:
                    item = await provider.fetch_orchestration_item(30.0, 0.0)
                    if item is not None:
                        winners.append((time.monotonic() - locked_at, item))
                        return
                    if winners:
                        return
                    await anyio.sleep(0.05)  # poll interval

            async with anyio.create_task_group() as tg:
                for provider in providers:
                    tg.start_soon(_poll, provider)
        expect_eq(len(winners), 1, "pollers that got the instance after the crash")
        elapsed, item = winners[0]
        expect(
            elapsed >= lt * 0.9,
            f"the instance was handed out {elapsed:.3f}s after locking, lock_timeout {lt}s",
        )
        expect(item.lock_token != crashed.lock_token, "the recovered lock must have a new token")
        expect_eq(message_names(item), ["Work"], "messages of the recovered batch")
        await expect_error(
            p.ack_orchestration_item(
                crashed.lock_token, 1, [external_event(2, "Work")], [], [], ExecutionMetadata()
            ),
            "late ack of the crashed holder",
        )
        await ok(
            p.ack_orchestration_item(
                item.lock_token, 1, [external_event(2, "Work")], [], [], ExecutionMetadata()
            ),
            "ack of the recovering worker",
        )
        expect_eq(len(await ok(p.read("inst-A"), "read")), 2, "history length after recovery")
