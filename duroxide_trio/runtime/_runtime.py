"""``open_runtime``: a task group that owns every dispatcher task of one runtime."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from ..client import Client
from ..clock import clock_of
from ..providers.base import Provider, ProviderError, as_eager, as_listener
from ..registry import Registry
from ._activities import Acker, EagerActivities, TurnHandoff, activity_worker, run_session_renewer
from ._asyncio_loop import AsyncioLoopThread
from ._env import StopSignal, WorkerEnv
from ._leases import LeaseRenewer
from ._liveness import run_liveness
from ._metrics import RuntimeMetrics
from ._orchestrations import orchestration_worker
from ._spawn import CancelScopeLike, open_spawner
from ._starts import FirstTurns
from ._stats import ProviderErrors, RuntimeStats
from ._watchdog import Watchdog
from .options import RuntimeOptions

__all__ = ["Runtime", "open_runtime"]

log = logging.getLogger("duroxide_trio.runtime")


class Runtime:
    """A running runtime. Created by ``open_runtime``; do not construct directly.

    Attributes:
        client: A ``Client`` of this runtime's provider and registry.
        provider: The store it runs on.
        registry: The orchestrations and activities it runs.
        options: Its ``RuntimeOptions``.
        stats: Live counters (``RuntimeStats``) for dashboards.
    """

    def __init__(
        self, provider: Provider, registry: Registry, options: RuntimeOptions, meter_provider: Any = None
    ) -> None:
        self.provider = provider
        self.registry = registry
        self.options = options
        self.stats = RuntimeStats()
        self._stop = StopSignal()
        self._workers_scope: CancelScopeLike | None = None
        self.clock = clock_of(provider)  # leases, backoffs and turn times (virtual in tests)
        self.leases = LeaseRenewer(self.clock)
        self.watchdog = Watchdog(options.worker_lock_timeout, options.blocked_loop_threshold)
        self.asyncio_loop = AsyncioLoopThread()
        self.metrics = RuntimeMetrics(meter_provider)
        self._errors = ProviderErrors(self.stats, self.metrics, self.clock, options.provider_retry_cap)
        self.services: Any = None  # the task group of the runtime's own services (set by open_runtime)
        self._acker: Acker | None = None
        self._first_turns = FirstTurns()
        self.client = Client(provider, registry=registry, first_turns=self._first_turns)
        #: This runtime's id as a session owner: sessions it claims run only here until released.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    @property
    def stopping(self) -> bool:
        """True once the ``open_runtime`` block is being left: dispatchers fetch no more work."""
        return bool(self._stop)

    def _wake_all(self) -> None:
        self.provider.notifier.notify("orchestrator")
        self.provider.notifier.notify("worker")
        if self._acker is not None:
            self._acker.poke()

    def _env(self, services: anyio.abc.TaskGroup) -> WorkerEnv:
        """The services the dispatchers run with (the task group: the runtime's own)."""
        return WorkerEnv(
            provider=self.provider,
            registry=self.registry,
            options=self.options,
            clock=self.clock,
            notifier=self.provider.notifier,
            metrics=self.metrics,
            stats=self.stats,
            errors=self._errors,
            leases=self.leases,
            watchdog=self.watchdog,
            client=self.client,
            asyncio_loop=self.asyncio_loop,
            services=services,
            stop=self._stop,
            worker_id=self.worker_id,
        )

    def count_provider_error(self, role: str, exc: ProviderError) -> None:
        """Count a provider error of ``role`` in the stats and the metrics."""
        self._errors.count(role, exc)

    async def backoff_after_error(self, role: str, exc: ProviderError, failures: int) -> None:
        """Count, record and log a provider error of a dispatcher's fetch, then sleep before the retry:
        ``0.01 * 2 ** failures`` seconds (``failures``: consecutive ones so far) up to
        ``provider_retry_cap`` for retryable errors, 0.1 s for permanent ones."""
        await self._errors.backoff(role, exc, failures)


@asynccontextmanager
async def open_runtime(
    provider: Provider, registry: Registry, options: RuntimeOptions | None = None, *, meter_provider: Any = None
) -> AsyncIterator[Runtime]:
    """Run orchestration and activity dispatchers for ``provider`` until the block exits.

    Leaving the block stops fetching, lets in-flight turns and activities finish within
    ``options.shutdown_grace``, then cancels the remaining activities and abandons their locks so another
    process picks them up at once. ``meter_provider``: an OpenTelemetry ``MeterProvider`` for the
    runtime's metrics (default: the global one; nothing is recorded without the ``metrics`` extra).
    Raises ``TypeError`` for a registry or options of the wrong type.

    Args:
        provider: The store to run on.
        registry: The orchestrations and activities to run.
        options: How to run (default ``RuntimeOptions()``).
        meter_provider: See above.

    Returns:
        An async context manager; ``async with open_runtime(...) as runtime:`` gives the ``Runtime``
        (``runtime.client`` starts and waits for orchestrations).

    Raises:
        TypeError: ``registry`` is not a ``Registry`` or ``options`` not ``RuntimeOptions``.
    """
    if not isinstance(registry, Registry):
        raise TypeError(f"open_runtime needs a duroxide_trio.Registry, got {type(registry).__name__}")
    options = options or RuntimeOptions()
    if not isinstance(options, RuntimeOptions):
        raise TypeError(f"open_runtime needs RuntimeOptions, got {type(options).__name__}")

    runtime = Runtime(provider, registry, options, meter_provider)
    try:
        async with _run(runtime) as rt:
            yield rt
    except BaseExceptionGroup as group:
        # The body's own exception (e.g. a TimeoutError from wait_for_orchestration) should reach the
        # caller as itself, not wrapped in a group by our task group.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def _run(runtime: Runtime) -> AsyncIterator[Runtime]:
    options = runtime.options
    async with anyio.create_task_group() as outer:
        runtime.services = outer
        env = runtime._env(outer)
        acker = runtime._acker = Acker(env)
        workers_done = anyio.Event()
        acker_done = anyio.Event()

        async def run_workers(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                async with open_spawner() as workers:
                    runtime._workers_scope = workers.cancel_scope
                    turn_slots = anyio.Semaphore(options.orchestration_slots)
                    slots = anyio.Semaphore(options.activity_slots)
                    # Eager dispatch: a turn's commit hands the activities it schedules to these slots.
                    eager = (
                        EagerActivities(env, slots, workers, acker)
                        if options.eager_activities and options.worker_concurrency > 0
                        and as_eager(runtime.provider) is not None
                        else None
                    )
                    if options.orchestration_concurrency > 0:
                        handoff = TurnHandoff(turn_slots, workers, eager)
                        acker.hand_turns_to(handoff)
                        runtime._first_turns.open(env, handoff)
                    for i in range(options.orchestration_concurrency):
                        workers.start_soon(
                            orchestration_worker, env, i, turn_slots, workers, eager,
                            name=f"orchestration-dispatcher-{i}",
                        )
                    for i in range(options.worker_concurrency):
                        workers.start_soon(
                            activity_worker, env, i, slots, workers, acker, name=f"activity-dispatcher-{i}"
                        )
                    # From here the runtime's client hands first turns over: a start made as soon as
                    # ``open_runtime`` has returned is served like every later one.
                    task_status.started()
            finally:
                acker.hand_turns_to(None)
                runtime._first_turns.close()
                workers_done.set()
                acker.poke()

        async def run_acker() -> None:
            # Outside the workers' scope: completions handed over by cancelled activities are still acked.
            try:
                await acker.run()
            finally:
                acker_done.set()

        outer.start_soon(runtime.leases.run, name="lease-renewer")
        if options.blocked_loop_threshold > 0:
            outer.start_soon(runtime.watchdog.run, name="watchdog")
        if runtime.metrics.enabled:
            outer.start_soon(runtime.metrics.sample_queues, runtime.provider, options.metrics_interval,
                             name="queue-metrics")
        listening = as_listener(runtime.provider)
        if listening is not None:
            # Cross-process wake-ups (PostgreSQL LISTEN); a no-op if the provider's own block runs one.
            await outer.start(listening.run_listener)
        # The process lease: a dead process's locks move in ~1.5 s.
        await outer.start(run_liveness, runtime.provider)
        if options.worker_concurrency > 0:
            outer.start_soon(run_session_renewer, env, name="session-renewer")
        outer.start_soon(run_acker, name="activity-acker")
        await outer.start(run_workers, name="dispatchers")
        try:
            yield runtime
        finally:
            runtime._stop.set()
            runtime._wake_all()
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(options.shutdown_grace):
                    await workers_done.wait()
                if not workers_done.is_set():
                    log.info("shutdown grace of %.1fs passed; cancelling in-flight work", options.shutdown_grace)
                    if runtime._workers_scope is not None:
                        runtime._workers_scope.cancel()
                    with anyio.move_on_after(30):
                        await workers_done.wait()
                with anyio.move_on_after(30):
                    await acker_done.wait()
                runtime.leases.stop()
                runtime.watchdog.stop()
                runtime.asyncio_loop.stop()
            outer.cancel_scope.cancel()  # the listener (if any) runs until cancelled
