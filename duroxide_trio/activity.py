"""The activity API: what an activity function receives as its first argument.

``ActivityContext`` names the activity (instance, execution, event id, attempt), gives it a ``Client`` and
a ``CancellationSignal``. The runtime's activity dispatcher makes one per execution; this module knows
nothing of the runtime.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from .history import ActivityExecute

if TYPE_CHECKING:
    from .client import Client

__all__ = ["ActivityContext", "CancellationSignal"]


class CancellationSignal:
    """Set when the orchestration no longer wants this activity's result (or its lock was lost).
    ``bool(signal)`` tells whether it is set; ``await signal`` waits for it."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None  # created on first wait: most activities never wait
        self._set = False
        self.reason = ""

    def __bool__(self) -> bool:
        return self._set

    def set(self, reason: str) -> None:
        """Set the signal with ``reason`` (the first reason is kept) and wake its waiters."""
        if not self._set:
            self._set = True
            self.reason = reason
            if self._event is not None:
                self._event.set()

    async def wait(self) -> None:
        """Return once the signal is set (at once if it is)."""
        if self._set:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def __await__(self) -> Any:
        return self.wait().__await__()


class ActivityContext:
    """What an activity gets as its first argument.

    Attributes:
        instance_id: The orchestration instance that scheduled the activity.
        execution_id: That instance's execution.
        activity_name: The registered activity name.
        activity_id: The ``ActivityScheduled`` event id (with the two above, it names this activity).
        orchestration_name: The scheduling orchestration.
        attempt: The ``RetryPolicy`` attempt (1-based; 1 without a retry policy).
        delivery_count: How often this very work item has been delivered (above 1 after a crash or a
            lost lock: activities run at least once).
        session_id: The ``session_id`` given to ``schedule_activity``, or ``None``.
        tag: The ``tag`` given to ``schedule_activity``, or ``None``.
        client: A ``Client`` of the runtime (e.g. to raise an event to another instance).
        cancelled: A ``CancellationSignal``, set when the orchestration no longer wants the result
            (a ``select`` loser, a cancelled or finished instance) or the lock was lost; ``if
            ctx.cancelled:`` or ``await ctx.cancelled``. The activity then has
            ``RuntimeOptions.activity_cancellation_grace`` to stop before it is cancelled.
        logger: A logger adapter whose records carry the instance, execution, event id, activity and
            attempt.
    """

    def __init__(self, item: ActivityExecute, delivery_count: int, client: Client) -> None:
        self.instance_id = item.instance
        self.execution_id = item.execution_id
        self.activity_name = item.name
        self.activity_id = item.id
        self.orchestration_name = item.orchestration_name
        #: The ``RetryPolicy`` attempt this execution belongs to (1-based; 1 without a retry policy).
        self.attempt = item.attempt
        #: How many times this very work item has been delivered (at-least-once: > 1 after a crash or a
        #: lost lock); the runtime fails it as poison past ``RuntimeOptions.max_attempts``.
        self.delivery_count = delivery_count
        self.session_id = item.session_id
        self.tag = item.tag
        self.client: Client = client
        self.cancelled = CancellationSignal()
        self.logger = logging.LoggerAdapter(
            logging.getLogger("duroxide_trio.activity"),
            {"instance_id": item.instance, "execution_id": item.execution_id, "event_id": item.id,
             "activity": item.name, "attempt": item.attempt},
        )

    def __repr__(self) -> str:
        return (
            f"<ActivityContext {self.activity_name} of {self.instance_id} attempt {self.attempt} "
            f"delivery {self.delivery_count}>"
        )
