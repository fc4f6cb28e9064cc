"""One retry-with-backoff loop for the package (bottom floor: the standard library, ``clock`` and
``errors`` only).

A :class:`Retry` says how long to keep trying (at least ``attempts`` tries and/or at least ``deadline``
seconds), how long to wait between tries (``base * factor ** n``, at most ``cap``, shortened by up to
``jitter`` of itself), and is run by :meth:`Retry.call` with the decisions that belong to the caller:
which errors are worth another try (``retry_if``) and what to do before each wait (``on_retry``: count,
record, log). Every reading of time and every wait goes through a :class:`~duroxide_trio.clock.Clock`,
so a test on a ``VirtualClock`` runs the loop without sleeping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TypeVar

import anyio

from .clock import Clock
from .errors import DuroxideError

__all__ = ["LOOP_CLOCK", "Retry", "RetryExhausted"]

T = TypeVar("T")


class RetryExhausted(DuroxideError):
    """Raised by :meth:`Retry.call` when the policy allows no attempt at all (``attempts=0``)."""


class _LoopClock:
    """The event loop's own time (``anyio.current_time`` / ``anyio.sleep``): real time in production,
    trio's ``MockClock`` in tests that use one. For short pauses between retries while a lock is held."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        return anyio.move_on_after(seconds)

    def __repr__(self) -> str:
        return "LoopClock()"


#: The event loop's clock (see ``_LoopClock``); the default of :meth:`Retry.call`.
LOOP_CLOCK: Clock = _LoopClock()


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry policy.

    Attributes:
        attempts: Try at least this many times (``None``: no minimum count).
        deadline: Keep trying for at least this many seconds after the first try (``None``: no minimum
            time). With both, both must be used up before giving up; with neither, retry forever.
        base: The first wait, in seconds.
        factor: Each further wait is this many times the previous one.
        cap: No wait is longer than this.
        jitter: Each wait is shortened by a random share of up to this fraction of itself (0: exact).
        max_exponent: The exponent of ``factor`` stops growing here (keeps the numbers finite).
        rng: The random source of the jitter (returns a float in ``[0, 1)``).
    """

    attempts: int | None = None
    deadline: float | None = None
    base: float = 0.01
    factor: float = 2.0
    cap: float = 0.5
    jitter: float = 0.0
    max_exponent: int = 10
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 0:
            raise ValueError(f"Retry.attempts must be >= 0, got {self.attempts!r}")
        if self.base < 0 or self.factor < 1 or self.cap < 0 or not 0 <= self.jitter <= 1:
            raise ValueError(f"Retry needs base >= 0, factor >= 1, cap >= 0 and 0 <= jitter <= 1: {self!r}")

    def with_deadline(self, seconds: float | None) -> Retry:
        """This policy with another ``deadline``."""
        return replace(self, deadline=seconds)

    def delay(self, retry: int) -> float:
        """The wait before retry number ``retry`` (0 for the wait after the first failure)."""
        exponent = min(max(retry, 0), self.max_exponent)
        delay = min(self.base * self.factor**exponent, self.cap)
        if self.jitter:
            delay -= delay * self.jitter * self.rng()
        return delay

    async def sleep(self, retry: int, clock: Clock = LOOP_CLOCK) -> None:
        """Wait :meth:`delay` (``retry``) seconds on ``clock``."""
        await clock.sleep(self.delay(retry))

    def exhausted(self, tries: int, elapsed: float) -> bool:
        """Whether ``tries`` failed tries over ``elapsed`` seconds use up the policy."""
        if self.attempts is None and self.deadline is None:
            return False
        count_done = self.attempts is None or tries >= self.attempts
        time_done = self.deadline is None or elapsed >= self.deadline
        return count_done and time_done

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        retry_if: Callable[[Exception], bool],
        on_retry: Callable[[Exception, int, float], None] | None = None,
        clock: Clock = LOOP_CLOCK,
    ) -> T:
        """Run ``operation`` until it returns, retrying the errors ``retry_if`` accepts while the policy
        lasts.

        Args:
            operation: What to try (called again for every try).
            retry_if: Whether an error is worth another try; any other error is raised at once.
            on_retry: Called as ``on_retry(error, retry, delay)`` before each wait (count, record, log).
            clock: Where time is read and waited on.

        Returns:
            What ``operation`` returned.

        Raises:
            Exception: The last error, once it is not to be retried or the policy is used up.
            RetryExhausted: ``attempts=0``: nothing was tried.
        """
        if self.attempts == 0 and self.deadline is None:
            raise RetryExhausted("the retry policy allows no attempt (attempts=0)")
        started = clock.monotonic()
        tries = 0
        while True:
            try:
                return await operation()
            except Exception as exc:
                tries += 1
                if not retry_if(exc) or self.exhausted(tries, clock.monotonic() - started):
                    raise
                delay = self.delay(tries - 1)
                if on_retry is not None:
                    on_retry(exc, tries - 1, delay)
                await clock.sleep(delay)
