"""Multi-execution: continue-as-new creates executions whose histories stay separate and readable."""

from __future__ import annotations

from ...history import ContinueAsNew, Event, ExternalEvent, OrchestrationStarted
from ...providers.base import ProviderFactory
from ._support import (
    continue_as_new,
    create_executions,
    expect,
    expect_eq,
    external,
    external_event,
    fresh_provider,
    meta,
    must_fetch_orch,
    ok,
    present,
    start_item,
    started,
)


def _names(history: list[Event]) -> list[str]:
    return [e.kind.name for e in history if isinstance(e.kind, ExternalEvent)]


async def test_execution_isolation(factory: ProviderFactory) -> None:
    """Each execution keeps its own history (event ids restart at 1 per execution)."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [started(), external_event(2, "one")],
                [],
                [continue_as_new("inst-A", 2)],
                meta("ContinuedAsNew"),
            ),
            "ack of execution 1",
        )
        item = await must_fetch_orch(p, "inst-A", what="fetch of the continue-as-new")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                2,
                [started(), external_event(2, "two-a"), external_event(3, "two-b")],
                [],
                [],
                meta("Running"),
            ),
            "ack of execution 2",
        )
        h1 = await ok(p.read_with_execution("inst-A", 1), "read_with_execution(1)")
        h2 = await ok(p.read_with_execution("inst-A", 2), "read_with_execution(2)")
        expect_eq([e.event_id for e in h1], [1, 2], "event ids of execution 1")
        expect_eq([e.event_id for e in h2], [1, 2, 3], "event ids of execution 2")
        expect_eq(_names(h1), ["one"], "events of execution 1")
        expect_eq(_names(h2), ["two-a", "two-b"], "events of execution 2")


async def test_latest_execution_detection(factory: ProviderFactory) -> None:
    """``read`` returns the newest execution's history; a fetch loads the current execution's history."""
    async with fresh_provider(factory) as p:
        await create_executions(p, "inst-A", 3, last_status="Running")
        history = await ok(p.read("inst-A"), "read")
        expect_eq(_names(history), ["exec-3"], "events returned by read (the latest execution)")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "Poke")), "enqueue")
        item = await must_fetch_orch(p, "inst-A")
        expect_eq(item.execution_id, 3, "execution id of the fetched batch")
        expect_eq(_names(item.history), ["exec-3"], "history of the fetched batch")


async def test_execution_id_sequencing(factory: ProviderFactory) -> None:
    """Execution ids increase as executions are acked; the current pointer follows."""
    async with fresh_provider(factory) as p:
        for n in (1, 2, 3):
            iid = f"inst-{n}"
            await create_executions(p, iid, n, last_status="Running")
            info = present(await ok(p.get_instance_info(iid), "get_instance_info"), f"instance {iid}")
            expect_eq(info.current_execution_id, n, f"current execution of an instance with {n} executions")
        admin = p.as_admin()
        if admin is not None:
            expect_eq(
                await ok(admin.list_executions("inst-3"), "list_executions"),
                [1, 2, 3],
                "executions of inst-3",
            )


async def test_continue_as_new_creates_new_execution(factory: ProviderFactory) -> None:
    """Acking with execution_id + 1 creates that execution and moves the current pointer; the previous
    execution keeps its ContinuedAsNew status. Until then, a fetch sees the old execution plus the
    ContinueAsNew message."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [started()],
                [],
                [continue_as_new("inst-A", 2)],
                meta("ContinuedAsNew", output="1"),
            ),
            "ack of execution 1",
        )
        item = await must_fetch_orch(p, "inst-A", what="fetch of the continue-as-new")
        expect(
            [type(m) for m in item.messages] == [ContinueAsNew],
            f"the batch must hold the ContinueAsNew message, got {item.messages!r}",
        )
        expect_eq(item.execution_id, 1, "execution id before execution 2 is acked")
        expect(
            len(item.history) == 1 and isinstance(item.history[0].kind, OrchestrationStarted),
            f"the batch carries execution 1's history, got {item.history!r}",
        )
        await ok(
            p.ack_orchestration_item(item.lock_token, 2, [started()], [], [], meta("Running")),
            "ack of execution 2",
        )
        info = present(await ok(p.get_instance_info("inst-A"), "get_instance_info"), "instance")
        expect_eq(info.current_execution_id, 2, "current execution after continue-as-new")
        expect_eq(info.status, "Running", "status of the new execution")
        admin = p.as_admin()
        if admin is not None:
            first = present(
                await ok(admin.get_execution_info("inst-A", 1), "get_execution_info(1)"), "execution 1"
            )
            expect_eq(first.status, "ContinuedAsNew", "status of execution 1")
            expect_eq(first.output, "1", "output of execution 1")


async def test_execution_history_persistence(factory: ProviderFactory) -> None:
    """All executions' histories remain readable independently after the chain moved on."""
    async with fresh_provider(factory) as p:
        await create_executions(p, "inst-A", 4, last_status="Completed")
        for n in (1, 2, 3, 4):
            history = await ok(p.read_with_execution("inst-A", n), f"read_with_execution({n})")
            expect_eq(_names(history), [f"exec-{n}"], f"events of execution {n}")
            expect_eq(len(history), 2, f"history length of execution {n}")
        expect_eq(
            await ok(p.read_with_execution("inst-A", 5), "read_with_execution(5)"), [], "unknown execution"
        )
