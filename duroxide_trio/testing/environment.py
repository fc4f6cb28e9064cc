"""``TestEnvironment``: an in-memory runtime for tests, on virtual time, with replaceable activities.

    async with TestEnvironment(registry) as env:
        env.mock_activity("Charge", fake_charge)
        await env.client.start_orchestration("order-1", "Order", order)
        state = await env.client.wait_for_orchestration("order-1", timeout=timedelta(days=1))
        assert env.calls("Charge")[0].input == order

Virtual time: the provider (in-memory SQLite) and the runtime read ``env.clock``, a ``VirtualClock``. Time
stands still unless the test moves it — ``await env.advance(timedelta(hours=1))`` — or waits through the
environment (``env.client.wait_for_orchestration``, ``env.sleep``, ``env.run``): while such a wait is in
progress, whenever no turn and no activity is running and nothing is ready, the clock jumps to the next
deadline (a timer, a retry backoff, the wait's own timeout). So a one-hour timer takes milliseconds, and
the test still decides what happens before it: an event raised right after the start arrives first.

Works under ``anyio.run(..., backend="trio")`` and ``backend="asyncio"``, with anyio's pytest plugin, with
pytest-trio, and under ``trio.testing.MockClock`` (virtual time does not depend on the event loop's clock).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from ..client import Client, OrchestrationState
from ..clock import WALL_CLOCK, Clock, VirtualClock
from ..providers.sqlite import SqliteProvider
from ..registry import Registry
from ..runtime import Runtime, RuntimeOptions, open_runtime

__all__ = ["ActivityCall", "TestEnvironment", "TEST_OPTIONS"]

log = logging.getLogger("duroxide_trio.testing")

#: Runtime options for tests: quick shutdown, few attempts before poison, fast retries of unregistered
#: work. On virtual time the fallback poll never matters (the in-memory provider wakes the runtime), and
#: the blocked-loop watchdog is off (its heartbeat runs on the event loop's clock, which would keep
#: ``trio.testing.MockClock`` from ever jumping).
TEST_OPTIONS = RuntimeOptions(
    orchestration_concurrency=1,
    worker_concurrency=1,
    poll_interval=30 * 24 * 3600.0,  # never matters: fallback polls are not worth skipping to
    shutdown_grace=1.0,
    activity_cancellation_grace=1.0,
    max_attempts=5,
    unregistered_backoff=0.05,
    unregistered_backoff_cap=0.5,
    blocked_loop_threshold=0.0,
)
_WALL_TEST_OPTIONS = attrs.evolve(TEST_OPTIONS, poll_interval=0.5, blocked_loop_threshold=1.0)

_UNSET: Any = object()
# How often (real seconds) the environment looks whether the runtime has settled: at once after it
# moved time, less often while work takes real time (a real activity doing I/O).
_FIRST_PAUSE = 0.001
_LONGEST_PAUSE = 0.02


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return None


def _seconds(value: timedelta | float) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"a duration must not be negative, got {value!r}")
    return seconds


@attrs.define
class ActivityCall:
    """One execution of an activity in the environment (mocked or real)."""

    name: str
    instance_id: str
    input: Any
    attempt: int
    mocked: bool
    result: Any = None
    error: BaseException | None = None
    at: datetime | None = None  # environment time of the call

    @property
    def succeeded(self) -> bool:
        """The activity returned (did not raise)."""
        return self.error is None


class _TestRegistry(Registry):
    """The registry the environment's runtime uses: the user's registry, overridden by later layers and by
    mocks, with every activity call recorded."""

    def __init__(self, env: TestEnvironment, layers: Sequence[Registry]) -> None:
        super().__init__()
        self._env = env
        orchestrations: dict[tuple[str, str], Callable[..., Any]] = {}
        activities: dict[str, tuple[Callable[..., Any], str | None]] = {}
        for layer in layers:
            for name in layer.orchestration_names:
                for version in layer.versions(name):
                    handler = layer.resolve_orchestration(name, version)
                    assert handler is not None
                    orchestrations[(name, version)] = handler.fn
            for name in layer.activity_names:
                act = layer.get_activity(name)
                assert act is not None
                activities[name] = (act.fn, getattr(act, "loop", None))
        for (name, version), fn in orchestrations.items():
            self.add_orchestration(fn, name, version=version)
        for name, (fn, loop) in activities.items():
            self._add_recorded(name, fn, loop)

    def _add_recorded(self, name: str, fn: Callable[..., Any], loop: str | None = None) -> None:
        """Register ``fn`` as ``name`` behind a recorder that also calls a mock when there is one. An
        activity registered with ``loop="asyncio"`` keeps it (its mock then runs on that loop too)."""
        env = self._env
        takes_input = len(inspect.signature(fn).parameters) > 1

        @functools.wraps(fn)
        async def recorded(ctx: Any, *args: Any) -> Any:
            mock = env._mocks.get(name)
            target = mock if mock is not None else fn
            call = ActivityCall(name, ctx.instance_id, args[0] if args else None, ctx.attempt, mock is not None,
                                at=env.now())
            env._calls.append(call)
            try:
                if inspect.iscoroutinefunction(target):
                    result = await target(ctx, *args)
                else:
                    result = await anyio.to_thread.run_sync(functools.partial(target, ctx, *args))
            except BaseException as exc:
                call.error = exc
                raise
            call.result = result
            return result

        if not takes_input:
            @functools.wraps(fn)
            async def recorded_no_input(ctx: Any) -> Any:
                return await recorded(ctx)

            self.add_activity(recorded_no_input, name, **({"loop": loop} if loop else {}))
        else:
            self.add_activity(recorded, name, **({"loop": loop} if loop else {}))


class _EnvClient(Client):
    """The environment's client: waits are measured on the environment's clock and let time skip."""

    def __init__(self, env: TestEnvironment) -> None:
        super().__init__(env.provider, registry=env.registry)
        self._env = env

    async def wait_for_orchestration(
        self, instance_id: str, timeout: timedelta | float, *, poll_interval: float = 1.0
    ) -> OrchestrationState:
        """Like ``Client.wait_for_orchestration``, with ``timeout`` on the environment's clock (seconds or a
        ``timedelta``); on virtual time the clock skips ahead while nothing else can happen."""
        seconds = _seconds(timeout)
        clock = self._env.clock
        deadline = clock.monotonic() + seconds
        notifier = self.provider.notifier

        async def finished() -> bool:
            return (await self.get_status(instance_id)).status.is_terminal

        async with self._env._skipping(finished):
            while True:
                event = notifier.instance_event(instance_id)
                try:
                    state = await self.get_status(instance_id)
                    if state.status.is_terminal:
                        return state
                    remaining = deadline - clock.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            f"instance {instance_id!r} did not finish within {timedelta(seconds=seconds)} "
                            f"(status {state.status.value})"
                        )
                    if isinstance(clock, VirtualClock):
                        scope = clock.move_on_after(remaining, wakes=True)  # the timeout is worth skipping to
                    else:
                        scope = clock.move_on_after(min(remaining, poll_interval))
                    with scope:
                        await event.wait()
                finally:
                    notifier.release_instance_event(instance_id)


class TestEnvironment:
    """An in-memory provider and runtime for tests. ``async with TestEnvironment(registry) as env:``

    - ``registry``: the orchestrations and activities under test; ``overrides``: registries layered over
      it (their activities and orchestrations win), e.g. a registry of fakes.
    - ``virtual_time`` (default ``True``): run on a ``VirtualClock`` starting at ``start`` (default: now).
    - ``options``: runtime options (default ``TEST_OPTIONS``).
    - ``settle_timeout``: real seconds ``advance`` waits for running work to finish before it fails.

    ``env.client`` (a ``Client``), ``env.now()``, ``await env.advance(delta)``, ``await env.sleep(delta)``,
    ``await env.run(name, input)``, ``env.mock_activity(name, fake)``, ``env.calls(name)``; ``env.clock``,
    ``env.provider`` and ``env.runtime`` for everything else.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self,
        registry: Registry,
        *,
        overrides: Registry | Sequence[Registry] = (),
        virtual_time: bool = True,
        start: datetime | None = None,
        options: RuntimeOptions | None = None,
        settle_timeout: float = 30.0,
    ) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"TestEnvironment needs a duroxide_trio.Registry, got {type(registry).__name__}")
        self._layers = [registry, *([overrides] if isinstance(overrides, Registry) else overrides)]
        self.virtual_time = virtual_time
        self.clock: Clock = VirtualClock(start) if virtual_time else WALL_CLOCK
        self.options = options or (TEST_OPTIONS if virtual_time else _WALL_TEST_OPTIONS)
        self.settle_timeout = settle_timeout
        self._mocks: dict[str, Callable[..., Any]] = {}
        self._calls: list[ActivityCall] = []
        self._skip_waiters = 0
        self._skip_checks: list[Callable[[], Awaitable[bool]]] = []
        self._skip_wanted = anyio.Event()
        self._stack: AsyncExitStack | None = None
        self.registry = _TestRegistry(self, self._layers)
        self.provider: SqliteProvider
        self.runtime: Runtime
        self.client: Client

    # lifecycle ---------------------------------------------------------------------------------------
    async def __aenter__(self) -> TestEnvironment:
        if self._stack is not None:
            raise RuntimeError("a TestEnvironment can be entered once")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self.provider = await SqliteProvider.in_memory(clock=self.clock)
            await stack.enter_async_context(self.provider)
            self.runtime = await stack.enter_async_context(open_runtime(self.provider, self.registry, self.options))
            self.client = _EnvClient(self)
            if self.virtual_time:
                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(tg.cancel_scope.cancel)  # runs first on exit: stop skipping time
                tg.start_soon(self._skipper, name="TestEnvironment time skipper")
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The test's own exception (a failed assert) reaches the test as itself, not wrapped in a
            # group by the time skipper's task group.
            if exc is not None and _only(group) is exc:
                return False
            raise

    # time ----------------------------------------------------------------------------------------------
    def now(self) -> datetime:
        """The environment's current time (UTC); ``ctx.now()`` in orchestrations follows it."""
        return datetime.fromtimestamp(self.clock.now_ms() / 1000.0, tz=UTC)

    def _virtual(self, what: str) -> VirtualClock:
        if not isinstance(self.clock, VirtualClock):
            raise RuntimeError(f"TestEnvironment.{what} needs virtual_time=True")
        return self.clock

    async def advance(self, delta: timedelta | float) -> None:
        """Move virtual time forward by ``delta``, stopping at every deadline on the way (timers, retry
        backoffs) until the runtime has done everything due then, and return when all is settled."""
        clock = self._virtual("advance")
        target = clock.monotonic() + _seconds(delta)
        while True:
            nxt = await self._next_deadline()
            if nxt is None or nxt > target:
                break
            self._jump(clock, nxt)
        self._jump(clock, target)
        await self._settle()

    async def sleep(self, delta: timedelta | float) -> None:
        """Wait ``delta`` on the environment's clock; on virtual time, time skips meanwhile."""
        async with self._skipping():
            await self.clock.sleep(_seconds(delta))

    async def run(
        self,
        name: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        version: str | None = None,
        timeout: timedelta | float = timedelta(days=30),
    ) -> OrchestrationState:
        """Start ``name`` and wait for it to finish (time skips meanwhile); returns its final state."""
        instance_id = instance_id or f"{name}-{len(await self.client.list_instances()) + 1}"
        await self.client.start_orchestration(instance_id, name, input, version=version)
        return await self.client.wait_for_orchestration(instance_id, timeout=_seconds(timeout))

    # time skipping ---------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _skipping(self, satisfied: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[None]:
        """Let time skip while the block runs. ``satisfied`` tells whether the waiter got what it waits
        for (time must not skip past that before the waiter has seen it)."""
        self._skip_waiters += 1
        if satisfied is not None:
            self._skip_checks.append(satisfied)
        self._skip_wanted.set()
        try:
            yield
        finally:
            self._skip_waiters -= 1
            if satisfied is not None:
                self._skip_checks.remove(satisfied)

    async def _skipper(self) -> None:
        clock = self._virtual("skipping")
        pause = _FIRST_PAUSE
        while True:
            if self._skip_waiters == 0:
                self._skip_wanted = anyio.Event()
                await self._skip_wanted.wait()
                continue
            nxt = await self._next_deadline(wait=False)
            if nxt is not None and self._skip_waiters > 0 and not await self._a_waiter_is_satisfied():
                self._jump(clock, nxt)
                pause = _FIRST_PAUSE
            else:
                await anyio.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)  # work that takes real time: look less often

    async def _a_waiter_is_satisfied(self) -> bool:
        for satisfied in list(self._skip_checks):
            if await satisfied():
                return True
        return False

    def _jump(self, clock: VirtualClock, when: float) -> None:
        if when > clock.monotonic():
            clock.advance_to(when)
        # Waits on the runtime's side may end a little after the deadline (rounding); make them look now.
        self.provider.notifier.notify("orchestrator")
        self.provider.notifier.notify("worker")

    async def _next_deadline(self, *, wait: bool = True) -> float | None:
        """Once nothing is ready or running: the earliest deadline (epoch seconds) of a delayed message (a
        timer, a delayed retry) or of a wake-up on the clock (a backoff, a test's wait or its timeout);
        fallback polls do not count. ``wait=False``: ``None`` at once when something is ready or running."""
        clock = self._virtual("skipping")
        outlook = await self._settle() if wait else await self._idle_outlook()
        if outlook is None:
            return None
        candidates = [d for d in (clock.next_wakeup(),) if d is not None]
        if outlook.next_visible_ms is not None:
            candidates.append(outlook.next_visible_ms / 1000.0)
        return min(candidates) if candidates else None

    def _busy(self, outlook: Any) -> bool:
        """Something is ready or running: in the store (visible messages, live locks) or in the runtime
        (a turn or an activity between its commit and the release of its lease)."""
        stats = self.runtime.stats
        return bool(outlook.ready or outlook.in_progress or stats.busy_orchestration_workers
                    or stats.busy_activity_workers)

    async def _idle_outlook(self) -> Any:
        outlook = await self.provider.work_outlook()
        if self._busy(outlook):
            return None
        # A task woken by the last commit may not have run yet: look once more after letting it.
        await anyio.sleep(0)
        again = await self.provider.work_outlook()
        return None if self._busy(again) else again

    async def _settle(self) -> Any:
        """Wait (real time) until nothing is ready and nothing runs; fail after ``settle_timeout``."""
        give_up = time.monotonic() + self.settle_timeout
        pause = _FIRST_PAUSE
        while True:
            outlook = await self._idle_outlook()
            if outlook is not None:
                return outlook
            if time.monotonic() > give_up:
                current = await self.provider.work_outlook()
                raise TimeoutError(
                    f"TestEnvironment: work did not settle within {self.settle_timeout}s of real time "
                    f"({current.ready} ready, {current.in_progress} in progress); is an activity waiting for "
                    "something the test does later?"
                )
            await anyio.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE)

    # activities ------------------------------------------------------------------------------------------
    def mock_activity(
        self,
        name: str,
        fn: Callable[..., Any] | None = None,
        *,
        returns: Any = _UNSET,
        raises: BaseException | None = None,
    ) -> None:
        """Replace activity ``name`` for this environment: by ``fn(ctx, input)`` (sync or async), by a fixed
        result (``returns=``) or by an exception (``raises=``). Inputs are decoded with the original
        activity's type hints when ``fn`` has none. Takes effect for calls that start afterwards."""
        if sum(x is not None and x is not _UNSET for x in (fn, raises)) + (returns is not _UNSET) != 1:
            raise TypeError("mock_activity needs exactly one of fn, returns= or raises=")
        if fn is None:
            value, error = returns, raises

            async def fixed(ctx: Any, input: Any = None) -> Any:
                if error is not None:
                    raise error
                return value

            fn = fixed
        if not callable(fn):
            raise TypeError(f"mock for activity {name!r} must be callable, got {fn!r}")
        self._mocks[name] = fn
        if self.registry.get_activity(name) is None:
            self.registry._add_recorded(name, fn)

    def calls(self, name: str | None = None) -> list[ActivityCall]:
        """Activity executions so far (all, or those of ``name``), in the order they started."""
        return [c for c in self._calls if name is None or c.name == name]
