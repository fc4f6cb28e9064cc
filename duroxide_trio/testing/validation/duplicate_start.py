"""Duplicate starts never change an instance: a second ``enqueue_start`` of a pending, running, completed
or continued-as-new id raises ``InstanceAlreadyExists`` and leaves handler, version, input and execution
alone; a start message that reaches an existing instance (a detached start) changes nothing stored."""

from __future__ import annotations

from ...history import StartOrchestration
from ...providers.base import InstanceAlreadyExists, ProviderFactory
from ._support import (
    ack,
    admin_of,
    create_executions,
    create_instance,
    expect_eq,
    expect_error,
    external,
    external_event,
    finish_instance,
    fresh_provider,
    must_fetch_orch,
    ok,
    present,
    start_item,
)


async def test_duplicate_start_keeps_the_pending_input(factory: ProviderFactory) -> None:
    """A second start of a pending id is refused; the first start's name, version and input are fetched."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst", "First", "1.0.0", input='"first"')), "enqueue_start")
        await expect_error(p.enqueue_start(start_item("inst", "Second", "2.0.0", input='"second"')),
                           "second start of a pending id", InstanceAlreadyExists)
        item = await must_fetch_orch(p, "inst")
        starts = [m for m in item.messages if isinstance(m, StartOrchestration)]
        expect_eq([(s.name, s.version, s.input) for s in starts], [("First", "1.0.0", '"first"')],
                  "start messages of the batch")


async def test_duplicate_start_of_a_completed_instance_is_refused(factory: ProviderFactory) -> None:
    """A completed instance is not restarted by a second start."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst")
        await finish_instance(p, "inst")
        await expect_error(p.enqueue_start(start_item("inst", "Other", "2.0.0")), "start of a completed id",
                           InstanceAlreadyExists)
        info = present(await ok(p.get_instance_info("inst"), "get_instance_info"), "inst")
        expect_eq((info.name, info.version, info.status), ("TestOrch", "1.0.0", "Completed"), "instance after")


async def test_duplicate_start_does_not_reset_the_execution(factory: ProviderFactory) -> None:
    """An instance in its third execution stays there after a refused start."""
    async with fresh_provider(factory) as p:
        await create_executions(p, "inst", 3, last_status="Running")
        await expect_error(p.enqueue_start(start_item("inst")), "start of a continued id", InstanceAlreadyExists)
        expect_eq(await ok(admin_of(p).list_executions("inst"), "list_executions"), [1, 2, 3], "executions")
        await ok(p.enqueue_for_orchestrator(external("inst", "Poke")), "enqueue")
        item = await must_fetch_orch(p, "inst")
        expect_eq(item.execution_id, 3, "execution of the next batch")


async def test_start_message_for_a_running_instance_changes_nothing(factory: ProviderFactory) -> None:
    """A detached start committed by another instance's ack, aimed at a running id, leaves that instance's
    name, version and history as they were (the engine discards the message when it fetches it)."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "target")
        await create_instance(p, "starter")
        before = await ok(p.read("target"), "read")
        await ok(p.enqueue_for_orchestrator(external("starter", "Go")), "enqueue")
        item = await must_fetch_orch(p, "starter")
        await ack(p, item, [external_event(len(item.history) + 1, "Go")],
                  orchestrator_items=[start_item("target", "Other", "9.0.0", input='"hijack"')])
        info = present(await ok(p.get_instance_info("target"), "get_instance_info"), "target")
        expect_eq((info.name, info.version, info.status), ("TestOrch", "1.0.0", "Running"), "target after")
        expect_eq(await ok(p.read("target"), "read"), before, "history of the target")
