"""Error handling: bad tokens, duplicate events, unknown instances, corrupted data and expired locks."""

from __future__ import annotations

import anyio

from ...history import ActivityScheduled, OrchestrationStarted
from ...providers.base import ExecutionMetadata, ProviderError, ProviderFactory
from ._support import (
    corrupt_history,
    create_instance,
    event,
    expect,
    expect_eq,
    expect_error,
    expect_no_orch,
    expect_permanent,
    external,
    fresh_provider,
    lock_timeout,
    message_names,
    meta,
    must_fetch_orch,
    ok,
    past,
    start_item,
    started,
)


async def test_invalid_lock_token_on_ack(factory: ProviderFactory) -> None:
    """An ack with an unknown token is a permanent error whose message mentions the lock/token."""
    async with fresh_provider(factory) as p:
        err = await expect_error(
            p.ack_orchestration_item("invalid-token", 1, [], [], [], ExecutionMetadata()),
            "ack with an unknown token",
        )
        expect_permanent(err, "ack with an unknown token")
        text = str(err).lower()
        expect(
            "lock" in text or "token" in text, f"the error should mention the lock token, got {str(err)!r}"
        )


async def test_duplicate_event_id_rejection(factory: ProviderFactory) -> None:
    """Appending an event id that exists fails (ack) or is ignored (append_with_execution), never
    overwrites: the history keeps exactly its original event."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A")), "enqueue")
        item = await must_fetch_orch(p, "inst-A")
        err = await expect_error(
            p.ack_orchestration_item(
                item.lock_token,
                1,
                [event(1, ActivityScheduled(name="Activity", input="{}"))],
                [],
                [],
                ExecutionMetadata(),
            ),
            "ack appending a duplicate event id",
        )
        expect_permanent(err, "duplicate event id")
        try:
            await p.append_with_execution(
                "inst-A", 1, [event(1, ActivityScheduled(name="Overwrite", input="{}"))]
            )
        except ProviderError:
            pass  # rejecting is fine; ignoring is fine; overwriting is not (checked below)
        history = await ok(p.read("inst-A"), "read")
        expect_eq(len(history), 1, "history length after duplicate appends")
        kind = history[0].kind
        expect(
            isinstance(kind, OrchestrationStarted) and kind.name == "TestOrch",
            f"event 1 must still be the original OrchestrationStarted, got {history[0]!r}",
        )


async def test_missing_instance_metadata(factory: ProviderFactory) -> None:
    """Reading an unknown instance returns empty results, not errors."""
    async with fresh_provider(factory) as p:
        expect_eq(await ok(p.read("non-existent"), "read"), [], "read of an unknown instance")
        expect_eq(
            await ok(p.read_with_execution("non-existent", 1), "read_with_execution"),
            [],
            "read_with_execution of an unknown instance",
        )
        expect_eq(await ok(p.get_instance_info("non-existent"), "get_instance_info"), None, "instance info")
        expect_eq(
            await ok(p.get_custom_status("non-existent", 0), "get_custom_status"), None, "custom status"
        )
        admin = p.as_admin()
        if admin is not None:
            expect_eq(
                await ok(admin.get_execution_info("non-existent", 1), "get_execution_info"),
                None,
                "execution info of an unknown instance",
            )


async def test_corrupted_serialization_data(factory: ProviderFactory) -> None:
    """A corrupted stored history does not make fetch raise: the batch comes back with ``history_error``
    set, an empty history, its messages, the lock held, and it can be abandoned and acked normally."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await corrupt_history(factory, p, "inst-A")
        await ok(p.enqueue_for_orchestrator(external("inst-A", "After")), "enqueue")
        item = await must_fetch_orch(p, "inst-A", what="fetch of an instance with corrupted history")
        expect(
            item.history_error,
            f"history_error must be set for a corrupted history, got {item.history_error!r}",
        )
        expect_eq(item.history, [], "history of a batch with history_error")
        expect_eq(message_names(item), ["After"], "messages of a batch with history_error")
        await expect_no_orch(p, "fetch while the corrupted instance is locked")
        await ok(p.abandon_orchestration_item(item.lock_token), "abandon of a corrupted batch")
        again = await must_fetch_orch(p, "inst-A", what="refetch of the corrupted instance")
        expect(again.history_error, "history_error must be reported again on refetch")


async def test_lock_expiration_during_ack(factory: ProviderFactory) -> None:
    """An ack after the orchestration lock expired is rejected and changes nothing."""
    lt = lock_timeout(factory)
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start")
        item = await must_fetch_orch(p, "inst-A", lock=lt)
        await anyio.sleep(past(lt))
        err = await expect_error(
            p.ack_orchestration_item(item.lock_token, 1, [started()], [], [], meta()),
            "ack after the lock expired",
        )
        expect_permanent(err, "ack after the lock expired")
        expect_eq(
            await ok(p.get_instance_info("inst-A"), "get_instance_info"),
            None,
            "instance after the rejected ack",
        )
        expect_eq(await ok(p.read("inst-A"), "read"), [], "history after the rejected ack")
        again = await must_fetch_orch(p, "inst-A", what="refetch after the rejected ack")
        expect_eq(
            [type(m).__name__ for m in again.messages],
            ["StartOrchestration"],
            "messages after the rejected ack",
        )
