"""Activity cancellation: worker fetch and renew ignore orchestration state; ``cancelled_activities`` in an
orchestration ack deletes worker rows, which the worker sees as a failing ack/renew.

Deliberate note: after a force delete, queued activities may be removed with the instance or survive as
orphans (both are allowed, as in duroxide); a surviving one's completion must not recreate the instance.
Under our contract that completion stays queued but is not fetchable while the instance does not exist.
"""

from __future__ import annotations

from ...history import StartOrchestration
from ...providers.base import ExecutionMetadata, ProviderFactory, ScheduledActivity
from ._support import (
    activity,
    activity_result,
    admin_of,
    create_executions,
    create_instance,
    expect,
    expect_eq,
    expect_error,
    expect_no_orch,
    expect_no_work,
    expect_permanent,
    external_event,
    fetch_work,
    finish_instance,
    fresh_provider,
    meta,
    must_fetch_orch,
    must_fetch_work,
    new_turn,
    ok,
    start_item,
    started,
)


def _cancel(instance: str, activity_id: int, execution_id: int = 1) -> ScheduledActivity:
    return ScheduledActivity(instance_id=instance, execution_id=execution_id, activity_id=activity_id)


async def test_fetch_returns_running_state_for_active_orchestration(factory: ProviderFactory) -> None:
    """An activity scheduled by a running instance is fetchable with every field intact."""
    async with fresh_provider(factory) as p:
        scheduled = activity("inst-A", 2, name="Charge", input='{"amount": 5}')
        await create_instance(p, "inst-A", worker_items=[scheduled])
        lease = await must_fetch_work(p)
        expect_eq(lease.item, scheduled, "the fetched activity")


async def test_fetch_returns_terminal_state_when_orchestration_completed(factory: ProviderFactory) -> None:
    """An activity stays fetchable after its instance completed (no filtering on orchestration state)."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        await finish_instance(p, "inst-A", "Completed")
        lease = await must_fetch_work(p, what="activity of a completed instance")
        expect_eq((lease.item.instance, lease.item.id), ("inst-A", 2), "the fetched activity")


async def test_fetch_returns_terminal_state_when_orchestration_failed(factory: ProviderFactory) -> None:
    """An activity stays fetchable after its instance failed."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        await finish_instance(p, "inst-A", "Failed")
        lease = await must_fetch_work(p, what="activity of a failed instance")
        expect_eq((lease.item.instance, lease.item.id), ("inst-A", 2), "the fetched activity")


async def test_fetch_returns_terminal_state_when_orchestration_continued_as_new(
    factory: ProviderFactory,
) -> None:
    """An activity of execution 1 stays fetchable after the instance continued as new."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 2, execution_id=1)), "enqueue_for_worker")
        await create_executions(p, "inst-A", 2, last_status="Running")
        lease = await must_fetch_work(p, what="activity of a previous execution")
        expect_eq((lease.item.execution_id, lease.item.id), (1, 2), "the fetched activity")


async def test_fetch_returns_missing_state_when_instance_deleted(factory: ProviderFactory) -> None:
    """An activity of an instance that never existed is fetchable (the provider does not filter)."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("never-created", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p, what="activity of a never-created instance")
        expect_eq(lease.item.instance, "never-created", "the fetched activity")


async def test_renew_returns_running_when_orchestration_active(factory: ProviderFactory) -> None:
    """Renewal works for an activity of a running instance."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        lease = await must_fetch_work(p)
        await ok(p.renew_work_item_lock(lease.lock_token, 30.0), "renew")


async def test_renew_returns_terminal_when_orchestration_completed(factory: ProviderFactory) -> None:
    """Renewal still works after the instance completed."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        lease = await must_fetch_work(p)
        await finish_instance(p, "inst-A", "Completed")
        await ok(p.renew_work_item_lock(lease.lock_token, 30.0), "renew after completion")
        await ok(p.ack_work_item(lease.lock_token, activity_result("inst-A", 2)), "ack after completion")


async def test_renew_returns_missing_when_instance_deleted(factory: ProviderFactory) -> None:
    """Renewal works for an activity whose instance does not exist."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("never-created", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p)
        await ok(p.renew_work_item_lock(lease.lock_token, 30.0), "renew without an instance")


async def test_ack_work_item_none_deletes_without_enqueue(factory: ProviderFactory) -> None:
    """``ack_work_item(token, None)`` deletes the item and enqueues nothing."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        lease = await must_fetch_work(p)
        await ok(p.ack_work_item(lease.lock_token, None), "ack with no completion")
        await expect_no_work(p, "worker queue after the ack")
        await expect_no_orch(p, "orchestrator queue after an ack with no completion")
        admin = p.as_admin()
        if admin is not None:
            d = await ok(admin.get_queue_depths(), "get_queue_depths")
            expect_eq((d.orchestrator_queue, d.worker_queue), (0, 0), "queue depths")


async def test_cancelled_activities_deleted_from_worker_queue(factory: ProviderFactory) -> None:
    """``cancelled_activities`` in an ack deletes exactly the matching worker rows."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2), activity("inst-A", 3)])
        item = await new_turn(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [external_event(2, "Poke")],
                [],
                [],
                ExecutionMetadata(),
                [_cancel("inst-A", 2)],
            ),
            "ack cancelling activity 2",
        )
        lease = await must_fetch_work(p, what="the activity that was not cancelled")
        expect_eq(lease.item.id, 3, "remaining activity")
        await expect_no_work(p, "worker queue after the cancellation")


async def test_ack_work_item_fails_when_entry_deleted(factory: ProviderFactory) -> None:
    """A worker's ack of an activity cancelled while it ran fails permanently, and its completion is not
    enqueued."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        lease = await must_fetch_work(p)
        item = await new_turn(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [external_event(2, "Poke")],
                [],
                [],
                ExecutionMetadata(),
                [_cancel("inst-A", 2)],
            ),
            "ack cancelling the running activity",
        )
        err = await expect_error(
            p.ack_work_item(lease.lock_token, activity_result("inst-A", 2)), "ack of a cancelled activity"
        )
        expect_permanent(err, "ack of a cancelled activity")
        await expect_no_orch(p, "orchestrator queue after the rejected ack")


async def test_renew_fails_when_entry_deleted(factory: ProviderFactory) -> None:
    """Renewing the lock of an activity cancelled while it ran fails (the worker's cancellation signal)."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        lease = await must_fetch_work(p)
        await ok(p.renew_work_item_lock(lease.lock_token, 30.0), "renew before cancellation")
        item = await new_turn(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [external_event(2, "Poke")],
                [],
                [],
                ExecutionMetadata(),
                [_cancel("inst-A", 2)],
            ),
            "ack cancelling the running activity",
        )
        await expect_error(p.renew_work_item_lock(lease.lock_token, 30.0), "renew of a cancelled activity")


async def test_cancelling_nonexistent_activities_is_idempotent(factory: ProviderFactory) -> None:
    """Unknown ids in ``cancelled_activities`` are no error and delete nothing else (the match is on
    instance, execution and activity id together)."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        await ok(p.enqueue_for_worker(activity("inst-B", 2)), "enqueue an activity of another instance")
        item = await new_turn(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [external_event(2, "Poke")],
                [],
                [],
                ExecutionMetadata(),
                [_cancel("inst-A", 999), _cancel("inst-A", 2, execution_id=2), _cancel("inst-Z", 2)],
            ),
            "ack cancelling unknown activities",
        )
        got = {((await must_fetch_work(p)).item.instance) for _ in range(2)}
        expect_eq(got, {"inst-A", "inst-B"}, "activities that must survive")


async def test_batch_cancellation_deletes_multiple_activities(factory: ProviderFactory) -> None:
    """Five activities cancelled in one ack are all gone."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", i) for i in range(2, 7)])
        item = await new_turn(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [external_event(2, "Poke")],
                [],
                [],
                ExecutionMetadata(),
                [_cancel("inst-A", i) for i in range(2, 7)],
            ),
            "ack cancelling five activities",
        )
        await expect_no_work(p, "worker queue after the batch cancellation")


async def test_same_activity_in_worker_items_and_cancelled_is_noop(factory: ProviderFactory) -> None:
    """An activity scheduled and cancelled in the same ack is not queued (insert before delete); the
    other scheduled activity is."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [started()],
                [activity("inst-A", 2, name="Dropped"), activity("inst-A", 3, name="Kept")],
                [],
                meta(),
                [_cancel("inst-A", 2)],
            ),
            "ack scheduling and cancelling activity 2",
        )
        lease = await must_fetch_work(p)
        expect_eq((lease.item.id, lease.item.name), (3, "Kept"), "the only queued activity")
        await expect_no_work(p, "worker queue (the scheduled-and-cancelled activity must not be queued)")


async def test_orphan_activity_after_instance_force_deletion(factory: ProviderFactory) -> None:
    """After a force delete a queued activity is either gone or still runs; its completion must neither
    fail the worker nor recreate the instance, and the id can be started afresh."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        result = await ok(admin.delete_instance("inst-A", force=True), "force delete")
        expect_eq(result.instances_deleted, 1, "instances deleted")
        expect_eq(
            await ok(admin.get_instance_info("inst-A"), "get_instance_info"), None, "instance after delete"
        )
        lease = await fetch_work(p)
        if lease is not None:
            await ok(
                p.ack_work_item(lease.lock_token, activity_result("inst-A", 2)), "ack of the orphan activity"
            )
        expect_eq(
            await ok(admin.get_instance_info("inst-A"), "get_instance_info"),
            None,
            "instance after the orphan ack",
        )
        await expect_no_orch(p, "orchestrator queue (an orphan completion is not fetchable)")
        await ok(p.enqueue_start(start_item("inst-A")), "start the id again")
        fresh = await must_fetch_orch(p, "inst-A", what="the new incarnation's first turn")
        expect(
            any(isinstance(m, StartOrchestration) for m in fresh.messages),
            f"the new incarnation's batch must hold its start, got {fresh.messages!r}",
        )
        expect_eq(fresh.history, [], "history of the new incarnation")
