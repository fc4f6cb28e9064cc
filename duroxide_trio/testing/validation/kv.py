"""Key-value state: the ``KeyValueSet`` / ``KeyValueCleared`` events of an ack's history delta update the
instance's key-value table (``ProviderCapabilities.key_values``, ``get_kv_values``) in event order and in
the same transaction as the rest of the turn (a failed, abandoned or lock-lost turn writes nothing); the
values survive continue-as-new and pruning, and go away with the instance. The last tests run a runtime
on the provider: clients read the table, and ``ctx.get_value_from_instance`` is recorded and replayed.

A provider that does not declare ``key_values`` skips the category (clients then rebuild the state from
history)."""

from __future__ import annotations

from typing import Any

import anyio

from ...history import KeyValueCleared, KeyValueSet, OrchestrationStarted, kv_state
from ...orchestration.limits import MAX_KV_KEYS, MAX_KV_VALUE_BYTES
from ...providers.base import ExecutionMetadata, KeyValueStore, Provider, ProviderFactory, as_key_values
from ._support import (
    ORCH,
    VERSION,
    activity,
    admin_of,
    continue_as_new,
    create_instance,
    event,
    expect_eq,
    expect_error,
    external_event,
    fresh_provider,
    meta,
    must_fetch_orch,
    new_turn,
    ok,
    skip,
)


def _store(p: Provider) -> KeyValueStore:
    store = as_key_values(p)
    if store is None:
        skip("the provider does not declare ProviderCapabilities(key_values=True)")
    return store


async def _values(p: Provider, instance: str) -> dict[str, str]:
    return await ok(_store(p).get_kv_values(instance), f"get_kv_values({instance!r})")


async def _turn(p: Provider, instance: str, *kinds: Any, metadata: ExecutionMetadata | None = None) -> None:
    """One turn of ``instance``: an external event, then ``kinds`` (key-value events), acked."""
    item = await new_turn(p, instance)
    n = len(item.history)
    delta = [external_event(n + 1, "Poke")] + [event(n + 2 + i, k) for i, k in enumerate(kinds)]
    await ok(
        p.ack_orchestration_item(item.lock_token, item.execution_id, delta, [], [], metadata or ExecutionMetadata()),
        "ack with key-value events",
    )


async def test_kv_set_persists(factory: ProviderFactory) -> None:
    """A ``KeyValueSet`` in the first turn's delta is in the table after the ack, verbatim."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet("color", '"blue"')])
        expect_eq(await _values(p, "inst-A"), {"color": '"blue"'}, "values after the first turn")


async def test_kv_overwrite(factory: ProviderFactory) -> None:
    """A later set of the same key replaces its value (one row per key)."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet("n", "1")])
        await _turn(p, "inst-A", KeyValueSet("n", "2"))
        await _turn(p, "inst-A", KeyValueSet("n", "3"), KeyValueSet("n", "4"))
        expect_eq(await _values(p, "inst-A"), {"n": "4"}, "values after three overwrites")


async def test_kv_clear_one_key(factory: ProviderFactory) -> None:
    """``KeyValueCleared(key)`` removes that key only; clearing an absent key is harmless."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet("a", "1"), KeyValueSet("b", "2")])
        await _turn(p, "inst-A", KeyValueCleared("a"), KeyValueCleared("never-set"))
        expect_eq(await _values(p, "inst-A"), {"b": "2"}, "values after clearing 'a'")


async def test_kv_clear_all(factory: ProviderFactory) -> None:
    """``KeyValueCleared(None)`` removes every key of the instance (and only of that instance)."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet("a", "1"), KeyValueSet("b", "2")])
        await create_instance(p, "inst-B", extra_events=[KeyValueSet("a", "9")])
        await _turn(p, "inst-A", KeyValueCleared(None))
        expect_eq(await _values(p, "inst-A"), {}, "values of inst-A after a clear-all")
        expect_eq(await _values(p, "inst-B"), {"a": "9"}, "values of inst-B (untouched)")


async def test_kv_events_apply_in_order(factory: ProviderFactory) -> None:
    """The writes of one delta apply in event order: set-then-clear deletes, clear-all drops earlier
    writes of the same turn, writes after a clear-all stay."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet("old", "0")])
        await _turn(
            p, "inst-A",
            KeyValueSet("a", "1"), KeyValueCleared("a"), KeyValueSet("b", "2"), KeyValueCleared(None),
            KeyValueSet("c", "3"), KeyValueCleared("d"), KeyValueSet("d", "4"), KeyValueSet("c", "5"),
        )
        expect_eq(await _values(p, "inst-A"), {"c": "5", "d": "4"}, "values after an ordered delta")


async def test_kv_typed_values_stored_verbatim(factory: ProviderFactory) -> None:
    """Values are JSON texts kept exactly: nested objects, unicode, escapes, ``null``, and a value of the
    full 64 KiB."""
    big = '"' + "x" * (MAX_KV_VALUE_BYTES - 2) + '"'
    samples = {
        "obj": '{"items":["x",{"n":1.5}],"ok":true}',
        "unicode": '"żółw 🐢 \\u0000 \\"q\\""',
        "null": "null",
        "big": big,
        "clé spéciale/€": "[1,2,3]",
    }
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet(k, v) for k, v in samples.items()])
        expect_eq(await _values(p, "inst-A"), samples, "values read back")


async def test_kv_many_keys(factory: ProviderFactory) -> None:
    """An instance holds the full 150 keys."""
    async with fresh_provider(factory) as p:
        _store(p)
        kinds = [KeyValueSet(f"key-{i:03d}", str(i)) for i in range(MAX_KV_KEYS)]
        await create_instance(p, "inst-A", extra_events=kinds)
        values = await _values(p, "inst-A")
        expect_eq(len(values), MAX_KV_KEYS, "number of keys")
        expect_eq(values["key-149"], "149", "the last key")


async def test_kv_failed_ack_writes_nothing(factory: ProviderFactory) -> None:
    """An ack that fails (a duplicate event id) writes none of its key-value events."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet("keep", "1")])
        item = await new_turn(p, "inst-A")
        await expect_error(
            p.ack_orchestration_item(
                item.lock_token, 1,
                [event(3, KeyValueSet("leak", "1")), event(4, KeyValueCleared("keep")),
                 event(1, KeyValueSet("dup", "1"))],
                [], [], ExecutionMetadata(),
            ),
            "ack with a duplicate event id",
        )
        expect_eq(await _values(p, "inst-A"), {"keep": "1"}, "values after the failed ack")


async def test_kv_lost_lock_writes_nothing(factory: ProviderFactory) -> None:
    """An ack with an unknown lock token writes nothing to the table."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet("keep", "1")])
        await new_turn(p, "inst-A")
        await expect_error(
            p.ack_orchestration_item(
                "not-a-token", 1, [event(3, KeyValueSet("leak", "1")), event(4, KeyValueCleared(None))],
                [], [], ExecutionMetadata(),
            ),
            "ack with an unknown token",
        )
        expect_eq(await _values(p, "inst-A"), {"keep": "1"}, "values after the refused ack")


async def test_kv_abandoned_turn_writes_nothing(factory: ProviderFactory) -> None:
    """An abandoned turn writes nothing; the same turn acked after the refetch writes once."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A")
        item = await new_turn(p, "inst-A")
        await ok(p.abandon_orchestration_item(item.lock_token), "abandon")
        expect_eq(await _values(p, "inst-A"), {}, "values after the abandoned turn")
        again = await must_fetch_orch(p, "inst-A", what="refetch after abandon")
        await ok(
            p.ack_orchestration_item(
                again.lock_token, 1, [external_event(2, "Poke"), event(3, KeyValueSet("k", '"v"'))],
                [], [], ExecutionMetadata(),
            ),
            "ack of the refetched turn",
        )
        expect_eq(await _values(p, "inst-A"), {"k": '"v"'}, "values after the refetched turn")


async def test_kv_survives_continue_as_new(factory: ProviderFactory) -> None:
    """Values written by execution 1 are still there while execution 2 runs (it starts with them as
    ``initial_values``) and execution 2's writes apply on top."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(
            p, "inst-A", extra_events=[KeyValueSet("a", "1"), KeyValueSet("b", "2")],
        )
        item = await new_turn(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token, 1, [external_event(4, "Poke"), event(5, KeyValueSet("c", "3"))], [],
                [continue_as_new("inst-A", 2)], meta("ContinuedAsNew"),
            ),
            "ack that continues as new",
        )
        nxt = await must_fetch_orch(p, "inst-A", what="execution 2")
        carried = {"a": "1", "b": "2", "c": "3"}
        expect_eq(await _values(p, "inst-A"), carried, "values between the executions")
        started2 = event(1, OrchestrationStarted(name=ORCH, version=VERSION, initial_values=carried))
        await ok(
            p.ack_orchestration_item(
                nxt.lock_token, 2, [started2, event(2, KeyValueCleared("a")), event(3, KeyValueSet("d", "4"))],
                [], [], meta("Running"),
            ),
            "first ack of execution 2",
        )
        expect_eq(await _values(p, "inst-A"), {"b": "2", "c": "3", "d": "4"}, "values in execution 2")
        history = await ok(p.read("inst-A"), "read")
        expect_eq(kv_state(history), await _values(p, "inst-A"), "table vs state rebuilt from history")


async def test_kv_pruning_keeps_values(factory: ProviderFactory) -> None:
    """Pruning old executions never removes the instance's current values."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", extra_events=[KeyValueSet("a", "1")])
        item = await new_turn(p, "inst-A")
        await ok(
            p.ack_orchestration_item(
                item.lock_token, 1, [external_event(3, "Poke")], [], [continue_as_new("inst-A", 2)],
                meta("ContinuedAsNew"),
            ),
            "ack that continues as new",
        )
        nxt = await must_fetch_orch(p, "inst-A", what="execution 2")
        started2 = event(1, OrchestrationStarted(name=ORCH, version=VERSION, initial_values={"a": "1"}))
        await ok(
            p.ack_orchestration_item(nxt.lock_token, 2, [started2], [], [], meta("Completed", output='"x"')),
            "ack of execution 2",
        )
        from ...providers.base import PruneOptions

        result = await ok(admin_of(p).prune_executions("inst-A", PruneOptions(keep_last=1)), "prune")
        expect_eq(result.executions_deleted, 1, "executions pruned")
        expect_eq(await _values(p, "inst-A"), {"a": "1"}, "values after pruning")


async def test_kv_deleted_with_instance(factory: ProviderFactory) -> None:
    """Deleting an instance deletes its values; an instance re-created with the same id starts empty;
    other instances keep theirs."""
    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", status="Completed", output='"x"', extra_events=[KeyValueSet("a", "1")])
        await create_instance(p, "inst-B", extra_events=[KeyValueSet("a", "2")])
        await ok(admin_of(p).delete_instance("inst-A"), "delete_instance")
        expect_eq(await _values(p, "inst-A"), {}, "values of the deleted instance")
        expect_eq(await _values(p, "inst-B"), {"a": "2"}, "values of another instance")
        await create_instance(p, "inst-A")
        expect_eq(await _values(p, "inst-A"), {}, "values of the re-created instance")


async def test_kv_bulk_and_force_delete(factory: ProviderFactory) -> None:
    """Bulk deletion and a forced delete of a running instance delete the values too."""
    from ...providers.base import InstanceFilter

    async with fresh_provider(factory) as p:
        _store(p)
        await create_instance(p, "inst-A", status="Completed", output='"x"', extra_events=[KeyValueSet("a", "1")])
        await create_instance(p, "inst-B", extra_events=[KeyValueSet("b", "1")])
        await ok(admin_of(p).delete_instance_bulk(InstanceFilter(instance_ids=["inst-A"])), "bulk delete")
        await ok(admin_of(p).delete_instance("inst-B", force=True), "forced delete")
        expect_eq(await _values(p, "inst-A"), {}, "values after the bulk delete")
        expect_eq(await _values(p, "inst-B"), {}, "values after the forced delete")


async def test_kv_unknown_instance_is_empty(factory: ProviderFactory) -> None:
    """``get_kv_values`` of an unknown instance is empty, not an error; an instance without writes too."""
    async with fresh_provider(factory) as p:
        _store(p)
        expect_eq(await _values(p, "nobody"), {}, "values of an unknown instance")
        await create_instance(p, "inst-A", worker_items=[activity("inst-A", 2)])
        expect_eq(await _values(p, "inst-A"), {}, "values of an instance that wrote none")


# --------------------------------------------------------------------------------- through a runtime


def _registry() -> Any:
    from ...registry import Registry

    reg = Registry()

    @reg.orchestration("KvWriter")
    async def writer(ctx: Any, value: int) -> int:
        ctx.set_value("shared", value)
        ctx.set_value("typed", {"when": value, "tags": ["a", "b"]})
        return value

    @reg.orchestration("KvHolder")
    async def holder(ctx: Any, value: int) -> int:
        ctx.set_value("shared", value)
        new: int = await ctx.wait_for_event("set")
        ctx.set_value("shared", new)
        return new

    @reg.orchestration("KvReader")
    async def reader(ctx: Any, other: str) -> list[Any]:
        first = await ctx.get_value_from_instance(other, "shared")
        await ctx.wait_for_event("again")  # the next turn replays the first read
        second = await ctx.get_value_from_instance(other, "shared")
        return [first, second]

    return reg


def _runtime_options() -> Any:
    from ...runtime.options import RuntimeOptions

    return RuntimeOptions(poll_interval=0.2, shutdown_grace=1.0, orchestrator_lock_timeout=5.0,
                          worker_lock_timeout=5.0)


async def _until(check: Any, what: str, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.02)


async def test_kv_client_reads(factory: ProviderFactory) -> None:
    """Through a runtime: ``Client.get_value`` / ``get_values`` return what the orchestration wrote,
    typed values included."""
    from ...runtime import open_runtime

    async with fresh_provider(factory) as p:
        _store(p)
        async with open_runtime(p, _registry(), _runtime_options()) as rt:
            client = rt.client
            await client.start_orchestration("w", "KvWriter", 7)
            await client.wait_for_orchestration("w", timeout=30)
            expect_eq(await client.get_value("w", "shared"), 7, "Client.get_value")
            expect_eq(await client.get_value("w", "missing", "dflt"), "dflt", "Client.get_value default")
            expect_eq(
                await client.get_values("w"), {"shared": 7, "typed": {"when": 7, "tags": ["a", "b"]}},
                "Client.get_values",
            )


async def test_kv_cross_instance_read_recorded_and_replayed(factory: ProviderFactory) -> None:
    """Through a runtime: ``ctx.get_value_from_instance`` reads the other instance's committed value
    and records it in history; after the other instance changed it, the reader's replay still sees the
    recorded value, and a new read sees the new one."""
    from ...runtime import open_runtime

    async with fresh_provider(factory) as p:
        _store(p)
        async with open_runtime(p, _registry(), _runtime_options()) as rt:
            client = rt.client
            await client.start_orchestration("h", "KvHolder", 1)

            async def holder_wrote() -> bool:
                return bool(await client.get_value("h", "shared") == 1)

            await _until(holder_wrote, "the holder's first value")
            await client.start_orchestration("r", "KvReader", "h")

            async def reader_waits() -> bool:
                return any(e.type_name == "ExternalSubscribed" for e in await client.get_history("r"))

            await _until(reader_waits, "the reader's first read")
            await client.raise_event("h", "set", 5)
            await client.wait_for_orchestration("h", timeout=30)
            expect_eq(await client.get_value("h", "shared"), 5, "the holder's new value")
            await client.raise_event("r", "again")
            state = await client.wait_for_orchestration("r", timeout=30)
            expect_eq(state.output, [1, 5], "reads of the reader (recorded first, fresh second)")
            history = await client.get_history("r")
            reads = [e for e in history if e.type_name == "ActivityCompleted"]
            expect_eq(len(reads), 2, "recorded reads in the reader's history")
