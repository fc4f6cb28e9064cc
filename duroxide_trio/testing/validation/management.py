"""Management (``ProviderAdmin``): listing, instance/execution info, metrics and queue depths."""

from __future__ import annotations

from ...providers.base import ProviderFactory
from ._support import (
    activity,
    admin_of,
    create_executions,
    create_instance,
    expect,
    expect_eq,
    finish_instance,
    fresh_provider,
    must_fetch_orch,
    ok,
    present,
    start_item,
)


async def test_list_instances(factory: ProviderFactory) -> None:
    """Every created instance is listed, and only those."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        expect_eq(await ok(admin.list_instances(), "list_instances"), [], "instances of an empty store")
        for iid in ("inst-1", "inst-2", "inst-3"):
            await create_instance(p, iid)
        await ok(p.enqueue_start(start_item("not-yet")), "enqueue_start")  # pending, not an instance yet
        listed = await ok(admin.list_instances(), "list_instances")
        expect_eq(sorted(listed), ["inst-1", "inst-2", "inst-3"], "listed instances")


async def test_list_instances_by_status(factory: ProviderFactory) -> None:
    """Filtering by the current execution's status is exact."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "running")
        await create_instance(p, "completed", status="Completed", output='"1"')
        await create_instance(p, "failed", status="Failed", output='"boom"')
        await create_executions(p, "can-running", 2, last_status="Running")
        await create_executions(p, "can-completed", 2, last_status="Completed")
        for status, expected in (
            ("Running", ["can-running", "running"]),
            ("Completed", ["can-completed", "completed"]),
            ("Failed", ["failed"]),
            ("ContinuedAsNew", []),
        ):
            listed = await ok(admin.list_instances(status), f"list_instances({status!r})")
            expect_eq(sorted(listed), expected, f"instances with status {status}")


async def test_list_executions(factory: ProviderFactory) -> None:
    """All execution ids of an instance, ascending; none for an unknown instance."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_executions(p, "inst-A", 3)
        await create_instance(p, "inst-B")
        expect_eq(
            await ok(admin.list_executions("inst-A"), "list_executions"), [1, 2, 3], "executions of inst-A"
        )
        expect_eq(await ok(admin.list_executions("inst-B"), "list_executions"), [1], "executions of inst-B")
        expect_eq(
            await ok(admin.list_executions("unknown"), "list_executions"), [], "executions of an unknown id"
        )


async def test_get_instance_info(factory: ProviderFactory) -> None:
    """Name, version, current execution, status, output and timestamps are reported."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "inst-A", name="InfoOrch", version="4.5.6")
        info = present(await ok(admin.get_instance_info("inst-A"), "get_instance_info"), "running instance")
        expect_eq(
            (info.instance_id, info.name, info.version, info.current_execution_id, info.status, info.output),
            ("inst-A", "InfoOrch", "4.5.6", 1, "Running", None),
            "info of a running instance",
        )
        expect(info.created_at_ms > 0 and info.updated_at_ms >= info.created_at_ms, f"timestamps of {info!r}")
        expect_eq(info.parent_instance_id, None, "parent of a root instance")
        await finish_instance(p, "inst-A", "Completed", '"result"')
        info = present(await ok(admin.get_instance_info("inst-A"), "get_instance_info"), "completed instance")
        expect_eq((info.status, info.output), ("Completed", '"result"'), "status/output after completion")
        await create_executions(p, "inst-B", 2, last_status="Failed")
        info = present(
            await ok(admin.get_instance_info("inst-B"), "get_instance_info"), "instance with 2 executions"
        )
        expect_eq(
            (info.current_execution_id, info.status), (2, "Failed"), "current execution and status of inst-B"
        )
        expect_eq(
            await ok(admin.get_instance_info("unknown"), "get_instance_info"), None, "info of an unknown id"
        )


async def test_get_execution_info(factory: ProviderFactory) -> None:
    """Per-execution status, output, event count and timestamps are reported."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_executions(p, "inst-A", 2, last_status="Running")
        first = present(
            await ok(admin.get_execution_info("inst-A", 1), "get_execution_info(1)"), "execution 1"
        )
        expect_eq(
            (first.execution_id, first.status, first.output, first.event_count),
            (1, "ContinuedAsNew", '"out-1"', 2),
            "execution 1",
        )
        expect(
            first.completed_at_ms is not None and first.completed_at_ms >= first.started_at_ms > 0,
            f"timestamps of a finished execution: {first!r}",
        )
        second = present(
            await ok(admin.get_execution_info("inst-A", 2), "get_execution_info(2)"), "execution 2"
        )
        expect_eq((second.status, second.output, second.event_count), ("Running", None, 2), "execution 2")
        expect_eq(second.completed_at_ms, None, "completed_at of a running execution")
        expect_eq(
            await ok(admin.get_execution_info("inst-A", 3), "get_execution_info(3)"),
            None,
            "unknown execution",
        )


async def test_get_system_metrics(factory: ProviderFactory) -> None:
    """Instance, execution, status and event counts are accurate."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        m = await ok(admin.get_system_metrics(), "get_system_metrics")
        expect_eq(
            (m.total_instances, m.total_executions, m.total_events), (0, 0, 0), "metrics of an empty store"
        )
        await create_instance(p, "running")  # 1 execution, 1 event
        await create_instance(p, "completed", status="Completed", output='"x"')  # 1 execution, 1 event
        await create_instance(p, "failed", status="Failed", output='"x"')  # 1 execution, 1 event
        await create_executions(p, "chain", 3, last_status="Completed")  # 3 executions, 6 events
        m = await ok(admin.get_system_metrics(), "get_system_metrics")
        expect_eq(
            (
                m.total_instances,
                m.total_executions,
                m.running_instances,
                m.completed_instances,
                m.failed_instances,
            ),
            (4, 6, 1, 2, 1),
            "instances, executions, running, completed, failed",
        )
        expect_eq(m.total_events, 9, "total events")


async def test_get_queue_depths(factory: ProviderFactory) -> None:
    """Depths count unlocked messages: they rise on enqueue and drop while an instance is locked."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        d = await ok(admin.get_queue_depths(), "get_queue_depths")
        expect_eq((d.orchestrator_queue, d.worker_queue), (0, 0), "depths of an empty store")
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker 1")
        await ok(p.enqueue_for_worker(activity("inst-A", 2)), "enqueue_for_worker 2")
        d = await ok(admin.get_queue_depths(), "get_queue_depths")
        expect_eq((d.orchestrator_queue, d.worker_queue), (1, 2), "depths after enqueues")
        await must_fetch_orch(p, "inst-A")
        d = await ok(admin.get_queue_depths(), "get_queue_depths")
        expect_eq((d.orchestrator_queue, d.worker_queue), (0, 2), "depths while the instance is locked")
