"""Continue-as-new races: the successor's start message (``ContinueAsNew``) is committed with the ack that
ends an execution and keeps its input, custom status and order through refetches and abandons (the
unregistered-handler backoff of a rolling deploy), and events that race the ack reach the successor."""

from __future__ import annotations

import attrs

from ...history import ContinueAsNew, ExternalRaised
from ...providers.base import OrchestrationItem, ProviderFactory
from ._support import (
    ack,
    admin_of,
    create_instance,
    describe,
    expect,
    expect_eq,
    external,
    external_event,
    fail,
    fresh_provider,
    meta,
    must_fetch_orch,
    ok,
    started,
)

_INPUT = '{"carried":42}'


def _successor(instance: str) -> ContinueAsNew:
    return ContinueAsNew(instance=instance, name="TestOrch", input=_INPUT, version="2.0.0", execution_id=2,
                         carry_forward=[("q", '"left"')], initial_custom_status='"halfway"')


def _can_of(item: OrchestrationItem, what: str) -> ContinueAsNew:
    cans = [m for m in item.messages if isinstance(m, ContinueAsNew)]
    if len(cans) != 1:
        fail(f"{what}: expected one ContinueAsNew message, got {describe(item)}")
    return cans[0]


async def _end_with_continue_as_new(p, instance: str) -> None:  # type: ignore[no-untyped-def]
    await create_instance(p, instance)
    await ok(p.enqueue_for_orchestrator(external(instance, "Next")), "enqueue")
    item = await must_fetch_orch(p, instance)
    await ack(p, item, [external_event(len(item.history) + 1, "Next")], orchestrator_items=[_successor(instance)],
              metadata=meta("ContinuedAsNew"))


async def test_successor_is_fetched_with_everything_it_carries(factory: ProviderFactory) -> None:
    """The ContinueAsNew message committed by the ack comes back whole: input, version, carried messages
    and custom status."""
    async with fresh_provider(factory) as p:
        await _end_with_continue_as_new(p, "inst")
        item = await must_fetch_orch(p, "inst", what="fetch of the successor")
        expect_eq(_can_of(item, "successor batch"), _successor("inst"), "the ContinueAsNew message")


async def test_successor_keeps_its_input_across_abandons(factory: ProviderFactory) -> None:
    """A runtime that cannot run the new version gives the successor back (again and again): it stays
    queued, unchanged, and its attempt count grows."""
    async with fresh_provider(factory) as p:
        await _end_with_continue_as_new(p, "inst")
        for attempt in (1, 2, 3):
            item = await must_fetch_orch(p, "inst", what=f"fetch {attempt} of the successor")
            expect_eq(_can_of(item, f"fetch {attempt}"), _successor("inst"), f"successor at fetch {attempt}")
            expect_eq(item.attempt_count, attempt, f"attempt count at fetch {attempt}")
            await ok(p.abandon_orchestration_item(item.lock_token, None), "abandon_orchestration_item")
        item = await must_fetch_orch(p, "inst", what="fetch after the abandons")
        await ack(p, item, [started(version="2.0.0")], execution_id=2, metadata=meta(version="2.0.0"))
        history = await ok(p.read("inst"), "read")
        expect_eq([e.type_name for e in history], ["OrchestrationStarted"], "history of execution 2")


async def test_event_racing_the_continue_as_new_turn_reaches_the_successor(factory: ProviderFactory) -> None:
    """An event that arrives while the ending turn is locked is not consumed by its ack: it is fetched
    with the ContinueAsNew message, in one batch (in enqueue order: the event first)."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst")
        await ok(p.enqueue_for_orchestrator(external("inst", "Next")), "enqueue")
        item = await must_fetch_orch(p, "inst")
        await ok(p.enqueue_for_orchestrator(external("inst", "Late")), "enqueue during the locked turn")
        await ack(p, item, [external_event(len(item.history) + 1, "Next")], orchestrator_items=[_successor("inst")],
                  metadata=meta("ContinuedAsNew"))
        item = await must_fetch_orch(p, "inst", what="fetch of the successor")
        kinds = [type(m).__name__ for m in item.messages]
        expect_eq(sorted(kinds), ["ContinueAsNew", "ExternalRaised"], "messages of the successor batch")
        late = [m for m in item.messages if isinstance(m, ExternalRaised)][0]
        expect_eq(late.name, "Late", "the racing event")


async def test_successor_ack_starts_execution_two(factory: ProviderFactory) -> None:
    """Acking the successor with execution id 2 creates execution 2; execution 1 stays readable."""
    async with fresh_provider(factory) as p:
        await _end_with_continue_as_new(p, "inst")
        item = await must_fetch_orch(p, "inst", what="fetch of the successor")
        await ack(p, item, [started(version="2.0.0"), external_event(2, "exec-2")], execution_id=2,
                  metadata=meta(version="2.0.0"))
        admin = admin_of(p)
        expect_eq(await ok(admin.list_executions("inst"), "list_executions"), [1, 2], "executions")
        first = await ok(p.read_with_execution("inst", 1), "read_with_execution(1)")
        expect([e.type_name for e in first][-1] == "ExternalEvent", f"execution 1 history kept: {first}")
        info = await ok(p.get_instance_info("inst"), "get_instance_info")
        expect(info is not None and info.version == "2.0.0",
               f"the instance records the successor's version, got {info and attrs.asdict(info)}")
