"""Waiting in the process that started and finished an instance (SQLite file and PostgreSQL, both anyio
backends): the turn's commit hands the final state to the waiter, and a wait for an instance this client
started, with nothing notified for it since, skips its first read: ``Client.wait_for_orchestration`` reads
nothing, and returns what a fresh read returns. An instance that finished before the wait began, or one
waited for with ``timeout=0``, is read as before."""

from __future__ import annotations

import anyio
import pytest

import duroxide_trio as dt
from duroxide_trio.providers.base import Notifier
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
async def test_wait_reads_nothing_for_an_instance_started_and_finished_here(make_provider, value: str) -> None:
    provider = await make_provider()
    async with provider:
        counting = CountingProvider(provider)
        async with dt.open_runtime(counting, _registry(), dt.RuntimeOptions(poll_interval=30.0)) as rt:  # type: ignore[arg-type]
            await rt.client.start_orchestration("w-1", "Finish", value)
            reads = counting.calls["get_instance_info"]
            state = await rt.client.wait_for_orchestration("w-1", timeout=30)
            # Not read before waiting (started here, nothing notified), nor after: the commit handed it over.
            assert counting.calls["get_instance_info"] - reads == 0
            fresh = await rt.client.get_status("w-1")
        assert state == fresh
        if value == "ok":
            assert state.status is dt.Status.COMPLETED and state.output == "ok"
        else:
            assert state.status is dt.Status.FAILED and "asked to fail" in state.error.message
        assert state.custom_status == {"step": "done"}


async def test_an_instance_finished_before_the_wait_is_read_at_once(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        # A long fallback poll: a wait that missed the finish would hang for it.
        async with dt.open_runtime(provider, _registry(), dt.RuntimeOptions(poll_interval=30.0)) as rt:
            await rt.client.start_orchestration("early", "Finish", "ok")
            with anyio.fail_after(10):
                while not (await rt.client.get_status("early")).status.is_terminal:
                    await anyio.sleep(0.01)
                state = await rt.client.wait_for_orchestration("early", timeout=20, poll_interval=30.0)
        assert state.status is dt.Status.COMPLETED and state.output == "ok"


async def test_timeout_zero_still_reads_a_just_started_instance(make_provider) -> None:
    provider = await make_provider()
    async with provider:
        client = dt.Client(provider)
        await client.start_orchestration("zero", "Finish", "ok")
        with pytest.raises(dt.OrchestrationTimeout, match="status"):
            await client.wait_for_orchestration("zero", timeout=0)


def test_notifier_forgets_starts_on_notify_all_and_beyond_its_bound() -> None:
    notifier = Notifier()
    notifier.watch_start("a")
    notifier.watch_start("b")
    notifier.notify_instance("b")
    assert notifier.unnotified_start("a") is True
    assert notifier.unnotified_start("a") is False  # once
    assert notifier.unnotified_start("b") is False  # notified since
    notifier.watch_start("c")
    notifier.notify_all()  # e.g. a listener reconnect: notifications may have been missed
    assert notifier.unnotified_start("c") is False
    for i in range(5000):
        notifier.watch_start(f"many-{i}")
    assert notifier.unnotified_start("many-0") is False  # forgotten: its waiter reads as before
    assert notifier.unnotified_start("many-4999") is True
