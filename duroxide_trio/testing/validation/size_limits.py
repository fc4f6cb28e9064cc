"""Size limits: what a provider must store and give back exactly at the limits the engine enforces
(``orchestration.limits``): 3 MiB payloads, 64 KiB names and error messages, 256 KiB custom status, a 5 MiB
history of one execution. The engine refuses anything larger before it reaches the provider, so a provider
needs no limits of its own, but everything up to them must round-trip byte for byte (ASCII, multi-byte and
4-byte UTF-8 alike) through every path: start, enqueue, ack, fetch, read, status.

Instance ids are not tested at 64 KiB: they are keys, and an index may refuse keys that large.
"""

from __future__ import annotations

from ...errors import ErrorDetails
from ...history import (
    ActivityError,
    ActivityResult,
    ContinueAsNew,
    CustomStatusUpdated,
    ExternalRaised,
    OrchestrationCompleted,
    OrchestrationFailed,
    OrchestrationStarted,
    StartOrchestration,
)
from ...orchestration.limits import (
    MAX_CUSTOM_STATUS_BYTES,
    MAX_HISTORY_BYTES,
    MAX_NAME_BYTES,
    MAX_PAYLOAD_BYTES,
    text_bytes,
)
from ...providers.base import ProviderFactory
from ._support import (
    ORCH,
    VERSION,
    ack,
    activity,
    create_instance,
    event,
    expect,
    expect_eq,
    external_event,
    fail,
    fresh_provider,
    meta,
    must_fetch_orch,
    must_fetch_work,
    new_turn,
    ok,
    present,
    start_item,
    started,
)


def blob(nbytes: int, char: str = "x") -> str:
    """A JSON string literal of exactly ``nbytes`` UTF-8 bytes, made of ``char`` (padded with ``x``)."""
    width = len(char.encode("utf-8"))
    count = (nbytes - 2) // width
    text = '"' + char * count + "x" * (nbytes - 2 - count * width) + '"'
    if text_bytes(text) != nbytes:  # pragma: no cover - a bug in this helper
        raise AssertionError(f"blob of {nbytes} bytes has {text_bytes(text)}")
    return text


def name_of(nbytes: int, char: str = "n") -> str:
    """A plain (unquoted) name of exactly ``nbytes`` UTF-8 bytes."""
    return blob(nbytes + 2, char)[1:-1]


def same(actual: str | None, expected: str, what: str) -> None:
    """Byte-for-byte equality, with a short message (never the megabytes themselves)."""
    if actual != expected:
        got = "None" if actual is None else f"{text_bytes(actual)} bytes"
        fail(f"{what}: expected the {text_bytes(expected)}-byte value back unchanged, got {got}")


async def _start_round_trip(factory: ProviderFactory, payload: str) -> None:
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A", input=payload)), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        start = item.messages[0]
        expect(isinstance(start, StartOrchestration), f"first message is a start, got {start!r:.80}")
        assert isinstance(start, StartOrchestration)
        same(start.input, payload, "input of the fetched start")
        first = event(1, OrchestrationStarted(name=ORCH, version=VERSION, input=payload))
        await ack(p, item, [first], metadata=meta())
        history = await ok(p.read("inst-A"), "read")
        kind = history[0].kind
        expect(
            isinstance(kind, OrchestrationStarted), f"first event is OrchestrationStarted, got {kind!r:.80}"
        )
        assert isinstance(kind, OrchestrationStarted)
        same(kind.input, payload, "input of the stored OrchestrationStarted")
        again = await ok(p.read_with_execution("inst-A", 1), "read_with_execution")
        expect_eq(again, history, "read_with_execution equals read")


async def test_start_input_at_payload_limit(factory: ProviderFactory) -> None:
    """A 3 MiB ASCII start input round-trips through enqueue_start, fetch, ack and read."""
    await _start_round_trip(factory, blob(MAX_PAYLOAD_BYTES))


async def test_start_input_two_byte_utf8_at_limit(factory: ProviderFactory) -> None:
    """A 3 MiB start input of 2-byte UTF-8 characters round-trips unchanged."""
    await _start_round_trip(factory, blob(MAX_PAYLOAD_BYTES, "é"))


async def test_start_input_four_byte_utf8_at_limit(factory: ProviderFactory) -> None:
    """A 3 MiB start input of 4-byte UTF-8 characters (outside the BMP) round-trips unchanged."""
    await _start_round_trip(factory, blob(MAX_PAYLOAD_BYTES, "\U0001f600"))


async def test_activity_input_at_limit_through_ack(factory: ProviderFactory) -> None:
    """A 3 MiB activity input scheduled by an ack is fetched from the worker queue unchanged."""
    payload = blob(MAX_PAYLOAD_BYTES, "ü")
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        item = await new_turn(p, "inst-A")
        await ack(
            p,
            item,
            [external_event(len(item.history) + 1, "Poke")],
            worker_items=[activity("inst-A", 1, input=payload)],
        )
        lease = await must_fetch_work(p)
        same(lease.item.input, payload, "input of the fetched activity")


async def test_activity_result_at_limit_through_ack_work_item(factory: ProviderFactory) -> None:
    """A 3 MiB activity result given to ack_work_item reaches the orchestrator queue unchanged."""
    payload = blob(MAX_PAYLOAD_BYTES)
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p)
        await ok(
            p.ack_work_item(lease.lock_token, ActivityResult("inst-A", 1, 1, result=payload)), "ack_work_item"
        )
        item = await must_fetch_orch(p, "inst-A")
        results = [m for m in item.messages if isinstance(m, ActivityResult)]
        expect_eq(len(results), 1, "activity results in the batch")
        same(results[0].result, payload, "result of the delivered ActivityResult")


async def test_external_event_data_at_limit_through_enqueue(factory: ProviderFactory) -> None:
    """A 3 MiB external event raised through enqueue_for_orchestrator is delivered unchanged."""
    payload = blob(MAX_PAYLOAD_BYTES, "\U0001f680")
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(
            p.enqueue_for_orchestrator(ExternalRaised("inst-A", "Big", payload)), "enqueue_for_orchestrator"
        )
        item = await must_fetch_orch(p, "inst-A")
        raised = [m for m in item.messages if isinstance(m, ExternalRaised)]
        expect_eq(len(raised), 1, "external events in the batch")
        same(raised[0].data, payload, "data of the delivered event")


async def test_orchestrator_item_at_limit_through_ack(factory: ProviderFactory) -> None:
    """A 3 MiB continue-as-new input enqueued by an ack is fetched unchanged by the next turn."""
    payload = blob(MAX_PAYLOAD_BYTES, "ж")
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        item = await new_turn(p, "inst-A")
        can = ContinueAsNew(instance="inst-A", name=ORCH, input=payload, version=VERSION, execution_id=2)
        await ack(p, item, [external_event(len(item.history) + 1, "Poke")], orchestrator_items=[can])
        nxt = await must_fetch_orch(p, "inst-A")
        cans = [m for m in nxt.messages if isinstance(m, ContinueAsNew)]
        expect_eq(len(cans), 1, "continue-as-new messages in the batch")
        same(cans[0].input, payload, "input of the delivered ContinueAsNew")


async def test_several_large_messages_in_one_batch(factory: ProviderFactory) -> None:
    """Three 1 MiB events for one instance come back together, in order, each unchanged."""
    payloads = [blob(1024 * 1024, c) for c in ("a", "é", "\U0001f600")]
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        for i, payload in enumerate(payloads):
            await ok(p.enqueue_for_orchestrator(ExternalRaised("inst-A", f"E{i}", payload)), "enqueue")
        item = await must_fetch_orch(p, "inst-A")
        raised = [m for m in item.messages if isinstance(m, ExternalRaised)]
        expect_eq([m.name for m in raised], ["E0", "E1", "E2"], "events of the batch")
        for i, (m, payload) in enumerate(zip(raised, payloads, strict=True)):
            same(m.data, payload, f"data of event {i}")


async def test_history_just_under_limit_read_whole(factory: ProviderFactory) -> None:
    """An execution history just under 5 MiB (stored over several turns) is read back whole, and a
    fetch delivers all of it."""
    chunk = blob(MAX_PAYLOAD_BYTES // 3)  # 1 MiB
    count = MAX_HISTORY_BYTES // text_bytes(chunk) - 1  # 4 events of 1 MiB, plus the start
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        for _ in range(count):
            item = await new_turn(p, "inst-A")
            await ack(p, item, [external_event(len(item.history) + 1, "Big", chunk)])
        history = await ok(p.read("inst-A"), "read")
        expect_eq(len(history), count + 1, "events in the stored history")
        expect_eq([e.event_id for e in history], list(range(1, count + 2)), "event ids of the stored history")
        for e in history[1:]:
            same(getattr(e.kind, "data", None), chunk, f"data of event {e.event_id}")
        item = await new_turn(p, "inst-A")
        expect_eq(item.history, history, "history delivered by fetch")


async def test_many_events_in_one_ack(factory: ProviderFactory) -> None:
    """One ack appending 2000 events stores all of them, in order."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        item = await new_turn(p, "inst-A")
        delta = [external_event(2 + i, f"E{i}", f'"{i}"') for i in range(2000)]
        await ack(p, item, delta)
        history = await ok(p.read("inst-A"), "read")
        expect_eq(len(history), 2001, "events after the ack")
        expect_eq(history[1:], delta, "the appended events, in order")


async def test_custom_status_at_limit_with_version(factory: ProviderFactory) -> None:
    """A 256 KiB custom status is stored with its version; a second one replaces it at version 2."""
    first, second = blob(MAX_CUSTOM_STATUS_BYTES, "ß"), blob(MAX_CUSTOM_STATUS_BYTES, "\U0001f4a1")
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        for version, status in ((1, first), (2, second)):
            item = await new_turn(p, "inst-A")
            n = len(item.history)
            await ack(
                p, item, [external_event(n + 1, "Poke"), event(n + 2, CustomStatusUpdated(status=status))]
            )
            got = present(await ok(p.get_custom_status("inst-A", version - 1), "get_custom_status"), "status")
            same(got[0], status, f"custom status {version}")
            expect_eq(got[1], version, "custom status version")
            info = present(await ok(p.get_instance_info("inst-A"), "get_instance_info"), "inst-A")
            same(info.custom_status, status, f"instance info custom status {version}")
        expect_eq(
            await ok(p.get_custom_status("inst-A", 2), "get_custom_status"),
            None,
            "poll at the current version",
        )


async def test_orchestration_output_at_limit(factory: ProviderFactory) -> None:
    """A 3 MiB orchestration output is stored in the history and in the instance info unchanged."""
    payload = blob(MAX_PAYLOAD_BYTES, "ñ")
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        item = await new_turn(p, "inst-A")
        n = len(item.history)
        done = [external_event(n + 1, "Poke"), event(n + 2, OrchestrationCompleted(output=payload))]
        await ack(p, item, done, metadata=meta("Completed", output=payload))
        info = present(await ok(p.get_instance_info("inst-A"), "get_instance_info"), "inst-A")
        same(info.output, payload, "output in the instance info")
        last = (await ok(p.read("inst-A"), "read"))[-1].kind
        expect(
            isinstance(last, OrchestrationCompleted),
            f"last event is OrchestrationCompleted, got {last!r:.80}",
        )
        assert isinstance(last, OrchestrationCompleted)
        same(last.output, payload, "output of the stored OrchestrationCompleted")


async def test_error_message_at_limit(factory: ProviderFactory) -> None:
    """A 64 KiB error message survives an OrchestrationFailed event and an ActivityError completion."""
    message = name_of(MAX_NAME_BYTES, "€")
    details = ErrorDetails(category="application", kind="ActivityFailed", message=message)
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        lease = await must_fetch_work(p)
        await ok(p.ack_work_item(lease.lock_token, ActivityError("inst-A", 1, 1, details)), "ack_work_item")
        item = await must_fetch_orch(p, "inst-A")
        errors = [m for m in item.messages if isinstance(m, ActivityError)]
        expect_eq(len(errors), 1, "activity errors in the batch")
        same(errors[0].details.message, message, "message of the delivered ActivityError")
        n = len(item.history)
        await ack(p, item, [event(n + 1, OrchestrationFailed(details))], metadata=meta("Failed"))
        last = (await ok(p.read("inst-A"), "read"))[-1].kind
        expect(isinstance(last, OrchestrationFailed), f"last event is OrchestrationFailed, got {last!r:.80}")
        assert isinstance(last, OrchestrationFailed)
        same(last.details.message, message, "message of the stored OrchestrationFailed")


async def test_activity_name_at_limit(factory: ProviderFactory) -> None:
    """A 64 KiB activity name (4-byte UTF-8) is fetched from the worker queue unchanged."""
    name = name_of(MAX_NAME_BYTES, "\U00010348")
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_for_worker(activity("inst-A", 1, name=name)), "enqueue_for_worker")
        lease = await must_fetch_work(p)
        same(lease.item.name, name, "name of the fetched activity")


async def test_event_name_at_limit(factory: ProviderFactory) -> None:
    """A 64 KiB external event name is delivered unchanged and stored in the history unchanged."""
    name = name_of(MAX_NAME_BYTES, "ç")
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(
            p.enqueue_for_orchestrator(ExternalRaised("inst-A", name, '"x"')), "enqueue_for_orchestrator"
        )
        item = await must_fetch_orch(p, "inst-A")
        raised = [m for m in item.messages if isinstance(m, ExternalRaised)]
        expect_eq(len(raised), 1, "external events in the batch")
        same(raised[0].name, name, "name of the delivered event")
        await ack(p, item, [external_event(len(item.history) + 1, name)])
        last = (await ok(p.read("inst-A"), "read"))[-1].kind
        same(getattr(last, "name", None), name, "name of the stored ExternalEvent")


async def test_orchestration_name_and_version_at_limit(factory: ProviderFactory) -> None:
    """A 64 KiB orchestration name and version are given back by fetch and by the instance info."""
    name, version = name_of(MAX_NAME_BYTES, "ø"), name_of(MAX_NAME_BYTES, "9")
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A", name, version)), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A")
        await ack(p, item, [started(name, version)], metadata=meta(name=name, version=version))
        info = present(await ok(p.get_instance_info("inst-A"), "get_instance_info"), "inst-A")
        same(info.name, name, "name in the instance info")
        same(info.version, version, "version in the instance info")
        again = await new_turn(p, "inst-A")
        same(again.orchestration_name, name, "orchestration name of a later fetch")
        same(again.version, version, "version of a later fetch")


async def test_large_payloads_on_both_queues_at_once(factory: ProviderFactory) -> None:
    """One ack that appends a 3 MiB event, schedules a 3 MiB activity and enqueues a 3 MiB event
    commits all three unchanged."""
    payload = blob(MAX_PAYLOAD_BYTES, "\u4e2d")  # 3-byte UTF-8
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        item = await new_turn(p, "inst-A")
        n = len(item.history)
        await ack(
            p,
            item,
            [external_event(n + 1, "Big", payload)],
            worker_items=[activity("inst-A", 1, input=payload)],
            orchestrator_items=[ExternalRaised("inst-A", "Self", payload)],
        )
        same(
            getattr((await ok(p.read("inst-A"), "read"))[-1].kind, "data", None), payload, "stored event data"
        )
        same((await must_fetch_work(p)).item.input, payload, "activity input")
        nxt = await must_fetch_orch(p, "inst-A")
        raised = [m for m in nxt.messages if isinstance(m, ExternalRaised)]
        expect_eq(len(raised), 1, "external events in the next batch")
        same(raised[0].data, payload, "data of the enqueued event")
