"""Atomicity: an orchestration ack commits everything or nothing, and releases the lock only on success."""

from __future__ import annotations

import anyio

from ...history import ActivityScheduled, OrchestrationStarted, TimerCreated, TimerDue
from ...providers.base import ExecutionMetadata, Provider, ProviderError, ProviderFactory, now_ms
from ._support import (
    activity,
    create_instance,
    event,
    expect,
    expect_eq,
    expect_error,
    expect_no_orch,
    expect_no_work,
    external,
    external_event,
    fresh_provider,
    lock_timeout,
    message_names,
    meta,
    must_fetch_orch,
    must_fetch_work,
    ok,
    past,
    peers,
    present,
    start_item,
    started,
)


async def test_atomicity_failure_rollback(factory: ProviderFactory) -> None:
    """An ack whose history delta hits an existing event id fails as a whole: no history, no worker or
    orchestrator items, no status change, the consumed messages stay, and the lock stays held."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "E1")), "enqueue E1")
        item = await must_fetch_orch(p, "inst-A")
        await expect_error(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                # event 2 is new, event 1 duplicates the stored OrchestrationStarted
                [external_event(2, "E1"), event(1, ActivityScheduled(name="Dup", input="{}"))],
                [activity("inst-A", 2)],
                [external("inst-A", "E2")],
                ExecutionMetadata(status="Completed", output='"never"'),
            ),
            "ack with a duplicate event id",
        )
        history = await ok(p.read("inst-A"), "read")
        expect_eq(len(history), 1, "history length after the failed ack (nothing appended)")
        expect(
            isinstance(history[0].kind, OrchestrationStarted),
            f"history[0] must be untouched, got {history[0]!r}",
        )
        info = present(
            await ok(p.get_instance_info("inst-A"), "get_instance_info"), "instance after the failed ack"
        )
        expect_eq(info.status, "Running", "status after the failed ack")
        await expect_no_work(p, "worker queue after the failed ack")
        await expect_no_orch(p, "fetch while the failed ack's lock is still held")
        # The lock is still ours: abandon it, and the message the failed ack consumed is back (and E2 is not).
        await ok(p.abandon_orchestration_item(item.lock_token), "abandon after the failed ack")
        again = await must_fetch_orch(p, "inst-A", what="refetch after abandon")
        expect_eq(message_names(again), ["E1"], "messages after the failed ack")


async def test_multi_operation_atomic_ack(factory: ProviderFactory) -> None:
    """One ack with 5 events, 3 worker items and 2 orchestrator items persists all of them."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        fire_at = now_ms() - 1000
        events = [
            started(),
            event(2, ActivityScheduled(name="Activity1", input='"i1"')),
            event(3, ActivityScheduled(name="Activity2", input='"i2"')),
            event(4, ActivityScheduled(name="Activity3", input='"i3"')),
            event(5, TimerCreated(fire_at_ms=fire_at)),
        ]
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                events,
                [activity("inst-A", i, name=f"Activity{i - 1}") for i in (2, 3, 4)],
                [
                    TimerDue(instance="inst-A", execution_id=1, id=5, fire_at_ms=fire_at),
                    external("inst-A", "TestEvent"),
                ],
                meta(),
            ),
            "multi-operation ack",
        )
        history = await ok(p.read("inst-A"), "read")
        expect_eq([e.event_id for e in history], [1, 2, 3, 4, 5], "event ids of the persisted history")
        expect_eq([e.type_name for e in history], [e.type_name for e in events], "event types of the history")
        ids = []
        for _ in range(3):
            ids.append((await must_fetch_work(p, what="one of the 3 worker items")).item.id)
        expect_eq(ids, [2, 3, 4], "activity ids from the worker queue")
        await expect_no_work(p, "worker queue after the 3 items")
        batch = await must_fetch_orch(p, "inst-A", what="the 2 orchestrator items")
        expect_eq(
            [type(m).__name__ for m in batch.messages],
            ["TimerDue", "ExternalRaised"],
            "orchestrator messages written by the ack",
        )


async def test_lock_released_only_on_successful_ack(factory: ProviderFactory) -> None:
    """A failed ack (unknown token) does not release the instance lock: it is held until it expires."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        await must_fetch_orch(p, "inst-A", lock=lt)
        await expect_no_orch(p, "fetch while locked")
        await expect_error(
            p.ack_orchestration_item("invalid-lock-token", 1, [started()], [], [], meta()),
            "ack with an invalid token",
        )
        await expect_no_orch(p, "fetch after the failed ack (lock must still be held)")
        expect(
            await ok(p.get_instance_info("inst-A"), "get_instance_info") is None,
            "the failed ack created the instance",
        )
        await anyio.sleep(past(lt))
        again = await must_fetch_orch(p, "inst-A", what="fetch after the lock expired")
        expect_eq([type(m).__name__ for m in again.messages], ["StartOrchestration"], "messages after expiry")


async def test_concurrent_ack_prevention(factory: ProviderFactory) -> None:
    """Two concurrent acks with the same token (non-conflicting deltas): exactly one succeeds."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "Go")), "enqueue")
        item = await must_fetch_orch(p, "inst-A")
        outcomes: dict[int, object] = {}

        async with peers(factory, p, 2) as (p1, p2):

            async def _ack(index: int, provider: Provider, event_id: int) -> None:
                try:
                    await provider.ack_orchestration_item(
                        item.lock_token,
                        1,
                        [external_event(event_id, f"ack-{index}")],
                        [activity("inst-A", event_id, name=f"FromAck{index}")],
                        [],
                        ExecutionMetadata(),
                    )
                    outcomes[index] = "ok"
                except ProviderError as exc:
                    outcomes[index] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(_ack, 1, p1, 2)
                tg.start_soon(_ack, 2, p2, 3)

        successes = [i for i, o in outcomes.items() if o == "ok"]
        expect_eq(len(successes), 1, f"number of successful acks with one token (outcomes {outcomes!r})")
        history = await ok(p.read("inst-A"), "read")
        expect_eq(len(history), 2, "history length (one ack's event only)")
        lease = await must_fetch_work(p, what="the winning ack's activity")
        expect_eq(lease.item.name, f"FromAck{successes[0]}", "activity of the winning ack")
        await expect_no_work(p, "worker queue (the losing ack must enqueue nothing)")
