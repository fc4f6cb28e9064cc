"""The stress runner: a pump keeps ``max_concurrent`` instances in flight against one runtime.

Everything runs in task groups owned by :func:`run`: the runtime (``open_runtime``), a sampler (resource
use, the per-second time series, progress callbacks) and the instance tasks. Each instance task is
``start_orchestration`` + ``wait_for_orchestration`` (plus the scenario's driver, if any); its latency runs
from the start request to the observed completion.
"""

from __future__ import annotations

import collections
import gc
import os
import resource
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from ..errors import DuroxideError
from ..history import Status
from ..providers.base import Provider, ProviderFactory, TagFilter
from ..registry import Registry
from ..runtime import RecentError, Runtime, RuntimeOptions, open_runtime
from ..runtime._spawn import Spawner, open_spawner
from ._config import StressConfig
from ._counting import CountingProvider
from ._result import (
    FailureRecord,
    StressResult,
    TimelinePoint,
    format_duration,
    latency_stats,
    percentile,
)
from ._scenarios import STRESS_TAG, Launch, get_scenario
from ._seed import SeedResult, register_seeds, seed

__all__ = ["ErrorEntry", "StressAborted", "StressMonitor", "run", "run_suite", "runtime_options"]

ProgressCallback = Callable[["StressMonitor"], None]

#: How many failures a result lists (the counts are always complete).
MAX_LISTED_FAILURES = 200
#: The straggler bound after the load phase, on top of ``wait_timeout``.
DRAIN_SLACK = 5.0
#: An event-loop stall longer than this (seconds) is reported on the dashboard and in the result.
STALL_REPORT_S = 1.0
#: The waiters' fallback status reads, all instances together, per second at most (the in-process
#: notification wakes a waiter at its completion; the poll only covers a missed one). A 1 s poll per
#: waiter would be 1000 reads/s at 1000 in flight: measured, that starves the dispatchers (SQLite's one
#: connection thread, PostgreSQL's pool) until instances time out.
WAIT_POLLS_PER_S = 20.0


def wait_poll_interval(config: StressConfig) -> float:
    """Seconds between one waiter's fallback status reads: 1 s up to 20 in flight (as before), then
    ``max_concurrent / WAIT_POLLS_PER_S`` (50 s at 1000 in flight)."""
    return max(1.0, config.max_concurrent / WAIT_POLLS_PER_S)


#: The fallback poll of a runtime that shares its store with other processes (``--processes``): their
#: commits reach a SQLite runtime only through it, and a killed process's expired locks are found by it.
SHARED_POLL_INTERVAL = 0.1


def runtime_options(config: StressConfig, *, shared: bool = False) -> RuntimeOptions:
    """The runtime options of a stress run. Dispatchers are woken in-process whenever work is committed
    and at timer deadlines, so one process polls at the runtime's default (``poll_interval`` 1 s, what a
    user gets); a runtime in one of several processes (``shared``) polls every ``SHARED_POLL_INTERVAL``
    (duroxide's stress value)."""
    options = RuntimeOptions(
        activity_tags=TagFilter.default_and(STRESS_TAG),  # the ``sessions`` scenario's tagged activities
        orchestration_concurrency=config.orchestration_concurrency,
        worker_concurrency=config.worker_concurrency,
        shutdown_grace=2.0,
    )
    return attrs.evolve(options, poll_interval=SHARED_POLL_INTERVAL) if shared else options


@attrs.define
class ErrorEntry:
    """An error shown on the dashboard: from the runtime (``role`` = the dispatcher) or the launcher."""

    at: float
    role: str
    message: str
    expected: bool


class StressAborted(DuroxideError):
    """``fail_fast`` stopped the run at the first unexpected error.

    ``error`` is that error (an exception or a message), ``traceback`` its formatted traceback,
    ``result`` what was measured until then, ``errors`` every error seen so far."""

    def __init__(
        self, error: BaseException | str, traceback_text: str, result: StressResult, errors: list[ErrorEntry]
    ) -> None:
        self.error = error
        self.traceback = traceback_text
        self.result = result
        self.errors = errors
        super().__init__(f"stopped at the first unexpected error: {describe_error(error)}")


def describe_error(error: BaseException | str) -> str:
    """``"<ExceptionType>: <message>"`` (a string is returned as it is)."""
    return error if isinstance(error, str) else f"{type(error).__name__}: {error}"


def _backend() -> str:
    try:
        import sniffio

        return sniffio.current_async_library()
    except Exception:  # noqa: BLE001 - only for display
        return "unknown"


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _Second:
    __slots__ = ("completed", "failed", "launched", "latencies", "in_flight", "activities", "rss")

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.launched = 0
        self.latencies: list[float] = []
        self.in_flight = 0
        self.activities = 0
        self.rss = 0.0


class StressMonitor:
    """The live state of one run, for a dashboard or a progress line (read it on the event loop thread,
    e.g. from the ``on_progress`` callback of :func:`run`)."""

    def __init__(self, config: StressConfig, provider: str, backend: str) -> None:
        self.config = config
        self.provider = provider
        self.backend = backend
        self.phase = "starting"  # starting | load | draining | done | aborted
        self.runtime: Runtime | None = None
        self.started_at = datetime.now(UTC)
        self.load_start: float | None = None
        self.load_end: float | None = None
        self.finished_at: float | None = None
        self.launched = 0
        self.completed = 0
        self.failed = 0
        self.in_flight = 0
        self.latencies_ms: list[float] = []
        self.failure_counts: collections.Counter[str] = collections.Counter()
        self.failures: list[FailureRecord] = []
        self.errors: collections.deque[ErrorEntry] = collections.deque(maxlen=100)
        self.expected_errors = 0
        self.unexpected_errors = 0
        gc.collect()  # what an earlier run left as garbage is not counted against this one
        self.rss_start_mb = _rss_mb()
        self.peak_rss_mb = self.rss_start_mb  # the peak of this run's samples only
        self.rss_mb = self.rss_start_mb
        self.interrupted = False
        self.cpu_percent = 0.0
        self.completed_in_load = 0
        self.activities_at_load_start = 0
        self.activities_at_load_end: int | None = None
        self.fatal: BaseException | str | None = None
        self.fatal_traceback = ""
        self.unfinished = 0
        self.drain_bound_s = config.wait_timeout + DRAIN_SLACK
        self.max_loop_stall_s = 0.0
        self.closed_at: float | None = None
        self._seconds: dict[int, _Second] = collections.defaultdict(_Second)
        self._fail_fast = False
        self._scope: anyio.CancelScope | None = None
        self._cpu_start = (time.process_time(), time.monotonic())
        self.counter: CountingProvider | None = None
        self.calls_in_window: dict[str, int] = {}
        self.call_ms_in_window: dict[str, float] = {}

    # -- readings ---------------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since the load phase began (0 before it)."""
        if self.load_start is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.load_start

    @property
    def activities_completed(self) -> int:
        """Activities the runtime executed so far."""
        return self.runtime.stats.activities_completed if self.runtime is not None else 0

    def throughput(self) -> float:
        """Completions per second so far (of the load phase once it is over)."""
        if self.load_start is None:
            return 0.0
        if self.load_end is not None:
            return self.completed_in_load / max(self.load_end - self.load_start, 1e-9)
        return self.completed / max(self.elapsed, 1e-9)

    def activity_throughput(self) -> float:
        """Activities per second so far (of the load phase once it is over)."""
        if self.load_start is None:
            return 0.0
        if self.load_end is not None and self.activities_at_load_end is not None:
            done = self.activities_at_load_end - self.activities_at_load_start
            return done / max(self.load_end - self.load_start, 1e-9)
        return (self.activities_completed - self.activities_at_load_start) / max(self.elapsed, 1e-9)

    def latency_percentiles(self) -> dict[str, float]:
        """p50, p95, p99 and max of the latencies so far, in ms (0 without samples)."""
        values = sorted(self.latencies_ms)
        return {
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "p99": percentile(values, 99),
            "max": values[-1] if values else 0.0,
        }

    # -- recording --------------------------------------------------------------------------------------
    def _second(self, now: float) -> _Second:
        return self._seconds[int(max(now - (self.load_start or now), 0.0))]

    def _record_completion(self, latency_ms: float, now: float) -> None:
        self.completed += 1
        if self.load_end is None:
            self.completed_in_load += 1
        self.latencies_ms.append(latency_ms)
        sec = self._second(now)
        sec.completed += 1
        sec.latencies.append(latency_ms)

    def _record_failure(self, instance_id: str, kind: str, message: str, now: float) -> None:
        self.failed += 1
        if kind == "timeout":
            self.unfinished += 1
        self.failure_counts[kind] += 1
        self._second(now).failed += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(
                FailureRecord(instance_id, kind, message, round(now - (self.load_start or now), 3))
            )
        self.unexpected_errors += 1
        self.errors.append(ErrorEntry(time.time(), "launcher", f"{instance_id}: {kind}: {message}", False))
        if self._fail_fast:
            self._abort(f"instance {instance_id} {kind}: {message}")

    def _on_runtime_error(self, err: RecentError, exc: BaseException | str) -> None:
        if err.expected:
            self.expected_errors += 1
        else:
            self.unexpected_errors += 1
        self.errors.append(ErrorEntry(err.at, err.role, err.message, err.expected))
        if self._fail_fast and not err.expected:
            self._abort(exc)

    def interrupt(self) -> None:
        """Stop the run early (e.g. on Ctrl-C): the load phase ends, instances still in flight are
        abandoned (not counted as failures) and :func:`run` returns the figures measured so far, marked
        ``interrupted``."""
        if self.interrupted or self.phase in ("done", "aborted"):
            return
        self.interrupted = True
        self.phase = "interrupted"
        if self._scope is not None:
            self._scope.cancel()

    def _abort(self, error: BaseException | str) -> None:
        if self.fatal is not None:
            return
        self.fatal = error
        if isinstance(error, BaseException):
            self.fatal_traceback = "".join(
                traceback.format_exception(type(error), error, error.__traceback__)
            )
        else:
            self.fatal_traceback = "".join(traceback.format_stack(limit=12))
        self.phase = "aborted"
        if self._scope is not None:
            self._scope.cancel()

    def _note_stall(self, stall: float) -> None:
        """The sampler woke ``stall`` seconds late: something held the event loop that long."""
        if stall <= self.max_loop_stall_s:
            return
        self.max_loop_stall_s = stall
        if stall >= STALL_REPORT_S:
            self.errors.append(
                ErrorEntry(
                    time.time(),
                    "harness",
                    f"the event loop was blocked for {stall:.1f}s (a synchronous orchestration turn: with "
                    f"{self.config.tasks_per_instance} tasks per instance one turn can take that long); "
                    "timeouts and the drain bound could not fire meanwhile",
                    False,
                )
            )

    def _sample(self) -> None:
        now = time.monotonic()
        self.rss_mb = _rss_mb()
        self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb)
        cpu0, wall0 = self._cpu_start
        self.cpu_percent = (time.process_time() - cpu0) / max(now - wall0, 1e-9) * 100.0
        if self.load_start is not None:
            sec = self._second(now)
            sec.in_flight = max(sec.in_flight, self.in_flight)
            sec.activities = self.activities_completed
            sec.rss = max(sec.rss, self.rss_mb)

    # -- the result -------------------------------------------------------------------------------------
    def result(self, scenario: str) -> StressResult:
        """The ``StressResult`` of what was measured (also for a run stopped early)."""
        self._sample()
        load_start = self.load_start if self.load_start is not None else time.monotonic()
        load_end = self.load_end if self.load_end is not None else time.monotonic()
        finished = self.finished_at if self.finished_at is not None else time.monotonic()
        load_s = max(load_end - load_start, 1e-9)
        total_s = max(finished - load_start, 1e-9)
        counts = self.failure_counts
        activities_end = (
            self.activities_at_load_end
            if self.activities_at_load_end is not None
            else (self.activities_completed)
        )
        timeline: list[TimelinePoint] = []
        previous_activities = self.activities_at_load_start
        last = max(self._seconds) if self._seconds else -1
        for s in range(last + 1):
            sec = self._seconds.get(s) or _Second()
            lat = sorted(sec.latencies)
            activities = sec.activities or previous_activities
            timeline.append(
                TimelinePoint(
                    second=s,
                    completed=sec.completed,
                    failed=sec.failed,
                    launched=sec.launched,
                    in_flight=sec.in_flight,
                    activities=max(activities - previous_activities, 0),
                    p50_ms=round(percentile(lat, 50), 3),
                    max_ms=round(lat[-1], 3) if lat else 0.0,
                    rss_mb=round(sec.rss, 2),
                    p95_ms=round(percentile(lat, 95), 3),
                    p99_ms=round(percentile(lat, 99), 3),
                )
            )
            previous_activities = max(activities, previous_activities)
        stats = self.runtime.stats if self.runtime is not None else None
        return StressResult(
            scenario=scenario,
            provider=self.provider,
            config=self.config,
            launched=self.launched,
            completed=self.completed,
            failed=self.failed,
            failed_infrastructure=counts["infrastructure"],
            failed_configuration=counts["configuration"],
            failed_application=counts["application"],
            failed_other=self.failed
            - counts["infrastructure"]
            - counts["configuration"]
            - counts["application"],
            success_rate=(self.completed / self.launched * 100.0) if self.launched else 0.0,
            orch_throughput=self.completed_in_load / load_s,
            activity_throughput=max(activities_end - self.activities_at_load_start, 0) / load_s,
            overall_throughput=self.completed / total_s,
            latency_ms=latency_stats(self.latencies_ms),
            peak_rss_mb=self.peak_rss_mb,
            cpu_percent=self.cpu_percent,
            duration_s=total_s,
            load_duration_s=load_s,
            drain_duration_s=max(finished - load_end, 0.0),
            unfinished=self.unfinished,
            drain_bound_s=self.drain_bound_s,
            max_loop_stall_s=self.max_loop_stall_s,
            shutdown_s=max((self.closed_at or finished) - finished, 0.0),
            activities_completed=stats.activities_completed if stats else 0,
            orchestration_turns=stats.orchestration_turns if stats else 0,
            expected_errors=self.expected_errors,
            unexpected_errors=self.unexpected_errors,
            backend=self.backend,
            started_at=self.started_at.isoformat(timespec="seconds"),
            timeline=timeline,
            failures=list(self.failures),
            rss_start_mb=self.rss_start_mb,
            interrupted=self.interrupted,
        )


_FAILED_CATEGORY = {"poison": "infrastructure", "infrastructure": "infrastructure",
                    "configuration": "configuration", "application": "application"}  # fmt: skip


async def run(
    factory: ProviderFactory,
    config: StressConfig,
    *,
    on_progress: ProgressCallback | None = None,
    registry: Registry | None = None,
    fail_fast: bool = False,
    progress_interval: float = 0.2,
) -> StressResult:
    """Run one stress test: a fresh provider from ``factory``, a runtime with the config's concurrency,
    ``max_concurrent`` instances of ``config.scenario`` in flight for ``config.duration`` seconds, then the
    stragglers (each instance gets ``config.wait_timeout`` seconds).

    - ``on_progress(monitor)`` is called every ``progress_interval`` seconds and once at the end with the
      live :class:`StressMonitor`.
    - ``registry``: register the scenario into this registry; names it already has are kept (so a test can
      plant a deliberately wrong activity and see the failures counted).
    - ``fail_fast``: stop at the first unexpected error (a runtime error that is not retried lock
      contention, or an instance that fails) and raise :class:`StressAborted`.
    """
    scenario = get_scenario(config.scenario)
    reg = registry if registry is not None else Registry()
    scenario.register(reg, config)
    register_seeds(reg)
    monitor = StressMonitor(config, getattr(factory, "description", None) or "provider", _backend())
    monitor._fail_fast = fail_fast
    provider = await factory.create_provider()
    monitor.provider = getattr(factory, "description", None) or provider.name
    seeded = SeedResult()
    pg_url = getattr(factory, "url", None) if provider.name == "postgres" else None
    before: Any = None
    after: Any = None
    try:
        if config.timer_backlog or config.deep_history:
            seeded = await seed(
                provider, timer_backlog=config.timer_backlog, deep_history=config.deep_history,
                concurrency=max(4, config.orchestration_concurrency),
            )  # fmt: skip
            if pg_url is not None:
                seeded = attrs.evolve(seeded, seconds=seeded.seconds + await _pg_compact(provider))
        run_on: Provider = provider
        open_peer = getattr(factory, "open_peer", None)
        if pg_url is not None and open_peer is not None:
            # A provider of its own for the window: the creating one's connections (migrations, seeding)
            # close first, so their statistics reach the server before the opening snapshot.
            run_on = await open_peer(provider)
            await provider.close()
        counting = CountingProvider(run_on)
        monitor.counter = counting
        if pg_url is not None:
            before = await _pg_snapshot(pg_url)
        try:
            async with open_runtime(cast(Provider, counting), reg, runtime_options(config)) as runtime:
                monitor.runtime = runtime
                runtime.stats.error_listeners.append(monitor._on_runtime_error)
                try:
                    with anyio.CancelScope() as scope:
                        monitor._scope = scope
                        if monitor.interrupted:  # interrupted while the provider was being created
                            scope.cancel()
                        await _load_and_drain(
                            runtime, scenario.plan, config, monitor, on_progress, progress_interval
                        )
                finally:
                    runtime.stats.error_listeners.remove(monitor._on_runtime_error)
                    if monitor.finished_at is None:
                        monitor.finished_at = time.monotonic()
                    if not monitor.calls_in_window:
                        monitor.calls_in_window = dict(counting.calls)
                        monitor.call_ms_in_window = counting.mean_ms()
        finally:
            if run_on is not provider:
                with anyio.CancelScope(shield=True):
                    await run_on.close()
        if before is not None and pg_url is not None:
            with anyio.CancelScope(shield=True):
                after = await _pg_snapshot(pg_url, settled=True)
    finally:
        with anyio.CancelScope(shield=True):
            await _dispose(factory, provider)
        monitor.closed_at = time.monotonic()
    result = _with_costs(monitor.result(config.scenario), monitor, seeded, before, after)
    if before is not None and after is not None and pg_url is not None:
        wal = await _pg_wal_diff(pg_url, after.wal_lsn, before.wal_lsn)
        result = attrs.evolve(
            result, pg_wal_bytes=wal, wal_bytes_per_orch=(wal / result.completed) if result.completed else None
        )
    if on_progress is not None:
        on_progress(monitor)
    if monitor.fatal is not None:
        raise StressAborted(monitor.fatal, monitor.fatal_traceback, result, list(monitor.errors))
    return result


async def _pg_snapshot(url: str, *, settled: bool = False) -> Any:
    from ._server_stats import pg_settled_snapshot, pg_snapshot

    return await (pg_settled_snapshot(url) if settled else pg_snapshot(url))


async def _pg_compact(provider: Any) -> float:
    """Bring a freshly seeded PostgreSQL store to the state of one that grew this large over time, and
    return the seconds it took. Seeding inserts and deletes a queue row per timer or completion within
    seconds: a million history rows leave ~900 000 dead queue rows and ~95 MB of queue indexes that
    autovacuum (woken once a minute) has not reached, and the window would measure that debris (43 % of
    the fresh store's throughput; 75-80 % after a plain vacuum) instead of the history. A store that grew
    over days had its queues vacuumed all along, so the seeding ends with ``vacuum(compact_queues=True)``."""
    from ..providers.postgres import PostgresProvider

    if not isinstance(provider, PostgresProvider):
        return 0.0
    began = time.monotonic()
    await provider.vacuum(compact_queues=True)
    return time.monotonic() - began


async def _pg_wal_diff(url: str, later: str, earlier: str) -> int:
    from ._server_stats import pg_wal_diff

    return await pg_wal_diff(url, later, earlier)


def _with_costs(result: StressResult, monitor: StressMonitor, seeded: SeedResult, before: Any, after: Any) -> StressResult:
    """``result`` with the cost per orchestration, the sequential overhead and the seeding figures."""
    config, done = result.config, result.completed
    calls = monitor.calls_in_window
    total = sum(calls.values())
    changes: dict[str, Any] = {
        "provider_calls": total,
        "provider_calls_by_op": dict(sorted(calls.items())),
        "provider_call_ms": {k: round(v, 3) for k, v in sorted(monitor.call_ms_in_window.items())},
        "round_trips_per_orch": (total / done) if done else None,
        "seed_s": seeded.seconds,
        "seeded_timers": seeded.pending_timers,
        "seeded_history_rows": seeded.history_rows,
    }
    if before is not None and after is not None:
        # Our two snapshots are transactions of their own; they are not the run's.
        xacts = max(after.transactions - before.transactions - 2, 0)
        changes["pg_transactions"] = xacts
        changes["transactions_per_orch"] = (xacts / done) if done else None
    if config.scenario == "sequential" and result.latency_ms.count:
        n = config.tasks_per_instance
        overhead = result.latency_ms.p50 - n * config.activity_delay_ms
        changes["overhead_ms"] = overhead
        changes["step_overhead_ms"] = overhead / (n + 1)
    return attrs.evolve(result, **changes)


async def run_suite(
    factory: ProviderFactory,
    configs: Sequence[StressConfig],
    *,
    on_progress: ProgressCallback | None = None,
    fail_fast: bool = False,
) -> list[StressResult]:
    """Run each config in turn, each on a fresh provider; returns the results in order. Every config's
    scenario is looked up first, so an unknown name is a ``ValueError`` before anything runs."""
    for config in configs:
        get_scenario(config.scenario)
    results = []
    for config in configs:
        results.append(await run(factory, config, on_progress=on_progress, fail_fast=fail_fast))
    return results


async def _dispose(factory: ProviderFactory, provider: Provider) -> None:
    cleanup = getattr(factory, "cleanup", None)
    if cleanup is not None:
        await cleanup(provider)
    try:
        await provider.close()
    except Exception:  # noqa: BLE001 - the factory's cleanup may have closed it already
        pass


async def _load_and_drain(
    runtime: Runtime,
    plan: Callable[[int, StressConfig], Launch],
    config: StressConfig,
    monitor: StressMonitor,
    on_progress: ProgressCallback | None,
    progress_interval: float,
) -> None:
    client = runtime.client
    run_id = uuid.uuid4().hex[:8]
    slots = anyio.Semaphore(config.max_concurrent)
    all_done = anyio.Event()
    draining_cut = False

    async def instance(seq: int) -> None:
        instance_id = f"stress-{run_id}-{seq}"
        started = time.monotonic()
        if monitor.load_end is not None or started >= load_end:
            # Scheduled before the load phase ended but only running now (the event loop was held):
            # past the duration nothing is launched.
            slots.release()
            if monitor.in_flight == 0 and monitor.load_end is not None:
                all_done.set()
            return
        launch = plan(seq, config)
        monitor.launched += 1
        monitor.in_flight += 1
        monitor._second(started).launched += 1
        try:
            await _one_instance(client, instance_id, launch, started, config, monitor)
        except anyio.get_cancelled_exc_class():
            if draining_cut:
                monitor._record_failure(
                    instance_id,
                    "timeout",
                    f"still running {format_duration(time.monotonic() - started)} after its start "
                    "when the straggler bound passed",
                    time.monotonic(),
                )
            raise
        finally:
            monitor.in_flight -= 1
            slots.release()
            if monitor.in_flight == 0 and monitor.load_end is not None:
                all_done.set()

    async def sampler() -> None:
        last_progress = 0.0
        tick = min(progress_interval, 0.25)
        while True:
            monitor._sample()
            now = time.monotonic()
            if on_progress is not None and now - last_progress >= progress_interval:
                last_progress = now
                on_progress(monitor)
            before = time.monotonic()
            await anyio.sleep(tick)
            monitor._note_stall(time.monotonic() - before - tick)

    async with anyio.create_task_group() as background:
        background.start_soon(sampler)
        if monitor.counter is not None:
            monitor.counter.reset()  # the window starts with the load
        monitor.load_start = time.monotonic()
        monitor.activities_at_load_start = runtime.stats.activities_completed
        monitor._cpu_start = (time.process_time(), monitor.load_start)
        monitor.phase = "load"
        load_end = monitor.load_start + config.duration
        async with open_spawner() as instances:
            await launch_until(load_end, slots, instances, instance)
            monitor.load_end = time.monotonic()
            monitor.activities_at_load_end = runtime.stats.activities_completed
            monitor.phase = "draining"
            if monitor.in_flight == 0:
                all_done.set()
            with anyio.move_on_after(monitor.drain_bound_s):
                await all_done.wait()
            if not all_done.is_set():
                draining_cut = True
                instances.cancel_scope.cancel()
        monitor.finished_at = time.monotonic()
        if monitor.counter is not None:
            monitor.calls_in_window = dict(monitor.counter.calls)  # and ends with the drain
            monitor.call_ms_in_window = monitor.counter.mean_ms()
        monitor.phase = "done"
        background.cancel_scope.cancel()


async def _one_instance(
    client: Any,
    instance_id: str,
    launch: Launch,
    started: float,
    config: StressConfig,
    monitor: StressMonitor,
) -> None:
    try:
        await client.start_orchestration(instance_id, launch.orchestration, launch.input)
    except Exception as exc:  # noqa: BLE001 - every start error is a counted failure
        monitor._record_failure(instance_id, "start_error", describe_error(exc), time.monotonic())
        return

    driver_error: list[BaseException] = []
    state: Any = None
    timed_out: TimeoutError | None = None
    async def wait() -> bool:
        """Wait for the instance; False once a wait error is recorded."""
        nonlocal state, timed_out
        try:
            remaining = max(config.wait_timeout - (time.monotonic() - started), 0.0)
            state = await client.wait_for_orchestration(
                instance_id, timeout=remaining, poll_interval=wait_poll_interval(config)
            )
        except TimeoutError as exc:
            timed_out = exc
        except Exception as exc:  # noqa: BLE001 - e.g. a provider error while polling
            monitor._record_failure(instance_id, "wait_error", describe_error(exc), time.monotonic())
            return False
        return True

    if launch.drive is None:
        # Nothing runs beside the wait: no task group (one per instance was ~2 % of a run's CPU).
        if not await wait():
            return
    else:
        drive = launch.drive
        async with anyio.create_task_group() as tg:

            async def run_driver() -> None:
                try:
                    await drive(client, instance_id)
                except Exception as exc:  # noqa: BLE001 - reported as the instance's failure
                    driver_error.append(exc)
                    tg.cancel_scope.cancel()

            tg.start_soon(run_driver)
            waited = await wait()
            tg.cancel_scope.cancel()
        if not waited:
            return

    now = time.monotonic()
    if driver_error:
        monitor._record_failure(instance_id, "driver_error", describe_error(driver_error[0]), now)
        return
    if timed_out is not None or state is None:
        monitor._record_failure(
            instance_id,
            "timeout",
            f"not finished within {format_duration(config.wait_timeout)} of its start",
            now,
        )
        return
    if state.status is Status.FAILED:
        details = state.error
        category = _FAILED_CATEGORY.get(details.category if details else "", "application")
        message = f"{details.category}/{details.kind}: {details.message}" if details else "failed"
        monitor._record_failure(instance_id, category, message, now)
        return
    try:
        reason = launch.check(state.output, state)
    except Exception as exc:  # noqa: BLE001 - a check that cannot even read the output
        reason = f"wrong output: {describe_error(exc)}"
    if reason is None and launch.verify is not None:
        try:
            reason = await launch.verify(client, instance_id)
        except Exception as exc:  # noqa: BLE001 - a store that cannot be read counts as wrong
            reason = f"verify: {describe_error(exc)}"
    if reason is not None:
        monitor._record_failure(instance_id, "wrong_output", reason, now)
        return
    monitor._record_completion((now - started) * 1000.0, now)


async def launch_until(
    load_end: float,
    slots: anyio.Semaphore,
    instances: Spawner,
    instance: Callable[[int], Coroutine[Any, Any, None]],
) -> int:
    """Start ``instance(0)``, ``instance(1)``, ... in ``instances``, one per free slot (each instance
    releases its slot), until the monotonic time ``load_end``; nothing starts after it even when the event
    loop was held. Returns how many were started."""
    seq = 0
    remaining = load_end - time.monotonic()
    if remaining <= 0:
        return seq
    # One deadline for the whole load phase (not a cancel scope per launch).
    with anyio.move_on_after(remaining):
        while True:
            try:
                slots.acquire_nowait()
                free = True
            except anyio.WouldBlock:
                free = False
                await slots.acquire()  # waits for an instance to end: the event loop ran meanwhile
            if time.monotonic() >= load_end:
                slots.release()
                return seq
            instances.start_soon(instance, seq)
            seq += 1
            if free:
                await anyio.lowlevel.checkpoint()  # a burst: let the instance issue its start before the next
    return seq
