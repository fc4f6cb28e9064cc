"""Deletion: single, cascading and atomic batch deletes; hierarchy queries; zombie and stale-ack safety.

Our contract names the errors: ``InstanceNotFound`` (unknown id), ``InstanceStillRunning`` (running
without ``force``), ``CannotDeleteSubOrchestration`` (delete a child directly); all are ``ProviderError``.
"""

from __future__ import annotations

from ...providers.base import (
    CannotDeleteSubOrchestration,
    InstanceNotFound,
    InstanceStillRunning,
    Provider,
    ProviderError,
    ProviderFactory,
)
from ._support import (
    activity,
    activity_result,
    admin_of,
    create_instance,
    expect,
    expect_eq,
    expect_error,
    expect_no_orch,
    expect_no_work,
    external,
    external_event,
    finish_instance,
    fresh_provider,
    meta,
    must_fetch_orch,
    must_fetch_work,
    ok,
    present,
    start_item,
    started,
)


async def _tree(p: Provider, status: str = "Completed") -> None:
    """root -> child1 (-> grandchild), child2; every instance has 1 execution and 1 event."""
    await create_instance(p, "root", status=status, output='"r"')
    await create_instance(p, "child1", status=status, output='"c"', parent="root")
    await create_instance(p, "child2", status=status, output='"c"', parent="root")
    await create_instance(p, "grandchild", status=status, output='"g"', parent="child1")


async def test_delete_terminal_instances(factory: ProviderFactory) -> None:
    """Completed and failed instances are removed with accurate counts; history reads come back empty."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "done")
        await finish_instance(p, "done", "Completed")  # 2 events
        await create_instance(p, "failed", status="Failed", output='"boom"')  # 1 event
        r = await ok(admin.delete_instance("done"), "delete completed")
        expect_eq(
            (r.instances_deleted, r.executions_deleted, r.events_deleted), (1, 1, 2), "counts for 'done'"
        )
        r = await ok(admin.delete_instance("failed"), "delete failed")
        expect_eq(
            (r.instances_deleted, r.executions_deleted, r.events_deleted), (1, 1, 1), "counts for 'failed'"
        )
        for iid in ("done", "failed"):
            expect_eq(
                await ok(admin.get_instance_info(iid), "get_instance_info"), None, f"{iid} after delete"
            )
            expect_eq(await ok(p.read(iid), "read"), [], f"history of {iid} after delete")
            expect_eq(await ok(admin.list_executions(iid), "list_executions"), [], f"executions of {iid}")
        expect_eq(await ok(admin.list_instances(), "list_instances"), [], "instances after deleting both")


async def test_delete_running_rejected_force_succeeds(factory: ProviderFactory) -> None:
    """A running instance is refused without force (InstanceStillRunning) and deleted with it."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "running")
        await expect_error(
            admin.delete_instance("running"), "delete of a running instance", InstanceStillRunning
        )
        expect(
            await ok(admin.get_instance_info("running"), "get_instance_info") is not None,
            "refused delete kept it",
        )
        r = await ok(admin.delete_instance("running", force=True), "force delete")
        expect_eq(r.instances_deleted, 1, "instances deleted by force")
        expect_eq(
            await ok(admin.get_instance_info("running"), "get_instance_info"), None, "instance after force"
        )


async def test_delete_nonexistent_instance(factory: ProviderFactory) -> None:
    """Deleting an unknown id raises InstanceNotFound."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await expect_error(admin.delete_instance("nope"), "delete of an unknown id", InstanceNotFound)
        await expect_error(
            admin.delete_instance("nope", force=True), "force delete of an unknown id", InstanceNotFound
        )


async def test_delete_cleans_queues_and_locks(factory: ProviderFactory) -> None:
    """A force delete of a locked instance with queued work clears both queues and the lock; the id can be
    reused at once and starts from a clean slate."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2), activity("inst-A", 3)])
        await ok(p.enqueue_for_orchestrator(external("inst-A", "E1")), "enqueue E1")
        await must_fetch_orch(p, "inst-A")  # locked by a turn in flight
        await ok(p.enqueue_for_orchestrator(external("inst-A", "E2")), "enqueue E2")
        r = await ok(admin.delete_instance("inst-A", force=True), "force delete")
        expect_eq(r.instances_deleted, 1, "instances deleted")
        d = await ok(admin.get_queue_depths(), "get_queue_depths")
        expect_eq((d.orchestrator_queue, d.worker_queue), (0, 0), "queue depths after delete")
        await expect_no_work(p, "worker queue after delete")
        await expect_no_orch(p, "orchestrator queue after delete")
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start of the reused id")
        item = await must_fetch_orch(p, "inst-A", what="fetch of the reused id (the old lock must be gone)")
        expect_eq([type(m).__name__ for m in item.messages], ["StartOrchestration"], "batch of the reused id")
        expect_eq(item.history, [], "history of the reused id")
        await ok(
            p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta()),
            "first ack of the reused id",
        )
        info = present(await ok(admin.get_instance_info("inst-A"), "get_instance_info"), "reused instance")
        expect_eq((info.current_execution_id, info.status), (1, "Running"), "the reused instance")
        expect_eq(len(await ok(p.read("inst-A"), "read")), 1, "history of the reused instance")


async def test_cascade_delete_hierarchy(factory: ProviderFactory) -> None:
    """Sub-orchestrations cannot be deleted directly (even with force); deleting the root removes three
    levels and aggregates the counts."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await _tree(p)
        await create_instance(p, "other", status="Completed")
        await expect_error(admin.delete_instance("child1"), "delete of a child", CannotDeleteSubOrchestration)
        await expect_error(
            admin.delete_instance("grandchild", force=True),
            "force delete of a grandchild",
            CannotDeleteSubOrchestration,
        )
        r = await ok(admin.delete_instance("root"), "delete of the root")
        expect_eq(
            (r.instances_deleted, r.executions_deleted, r.events_deleted), (4, 4, 4), "aggregated counts"
        )
        for iid in ("root", "child1", "child2", "grandchild"):
            expect_eq(
                await ok(admin.get_instance_info(iid), "get_instance_info"), None, f"{iid} after cascade"
            )
        expect_eq(await ok(admin.list_instances(), "list_instances"), ["other"], "instances left")


async def test_force_delete_prevents_ack_recreation(factory: ProviderFactory) -> None:
    """Force delete during a turn: the turn's ack fails and does not recreate the instance (no zombie)."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "zombie")
        await ok(p.enqueue_for_orchestrator(external("zombie", "E")), "enqueue")
        item = await must_fetch_orch(p, "zombie")
        await ok(admin.delete_instance("zombie", force=True), "force delete during the turn")
        await expect_error(
            p.ack_orchestration_item(
                item.lock_token, 1, [external_event(2, "E")], [activity("zombie", 3)], [], meta("Running")
            ),
            "ack of the deleted instance's turn",
        )
        expect_eq(
            await ok(admin.get_instance_info("zombie"), "get_instance_info"), None, "instance after the ack"
        )
        expect_eq(await ok(p.read("zombie"), "read"), [], "history after the ack")
        await expect_no_work(p, "worker queue after the rejected ack")


async def test_list_children(factory: ProviderFactory) -> None:
    """Only direct children are listed."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await _tree(p)
        expect_eq(
            sorted(await ok(admin.list_children("root"), "list_children")),
            ["child1", "child2"],
            "root's children",
        )
        expect_eq(
            await ok(admin.list_children("child1"), "list_children"), ["grandchild"], "child1's children"
        )
        expect_eq(await ok(admin.list_children("child2"), "list_children"), [], "child2's children")


async def test_delete_get_parent_id(factory: ProviderFactory) -> None:
    """None for a root, the parent for a child, an error for an unknown id."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await _tree(p)
        expect_eq(await ok(admin.get_parent_id("root"), "get_parent_id"), None, "parent of the root")
        expect_eq(await ok(admin.get_parent_id("child1"), "get_parent_id"), "root", "parent of child1")
        expect_eq(
            await ok(admin.get_parent_id("grandchild"), "get_parent_id"), "child1", "parent of grandchild"
        )
        await expect_error(admin.get_parent_id("nope"), "get_parent_id of an unknown id")


async def test_delete_get_instance_tree(factory: ProviderFactory) -> None:
    """The tree holds the root (first) and all descendants."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await _tree(p)
        tree = await ok(admin.get_instance_tree("root"), "get_instance_tree")
        expect_eq(tree[:1], ["root"], "first entry of the tree")
        expect_eq(sorted(tree), ["child1", "child2", "grandchild", "root"], "the tree")
        expect_eq(
            sorted(await ok(admin.get_instance_tree("child1"), "get_instance_tree")),
            ["child1", "grandchild"],
            "subtree",
        )


async def test_delete_instances_atomic(factory: ProviderFactory) -> None:
    """A batch of terminal instances is deleted at once with aggregated counts."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        for iid in ("a", "b", "c"):
            await create_instance(p, iid, status="Completed")
        await create_instance(p, "keep", status="Completed")
        r = await ok(admin.delete_instances_atomic(["a", "b", "c"]), "delete_instances_atomic")
        expect_eq(
            (r.instances_deleted, r.executions_deleted, r.events_deleted), (3, 3, 3), "aggregated counts"
        )
        expect_eq(await ok(admin.list_instances(), "list_instances"), ["keep"], "instances left")


async def test_delete_instances_atomic_force(factory: ProviderFactory) -> None:
    """A batch with a running member is refused as a whole unless forced."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "done", status="Completed")
        await create_instance(p, "running")
        await expect_error(admin.delete_instances_atomic(["done", "running"]), "batch with a running member")
        expect_eq(
            sorted(await ok(admin.list_instances(), "list_instances")),
            ["done", "running"],
            "instances after the refusal",
        )
        r = await ok(admin.delete_instances_atomic(["done", "running"], force=True), "forced batch")
        expect_eq(r.instances_deleted, 2, "instances deleted by the forced batch")
        expect_eq(await ok(admin.list_instances(), "list_instances"), [], "instances after the forced batch")


async def test_delete_instances_atomic_orphan_detection(factory: ProviderFactory) -> None:
    """Deleting a parent without its child fails, rolls back, and names the problem; with the child it works."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "parent", status="Completed")
        await create_instance(p, "kid", status="Completed", parent="parent")
        await create_instance(p, "bystander", status="Completed")
        err = await expect_error(
            admin.delete_instances_atomic(["bystander", "parent"], force=True),
            "delete of a parent without its child",
        )
        text = str(err).lower()
        expect(
            "kid" in text or "orphan" in text or "child" in text, f"the error should name the problem: {err}"
        )
        expect_eq(
            sorted(await ok(admin.list_instances(), "list_instances")),
            ["bystander", "kid", "parent"],
            "instances after the refused batch (all-or-nothing)",
        )
        r = await ok(admin.delete_instances_atomic(["parent", "kid"]), "delete of parent and child")
        expect_eq(r.instances_deleted, 2, "instances deleted with the child included")


async def test_stale_activity_after_delete_recreate(factory: ProviderFactory) -> None:
    """A worker still holding an activity of a deleted instance cannot ack into a recreated instance with
    the same ids: its ack fails and the new instance's activity is untouched."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2, name="Old")])
        stale = await must_fetch_work(p)
        await ok(admin.delete_instance("inst-A", force=True), "force delete")
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2, name="New")])
        try:
            await p.ack_work_item(stale.lock_token, activity_result("inst-A", 2, result='"stale"'))
            stale_acked = True
        except ProviderError:
            stale_acked = False
        expect(
            not stale_acked, "the stale worker's ack must fail after its instance was deleted and recreated"
        )
        await expect_no_orch(p, "orchestrator queue (no stale completion for the new instance)")
        fresh = await must_fetch_work(p, what="the new instance's activity")
        expect_eq(fresh.item.name, "New", "the new instance's activity")
