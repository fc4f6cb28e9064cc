"""The first turn handed over by the start (``ProviderCapabilities.start_fetches_turn``):
``enqueue_start_and_fetch`` stores the start exactly as ``enqueue_start`` does (``InstanceAlreadyExists``
for a taken id) and, in the same transaction, locks the new instance exactly as
``fetch_orchestration_item`` would (every visible message, the lock timeout asked for, the version
filter), never an instance locked by someone else, and never ahead of a turn that has waited in the queue
longer than ``START_OVERTAKE_LIMIT`` (that one is handed over instead); ``None`` leaves the stored start
for any dispatcher.

Needs ``ProviderCapabilities(start_fetches_turn=True)``; skipped otherwise.
"""

from __future__ import annotations

import anyio
import attrs

from ...history import StartOrchestration
from ...providers.base import (
    START_OVERTAKE_LIMIT,
    InstanceAlreadyExists,
    OrchestrationItem,
    Provider,
    ProviderFactory,
    StartFetchesTurn,
    TurnRequest,
    VersionRange,
    as_start_fetching,
)
from ._support import (
    LONG,
    ack,
    create_instance,
    describe,
    expect,
    expect_eq,
    expect_error,
    external,
    external_event,
    fail,
    fetch_orch,
    fresh_provider,
    lock_timeout,
    meta,
    must_fetch_orch,
    ok,
    past,
    present,
    skip,
    start_item,
    started,
)


def _capable(p: Provider) -> StartFetchesTurn:
    fetching = as_start_fetching(p)
    if fetching is None:
        skip("the provider does not declare ProviderCapabilities.start_fetches_turn")
    return fetching


async def _start_fetch(
    p: Provider, start: StartOrchestration, max_items: int = 1, *,
    lock: float = LONG, versions: VersionRange | None = None,
) -> OrchestrationItem | None:
    return await ok(
        _capable(p).enqueue_start_and_fetch(start, TurnRequest(lock, max_items, versions)),
        "enqueue_start_and_fetch",
    )


def _taken(item: OrchestrationItem | None, instance: str, what: str) -> OrchestrationItem:
    if item is None or item.instance_id != instance:
        fail(f"{what}: expected the first turn of {instance!r}, got {describe(item)}")
    return item


def _starts(item: OrchestrationItem) -> list[tuple[str, str | None, str | None]]:
    return [(m.name, m.version, m.input) for m in item.messages if isinstance(m, StartOrchestration)]


async def _fetch_in(p: Provider, versions: VersionRange, what: str) -> OrchestrationItem | None:
    return await ok(p.fetch_orchestration_item(LONG, 0.0, versions=versions), what)


async def test_start_hands_over_the_first_turn(factory: ProviderFactory) -> None:
    """The start comes back as the new instance's locked first turn (the start its only message, no history,
    attempt count 1); a fetch then finds nothing, and the batch's ack creates the instance."""
    async with fresh_provider(factory) as p:
        _capable(p)
        start = start_item("inst", input='"in"')
        item = _taken(await _start_fetch(p, start), "inst", "the start's turn")
        expect_eq(item.messages, [start], "messages of the handed-over batch (the start only)")
        expect_eq(item.history, [], "history of the handed-over batch")
        expect_eq(item.attempt_count, 1, "attempt count of the handed-over batch")
        expect_eq((item.orchestration_name, item.version, item.execution_id), ("TestOrch", "1.0.0", 1),
                  "name, version and execution of the handed-over batch")
        expect(item.history_error is None, f"no history error expected, got {item.history_error!r}")
        expect(await fetch_orch(p) is None, "the new instance is locked: a fetch must return nothing")
        await ack(p, item, [started()], execution_id=1, metadata=meta("Running"),
                  what="ack of the handed-over first turn")
        info = present(await ok(p.get_instance_info("inst"), "get_instance_info"), "instance after the ack")
        expect_eq((info.name, info.version, info.status, info.current_execution_id),
                  ("TestOrch", "1.0.0", "Running", 1), "instance created by the first turn's ack")
        expect_eq(len(await ok(p.read("inst"), "read")), 1, "history after the ack (OrchestrationStarted)")
        expect(await fetch_orch(p) is None, "the handed-over batch was committed: nothing is left")


async def test_batch_matches_a_fetch(factory: ProviderFactory) -> None:
    """The handed-over batch equals what ``enqueue_start`` then ``fetch_orchestration_item`` returns for the
    same start (everything but the lock token)."""
    start = start_item("inst", "Named", "2.3.4", input='{"k": 1}')
    async with fresh_provider(factory) as p:
        _capable(p)
        handed = _taken(await _start_fetch(p, start), "inst", "the start's turn")
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start), "enqueue_start")
        fetched = await must_fetch_orch(p, "inst", what="the fetch of the same start")
    expect(bool(handed.lock_token), "the handed-over batch must carry a lock token")
    expect_eq(attrs.evolve(handed, lock_token=""), attrs.evolve(fetched, lock_token=""),
              "the handed-over batch (lock token aside) against a fetched one")


async def test_early_messages_join_the_first_turn(factory: ProviderFactory) -> None:
    """An event enqueued for the id before its start is in the handed-over batch with the start, as a
    fetch would deliver it; nothing is left behind."""
    async with fresh_provider(factory) as p:
        _capable(p)
        await ok(p.enqueue_for_orchestrator(external("inst", "Early")), "enqueue_for_orchestrator")
        item = _taken(await _start_fetch(p, start_item("inst")), "inst", "the start's turn")
        expect_eq(sorted(type(m).__name__ for m in item.messages), ["ExternalRaised", "StartOrchestration"],
                  "messages of the handed-over batch")
        expect_eq(item.attempt_count, 1, "attempt count of the handed-over batch")
        expect(await fetch_orch(p) is None, "every message is in the locked batch")
        await ack(p, item, [started(), external_event(2, "Early")], execution_id=1, metadata=meta("Running"))
        expect(await fetch_orch(p) is None, "the ack consumed both messages")


async def test_taken_id_raises_and_changes_nothing(factory: ProviderFactory) -> None:
    """A start for an existing instance or a pending start raises ``InstanceAlreadyExists`` as
    ``enqueue_start`` does, locks nothing and stores nothing: the first start is fetched unchanged at
    attempt 1, the instance keeps its row."""
    async with fresh_provider(factory) as p:
        _capable(p)
        await create_instance(p, "inst")
        await expect_error(_capable(p).enqueue_start_and_fetch(start_item("inst", "Other", "2.0.0"),
                                                               TurnRequest(LONG, 1)),
                           "start_and_fetch of an existing id", InstanceAlreadyExists)
        expect(await fetch_orch(p) is None, "a refused start must enqueue (and lock) nothing")
        info = present(await ok(p.get_instance_info("inst"), "get_instance_info"), "inst")
        expect_eq((info.name, info.version, info.status), ("TestOrch", "1.0.0", "Running"), "instance after")
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst", "First", "1.0.0", input='"first"')), "enqueue_start")
        await expect_error(_capable(p).enqueue_start_and_fetch(
            start_item("inst", "Second", "2.0.0", input='"second"'), TurnRequest(LONG, 1)),
            "start_and_fetch of a pending id", InstanceAlreadyExists)
        item = await must_fetch_orch(p, "inst", what="the fetch of the first start")
        expect_eq(_starts(item), [("First", "1.0.0", '"first"')], "start messages of the batch")
        expect_eq(item.attempt_count, 1, "attempt count (the refused call must not have locked it)")


async def test_taken_id_leaves_the_holders_lock(factory: ProviderFactory) -> None:
    """A start for a pending id whose first turn someone holds is refused without touching that lock: the
    holder's ack commits and the refused start's input is nowhere."""
    async with fresh_provider(factory) as p:
        _capable(p)
        await ok(p.enqueue_start(start_item("inst", input='"first"')), "enqueue_start")
        held = await must_fetch_orch(p, "inst", what="the holder's fetch")
        await expect_error(_capable(p).enqueue_start_and_fetch(start_item("inst", input='"second"'),
                                                               TurnRequest(LONG, 1)),
                           "start_and_fetch of a held pending id", InstanceAlreadyExists)
        expect(await fetch_orch(p) is None, "the holder still holds the instance")
        await ack(p, held, [started()], execution_id=1, metadata=meta("Running"), what="the holder's ack")
        expect(await fetch_orch(p) is None, "nothing of the refused start was stored")


async def test_zero_max_items_only_stores(factory: ProviderFactory) -> None:
    """With ``max_items=0`` the start is stored and nothing is locked: ``None`` comes back and a fetch gets
    the start at attempt 1."""
    async with fresh_provider(factory) as p:
        _capable(p)
        got = await _start_fetch(p, start_item("inst", input='"in"'), max_items=0)
        expect(got is None, f"max_items=0 must hand over nothing, got {describe(got)}")
        item = await must_fetch_orch(p, "inst", what="the fetch of the stored start")
        expect_eq(_starts(item), [("TestOrch", "1.0.0", '"in"')], "start messages of the batch")
        expect_eq(item.attempt_count, 1, "attempt count of the fetched start")
        await expect_error(_capable(p).enqueue_start_and_fetch(start_item("inst"), TurnRequest(LONG, 0)),
                           "second start_and_fetch (max_items=0) of the id", InstanceAlreadyExists)


async def test_version_filter_applies(factory: ProviderFactory) -> None:
    """The runtime's capability filter is honoured as by the fetch: a start asking for 2.0.0 is stored but
    not handed to a 1.x runtime (nor fetched by one), a 2.x fetch gets it at attempt 1; a 1.x runtime is
    handed a start asking for 1.0.0."""
    async with fresh_provider(factory) as p:
        _capable(p)
        got = await _start_fetch(p, start_item("v2", version="2.0.0"), versions=VersionRange.major(1))
        expect(got is None, f"a start asking for 2.0.0 handed to a 1.x runtime: {describe(got)}")
        other = await _fetch_in(p, VersionRange.major(1), "fetch (1.x)")
        expect(other is None, f"a 1.x fetch must not get the 2.0.0 start, got {describe(other)}")
        item = await _fetch_in(p, VersionRange.major(2), "fetch (2.x)")
        expect(item is not None and item.instance_id == "v2", f"a 2.x fetch gets 'v2', got {describe(item)}")
        expect_eq(present(item, "the 2.x fetch").attempt_count, 1, "attempt count of the filtered start")
    async with fresh_provider(factory) as p:
        got = await _start_fetch(p, start_item("v1", version="1.0.0"), versions=VersionRange.major(1))
        _taken(got, "v1", "the start handed to a 1.x runtime")


async def test_start_without_a_version_passes_any_filter(factory: ProviderFactory) -> None:
    """A start that asks for no version runs at the runtime's latest registered version: any filter takes
    it."""
    async with fresh_provider(factory) as p:
        _capable(p)
        got = await _start_fetch(p, start_item("any", version=None), versions=VersionRange.major(7))
        item = _taken(got, "any", "a start asking for no version, filter 7.x")
        expect_eq(item.version, None, "version of the batch of a start asking for none")
        expect(await fetch_orch(p) is None, "the start is locked")


async def test_handed_over_lock_expires(factory: ProviderFactory) -> None:
    """A runtime that crashes after the start loses nothing: the batch's lock (the timeout asked for)
    expires and a fetch gets the start again, with a new token, counted as a second attempt."""
    async with fresh_provider(factory) as p:
        _capable(p)
        timeout = lock_timeout(factory)
        item = _taken(await _start_fetch(p, start_item("inst"), lock=timeout), "inst", "the start's turn")
        expect(await fetch_orch(p) is None, "the handed-over batch is locked")
        await anyio.sleep(past(timeout))
        again = await must_fetch_orch(p, "inst", what="the fetch after the lock expired")
        expect_eq([type(m).__name__ for m in again.messages], ["StartOrchestration"], "messages after the expiry")
        expect_eq(again.attempt_count, 2, "attempt count after the expiry")
        expect(again.lock_token != item.lock_token, "a refetch after expiry must get a new token")


async def test_handed_over_lock_renews(factory: ProviderFactory) -> None:
    """The returned token is the instance's lock: renewing it keeps the instance locked past the first
    timeout."""
    async with fresh_provider(factory) as p:
        _capable(p)
        timeout = lock_timeout(factory)
        item = _taken(await _start_fetch(p, start_item("inst"), lock=timeout), "inst", "the start's turn")
        await ok(p.renew_orchestration_item_lock(item.lock_token, LONG), "renew_orchestration_item_lock")
        await anyio.sleep(past(timeout))
        expect(await fetch_orch(p) is None, "the renewed lock still holds the instance")
        await ack(p, item, [started()], execution_id=1, metadata=meta("Running"), what="ack after the renewal")


async def test_abandon_makes_the_start_fetchable(factory: ProviderFactory) -> None:
    """Abandoning the handed-over batch releases the instance at once: a fetch gets the start again, at
    attempt 2."""
    async with fresh_provider(factory) as p:
        _capable(p)
        item = _taken(await _start_fetch(p, start_item("inst", input='"in"')), "inst", "the start's turn")
        await ok(p.abandon_orchestration_item(item.lock_token), "abandon_orchestration_item")
        again = await must_fetch_orch(p, "inst", what="the fetch right after the abandon")
        expect_eq(_starts(again), [("TestOrch", "1.0.0", '"in"')], "start messages after the abandon")
        expect_eq(again.attempt_count, 2, "attempt count after the abandon")


async def test_a_waiting_turn_goes_first(factory: ProviderFactory) -> None:
    """A start does not overtake the backlog: with another instance's start waiting in the queue longer
    than ``START_OVERTAKE_LIMIT``, that instance's turn is the batch handed over, and the new start stays
    queued for the next fetch (attempt 1)."""
    async with fresh_provider(factory) as p:
        _capable(p)
        await ok(p.enqueue_start(start_item("old", input='"old"')), "enqueue_start of 'old'")
        await anyio.sleep(past(START_OVERTAKE_LIMIT))
        handed = _taken(await _start_fetch(p, start_item("new", input='"new"')), "old",
                        "the batch handed over while 'old' waits")
        expect_eq(_starts(handed), [("TestOrch", "1.0.0", '"old"')], "start messages of the handed-over batch")
        item = await must_fetch_orch(p, "new", what="the fetch after the start that served 'old'")
        expect_eq(_starts(item), [("TestOrch", "1.0.0", '"new"')], "start messages of the new instance")
        expect_eq(item.attempt_count, 1, "attempt count of the queued start")
        await ack(p, handed, [started()], execution_id=1, metadata=meta("Running"), what="ack of 'old'")
