"""Seeding: reach a large store quickly, through the runtime, before a stress run's measured window.

Nothing is written behind the runtime's back: the seed orchestrations run on an ordinary runtime over the
run's own provider, so the rows are exactly what the runtime stores for such instances.

- **Timer backlog** (``StressConfig.timer_backlog`` = N): ``ceil(N / TIMERS_PER_PARKED)`` instances of
  ``StressParked`` each schedule up to ``TIMERS_PER_PARKED`` durable timers of ``PARK_S`` seconds (30 days)
  in their first turn and wait on them: N timer messages pending in the orchestrator queue, visible only
  in the future, and as many ``TimerCreated`` rows. The instances stay Running (parked) during the run.
- **Deep history** (``StressConfig.deep_history`` = N): ``ceil(N / rows)`` instances of ``StressDeep`` each
  schedule ``TIMERS_PER_DEEP`` zero-length timers and join them: ``2 × TIMERS_PER_DEEP + 2`` history rows
  each (started, the timers created and fired, completed) in a handful of turns, then Completed.

``seed`` returns what it verified in the store (pending orchestrator messages, history rows) and how long
it took; the runner excludes that time from the measured window.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import anyio
import attrs

from ..history import Status
from ..registry import Registry
from ..runtime import RuntimeOptions, open_runtime

__all__ = ["PARK_S", "TIMERS_PER_DEEP", "TIMERS_PER_PARKED", "SeedResult", "register_seeds", "seed"]

#: Timers each parked instance waits on (one history of ~1000 events stays far below the 5 MiB limit).
TIMERS_PER_PARKED = 1000
#: How far in the future the parked timers fire (seconds): never during a run.
PARK_S = 30 * 24 * 3600.0
#: Zero-length timers each deep-history instance joins (2 × this + 2 history rows).
TIMERS_PER_DEEP = 1000
#: Seed instances in flight at once.
SEED_IN_FLIGHT = 16


@attrs.frozen
class SeedResult:
    """What seeding stored: ``pending_timers`` (orchestrator messages pending after seeding: the parked
    timers), ``history_rows`` (history rows in the store after seeding), ``instances`` started and
    ``seconds`` it took."""

    pending_timers: int = 0
    history_rows: int = 0
    instances: int = 0
    seconds: float = 0.0


async def _parked(ctx: Any, input: dict[str, Any]) -> int:
    timers = [ctx.schedule_timer(input["park_s"]) for _ in range(input["timers"])]
    ctx.set_custom_status("parked")
    await ctx.join(timers)
    return len(timers)


async def _deep(ctx: Any, input: dict[str, Any]) -> int:
    await ctx.join([ctx.schedule_timer(0) for _ in range(input["timers"])])
    return int(input["timers"])


def register_seeds(registry: Registry) -> None:
    """Add the seed orchestrations (``StressParked``, ``StressDeep``) unless ``registry`` has them."""
    if not registry.has_orchestration("StressParked"):
        registry.add_orchestration(_parked, "StressParked")
    if not registry.has_orchestration("StressDeep"):
        registry.add_orchestration(_deep, "StressDeep")


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


async def seed(provider: Any, *, timer_backlog: int = 0, deep_history: int = 0, concurrency: int = 4) -> SeedResult:
    """Seed ``provider`` (see the module docstring) with a runtime of its own, closed before returning.

    Raises:
        RuntimeError: a seed instance did not reach its state (parked, or completed) within its bound.
    """
    if not timer_backlog and not deep_history:
        return SeedResult()
    started = time.monotonic()
    registry = Registry()
    register_seeds(registry)
    run = uuid.uuid4().hex[:8]
    plan: list[tuple[str, str, dict[str, Any]]] = []
    for i, n in enumerate(_chunks(timer_backlog, TIMERS_PER_PARKED)):
        plan.append((f"seed-{run}-parked-{i}", "StressParked", {"timers": n, "park_s": PARK_S}))
    rows_each = 2 * TIMERS_PER_DEEP + 2
    for i in range(math.ceil(deep_history / rows_each)):
        plan.append((f"seed-{run}-deep-{i}", "StressDeep", {"timers": TIMERS_PER_DEEP}))
    options = RuntimeOptions(
        orchestration_concurrency=concurrency, worker_concurrency=1, poll_interval=0.05, shutdown_grace=2.0
    )
    async with open_runtime(provider, registry, options) as runtime:
        client = runtime.client
        slots = anyio.Semaphore(SEED_IN_FLIGHT)

        async def one(instance_id: str, name: str, input: dict[str, Any]) -> None:
            async with slots:
                await client.start_orchestration(instance_id, name, input)
                if name == "StressDeep":
                    state = await client.wait_for_orchestration(instance_id, timeout=600.0)
                    if state.status is not Status.COMPLETED:
                        raise RuntimeError(f"seed instance {instance_id} ended {state.status.value}")
                    return
                with anyio.fail_after(600.0):
                    while (await client.get_status(instance_id)).custom_status != "parked":
                        await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            for instance_id, name, input in plan:
                tg.start_soon(one, instance_id, name, input)
        depths = await client.get_queue_depths()
        metrics = await client.get_system_metrics()
    return SeedResult(
        pending_timers=depths.orchestrator_queue,
        history_rows=metrics.total_events,
        instances=len(plan),
        seconds=time.monotonic() - started,
    )
