"""The clock seam: every reading of time in the runtime and the providers goes through one ``Clock``.

Lock leases, timer visibility, history timestamps (and so ``ctx.now()`` and timer deadlines), poll waits
and backoffs all ask the provider's clock (``provider.clock``). Production uses :data:`WALL_CLOCK`; tests
use a :class:`VirtualClock` (through ``duroxide_trio.testing.TestEnvironment``), whose time moves only
when it is advanced, so a test with a one-hour timer takes milliseconds.

What stays on real time on purpose: waits for real work to finish (shutdown grace, an activity's
cancellation grace, short pauses between retries of a commit while a lock is held) and every I/O timeout.
"""

from __future__ import annotations

import heapq
import itertools
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["WALL_CLOCK", "Clock", "VirtualClock", "WallClock", "clock_of"]


@runtime_checkable
class Clock(Protocol):
    """What the runtime and the providers need of time."""

    def now_ms(self) -> int:
        """Epoch milliseconds: timer visibility, locks, history timestamps."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: deadlines of waits."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope cancelled ``seconds`` from now on this clock (``with clock.move_on_after(t):``)."""
        ...


class WallClock:
    """The real clock (the default everywhere)."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        return anyio.move_on_after(seconds)

    def __repr__(self) -> str:
        return "WallClock()"


WALL_CLOCK: Clock = WallClock()


def clock_of(obj: object) -> Clock:
    """The clock of a provider (or anything with a ``clock`` attribute); the wall clock otherwise, so that
    third-party providers written before the seam keep working."""
    clock = getattr(obj, "clock", None)
    return clock if isinstance(clock, Clock) else WALL_CLOCK


class _VirtualScope:
    """``with`` it to get an anyio cancel scope that a ``VirtualClock`` cancels at its deadline."""

    def __init__(self, clock: VirtualClock, due: float, wakes: bool) -> None:
        self._vclock = clock
        self._due = due
        self.wakes = wakes
        self._seq = -1
        self.scope = anyio.CancelScope()

    def __enter__(self) -> anyio.CancelScope:
        self.scope.__enter__()
        self._vclock._register(self._due, self)
        return self.scope

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._vclock._forget(self)
        return bool(self.scope.__exit__(exc_type, exc, tb))


class VirtualClock:
    """Time that moves only when told to: :meth:`advance`, :meth:`advance_to`.

    Waits on this clock (``sleep``, ``move_on_after``) end when the clock is advanced past their deadline.
    A ``sleep`` (a backoff: something happens when it ends) and a ``move_on_after(..., wakes=True)`` are
    *wake-ups*; a plain ``move_on_after`` (a fallback poll, a timeout) is not. ``next_wakeup()`` — the
    earliest pending wake-up — is where a test environment jumps when nothing else can happen. The time starts at ``start`` (default: the wall-clock time of creation, so
    timestamps look plausible) and is read by worker threads too (reads are atomic).
    """

    def __init__(self, start: datetime | float | None = None) -> None:
        if start is None:
            now = time.time()
        elif isinstance(start, datetime):
            now = (start if start.tzinfo else start.replace(tzinfo=UTC)).timestamp()
        else:
            now = float(start)
        self._now = now  # epoch seconds
        self._waits: list[tuple[float, int, _VirtualScope]] = []
        self._live: set[int] = set()
        self._seq = itertools.count()
        self.jumps = 0

    # Clock -------------------------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(round(self._now * 1000))

    def monotonic(self) -> float:
        return self._now

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._now, tz=UTC)

    async def sleep(self, seconds: float) -> None:
        with self.move_on_after(seconds, wakes=True):
            await anyio.sleep_forever()

    def move_on_after(self, seconds: float, *, wakes: bool = False) -> AbstractContextManager[anyio.CancelScope]:
        return _VirtualScope(self, self._now + max(float(seconds), 0.0), wakes)

    # waits -------------------------------------------------------------------------------------------
    def _register(self, due: float, wait: _VirtualScope) -> None:
        if due <= self._now:
            wait.scope.cancel()
            return
        wait._seq = next(self._seq)
        self._live.add(wait._seq)
        heapq.heappush(self._waits, (due, wait._seq, wait))

    def _forget(self, wait: _VirtualScope) -> None:
        self._live.discard(wait._seq)

    def _prune(self) -> None:
        while self._waits and self._waits[0][1] not in self._live:
            heapq.heappop(self._waits)

    def next_deadline(self) -> float | None:
        """Epoch seconds of the earliest pending wait, or ``None``."""
        self._prune()
        return self._waits[0][0] if self._waits else None

    def next_wakeup(self) -> float | None:
        """Epoch seconds of the earliest pending wake-up (a ``sleep``, a ``move_on_after(wakes=True)``)."""
        return min((due for due, seq, wait in self._waits if wait.wakes and seq in self._live), default=None)

    @property
    def pending_waits(self) -> int:
        return len(self._live)

    # moving time -------------------------------------------------------------------------------------
    def advance_to(self, when: datetime | float) -> None:
        """Set the time (epoch seconds or a datetime; never backwards) and end every wait that is due."""
        target = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() if isinstance(
            when, datetime) else float(when)
        if target < self._now:
            raise ValueError(f"a virtual clock does not go back ({target} < {self._now})")
        if target > self._now:
            self.jumps += 1
        self._now = target
        while self._waits and self._waits[0][0] <= self._now:
            _, seq, wait = heapq.heappop(self._waits)
            if seq in self._live:
                self._live.discard(seq)
                wait.scope.cancel()

    def advance(self, delta: timedelta | float) -> None:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError(f"cannot advance by a negative amount ({seconds}s)")
        self.advance_to(self._now + seconds)

    def __repr__(self) -> str:
        return f"VirtualClock({self.now().isoformat()})"
