"""Registries shared by the routing tests and their child process (``proc_session.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

import duroxide_trio as dt

OPTIONS = dt.RuntimeOptions(
    orchestrator_lock_timeout=1.0,
    worker_lock_timeout=1.5,
    poll_interval=0.2,
    shutdown_grace=1.0,
    activity_cancellation_grace=0.2,
)


def session_registry(
    label: str,
    log: list[tuple[str, int, str | None]],
    on_first: Callable[[int], Awaitable[None]] | None = None,
    running: list[int] | None = None,
) -> dt.Registry:
    """``InSession(n)`` schedules ``SessionStep(0..n-1)`` at once in session ``"s"``; each step appends
    ``(label, step, ctx.session_id)`` to ``log`` when it ends. ``on_first`` runs in the first delivery
    of step 0 (the crash test blocks there). ``running``: ``[now, peak]`` steps running at once."""
    reg = dt.Registry()

    @reg.activity("SessionStep")
    async def step(ctx: dt.ActivityContext, n: int) -> int:
        if on_first is not None and n == 0 and ctx.delivery_count == 1:
            await on_first(n)
        if running is not None:
            running[0] += 1
            running[1] = max(running[1], running[0])
        await anyio.sleep(0.02)
        if running is not None:
            running[0] -= 1
        log.append((label, n, ctx.session_id))
        return n

    @reg.orchestration("InSession")
    async def in_session(ctx: dt.OrchestrationContext, n: int) -> list[int]:
        return list(await ctx.join([ctx.schedule_activity("SessionStep", i, session_id="s") for i in range(n)]))

    return reg
