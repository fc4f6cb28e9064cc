"""RuntimeOptions: every duration is in seconds (float)."""

from __future__ import annotations

import math

import attrs

__all__ = ["RuntimeOptions"]


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ValueError(f"RuntimeOptions.{attribute.name} must be a positive number of seconds, got {value!r}")


def _count(instance: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"RuntimeOptions.{attribute.name} must be a non-negative integer, got {value!r}")


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
    """

    orchestration_concurrency: int = attrs.field(default=2, validator=_count)
    orchestration_slots: int = attrs.field(default=16, validator=_count)
    worker_concurrency: int = attrs.field(default=2, validator=_count)
    activity_slots: int = attrs.field(default=100, validator=_count)
    orchestrator_lock_timeout: float = attrs.field(default=5.0, validator=_positive)
    orchestrator_lock_renewal_buffer: float = attrs.field(default=2.0, validator=_positive)
    worker_lock_timeout: float = attrs.field(default=30.0, validator=_positive)
    worker_lock_renewal_buffer: float = attrs.field(default=5.0, validator=_positive)
    poll_interval: float = attrs.field(default=1.0, validator=_positive)
    max_attempts: int = attrs.field(default=10, validator=_count)
    shutdown_grace: float = attrs.field(default=5.0, validator=_positive)
    activity_cancellation_grace: float = attrs.field(default=10.0, validator=_positive)
    unregistered_backoff: float = attrs.field(default=1.0, validator=_positive)
    unregistered_backoff_cap: float = attrs.field(default=60.0, validator=_positive)
    provider_retry_cap: float = attrs.field(default=3.0, validator=_positive)

    def renewal_interval(self, timeout: float, buffer: float) -> float:
        """Renew at ``timeout - buffer`` for long locks, else at half the timeout."""
        if timeout >= 15:
            return max(timeout - buffer, 1.0)
        return max(timeout / 2, 0.05)

    def unregistered_delay(self, attempt: int) -> float:
        delay = float(self.unregistered_backoff) * float(2 ** min(max(attempt - 1, 0), 6))
        return min(delay, float(self.unregistered_backoff_cap))
