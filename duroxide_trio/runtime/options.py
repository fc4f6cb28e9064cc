"""RuntimeOptions: every duration is in seconds (float)."""

from __future__ import annotations

import math
from typing import Any

import attrs

from ..providers.base import TagFilter, VersionRange

__all__ = ["RuntimeOptions"]


_MAX_SECONDS = 365 * 24 * 3600.0  # a year: anything longer is a mistake (e.g. milliseconds given)
_MAX_COUNT = 1_000_000


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if (
        isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
        or not (0 < value <= _MAX_SECONDS)
    ):
        raise ValueError(
            f"RuntimeOptions.{attribute.name} must be a number of seconds > 0 and <= {_MAX_SECONDS:.0f} "
            f"(a year), got {value!r}"
        )


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if (
        isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
        or not (0 <= value <= _MAX_SECONDS)
    ):
        raise ValueError(
            f"RuntimeOptions.{attribute.name} must be a number of seconds >= 0 and <= {_MAX_SECONDS:.0f}, "
            f"got {value!r}"
        )


def _tag_filter(instance: object, attribute: attrs.Attribute, value: object) -> None:  # type: ignore[type-arg]
    if not isinstance(value, TagFilter):
        raise ValueError(
            f"RuntimeOptions.activity_tags must be a TagFilter (TagFilter.default_only(), TagFilter.tags('gpu'), "
            f"TagFilter.default_and('gpu') or TagFilter.any()), got {value!r}"
        )


def _counter(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
        if isinstance(value, bool) or not isinstance(value, int) or not (minimum <= value <= _MAX_COUNT):
            extra = " (0 runs no activities in this runtime)" if minimum == 0 else ""
            raise ValueError(
                f"RuntimeOptions.{attribute.name} must be an integer from {minimum} to {_MAX_COUNT}{extra}, "
                f"got {value!r}"
            )

    return check


@attrs.frozen
class RuntimeOptions:
    """How a runtime behaves. Defaults follow duroxide's, in seconds.

    - ``orchestration_concurrency``: orchestration dispatchers (fetch loops). Each fetched batch is
      replayed and committed as its own task, up to ``orchestration_slots`` turns in flight per runtime
      (a turn's commit overlaps the next fetch; one instance is never in two turns at once — it is locked).
    - ``worker_concurrency``: activity dispatchers (fetch loops). Each fetched activity runs as its own
      task, up to ``activity_slots`` at once per runtime (async activities are cheap; sync ones use
      threads). ``activity_slots=worker_concurrency`` gives duroxide's one-activity-per-worker semantics.
    - ``orchestrator_lock_timeout`` / ``worker_lock_timeout``: lock durations; a crashed process's work
      becomes available to others after this long. Locks are renewed while work is in progress.
    - ``poll_interval``: the fallback poll when idle. Work committed by this process (or announced by
      the provider, e.g. PostgreSQL NOTIFY) wakes dispatchers at once; timers wake them at their deadline.
    - ``max_attempts``: a message fetched more often than this is poison and fails its instance/activity.
    - ``shutdown_grace``: on leaving ``open_runtime``, in-flight turns and activities get this long to
      finish before activities are cancelled and their locks abandoned for another process.
    - ``activity_cancellation_grace``: a cancelled activity (lock stolen) gets this long to stop itself.
    - ``unregistered_backoff`` / ``unregistered_backoff_cap``: retry delay for work whose orchestration or
      activity is not registered here (another deployment may have it); it ends as poison eventually.
    - ``blocked_loop_threshold``: the watchdog logs (naming the instance or activity) when the event loop
      was blocked this long — by an orchestration that never awaits or an async activity calling
      blocking code. ``0`` turns the watchdog off.
    - ``metrics_interval``: how often queue depths are sampled for the OpenTelemetry gauges.
    - ``orchestrator_lock_renewal_buffer`` / ``worker_lock_renewal_buffer``: locks of 15 s or more are
      renewed this long before they expire (shorter locks at half their duration).
    - ``activity_tags``: which tagged activities this runtime runs (a ``TagFilter``; default: untagged
      ones only). ``schedule_activity(..., tag="gpu")`` runs only on runtimes whose filter accepts
      ``"gpu"``; until one runs, the item waits (``Client.get_queue_depths().worker_by_tag``).
    - ``session_idle_timeout``: a session (``schedule_activity(..., session_id=...)``) owned by this
      runtime is released after it had no work for this long; another runtime may then claim it.
    - ``max_sessions``: how many sessions this runtime owns at once; items of further sessions wait for
      another runtime or for a session to be released.
    - ``supported_replay_versions``: capability filtering, a ``dt.VersionRange`` (default: any). The
      runtime only fetches instances whose next turn runs at a version inside it (the recorded version,
      or the one a start or continue-as-new asks for), so a rolling deploy can run old and new code side
      by side; an instance no runtime accepts waits in the queue
      (``Client.get_queue_depths().orchestrator_by_version``).
    - ``provider_retry_cap``: the longest wait between retries after a retryable provider error (the
      wait doubles with each consecutive failure).

    Every field is checked when the options are made: a count below its minimum, a duration that is not
    a positive number of seconds, raises ``ValueError`` naming the field and the allowed range.

    Raises:
        ValueError: A count outside its range (``worker_concurrency`` may be 0: no activities run here;
            the others at least 1; at most 1,000,000), a duration that is not a number of seconds
            above 0 and at most a year (``blocked_loop_threshold`` may be 0), or a renewal buffer not
            smaller than its lock timeout of 15 s or more, or ``activity_tags`` that is not a
            ``TagFilter``.
    """

    orchestration_concurrency: int = attrs.field(default=2, validator=_counter(1))
    orchestration_slots: int = attrs.field(default=16, validator=_counter(1))
    worker_concurrency: int = attrs.field(default=2, validator=_counter(0))
    activity_slots: int = attrs.field(default=100, validator=_counter(1))
    orchestrator_lock_timeout: float = attrs.field(default=5.0, validator=_positive)
    orchestrator_lock_renewal_buffer: float = attrs.field(default=2.0, validator=_positive)
    worker_lock_timeout: float = attrs.field(default=30.0, validator=_positive)
    worker_lock_renewal_buffer: float = attrs.field(default=5.0, validator=_positive)
    poll_interval: float = attrs.field(default=1.0, validator=_positive)
    max_attempts: int = attrs.field(default=10, validator=_counter(1))
    shutdown_grace: float = attrs.field(default=5.0, validator=_positive)
    activity_cancellation_grace: float = attrs.field(default=10.0, validator=_positive)
    unregistered_backoff: float = attrs.field(default=1.0, validator=_positive)
    unregistered_backoff_cap: float = attrs.field(default=60.0, validator=_positive)
    provider_retry_cap: float = attrs.field(default=3.0, validator=_positive)
    blocked_loop_threshold: float = attrs.field(default=1.0, validator=_non_negative)
    metrics_interval: float = attrs.field(default=5.0, validator=_positive)
    activity_tags: TagFilter = attrs.field(factory=TagFilter.default_only, validator=_tag_filter)
    session_idle_timeout: float = attrs.field(default=300.0, validator=_positive)
    max_sessions: int = attrs.field(default=1000, validator=_counter(1))
    supported_replay_versions: VersionRange = attrs.field(factory=VersionRange.any)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.supported_replay_versions, VersionRange):
            raise ValueError(
                "RuntimeOptions.supported_replay_versions must be a dt.VersionRange (e.g. "
                f"dt.VersionRange.major(2)), got {self.supported_replay_versions!r:.100}"
            )
        for timeout, buffer in (
            ("orchestrator_lock_timeout", "orchestrator_lock_renewal_buffer"),
            ("worker_lock_timeout", "worker_lock_renewal_buffer"),
        ):
            if getattr(self, timeout) >= 15 and getattr(self, buffer) >= getattr(self, timeout):
                raise ValueError(
                    f"RuntimeOptions.{buffer} ({getattr(self, buffer)!r}) must be smaller than {timeout} "
                    f"({getattr(self, timeout)!r}): locks are renewed {buffer} seconds before they expire"
                )

    def renewal_interval(self, timeout: float, buffer: float) -> float:
        """Renew at ``timeout - buffer`` for long locks, else at half the timeout."""
        if timeout >= 15:
            return max(timeout - buffer, 1.0)
        return max(timeout / 2, 0.05)

    def unregistered_delay(self, attempt: int) -> float:
        """Seconds before retrying unregistered work after fetch ``attempt``: ``unregistered_backoff``
        doubling per attempt (up to 64x), at most ``unregistered_backoff_cap``."""
        delay = float(self.unregistered_backoff) * float(2 ** min(max(attempt - 1, 0), 6))
        return min(delay, float(self.unregistered_backoff_cap))
