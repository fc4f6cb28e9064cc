"""A waiter in the committing process gets the instance's final state from the turn's commit (SQLite file
and PostgreSQL, both anyio backends): ``Client.wait_for_orchestration`` reads the instance once (before it
waits) and not again when the commit wakes it, and what it returns is what a fresh read returns."""

from __future__ import annotations

import pytest

import duroxide_trio as dt
from duroxide_trio.stress._counting import CountingProvider

pytestmark = pytest.mark.anyio


def _registry() -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Echo")
    async def echo(ctx: dt.ActivityContext, x: str) -> str:
        return x

    @reg.orchestration("Finish")
    async def finish(ctx: dt.OrchestrationContext, x: str) -> str:
        ctx.set_custom_status({"step": "done"})
        value = await ctx.schedule_activity("Echo", x)
        if value == "boom":
            raise RuntimeError("asked to fail")
        return value

    return reg


@pytest.mark.parametrize("value", ["ok", "boom"])
async def test_wait_does_not_read_again_after_a_local_commit(make_provider, value: str) -> None:
    provider = await make_provider()
    async with provider:
        counting = CountingProvider(provider)
        async with dt.open_runtime(counting, _registry(), dt.RuntimeOptions(poll_interval=30.0)) as rt:  # type: ignore[arg-type]
            await rt.client.start_orchestration("w-1", "Finish", value)
            reads = counting.calls["get_instance_info"]
            state = await rt.client.wait_for_orchestration("w-1", timeout=30)
            # One read before waiting (the instance was still running); the commit handed over the rest.
            assert counting.calls["get_instance_info"] - reads == 1
            fresh = await rt.client.get_status("w-1")
        assert state == fresh
        if value == "ok":
            assert state.status is dt.Status.COMPLETED and state.output == "ok"
        else:
            assert state.status is dt.Status.FAILED and "asked to fail" in state.error.message
        assert state.custom_status == {"step": "done"}
