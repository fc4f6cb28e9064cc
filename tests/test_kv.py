"""Durable key-value state per instance (``ctx.set_value`` ...): end to end on both providers and both
anyio backends, plus the engine's replay rules on plain lists."""

from __future__ import annotations

import attrs
import pytest
from helpers import run_one, running

import duroxide_trio as dt
from duroxide_trio.history import KeyValueCleared, KeyValueSet, OrchestrationStarted, kv_state
from duroxide_trio.orchestration.context import KV_READ_ACTIVITY

pytestmark = pytest.mark.anyio


@attrs.frozen
class Cart:
    items: list[str]
    total: int


def kv_registry() -> dt.Registry:
    reg = dt.Registry()

    @reg.orchestration("Writer")
    async def writer(ctx: dt.OrchestrationContext) -> dict:
        ctx.set_value("a", 1)
        ctx.set_value("cart", Cart(["x", "y"], 3))
        ctx.set_value("gone", "soon")
        ctx.clear_value("gone")
        seen = {"a": ctx.get_value("a"), "gone": ctx.get_value("gone", "default")}
        cart = ctx.get_value("cart", type=Cart)
        seen["cart_total"] = cart.total
        await ctx.schedule_timer(0.01)
        ctx.set_value("a", ctx.get_value("a") + 1)  # a replayed read sees the state of that point
        return seen

    @reg.orchestration("Looper")
    async def looper(ctx: dt.OrchestrationContext, n: int) -> dict:
        ctx.set_value(f"k{n}", n)
        ctx.set_value("count", ctx.get_value("count", 0) + 1)
        if n < 3:
            return await ctx.continue_as_new(n + 1)
        return ctx.get_values()

    @reg.orchestration("Reader")
    async def reader(ctx: dt.OrchestrationContext, other: str) -> list:
        got = await ctx.get_value_from_instance(other, "cart", type=Cart)
        missing = await ctx.get_value_from_instance(other, "nope")
        return [got.total if got else None, missing]

    @reg.orchestration("TooBig")
    async def too_big(ctx: dt.OrchestrationContext) -> None:
        ctx.set_value("big", "x" * (70 * 1024))

    @reg.orchestration("TooMany")
    async def too_many(ctx: dt.OrchestrationContext) -> None:
        for i in range(151):
            ctx.set_value(f"key-{i}", i)

    @reg.orchestration("BadKey")
    async def bad_key(ctx: dt.OrchestrationContext) -> str:
        try:
            ctx.set_value("", 1)
        except TypeError as exc:
            return str(exc)
        return "no error"

    return reg


async def test_set_get_clear_and_client_reads(make_provider):
    reg = kv_registry()
    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("w", "Writer")
        state = await client.wait_for_orchestration("w", timeout=15)
        assert state.status is dt.Status.COMPLETED, state
        assert state.output == {"a": 1, "gone": "default", "cart_total": 3}
        assert await client.get_value("w", "a") == 2
        assert await client.get_value("w", "cart", type=Cart) == Cart(["x", "y"], 3)
        assert await client.get_value("w", "gone", "dflt") == "dflt"
        assert await client.get_values("w") == {"a": 2, "cart": {"items": ["x", "y"], "total": 3}}
        history = await client.get_history("w")
        assert [type(e.kind) for e in history].count(KeyValueSet) == 4
        assert any(isinstance(e.kind, KeyValueCleared) for e in history)
        assert kv_state(history) == {"a": "2", "cart": '{"items":["x","y"],"total":3}'}
        assert await client.get_values("nobody") == {}


async def test_values_survive_continue_as_new(make_provider):
    reg = kv_registry()
    state = await run_one(make_provider, reg, "Looper", 1, instance_id="loop")
    assert state.status is dt.Status.COMPLETED, state
    assert state.output == {"k1": 1, "k2": 2, "k3": 3, "count": 3}


async def test_values_survive_continue_as_new_in_storage(make_provider):
    reg = kv_registry()
    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("loop", "Looper", 1)
        await client.wait_for_orchestration("loop", timeout=15)
        assert await client.get_values("loop") == {"k1": 1, "k2": 2, "k3": 3, "count": 3}
        history = await client.get_history("loop")
        started = history[0].kind
        assert isinstance(started, OrchestrationStarted)
        assert started.initial_values == {"k1": "1", "k2": "2", "count": "2"}
        # pruning old executions keeps the current values
        await client.prune_executions("loop", keep_last=1)
        assert await client.get_values("loop") == {"k1": 1, "k2": 2, "k3": 3, "count": 3}
        await client.delete_instance("loop")
        assert await client.get_values("loop") == {}


async def test_cross_instance_read_is_recorded(make_provider):
    reg = kv_registry()
    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("w", "Writer")
        await client.wait_for_orchestration("w", timeout=15)
        await client.start_orchestration("r", "Reader", "w")
        state = await client.wait_for_orchestration("r", timeout=15)
        assert state.status is dt.Status.COMPLETED, state
        assert state.output == [3, None]
        history = await client.get_history("r")
        reads = [e for e in history if getattr(e.kind, "name", None) == KV_READ_ACTIVITY]
        assert len(reads) == 2


async def test_limits_fail_the_instance(make_provider):
    reg = kv_registry()
    async with running(make_provider, reg) as (_, client):
        await client.start_orchestration("big", "TooBig")
        await client.start_orchestration("many", "TooMany")
        await client.start_orchestration("bad", "BadKey")
        big = await client.wait_for_orchestration("big", timeout=15)
        many = await client.wait_for_orchestration("many", timeout=15)
        bad = await client.wait_for_orchestration("bad", timeout=15)
        assert big.status is dt.Status.FAILED and big.error is not None
        assert (big.error.category, big.error.kind) == ("configuration", "LimitExceeded")
        assert "'big'" in big.error.message and "64 KiB" in big.error.message
        assert str(70 * 1024 + 2) in big.error.message
        assert many.status is dt.Status.FAILED and many.error is not None
        assert (many.error.category, many.error.kind) == ("configuration", "LimitExceeded")
        assert "'key-150'" in many.error.message and "150" in many.error.message
        assert await client.get_values("big") == {}
        assert len(await client.get_values("many")) == 150  # the writes before the failing one commit
        assert bad.output is not None and "non-empty string" in bad.output


# ------------------------------------------------------------------------------ the engine, on plain lists


def _engine():
    from test_engine import Fn, Instance, assert_nondeterministic

    return Fn, Instance, assert_nondeterministic


def test_engine_replays_values_from_history_not_storage():
    from duroxide_trio import history as h

    Fn, Instance, _ = _engine()
    seen: list = []

    async def orch(ctx, _):
        ctx.set_value("n", 1)
        seen.append(ctx.get_value("n"))
        await ctx.wait_for_event("go")
        ctx.set_value("n", ctx.get_value("n") + 1)
        seen.append(ctx.get_value("n"))
        return ctx.get_values()

    inst = Instance(orch)
    assert inst.types()[:2] == ["OrchestrationStarted", "KeyValueSet"]
    r = inst.turn([h.ExternalRaised("i", "go", None)])
    assert r.status == dt.Status.COMPLETED and r.output == '{"n":2}'
    assert seen == [1, 1, 2]  # the replay saw the state of its own point: 1, then 2


def test_engine_changed_value_on_replay_is_nondeterministic():
    from duroxide_trio import history as h

    Fn, Instance, assert_nondeterministic = _engine()

    async def old(ctx, _):
        ctx.set_value("k", "old")
        await ctx.wait_for_event("go")

    async def new(ctx, _):
        ctx.set_value("k", "new")
        await ctx.wait_for_event("go")

    inst = Instance(old)
    r = inst.turn([h.ExternalRaised("i", "go", None)], handler=Fn(new))
    assert_nondeterministic(r, "KeyValueSet(key='k', value='\"old\"')", "KeyValueSet(key='k', value='\"new\"')")


def test_engine_clear_all_and_continue_as_new_carry():
    Fn, Instance, _ = _engine()

    async def orch(ctx, _):
        ctx.set_value("a", 1)
        ctx.set_value("b", 2)
        ctx.clear_values()
        ctx.set_value("c", 3)
        return await ctx.continue_as_new(None)

    inst = Instance(orch)
    can = inst.last.orchestrator_items[-1]
    assert type(can).__name__ == "ContinueAsNew"
    assert can.initial_values == {"c": "3"}


def test_engine_bad_keys_raise_type_error():
    Fn, Instance, _ = _engine()
    errors: list[str] = []

    async def orch(ctx, _):
        for bad in ("", None, 3):
            for call in (lambda k: ctx.set_value(k, 1), ctx.get_value, ctx.clear_value):
                try:
                    call(bad)
                except TypeError as exc:
                    errors.append(str(exc))
        return len(errors)

    inst = Instance(orch)
    assert inst.last.output == "9"
    assert all("non-empty string" in e for e in errors)


def test_kv_rows_net_a_turns_writes():
    from duroxide_trio.history import Event
    from duroxide_trio.providers._kernel import kv_rows

    evs = [KeyValueSet("a", "1"), KeyValueSet("b", "2"), KeyValueCleared("a"), KeyValueCleared(None),
           KeyValueSet("c", "3"), KeyValueCleared("d"), KeyValueSet("d", "4"), KeyValueSet("c", "5")]
    rows = kv_rows([Event(i + 1, k) for i, k in enumerate(evs)])
    assert rows.clear_all and rows.deleted == [] and dict(zip(rows.keys, rows.values, strict=True)) == {
        "c": "5", "d": "4"}
    assert not kv_rows([]).changed


class _NoTableSqlite(dt.SqliteProvider):
    """A provider that does not declare the key-value table (as a third-party provider might not)."""

    capabilities = dt.providers.base.ProviderCapabilities(batch_work_items=True, work_outlook=True)


async def test_provider_without_table_reads_from_history(tmp_path):
    reg = kv_registry()

    async def make():
        return await _NoTableSqlite.open(tmp_path / "plain.db")

    async with running(make, reg) as (provider, client):
        assert dt.providers.base.as_key_values(provider) is None
        await client.start_orchestration("w", "Writer")
        await client.wait_for_orchestration("w", timeout=15)
        await client.start_orchestration("r", "Reader", "w")
        state = await client.wait_for_orchestration("r", timeout=15)
        assert await client.get_values("w") == {"a": 2, "cart": {"items": ["x", "y"], "total": 3}}
        assert state.output == [3, None]
