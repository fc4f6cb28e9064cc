"""What a runtime counts and remembers (``RuntimeStats``), and how a dispatcher reports a provider error
(``ProviderErrors``: count it, record it, log it, back off before the next fetch)."""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import attrs

from .._retry import Retry
from ..clock import Clock
from ..providers.base import ProviderError
from ._metrics import RuntimeMetrics

__all__ = ["ProviderErrors", "RecentError", "RuntimeStats", "is_expected_provider_error"]

log = logging.getLogger("duroxide_trio.runtime")


@attrs.define
class RecentError:
    """One error a dispatcher met: when (epoch seconds), which ``role`` (``"activity dispatcher"``...),
    the message, and whether it was ``expected`` (retried lock contention)."""

    at: float
    role: str
    message: str
    expected: bool


@attrs.define
class RuntimeStats:
    """Counters a dashboard can read while the runtime runs."""

    orchestration_turns: int = 0
    orchestration_fetches: int = 0
    #: Turns an activity ack locked and handed to this runtime's turn slots (no orchestration fetch).
    turns_handed_over: int = 0
    #: First turns this runtime's client locked with the start and handed to its turn slots (no fetch).
    starts_handed_over: int = 0
    activities_completed: int = 0
    activities_failed: int = 0
    activity_fetches: int = 0
    #: Activities a turn's commit handed straight to this runtime's slots (eager dispatch: no fetch).
    activities_eager: int = 0
    provider_errors: int = 0
    busy_orchestration_workers: int = 0
    busy_activity_workers: int = 0
    recent_errors: collections.deque[RecentError] = attrs.field(factory=lambda: collections.deque(maxlen=200))
    error_listeners: list[Any] = attrs.field(factory=list)

    def count_fetch(self, queue: str) -> None:
        """Count one fetch from ``queue`` (``"orchestrator"`` or ``"worker"``)."""
        if queue == "orchestrator":
            self.orchestration_fetches += 1
        else:
            self.activity_fetches += 1

    def record_error(self, role: str, exc: BaseException | str, *, expected: bool) -> None:
        """Remember an error in ``recent_errors`` (the last 200) and tell every ``error_listeners``
        callback (``listener(RecentError, exc)``; one that raises is logged and ignored).

        Args:
            role: What met the error (``"orchestration dispatcher"``, ``"activity dispatcher"``).
            exc: The exception, or a message.
            expected: True for retried lock contention (not a problem by itself).
        """
        message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        err = RecentError(time.time(), role, message, expected)
        self.recent_errors.append(err)
        for listener in list(self.error_listeners):
            try:
                listener(err, exc)
            except Exception:  # noqa: BLE001 - a broken listener must not stop a dispatcher
                log.exception("error listener %r raised; ignored", listener)


def is_expected_provider_error(exc: BaseException) -> bool:
    """Retried lock contention: SQLite busy/locked, PostgreSQL deadlock or serialization failure."""
    return isinstance(exc, ProviderError) and exc.retryable and exc.contention


#: The wait before a permanent fetch error is retried (a retryable one backs off exponentially).
PERMANENT_ERROR_PAUSE = 0.1


class ProviderErrors:
    """How the dispatchers report provider errors: counted in the stats and the metrics, recorded in
    ``RuntimeStats.recent_errors``, logged, and (after a failed fetch) waited out on the runtime's clock."""

    __slots__ = ("_clock", "_fetch_retry", "_metrics", "_stats")

    def __init__(self, stats: RuntimeStats, metrics: RuntimeMetrics, clock: Clock, retry_cap: float) -> None:
        self._stats = stats
        self._metrics = metrics
        self._clock = clock
        self._fetch_retry = Retry(base=0.01, factor=2.0, cap=retry_cap)

    def count(self, role: str, exc: ProviderError) -> None:
        """Count a provider error of ``role`` in the stats and the metrics."""
        self._stats.provider_errors += 1
        self._metrics.provider_errors.add(1, {"role": role, "retryable": exc.retryable})

    def record(self, role: str, exc: BaseException | str, *, expected: bool) -> None:
        """Remember an error in the stats (see ``RuntimeStats.record_error``)."""
        self._stats.record_error(role, exc, expected=expected)

    async def backoff(self, role: str, exc: ProviderError, failures: int) -> None:
        """Count, record and log a provider error of a dispatcher's fetch, then sleep before the retry:
        ``0.01 * 2 ** failures`` seconds (``failures``: consecutive ones so far) up to
        ``provider_retry_cap`` for retryable errors, 0.1 s for permanent ones."""
        self.count(role, exc)
        expected = is_expected_provider_error(exc)
        self.record(role, exc, expected=expected)
        if expected:
            log.debug("%s: retrying after %s", role, exc)
        else:
            log.warning("%s: provider error (%s): %s", role, "retryable" if exc.retryable else "permanent", exc)
        if exc.retryable:
            await self._fetch_retry.sleep(failures, self._clock)
        else:
            await self._clock.sleep(PERMANENT_ERROR_PAUSE)
