"""Runtime worker processes of the multi-process stress harness (``duroxide-trio stress --processes N``).

The load driver (the client) runs in the harness's process; each worker is a separate Python process
running ``open_runtime`` with the stress config's dispatchers on the same database:

    python -m duroxide_trio.stress._workers          # reads its spec from $DUROXIDE_CHAOS_WORKER (JSON)

A worker prints JSON lines on stdout: ``{"t": "ready", "pid": ...}`` once its runtime runs, then
``{"t": "stats", ...}`` every 0.25 s (turns, activities, errors). ``SIGUSR1`` stops its fault injection
(the drain phase is fault-free), ``SIGTERM`` stops it. Every activity writes a ledger row
(:mod:`.ledger`) before it returns its result.

:class:`WorkerPool` is the harness's side: it starts, kills (SIGKILL), stalls (SIGSTOP/SIGCONT) and
replaces worker processes and keeps each one's state (starting / running / stalled / killed / exited) and
figures for the dashboard and the JSON result.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import anyio
import anyio.abc
import attrs

from ..registry import ActivityHandler, Registry
from ._chaos import ChaosTimeline
from ._config import StressConfig
from ._ledger import Ledger, open_ledger

__all__ = ["WorkerPool", "WorkerProcess", "build_registry", "fault_rules", "wrap_faults"]

SPEC_ENV = "DUROXIDE_CHAOS_WORKER"
#: Provider operations the fault injector fails (before the real call).
FAULT_OPS = (
    "fetch_orchestration_item", "ack_orchestration_item", "abandon_orchestration_item",
    "renew_orchestration_item_lock", "enqueue_for_orchestrator", "fetch_work_item", "fetch_work_items",
    "ack_work_item", "ack_work_items", "renew_work_item_lock", "abandon_work_item", "read",
)  # fmt: skip
#: Operations failed *after* the real call committed. Fetches only with ``fetch-after=1``: a fetch whose
#: result is lost strands its items until their lock expires (a full worker lock timeout).
AFTER_OPS = (
    "ack_orchestration_item", "abandon_orchestration_item", "renew_orchestration_item_lock",
    "enqueue_for_orchestrator", "ack_work_item", "ack_work_items", "renew_work_item_lock", "abandon_work_item",
)  # fmt: skip
FETCH_OPS = ("fetch_orchestration_item", "fetch_work_item", "fetch_work_items")


# ---------------------------------------------------------------------------------------------------------
# worker side


SessionHook = Callable[[str, int, bool], None]


def _ledgered(handler: ActivityHandler, ledger: Ledger, on_session: SessionHook | None = None) -> Callable[..., Any]:
    async def run(ctx: Any, *args: Any) -> Any:
        started_ms = int(time.time() * 1000)
        session = ctx.session_id is not None and on_session is not None
        if session:
            assert on_session is not None
            on_session(ctx.session_id, 1, False)
        done = False
        try:
            if handler.is_async:
                result = await handler.fn(ctx, *args)
            else:
                result = await anyio.to_thread.run_sync(handler.fn, ctx, *args)
            done = True
        finally:
            if session:
                assert on_session is not None
                on_session(ctx.session_id, -1, done)
        await ledger.record(
            ctx.instance_id, ctx.execution_id, ctx.activity_id, ctx.activity_name, ctx.attempt,
            session_id=ctx.session_id, started_ms=started_ms,
        )  # fmt: skip
        return result

    if handler.takes_input:

        async def with_input(ctx: Any, input: Any) -> Any:
            return await run(ctx, input)

        return with_input

    async def without_input(ctx: Any) -> Any:
        return await run(ctx)

    return without_input


def build_registry(config: StressConfig, ledger: Ledger, on_session: SessionHook | None = None) -> Registry:
    """The scenario's orchestrations and activities, every activity writing its ledger row;
    ``on_session(session_id, +1 / -1, finished)`` is called when an activity with a session begins /
    ends."""
    from ._scenarios import get_scenario

    inner = Registry()
    get_scenario(config.scenario).register(inner, config)
    registry = Registry()
    for name in inner.activity_names:
        handler = inner.get_activity(name)
        assert handler is not None
        registry.add_activity(_ledgered(handler, ledger, on_session), name)
    for name in inner.orchestration_names:
        for version in inner.versions(name):
            orch = inner.resolve_orchestration(name, version)
            assert orch is not None
            registry.add_orchestration(orch.fn, name, version=version)
    return registry


def fault_rules(rate: float, after_share: float, fetch_after: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before rules, after rules) for :class:`~duroxide_trio.testing.faults.FaultyProvider`: each
    operation fails with probability ``rate`` in total, ``after_share`` of it after the real call."""
    from ..testing.faults import Fault

    after_ops = AFTER_OPS + (FETCH_OPS if fetch_after else ())
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for op in FAULT_OPS:
        share = after_share if op in after_ops else 0.0
        before[op] = Fault(probability=rate * (1.0 - share), message="injected fault")
        if share:
            after[op] = Fault(probability=rate * share, after=True, message="injected fault")
    return before, after


def wrap_faults(provider: Any, rate: float, after_share: float, fetch_after: bool, seed: int) -> Any:
    """``provider`` inside two fault injectors (after-commit faults inside, before-call faults outside)."""
    from ..testing.faults import FaultyProvider

    before, after = fault_rules(rate, after_share, fetch_after)
    inner = FaultyProvider(provider, after, seed=seed + 1) if after else provider
    return FaultyProvider(inner, before, seed=seed)


def _all_faults(wrapper: Any) -> list[Any]:
    out: list[Any] = []
    while hasattr(wrapper, "faults"):
        out.extend(wrapper.faults.values())
        wrapper = wrapper._inner
    return out


async def open_custom_provider(factory: str, kwargs: dict[str, Any]) -> Any:
    """``"package.module:callable"`` (the callable may be dotted, e.g. ``Class.open``), called with
    ``kwargs``; awaited if it returns an awaitable."""
    import importlib
    import inspect

    module_name, sep, attr = factory.partition(":")
    if not sep:
        raise ValueError(f"provider factory must look like 'package.module:callable', not {factory!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    provider = obj(**kwargs)
    if inspect.isawaitable(provider):
        provider = await provider
    return provider


async def _open_provider(target: dict[str, Any]) -> Any:
    if target["kind"] == "custom":
        return await open_custom_provider(target["factory"], target.get("kwargs") or {})
    if target["kind"] == "postgres":
        from ..providers.postgres import PostgresProvider

        return await PostgresProvider.connect(
            target["url"], schema=target["schema"], pool_max=target.get("pool_max") or 4
        )
    from ..providers.sqlite import SqliteProvider

    return await SqliteProvider.open(target["path"])


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _worker(spec: dict[str, Any]) -> None:
    from ..runtime import open_runtime
    from ._runner import runtime_options

    config = StressConfig(**spec["config"])
    target = spec["target"]
    ledger = open_ledger(target)
    running: dict[str, int] = {}
    finished: dict[str, None] = {}  # sessions with an activity finished here (the newest 10 000)

    def on_session(session_id: str, delta: int, done: bool) -> None:
        # Told at once (not with the 0.25 s stats): ``kill:target=session`` picks a process mid-session,
        # preferably one whose session already finished an activity here (the ledger then shows the move).
        running[session_id] = running.get(session_id, 0) + delta
        if not running[session_id]:
            del running[session_id]
        if done:
            finished[session_id] = None
            if len(finished) > 10_000:
                del finished[next(iter(finished))]
        _emit({"t": "sessions", "running": sum(running.values()),
               "continued": sum(n for s, n in running.items() if s in finished)})  # fmt: skip

    registry = build_registry(config, ledger, on_session)
    # A replacement may start while the database restarts: keep trying to connect for a while.
    deadline = time.monotonic() + 60.0
    while True:
        try:
            provider = await _open_provider(target)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.5)
    errors: list[tuple[bool, str]] = []
    liveness = spec.get("liveness") or {}
    async with provider, anyio.create_task_group() as lease_group:
        from ..runtime import LivenessOptions, run_liveness

        options = LivenessOptions.from_env()
        options = attrs.evolve(options, **{k: v for k, v in liveness.items() if k in ("stale_after", "enabled")})
        # The runtime takes the lease itself when it has the hook; this is then a no-op (or vice versa).
        await lease_group.start(run_liveness, provider, options)
        runtime_provider = provider
        faults = spec.get("faults")
        if faults:
            runtime_provider = wrap_faults(
                provider, faults["rate"], faults["after_share"], faults["fetch_after"], spec.get("seed", 0)
            )
        rt_options = runtime_options(config, shared=True)
        if spec.get("worker_lock_timeout"):
            rt_options = attrs.evolve(rt_options, worker_lock_timeout=float(spec["worker_lock_timeout"]))
        async with open_runtime(runtime_provider, registry, rt_options) as rt:
            from ..providers.base import ProviderError

            # Under chaos every provider error is expected (injected faults, restarts, stolen locks are
            # retried or abandoned); anything else (a bug in a dispatcher) is not.
            rt.stats.error_listeners.append(
                lambda err, exc: errors.append((err.expected or isinstance(exc, ProviderError), err.message))
            )
            _emit({"t": "ready", "pid": os.getpid()})
            with anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
                if _faults_off:
                    for fault in _all_faults(runtime_provider):
                        fault.probability = 0.0
                async with anyio.create_task_group() as tg:

                    async def report() -> None:
                        expected = unexpected = 0
                        while True:
                            batch, errors[:] = errors[:], []
                            expected += sum(1 for e, _ in batch if e)
                            unexpected += sum(1 for e, _ in batch if not e)
                            s = rt.stats
                            _emit({
                                "t": "stats", "turns": s.orchestration_turns,
                                "activities": s.activities_completed, "provider_errors": s.provider_errors,
                                "expected": expected, "unexpected": unexpected,
                                "recent": [m[:300] for e, m in batch if not e][:3],
                            })  # fmt: skip
                            await anyio.sleep(0.25)

                    tg.start_soon(report)
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            for fault in _all_faults(runtime_provider):
                                fault.probability = 0.0
                            _emit({"t": "faults-off"})
                        else:
                            tg.cancel_scope.cancel()
                            break
        lease_group.cancel_scope.cancel()
    await ledger.close()


_faults_off = False


def _early_faults_off(signum: int, frame: object) -> None:
    global _faults_off
    _faults_off = True


def main() -> None:
    """Entry point of a worker process (``python -m duroxide_trio.stress._workers``)."""
    # SIGUSR1 may come before the runtime's signal receiver exists (a process started just before the
    # end of the load): its default action would kill the process.
    signal.signal(signal.SIGUSR1, _early_faults_off)
    spec = json.loads(os.environ[SPEC_ENV])
    anyio.run(_worker, spec, backend=spec.get("backend", "trio"))


# ---------------------------------------------------------------------------------------------------------
# harness side


@attrs.define(eq=False)
class WorkerProcess:
    """One runtime process (``slot.generation``: a killed process's replacement keeps the slot)."""

    slot: int
    generation: int
    pid: int = 0
    state: str = "starting"  # starting | restarting (a killed one's replacement) | running | stalled | killed
    #                          | exited (on its own: a failure) | stopped (by the harness at the end)
    started_at: float = 0.0
    ready_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    turns: int = 0
    activities: int = 0
    provider_errors: int = 0
    expected_errors: int = 0
    unexpected_errors: int = 0
    stalls: int = 0
    sessions_running: int = 0  # session activities running in it now (as it last told)
    sessions_continued: int = 0  # of those, the ones whose session finished an activity here before
    faulty: bool = False
    proc: Any = attrs.field(default=None, repr=False)
    ready: anyio.Event = attrs.field(factory=anyio.Event, repr=False)

    @property
    def name(self) -> str:
        """``slot.generation``."""
        return f"{self.slot}.{self.generation}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures and state."""
        return {
            "name": self.name, "slot": self.slot, "generation": self.generation, "pid": self.pid,
            "state": self.state, "started_at_s": round(self.started_at, 3),
            "ready_at_s": round(self.ready_at, 3) if self.ready_at is not None else None,
            "ended_at_s": round(self.ended_at, 3) if self.ended_at is not None else None,
            "exit_code": self.exit_code, "turns": self.turns, "activities": self.activities,
            "provider_errors": self.provider_errors, "expected_errors": self.expected_errors,
            "unexpected_errors": self.unexpected_errors, "stalls": self.stalls,
        }  # fmt: skip


class WorkerPool:
    """Starts ``count`` worker processes for ``spec`` and keeps ``count`` of them alive while chaos kills
    them. Owned by the task group passed to :meth:`run` (one reader task per process)."""

    def __init__(
        self,
        spec: dict[str, Any],
        count: int,
        timeline: ChaosTimeline,
        *,
        log: IO[bytes] | None = None,
        on_error: Callable[[str, str, bool], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self.count = count
        self.timeline = timeline
        self.processes: list[WorkerProcess] = []
        self._log = log
        self._on_error = on_error
        self._rng = random.Random(seed)
        self._tg: anyio.abc.TaskGroup | None = None
        self._generation: dict[int, int] = {}
        self.stopping = False
        self.load_end_s = 0.0
        self.faults_off = False
        self.harness_errors = 0  # processes that exited on their own
        self._startup_failures: dict[int, int] = {}

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self, tg: anyio.abc.TaskGroup, *, timeout: float = 90.0) -> None:
        """Start every process and wait until each one's runtime runs."""
        self._tg = tg
        started = [await self._spawn(slot) for slot in range(self.count)]
        with anyio.fail_after(timeout):
            for wp in started:
                await wp.ready.wait()
                if wp.state != "running":
                    raise RuntimeError(f"runtime process {wp.name} exited during startup (code {wp.exit_code})")

    async def _spawn(self, slot: int) -> WorkerProcess:
        assert self._tg is not None
        generation = self._generation.get(slot, -1) + 1
        self._generation[slot] = generation
        spec = dict(self.spec, seed=slot * 1000 + generation)
        if self.faults_off:
            spec.pop("faults", None)
        faulty = bool(spec.get("faults"))
        wp = WorkerProcess(slot=slot, generation=generation, started_at=self.timeline.now(),
                           state="restarting" if generation else "starting", faulty=faulty)  # fmt: skip
        env = {**os.environ, SPEC_ENV: json.dumps(spec)}
        wp.proc = await anyio.open_process(
            [sys.executable, "-m", "duroxide_trio.stress._workers"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            env=env,
        )
        wp.pid = wp.proc.pid
        self.processes.append(wp)
        self._tg.start_soon(self._read, wp)
        return wp

    async def _read(self, wp: WorkerProcess) -> None:
        buffer = b""
        stream = wp.proc.stdout
        try:
            async for chunk in stream:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._handle(wp, line)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        code = await wp.proc.wait()
        wp.exit_code = code
        if wp.ended_at is None:
            wp.ended_at = self.timeline.now()
        if wp.state not in ("killed", "stopped"):
            wp.state = "stopped" if self.stopping else "exited"
            if not self.stopping and self._on_error is not None:
                self._on_error(f"process {wp.name}", f"runtime process exited unexpectedly (code {code})", False)
            failures = self._startup_failures.get(wp.slot, 0) + (wp.ready_at is None)
            self._startup_failures[wp.slot] = failures if wp.ready_at is None else 0
            if not self.stopping and failures <= 10:
                # Keep the slot filled (the failure is reported); a slot whose process keeps failing to
                # start is given up after 10 attempts.
                await anyio.sleep(0.5 * min(failures + 1, 4))
                if not self.stopping:
                    await self._spawn(wp.slot)
        wp.ready.set()

    def _handle(self, wp: WorkerProcess, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        kind = msg.get("t")
        if kind == "ready":
            if wp.state in ("starting", "restarting"):
                wp.state = "running"
            wp.ready_at = self.timeline.now()
            wp.ready.set()
            if self.faults_off and wp.faulty:  # started with faults before stop_faults
                self._faults_off(wp)
        elif kind == "sessions":
            wp.sessions_running = int(msg.get("running", 0))
            wp.sessions_continued = int(msg.get("continued", 0))
        elif kind == "stats":
            wp.turns = int(msg.get("turns", 0))
            wp.activities = int(msg.get("activities", 0))
            wp.provider_errors = int(msg.get("provider_errors", 0))
            wp.expected_errors = int(msg.get("expected", 0))
            wp.unexpected_errors = int(msg.get("unexpected", 0))
            if self._on_error is not None:
                for text in msg.get("recent", []):
                    self._on_error(f"process {wp.name}", str(text), False)

    # -- readings ---------------------------------------------------------------------------------------
    def running(self) -> list[WorkerProcess]:
        """The processes whose runtime runs now."""
        return [wp for wp in self.processes if wp.state == "running"]

    def current(self) -> list[WorkerProcess]:
        """The newest process of each slot."""
        newest: dict[int, WorkerProcess] = {}
        for wp in self.processes:
            newest[wp.slot] = wp
        return [newest[s] for s in sorted(newest)]

    def totals(self) -> tuple[int, int]:
        """(orchestration turns, activities completed) over every process, dead ones included."""
        return sum(wp.turns for wp in self.processes), sum(wp.activities for wp in self.processes)

    def pids_of(self, state: str) -> set[int]:
        """The pids of the processes in ``state``."""
        return {wp.pid for wp in self.processes if wp.state == state}

    # -- chaos ------------------------------------------------------------------------------------------
    async def kill_random(self, target: str = "any", wait_for_target: float = 2.0) -> None:
        """SIGKILL a random running process and start a fresh one in its slot. ``target="session"``: a
        process running a session's activity, preferably of a session that already finished one there
        (waiting up to ``wait_for_target`` seconds for one; else any)."""
        candidates = self.running()
        if target == "session":
            with anyio.move_on_after(wait_for_target):
                while not any(wp.sessions_continued > 0 for wp in candidates):
                    await anyio.sleep(0.005)
                    candidates = self.running()
            candidates = (
                [wp for wp in candidates if wp.sessions_continued > 0]
                or [wp for wp in candidates if wp.sessions_running > 0]
                or candidates
            )
        if not candidates:
            self.timeline.record("kill", "skipped: no running process", ok=False)
            return
        wp = self._rng.choice(candidates)
        wp.state = "killed"
        wp.ended_at = self.timeline.now()
        try:
            os.kill(wp.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        detail = f" (running {wp.sessions_running} session activities)" if target == "session" else ""
        self.timeline.record("kill", f"SIGKILL process {wp.name} (pid {wp.pid}){detail}", pid=wp.pid)
        await self._spawn(wp.slot)

    async def stall_random(self, seconds: float) -> None:
        """SIGSTOP a random running process, SIGCONT it ``seconds`` later."""
        candidates = self.running()
        if not candidates:
            self.timeline.record("stall", "skipped: no running process", ok=False)
            return
        wp = self._rng.choice(candidates)
        event = self.timeline.record(
            "stall", f"SIGSTOP process {wp.name} (pid {wp.pid}) for {seconds:g}s", pid=wp.pid
        )
        wp.state = "stalled"
        wp.stalls += 1
        try:
            os.kill(wp.pid, signal.SIGSTOP)
            await anyio.sleep(seconds)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    os.kill(wp.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                if wp.state == "stalled":
                    wp.state = "running"
                event.until = self.timeline.now()

    def stop_faults(self) -> None:
        """Switch fault injection off in every live process (and in those started later)."""
        self.faults_off = True
        for wp in self.processes:
            # A process still starting may have no handler yet (SIGUSR1 would kill it): told once ready.
            if wp.state in ("running", "stalled"):
                self._faults_off(wp)

    @staticmethod
    def _faults_off(wp: WorkerProcess) -> None:
        try:
            os.kill(wp.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    async def shutdown(self, grace: float = 5.0) -> None:
        """SIGTERM every live process, SIGKILL what is left after ``grace``."""
        self.stopping = True
        live = [wp for wp in self.processes if wp.exit_code is None]
        for wp in live:
            if wp.state == "stalled":
                os.kill(wp.pid, signal.SIGCONT)
            if wp.state not in ("killed",):
                wp.state = "stopped"
            try:
                os.kill(wp.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        with anyio.move_on_after(grace):
            for wp in live:
                await wp.proc.wait()
        for wp in live:
            if wp.proc.returncode is None:
                try:
                    wp.proc.kill()
                except ProcessLookupError:
                    pass
                await wp.proc.wait()


if __name__ == "__main__":
    main()
