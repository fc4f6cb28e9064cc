"""The runtime's one lock-renewal task (``runtime/_leases.py``): a finished turn or activity lets go of its
state at once (the renewal heap does not keep it alive until its next due time), and the leases still
held keep being renewed however many were released around them."""

from __future__ import annotations

import gc
import weakref

import anyio
import pytest

import duroxide_trio as dt
from duroxide_trio.runtime._leases import LeaseRenewer

pytestmark = pytest.mark.anyio


class _Work:
    """Stands for what a lease's callbacks refer to (an activity's context, a turn's batch)."""


async def test_a_released_lease_lets_go_of_its_work_at_once() -> None:
    renewer = LeaseRenewer()
    async with anyio.create_task_group() as tg:
        tg.start_soon(renewer.run)
        work = _Work()
        alive = weakref.ref(work)

        async def renew(work: _Work = work) -> None:
            pass

        lease = renewer.hold(renew, 3600.0, lambda exc, work=work: None)
        del work, renew
        renewer.release(lease)
        gc.collect()
        assert alive() is None, "the renewal heap still holds the released lease's work"
        renewer.stop()


async def test_held_leases_keep_being_renewed_among_many_released_ones() -> None:
    renewer = LeaseRenewer()
    renewed = anyio.Event()
    count = 0

    async def renew_kept() -> None:
        nonlocal count
        count += 1
        if count >= 3:
            renewed.set()

    async def renew_other() -> None:
        raise AssertionError("a released lease was renewed")

    async with anyio.create_task_group() as tg:
        tg.start_soon(renewer.run)
        kept = renewer.hold(renew_kept, 0.02, lambda exc: None)
        for _ in range(5):  # enough released entries for the heap to be rebuilt without them
            for lease in [renewer.hold(renew_other, 0.01, lambda exc: None) for _ in range(300)]:
                renewer.release(lease)
        with anyio.fail_after(10):
            await renewed.wait()
        renewer.release(kept)
        renewer.stop()


async def test_a_runtime_keeps_no_finished_activity_alive(tmp_path) -> None:
    reg = dt.Registry()

    @reg.activity("Echo")
    async def echo(ctx: dt.ActivityContext, x: int) -> int:
        return x

    @reg.orchestration("Fan")
    async def fan(ctx: dt.OrchestrationContext, n: int) -> int:
        return sum(await ctx.join([ctx.schedule_activity("Echo", i) for i in range(n)]))

    provider = await dt.SqliteProvider.open(tmp_path / "leases.db")
    async with provider, dt.open_runtime(provider, reg) as rt:
        for i in range(4):
            await rt.client.start_orchestration(f"fan-{i}", "Fan", 50)
        for i in range(4):
            state = await rt.client.wait_for_orchestration(f"fan-{i}", timeout=30)
            assert state.output == sum(range(50))
        gc.collect()
        contexts = [o for o in gc.get_objects() if isinstance(o, dt.ActivityContext)]
        # 200 activities ran; their renewals were due 15 s later (half the 30 s lock), long after this.
        assert len(contexts) == 0, f"{len(contexts)} finished activities' contexts are still alive"
