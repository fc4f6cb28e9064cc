"""The multi-process stress run: the load driver here, ``processes`` runtime worker processes
(:mod:`.workers`) on the same database, chaos on its schedules (:mod:`.chaos`), then a drain phase and the
database-based verdict (:mod:`.verdict`).

```python
target = ChaosTarget.sqlite("/tmp/chaos.db")            # or ChaosTarget.postgres(url)
result = await run_chaos(target, StressConfig(duration=30), processes=3,
                         chaos=[parse_chaos("kill:every=3s"), parse_chaos("faults:rate=0.05")])
assert result.passed, result.verdict.reasons
```

Timeline of a run: the workers start; the load phase (``config.duration``) keeps ``max_concurrent``
instances in flight while each chaos spec fires on its own schedule; at the end of the load the
schedules stop, fault injection is switched off (SIGUSR1) and the drain phase waits until every launched
instance is terminal, at most ``stuck_after`` seconds after the last fault; then the verdict reads every
instance, history and the ledger from the database.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from ..providers.base import InstanceAlreadyExists
from ..runtime import RuntimeStats
from ._chaos import ChaosSpec, ChaosTimeline, run_schedule
from ._config import StressConfig
from ._ledger import open_ledger
from ._result import StressResult
from ._runner import StressAborted, StressMonitor, describe_error, launch_until, runtime_options
from ._scenarios import Launch, get_scenario
from ._verdict import Verdict, compute_verdict
from ._workers import WorkerPool

__all__ = ["ChaosResult", "ChaosTarget", "run_chaos", "throughput_marks"]

ProgressCallback = Callable[[StressMonitor], None]

#: Default of ``stuck_after``: an instance not terminal this long after the last fault is stuck.
STUCK_AFTER = 60.0
#: The workers' liveness ``stale_after``: short enough that a 2 s stall moves the stalled process's work.
LEASE_STALE_AFTER = 1.5
#: The workers' ``worker_lock_timeout``: a session claim lasts this long (the liveness lease frees a dead
#: process's activity locks at once, not its sessions), so a killed owner's session moves within seconds.
WORKER_LOCK_TIMEOUT = 5.0
_MARK = {"kill": "K", "restart-db": "R", "stall": "S"}


@attrs.define
class ChaosTarget:
    """Where the workers and the driver meet: a SQLite file or a PostgreSQL schema.

    ``restart`` (PostgreSQL) restarts the server, blocking, with a mode ``"fast"`` / ``"immediate"``;
    it is only set for a cluster the harness started itself or with ``--chaos-own-database``."""

    kind: str
    path: str | None = None
    url: str | None = None
    schema: str | None = None
    pool_max: int | None = None
    restart: Callable[[str], None] | None = None
    owns_database: bool = False
    temporary_dir: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    ledger_path: str | None = None

    @classmethod
    def sqlite(cls, path: str | None = None) -> ChaosTarget:
        """A SQLite file (a temporary one when ``path`` is None, removed afterwards)."""
        if path is None:
            d = tempfile.mkdtemp(prefix="duroxide-chaos-")
            return cls("sqlite", path=os.path.join(d, "state.db"), temporary_dir=d)
        return cls("sqlite", path=path)

    @classmethod
    def postgres(
        cls, url: str, *, schema: str | None = None, pool_max: int | None = None,
        restart: Callable[[str], None] | None = None, owns_database: bool = False,
    ) -> ChaosTarget:  # fmt: skip
        """A fresh schema ``duroxide_chaos_<random>`` on ``url`` (dropped afterwards)."""
        return cls(
            "postgres", url=url, schema=schema or f"duroxide_chaos_{uuid.uuid4().hex[:8]}",
            pool_max=pool_max, restart=restart, owns_database=owns_database,
        )  # fmt: skip

    @classmethod
    def custom(
        cls, factory: str, kwargs: dict[str, Any] | None = None, *, ledger_path: str | None = None,
        restart: Callable[[str], None] | None = None,
    ) -> ChaosTarget:  # fmt: skip
        """A provider of your own: every process calls ``factory`` (``"package.module:callable"``) with
        ``kwargs`` to open it (on the same store). Executions are counted in an append-only ledger file
        (default: a temporary one). ``restart``: how to restart your store for restart-db."""
        d = None
        if ledger_path is None:
            d = tempfile.mkdtemp(prefix="duroxide-chaos-")
            ledger_path = os.path.join(d, "ledger.jsonl")
        return cls("custom", factory=factory, kwargs=dict(kwargs or {}), ledger_path=ledger_path,
                   restart=restart, temporary_dir=d)  # fmt: skip

    def worker_target(self) -> dict[str, Any]:
        """What a worker process needs to open the same store (JSON-ready)."""
        if self.kind == "custom":
            return {"kind": "custom", "factory": self.factory, "kwargs": self.kwargs, "ledger": self.ledger_path}
        if self.kind == "postgres":
            return {"kind": "postgres", "url": self.url, "schema": self.schema, "pool_max": self.pool_max}
        return {"kind": "sqlite", "path": self.path}

    async def open_provider(self) -> Any:
        """Open the store in this process (the load driver's side)."""
        if self.kind == "custom":
            from ._workers import open_custom_provider

            assert self.factory is not None
            return await open_custom_provider(self.factory, self.kwargs)
        if self.kind == "postgres":
            from ..providers.postgres import PostgresProvider

            assert self.url is not None and self.schema is not None
            return await PostgresProvider.connect(self.url, schema=self.schema, pool_max=self.pool_max or 8)
        from ..providers.sqlite import SqliteProvider

        assert self.path is not None
        return await SqliteProvider.open(self.path)

    async def cleanup(self) -> None:
        """Drop the schema / remove temporary files (unless ``$DUROXIDE_CHAOS_KEEP`` is set)."""
        if os.environ.get("DUROXIDE_CHAOS_KEEP"):  # debugging: leave the database for inspection
            return
        if self.kind == "postgres":
            from ..providers.postgres import drop_schema

            assert self.url is not None and self.schema is not None
            with contextlib.suppress(Exception):
                await drop_schema(self.url, self.schema)
        elif self.temporary_dir is not None:
            import shutil

            shutil.rmtree(self.temporary_dir, ignore_errors=True)


@attrs.define
class ChaosResult:
    """A multi-process run: the usual :class:`StressResult` (driver-side figures), the database-based
    :class:`Verdict`, the chaos timeline and each process's figures and state."""

    result: StressResult
    verdict: Verdict
    processes: int
    specs: list[ChaosSpec]
    timeline: list[dict[str, Any]]
    process_table: list[dict[str, Any]]
    throughput: list[dict[str, Any]]
    liveness: bool = True

    @property
    def passed(self) -> bool:
        """The verdict is clean."""
        return self.verdict.passed

    @property
    def chaos_label(self) -> str:
        """The chaos specs, space separated (``none`` without chaos)."""
        return " ".join(s.describe() for s in self.specs) or "none"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: processes, chaos specs, verdict, timeline, process table, throughput."""
        return {
            "processes": self.processes,
            "chaos": [s.describe() for s in self.specs],
            "liveness": self.liveness,
            "verdict": self.verdict.as_dict(),
            "timeline": self.timeline,
            "process_table": self.process_table,
            "throughput": self.throughput,
            "passed": self.passed,
        }


def throughput_marks(result: StressResult, timeline: ChaosTimeline) -> list[dict[str, Any]]:
    """Completions per second of the run with the fault moments marked (K kill, R restart-db, S stall)."""
    marks: dict[int, str] = {}
    for e in timeline.events:
        if e.kind in _MARK and e.ok:
            second = int(max(e.at, 0.0))
            marks[second] = marks.get(second, "") + _MARK[e.kind]
    last = max([p.second for p in result.timeline] + list(marks) + [-1])
    by_second = {p.second: p for p in result.timeline}
    out = []
    for s in range(last + 1):
        p = by_second.get(s)
        out.append({
            "second": s, "completed": p.completed if p else 0, "activities": p.activities if p else 0,
            "faults": marks.get(s, ""),
        })  # fmt: skip
    return out


class WriteGate:
    """Client writes pass through the gate; a database restart closes it and waits for the writes in
    flight, so the harness's own starts and events are never ambiguous (the runtimes are not gated)."""

    def __init__(self) -> None:
        self.closed = False
        self._opened = anyio.Event()
        self._opened.set()
        self._writers = 0
        self._drained = anyio.Event()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Hold the gate open for one client write (waits while a restart is in progress)."""
        while self.closed:
            await self._opened.wait()
        self._writers += 1
        try:
            yield
        finally:
            self._writers -= 1
            if self._writers == 0:
                self._drained.set()

    async def close(self, timeout: float = 5.0) -> None:
        """Close the gate and wait (at most ``timeout``) for the writes in flight."""
        self.closed = True
        self._opened = anyio.Event()
        with anyio.move_on_after(timeout):
            while self._writers:
                self._drained = anyio.Event()
                await self._drained.wait()

    def open(self) -> None:
        """Let client writes through again."""
        self.closed = False
        self._opened.set()


class _RemoteRuntimes:
    """What a :class:`StressMonitor` reads from "the runtime": figures summed over the worker processes."""

    def __init__(self, config: StressConfig, pool: WorkerPool) -> None:
        self.stats = RuntimeStats()
        self.options = runtime_options(config, shared=True)
        self.pool = pool

    def refresh(self, monitor: StressMonitor | None = None) -> None:
        turns, activities = self.pool.totals()
        self.stats.orchestration_turns = turns
        self.stats.activities_completed = activities
        if monitor is not None:  # the processes' error counts (injected faults are expected ones)
            monitor.expected_errors = sum(wp.expected_errors for wp in self.pool.processes)
            monitor.unexpected_errors = (
                sum(wp.unexpected_errors for wp in self.pool.processes) + self.pool.harness_errors
            )


async def run_chaos(
    target: ChaosTarget,
    config: StressConfig,
    *,
    processes: int,
    chaos: Sequence[ChaosSpec] = (),
    stuck_after: float = STUCK_AFTER,
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 0.2,
    fail_fast: bool = False,
    backend: str = "trio",
    worker_log: str | None = None,
    seed: int | None = None,
    liveness: bool = True,
    lease_stale_after: float = LEASE_STALE_AFTER,
    worker_lock_timeout: float = WORKER_LOCK_TIMEOUT,
) -> ChaosResult:
    """Run ``config`` with ``processes`` runtime processes under ``chaos``; see the module docstring.

    ``worker_log``: a file that collects the workers' stderr (default: discarded). ``on_progress(monitor)``
    as for :func:`duroxide_trio.stress.run`; ``monitor.pool`` and ``monitor.chaos`` hold the processes and
    the timeline. With ``fail_fast`` the first failed or wrong instance, or a worker that exits on its
    own, stops the run and raises :class:`StressAborted` (its ``chaos`` attribute holds the partial
    :class:`ChaosResult`). ``liveness``: the workers hold process liveness leases (fast recovery, see
    ``runtime/_liveness.py``); ``lease_stale_after``: a worker without heartbeat for this long (a stall)
    is reclaimed; ``worker_lock_timeout``: the workers' activity lock and session claim duration (a session
    whose owner died moves to another process when its claim expires)."""
    if processes < 1:
        raise ValueError("processes must be at least 1")
    specs = list(chaos)
    if any(s.kind == "restart-db" for s in specs) and target.restart is None:
        raise ValueError(
            "restart-db needs a database the harness may restart: a throwaway cluster it started itself "
            "(PostgreSQL from local binaries), or --chaos-own-database with a restart command"
        )
    fault_spec = next((s for s in specs if s.kind == "faults"), None)
    rng_seed = seed if seed is not None else int(time.time())
    scenario = get_scenario(config.scenario)
    from ..registry import Registry

    registry = Registry()
    scenario.register(registry, config)
    timeline = ChaosTimeline()
    spec: dict[str, Any] = {
        "config": config.as_dict(), "target": target.worker_target(), "backend": backend,
        "liveness": {"enabled": liveness, "stale_after": lease_stale_after},
        "worker_lock_timeout": worker_lock_timeout,
    }  # fmt: skip
    if fault_spec is not None:
        spec["faults"] = {
            "rate": fault_spec.rate, "after_share": fault_spec.after_share, "fetch_after": fault_spec.fetch_after
        }  # fmt: skip

    monitor = StressMonitor(config, f"{target.kind} ×{processes} processes", backend)
    monitor._fail_fast = fail_fast
    log_file = open(worker_log, "ab") if worker_log else None  # noqa: SIM115 - closed in finally

    def on_worker_error(role: str, message: str, expected: bool) -> None:
        from ._runner import ErrorEntry

        if "exited unexpectedly" in message:
            pool.harness_errors += 1
        monitor.errors.append(ErrorEntry(time.time(), role, message, expected))
        if fail_fast and not expected and "exited unexpectedly" in message:
            monitor._abort(f"{role}: {message}")

    pool = WorkerPool(spec, processes, timeline, log=log_file, on_error=on_worker_error, seed=rng_seed)
    remote = _RemoteRuntimes(config, pool)
    monitor.runtime = remote  # type: ignore[assignment]
    monitor.pool = pool  # type: ignore[attr-defined]
    monitor.chaos = timeline  # type: ignore[attr-defined]
    monitor.chaos_specs = specs  # type: ignore[attr-defined]
    launched: dict[str, Launch] = {}
    gate = WriteGate()
    verdict: Verdict | None = None
    all_terminal_s: list[float] = []
    stuck_ids: set[str] = set()

    provider = await target.open_provider()
    try:
        ledger = open_ledger(target.worker_target())
        await ledger.create()
        async with provider, anyio.create_task_group() as tg:
            await pool.start(tg)
            try:
                with anyio.CancelScope() as scope:
                    monitor._scope = scope
                    await _load_and_drain(
                        provider, registry, scenario.plan, config, monitor, pool, timeline, specs, target,
                        gate, launched, stuck_after, on_progress, progress_interval, rng_seed, all_terminal_s,
                        stuck_ids,
                    )  # fmt: skip
                if monitor.finished_at is None:
                    monitor.finished_at = time.monotonic()
                remote.refresh(monitor)
                if monitor.fatal is None:
                    verdict = await _with_retries(
                        lambda: _verdict(provider, registry, launched, ledger, timeline, pool, fault_spec,
                                         stuck_after, all_terminal_s, stuck_ids)  # fmt: skip
                    )
            finally:
                with anyio.CancelScope(shield=True):
                    pool.stop_faults()
                    await pool.shutdown()
                remote.refresh(monitor)
                tg.cancel_scope.cancel()
        await ledger.close()
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await provider.close()
            await target.cleanup()
            if log_file is not None:
                log_file.close()
    result = monitor.result(config.scenario)
    if on_progress is not None:
        on_progress(monitor)
    if verdict is None:
        verdict = Verdict(launched=len(launched))
    chaos_result = ChaosResult(
        result=result, verdict=verdict, processes=processes, specs=specs, timeline=timeline.as_list(),
        process_table=[wp.as_dict() for wp in pool.processes], throughput=throughput_marks(result, timeline),
        liveness=liveness,
    )  # fmt: skip
    if monitor.fatal is not None:
        aborted = StressAborted(monitor.fatal, monitor.fatal_traceback, result, list(monitor.errors))
        aborted.chaos = chaos_result  # type: ignore[attr-defined]
        raise aborted
    return chaos_result


async def _with_retries(fn: Callable[[], Any], attempts: int = 5) -> Any:
    for attempt in range(attempts):
        try:
            return await fn()
        except Exception:  # noqa: BLE001 - e.g. the database restarting: try again
            if attempt == attempts - 1:
                raise
            await anyio.sleep(1.0)
    raise AssertionError("unreachable")


async def _verdict(
    provider: Any, registry: Any, launched: dict[str, Launch], ledger: Any, timeline: ChaosTimeline,
    pool: WorkerPool, fault_spec: ChaosSpec | None, stuck_after: float, all_terminal_s: list[float],
    stuck_ids: set[str],
) -> Verdict:  # fmt: skip
    rows = await ledger.read_all()
    return await compute_verdict(
        provider, launched, rows, timeline,
        killed_pids=pool.pids_of("killed"), faults=fault_spec is not None and fault_spec.rate > 0,
        stuck_after=stuck_after, all_terminal_s=all_terminal_s[0] if all_terminal_s else None,
        load_end_s=pool.load_end_s, registry=registry, stuck_at_deadline=stuck_ids,
    )  # fmt: skip


async def _load_and_drain(
    provider: Any,
    registry: Any,
    plan: Callable[[int, StressConfig], Launch],
    config: StressConfig,
    monitor: StressMonitor,
    pool: WorkerPool,
    timeline: ChaosTimeline,
    specs: list[ChaosSpec],
    target: ChaosTarget,
    gate: WriteGate,
    launched: dict[str, Launch],
    stuck_after: float,
    on_progress: ProgressCallback | None,
    progress_interval: float,
    seed: int,
    all_terminal_s: list[float],
    stuck_ids: set[str],
) -> None:
    from ..client import Client, Status

    client = Client(provider, registry=registry)
    run_id = uuid.uuid4().hex[:8]
    slots = anyio.Semaphore(config.max_concurrent)
    all_done = anyio.Event()
    stop_chaos = anyio.Event()
    remote: _RemoteRuntimes = monitor.runtime  # type: ignore[assignment]
    stuck: set[str] = stuck_ids

    in_flight: set[str] = set()

    async def instance(seq: int) -> None:
        instance_id = f"chaos-{run_id}-{seq}"
        launch = plan(seq, config)
        started = time.monotonic()
        monitor.launched += 1
        monitor.in_flight += 1
        monitor._second(started).launched += 1
        in_flight.add(instance_id)
        try:
            await _one_instance(client, instance_id, launch, started, monitor, gate, launched, Status)
        finally:
            in_flight.discard(instance_id)
            monitor.in_flight -= 1
            slots.release()
            if monitor.in_flight == 0 and monitor.load_end is not None and not stuck:
                if not all_terminal_s:
                    all_terminal_s.append(timeline.now())
                all_done.set()

    async def sampler() -> None:
        last_progress = 0.0
        while True:
            remote.refresh(monitor)
            monitor._sample()
            now = time.monotonic()
            if on_progress is not None and now - last_progress >= progress_interval:
                last_progress = now
                on_progress(monitor)
            await anyio.sleep(min(progress_interval, 0.25))

    restart_lock = anyio.Lock()  # two restart-db schedules never restart the server at the same time

    async def restart_db(spec: ChaosSpec) -> None:
        async with restart_lock:
            await _restart_db(spec)

    async def _restart_db(spec: ChaosSpec) -> None:
        assert target.restart is not None
        restart = target.restart
        await gate.close()
        event = timeline.record("restart-db", f"restart PostgreSQL -m {spec.mode}")
        try:
            await anyio.to_thread.run_sync(restart, spec.mode)
        except Exception as exc:  # noqa: BLE001 - reported in the timeline and the errors
            event.ok = False
            event.detail += f": failed: {describe_error(exc)}"
            monitor._on_runtime_error(
                _error_entry("chaos", f"restart-db failed: {describe_error(exc)}"), str(exc)
            )
        finally:
            event.until = timeline.now()
            gate.open()

    def action(spec: ChaosSpec) -> Callable[[], Any]:
        if spec.kind == "kill":
            return lambda: pool.kill_random(spec.target)
        if spec.kind == "stall":
            return lambda: pool.stall_random(spec.duration)
        return lambda: restart_db(spec)

    async with anyio.create_task_group() as background:
        background.start_soon(sampler)
        timeline.reset()
        monitor.load_start = time.monotonic()
        monitor.activities_at_load_start = remote.stats.activities_completed
        monitor._cpu_start = (time.process_time(), monitor.load_start)
        monitor.phase = "load"
        fault_event = None
        for i, spec in enumerate(specs):
            if spec.kind == "faults":
                fault_event = timeline.record("faults", f"fault injection at rate {spec.rate:g}")
            else:
                background.start_soon(run_schedule, spec, action(spec), seed + 17 * (i + 1), stop_chaos)
        load_end = monitor.load_start + config.duration
        async with anyio.create_task_group() as instances:
            await launch_until(load_end, slots, instances, instance)
            monitor.load_end = time.monotonic()
            pool.load_end_s = timeline.now()
            monitor.activities_at_load_end = remote.stats.activities_completed
            monitor.phase = "draining"
            # The drain is fault-free: schedules stop (a stall in progress ends with its SIGCONT), the
            # fault injectors are switched off.
            stop_chaos.set()
            while any(wp.state == "stalled" for wp in pool.processes) or gate.closed:
                await anyio.sleep(0.05)
            pool.stop_faults()
            if fault_event is not None:
                fault_event.until = timeline.now()
            if monitor.in_flight == 0:
                if not all_terminal_s:
                    all_terminal_s.append(timeline.now())
                all_done.set()
            last_fault = timeline.last_fault_end() or timeline.now()
            with anyio.move_on_after(max(last_fault + stuck_after - timeline.now(), 0.0)):
                await all_done.wait()
            if not all_done.is_set():
                # Not terminal stuck_after seconds after the last fault: stuck (whatever they do later).
                stuck.update(in_flight)
                instances.cancel_scope.cancel()
        monitor.finished_at = time.monotonic()
        monitor.phase = "done"
        background.cancel_scope.cancel()


def _error_entry(role: str, message: str) -> Any:
    from ..runtime import RecentError

    return RecentError(time.time(), role, message, False)


async def _one_instance(
    client: Any,
    instance_id: str,
    launch: Launch,
    started: float,
    monitor: StressMonitor,
    gate: WriteGate,
    launched: dict[str, Launch],
    status: Any,
) -> None:
    # Start: retried through errors (a start that committed but reported an error shows up as
    # InstanceAlreadyExists on the retry).
    attempt = 0
    while True:
        attempt += 1
        try:
            async with gate.writing():
                await client.start_orchestration(instance_id, launch.orchestration, launch.input)
            break
        except InstanceAlreadyExists:
            if attempt > 1:
                break
            monitor._record_failure(instance_id, "start_error", "instance already exists", time.monotonic())
            return
        except Exception as exc:  # noqa: BLE001 - retried, then a counted failure
            if attempt >= 20:
                monitor._record_failure(instance_id, "start_error", describe_error(exc), time.monotonic())
                return
            await anyio.sleep(0.25)
    launched[instance_id] = launch
    if launch.drive is not None:
        try:
            async with gate.writing():
                await launch.drive(client, instance_id)
        except Exception as exc:  # noqa: BLE001 - reported as the instance's failure
            monitor._record_failure(instance_id, "driver_error", describe_error(exc), time.monotonic())
            return
    # Wait: no per-instance timeout (the drain's stuck bound cancels this); errors are retried.
    state: Any = None
    while True:
        try:
            state = await client.wait_for_orchestration(instance_id, timeout=5.0, poll_interval=0.1)
            break
        except TimeoutError:
            continue
        except Exception:  # noqa: BLE001 - e.g. the database restarting
            await anyio.sleep(0.2)
    now = time.monotonic()
    if state.status is status.FAILED:
        details = state.error
        category = details.category if details else "application"
        kind = "infrastructure" if category == "poison" else category
        message = f"{details.category}/{details.kind}: {details.message}" if details else "failed"
        monitor._record_failure(instance_id, kind, message, now)
        return
    try:
        reason = launch.check(state.output, state)
    except Exception as exc:  # noqa: BLE001
        reason = f"wrong output: {describe_error(exc)}"
    if reason is None and launch.verify is not None:
        reason = await _verify(client, instance_id, launch)
    if reason is not None:
        monitor._record_failure(instance_id, "wrong_output", reason, now)
        return
    monitor._record_completion((now - started) * 1000.0, now)


async def _verify(client: Any, instance_id: str, launch: Launch) -> str | None:
    """``launch.verify``, retried through store errors (e.g. the database restarting)."""
    assert launch.verify is not None
    for attempt in range(20):
        try:
            return await launch.verify(client, instance_id)
        except Exception as exc:  # noqa: BLE001 - retried, then counted as wrong
            if attempt == 19:
                return f"verify: {describe_error(exc)}"
            await anyio.sleep(0.25)
    return None


def format_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc``."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
