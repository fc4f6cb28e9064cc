"""Instance creation: only an orchestration ack (its metadata) creates an instance; duplicate starts fail.

Deliberate difference from duroxide: ``enqueue_start`` raises ``InstanceAlreadyExists`` when the id already
has an instance or a pending start (checked atomically with the insert), so ``Client.start_orchestration``
can report a duplicate at once instead of the runtime silently dropping it.
"""

from __future__ import annotations

import anyio

from ...history import StartOrchestration
from ...providers.base import (
    ExecutionMetadata,
    InstanceAlreadyExists,
    Provider,
    ProviderError,
    ProviderFactory,
)
from ._support import (
    activity,
    create_instance,
    expect,
    expect_eq,
    expect_error,
    expect_no_orch,
    external,
    fresh_provider,
    meta,
    must_fetch_orch,
    ok,
    peers,
    present,
    start_item,
    started,
)


async def test_instance_creation_via_metadata(factory: ProviderFactory) -> None:
    """The instance row appears only when the first turn is acked with metadata (name and version)."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A", "MyOrch", "2.1.0")), "enqueue_start")
        expect_eq(
            await ok(p.get_instance_info("inst-A"), "get_instance_info"), None, "instance after enqueue_start"
        )
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(await ok(p.get_instance_info("inst-A"), "get_instance_info"), None, "instance after fetch")
        expect_eq(
            (item.orchestration_name, item.version),
            ("MyOrch", "2.1.0"),
            "name/version from the start message",
        )
        await ok(
            p.ack_orchestration_item(
                item.lock_token, 1, [started("MyOrch", "2.1.0")], [], [], meta(name="MyOrch", version="2.1.0")
            ),
            "first ack",
        )
        info = present(await ok(p.get_instance_info("inst-A"), "get_instance_info"), "instance after the ack")
        expect_eq((info.name, info.version), ("MyOrch", "2.1.0"), "name/version of the created instance")
        expect_eq((info.current_execution_id, info.status), (1, "Running"), "execution and status")
        admin = p.as_admin()
        if admin is not None:
            expect_eq(await ok(admin.list_instances(), "list_instances"), ["inst-A"], "listed instances")


async def test_no_instance_creation_on_enqueue(factory: ProviderFactory) -> None:
    """No enqueue creates an instance: not a start, an event, or an activity."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        await ok(p.enqueue_for_orchestrator(external("inst-B")), "enqueue_for_orchestrator")
        await ok(p.enqueue_for_worker(activity("inst-C", 1)), "enqueue_for_worker")
        for iid in ("inst-A", "inst-B", "inst-C"):
            expect_eq(
                await ok(p.get_instance_info(iid), "get_instance_info"), None, f"instance {iid} after enqueue"
            )
        admin = p.as_admin()
        if admin is not None:
            expect_eq(
                await ok(admin.list_instances(), "list_instances"), [], "listed instances after enqueues"
            )
            metrics = await ok(admin.get_system_metrics(), "get_system_metrics")
            expect_eq(metrics.total_instances, 0, "total_instances after enqueues")


async def test_null_version_handling(factory: ProviderFactory) -> None:
    """A start without a version is fetchable with version None; the version given by the ack's metadata
    is what later fetches report."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A", version=None)), "enqueue_start without version")
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(
            (item.orchestration_name, item.version), ("TestOrch", None), "name/version of the first batch"
        )
        await ok(
            p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta(version="3.0.0")), "ack"
        )
        await ok(p.enqueue_for_orchestrator(external("inst-A")), "enqueue")
        item = await must_fetch_orch(p, "inst-A", what="second fetch")
        expect_eq(
            (item.orchestration_name, item.version), ("TestOrch", "3.0.0"), "name/version of the second batch"
        )


async def test_sub_orchestration_instance_creation(factory: ProviderFactory) -> None:
    """A child started by a parent's ack exists only after its own first ack, under the id it was given,
    with the parent recorded."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "parent")
        await ok(p.enqueue_for_orchestrator(external("parent", "Spawn")), "enqueue")
        item = await must_fetch_orch(p, "parent")
        child_start = StartOrchestration(
            instance="parent::sub::2",
            name="ChildOrch",
            input='"c"',
            version="1.0.0",
            parent_instance="parent",
            parent_id=2,
            parent_execution_id=1,
        )
        await ok(
            p.ack_orchestration_item(item.lock_token, 1, [], [], [child_start], ExecutionMetadata()),
            "parent's ack",
        )
        expect_eq(
            await ok(p.get_instance_info("parent::sub::2"), "get_instance_info"),
            None,
            "child before its turn",
        )
        child = await must_fetch_orch(p, "parent::sub::2", what="the child's first turn")
        expect_eq(child.orchestration_name, "ChildOrch", "child's orchestration name")
        expect(isinstance(child.messages[0], StartOrchestration), f"child's batch: {child.messages!r}")
        await ok(
            p.ack_orchestration_item(
                child.lock_token,
                1,
                [started("ChildOrch", parent="parent")],
                [],
                [],
                meta(name="ChildOrch", parent="parent"),
            ),
            "child's first ack",
        )
        info = present(
            await ok(p.get_instance_info("parent::sub::2"), "get_instance_info"), "child after its ack"
        )
        expect_eq((info.name, info.parent_instance_id), ("ChildOrch", "parent"), "child's name and parent")
        admin = p.as_admin()
        if admin is not None:
            expect_eq(
                await ok(admin.get_parent_id("parent::sub::2"), "get_parent_id"),
                "parent",
                "child's parent id",
            )
            expect_eq(
                await ok(admin.list_children("parent"), "list_children"),
                ["parent::sub::2"],
                "parent's children",
            )


async def test_duplicate_start_rejected(factory: ProviderFactory) -> None:
    """(Our contract.) ``enqueue_start`` raises InstanceAlreadyExists for a pending start and for an
    existing instance, and enqueues nothing in that case."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "first enqueue_start")
        await expect_error(
            p.enqueue_start(start_item("inst-A")), "start while one is pending", InstanceAlreadyExists
        )
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(len(item.messages), 1, "starts in the batch (the duplicate must not be queued)")
        await ok(p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta()), "first ack")
        err = await expect_error(
            p.enqueue_start(start_item("inst-A")), "start of an existing instance", InstanceAlreadyExists
        )
        expect_eq(err.instance_id, "inst-A", "instance id carried by InstanceAlreadyExists")
        await expect_no_orch(p, "orchestrator queue after the rejected starts")


async def test_concurrent_duplicate_start(factory: ProviderFactory) -> None:
    """(Our contract.) Concurrent starts of one id: exactly one is enqueued, the others get
    InstanceAlreadyExists."""
    async with fresh_provider(factory) as p:
        outcomes: list[object] = []
        async with peers(factory, p, 4) as providers:

            async def _start(provider: Provider, k: int) -> None:
                try:
                    await provider.enqueue_start(start_item("inst-A", input=f'"{k}"'))
                    outcomes.append("ok")
                except InstanceAlreadyExists:
                    outcomes.append("exists")
                except ProviderError as exc:
                    outcomes.append(exc)

            async with anyio.create_task_group() as tg:
                for k in range(8):
                    tg.start_soon(_start, providers[k % len(providers)], k)
        expect_eq(sorted(map(str, outcomes)), ["exists"] * 7 + ["ok"], "outcomes of 8 concurrent starts")
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(len(item.messages), 1, "starts queued by 8 concurrent enqueue_start calls")


async def test_instance_exists_counts_pending_starts(factory: ProviderFactory) -> None:
    """``instance_exists`` is true for a pending start and for a created instance, false for any other id
    (the client refuses events and cancels for unknown ids with ``InstanceNotFound``)."""
    async with fresh_provider(factory) as p:
        expect_eq(await ok(p.instance_exists("ghost"), "instance_exists"), False, "unknown id")
        await create_instance(p, "made")
        expect_eq(await ok(p.instance_exists("made"), "instance_exists"), True, "created instance")
        await ok(p.enqueue_start(start_item("pending", "MyOrch")), "enqueue_start")
        expect_eq(await ok(p.instance_exists("pending"), "instance_exists"), True, "pending start")
        await ok(p.enqueue_for_orchestrator(external("ghost2", "E")), "enqueue_for_orchestrator")
        expect_eq(await ok(p.instance_exists("ghost2"), "instance_exists"), False, "a message is not an instance")
