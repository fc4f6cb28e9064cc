"""OrchestrationContext, RetryPolicy and Backoff (the futures live in ``_futures``). Pure: no anyio, no
I/O, no clock.

Orchestration code awaits ``DurableFuture`` objects only. A future's ``__await__`` yields a private
sentinel to the replay engine, which drives the coroutine with ``send()``; anything else that is awaited
(``trio.sleep``, an asyncio future) yields something else and fails the instance with a message naming it.
"""

from __future__ import annotations

import inspect
import logging
import uuid
import weakref
from collections.abc import Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from ..errors import ActivityFailed, SubOrchestrationFailed, TaskFailed
from ..history import (
    ActivityScheduled,
    CustomStatusUpdated,
    ErrorDetails,
    ExternalSubscribed,
    KeyValueCleared,
    KeyValueSet,
    OrchestrationChained,
    QueueSubscribed,
    SubOrchestrationScheduled,
    TimerCreated,
)
from . import limits
from ._futures import (
    Action,
    DurableFuture,
    JoinFuture,
    LeafFuture,
    NeverFuture,
    SelectFuture,
    TaskFuture,
    TurnEngine,
)

#: The built-in activity that serves ``ctx.get_value_from_instance`` (reserved: no user activity has it).
KV_READ_ACTIVITY = "__duroxide.get_value"

#: Automatic sub-orchestration ids are ``<parent>::sub::<event id>``; no other id may contain the marker.
SUB_MARKER = "::sub::"


def _not_a_future(value: Any) -> str | None:
    """Why ``value`` cannot be joined or selected (``None``: an unstarted coroutine, which can)."""
    if inspect.iscoroutine(value):
        state = inspect.getcoroutinestate(value)
        if state == inspect.CORO_CREATED:
            return None
        return f"the coroutine {value.__qualname__} that has already started ({state}); pass a fresh call"
    if inspect.iscoroutinefunction(value):
        name = getattr(value, "__qualname__", repr(value))
        return f"the async function {name} itself; call it: {name}(...)"
    if inspect.isasyncgen(value):
        return f"the async generator {value.__qualname__}, which is not a coroutine"
    if inspect.isawaitable(value):
        return (f"{value!r:.100}, an awaitable that is not a ctx future (orchestrations may only wait "
                "for ctx futures: use ctx.schedule_timer for delays and activities for I/O)")
    return f"{value!r:.100}"


def check_name(value: Any, what: str, *, optional: bool = False) -> None:
    """A name or id: a non-empty string within the name limit (``None`` allowed if ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, got {value!r:.100}")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters (\\x00), got {value[:100]!r}")
    limits.check_text(value, limits.MAX_NAME_BYTES, what)


def _check_key(key: Any) -> None:
    """A key-value key: a non-empty string within the name limit (``TypeError`` otherwise)."""
    if not isinstance(key, str) or not key:
        raise TypeError(f"a key-value key must be a non-empty string, got {key!r:.100}")
    limits.check_text(key, limits.MAX_NAME_BYTES, "key-value key")


def check_instance_id(value: Any, what: str = "instance_id") -> None:
    """An instance id chosen by a user: a name that does not use the reserved ``::sub::`` marker."""
    check_name(value, what)
    if SUB_MARKER in value:
        raise ValueError(
            f"{what} {value[:200]!r} contains {SUB_MARKER!r}, which is reserved for automatic "
            "sub-orchestration ids; choose another id"
        )

__all__ = [
    "ActivityFailed",
    "Backoff",
    "DurableFuture",
    "OrchestrationContext",
    "RetryPolicy",
    "SubOrchestrationFailed",
    "TaskFailed",
]

_UUID_NAMESPACE = uuid.UUID("5a1e0c3e-7d0b-4f5c-9a59-6c7b1d2f8e10")


# ---------------------------------------------------------------------------------------------------------
# Retry policy


@attrs.frozen
class Backoff:
    """Delay before retry attempt ``n`` (1 = after the first failure), in seconds.

    Build one with :meth:`none`, :meth:`fixed`, :meth:`linear` or :meth:`exponential` (the default of
    ``RetryPolicy``: 0.1 s, doubling, at most 30 s) and pass it as ``RetryPolicy(backoff=...)``.

    Attributes:
        kind: ``"none"``, ``"fixed"``, ``"linear"`` or ``"exponential"``.
        base: The first delay (seconds); the constant delay of ``"fixed"``.
        factor: The growth factor of ``"exponential"``.
        cap: The longest delay (seconds) of ``"linear"`` and ``"exponential"``.
    """

    kind: str = "exponential"
    base: float = 0.1
    factor: float = 2.0
    cap: float = 30.0

    @classmethod
    def none(cls) -> Backoff:
        """Retry at once, without a timer."""
        return cls("none", 0.0, 1.0, 0.0)

    @classmethod
    def fixed(cls, delay: float) -> Backoff:
        """Wait ``delay`` seconds before every retry.

        Args:
            delay: Seconds between attempts.
        """
        return cls("fixed", delay, 1.0, delay)

    @classmethod
    def linear(cls, base: float, cap: float = 30.0) -> Backoff:
        """Wait ``base * n`` seconds before retry ``n``, at most ``cap``.

        Args:
            base: Seconds added per attempt.
            cap: The longest delay in seconds.
        """
        return cls("linear", base, 1.0, cap)

    @classmethod
    def exponential(cls, base: float = 0.1, factor: float = 2.0, cap: float = 30.0) -> Backoff:
        """Wait ``base * factor ** (n - 1)`` seconds before retry ``n``, at most ``cap``.

        Args:
            base: The first delay in seconds.
            factor: How much each delay grows over the previous one.
            cap: The longest delay in seconds.
        """
        return cls("exponential", base, factor, cap)

    def delay_for_attempt(self, attempt: int) -> float:
        """The delay before the retry that follows failed attempt ``attempt``.

        Args:
            attempt: The attempt that failed (1-based).

        Returns:
            Seconds to wait (``0.0`` for ``none``: the retry is scheduled at once).
        """
        if self.kind == "none":
            return 0.0
        if self.kind == "fixed":
            return self.base
        if self.kind == "linear":
            return min(self.base * attempt, self.cap)
        return min(self.base * (self.factor ** (attempt - 1)), self.cap)


@attrs.frozen
class RetryPolicy:
    """Retry an activity up to ``max_attempts`` times with ``backoff`` between attempts (durable timers).
    ``timeout`` (seconds) bounds each attempt: an attempt that times out is cancelled and retried.

    Only ``application`` failures are retried (an exception of the activity, or a timeout); poison and
    other system failures are not. When every attempt failed, the last ``ActivityFailed`` is raised
    (kind ``"Timeout"`` if the last attempt timed out). Each attempt is a new activity execution
    (``ActivityContext.attempt`` says which).

    ``non_retryable`` stops at once (the failure is raised after that attempt) for failures that retrying
    cannot fix: an exception class matches an activity that raised an exception of that class's name
    (activities run elsewhere, so the match is by the raised type's ``__name__``, not by subclassing); a
    string matches an error kind (``"Timeout"``, ``"BadInput"``) or that same type name.

    Args:
        max_attempts: Attempts in total, the first one included (at least 1).
        backoff: The delay between attempts (default ``Backoff.exponential()``).
        timeout: The longest an attempt may take, in seconds (``None``: no limit).
        non_retryable: Exception classes and error kinds / type names that are not retried.

    Raises:
        ValueError: ``max_attempts`` is below 1 or ``timeout`` is not positive.
        TypeError: ``non_retryable`` holds something that is neither an exception class nor a string.
    """

    max_attempts: int = 3
    backoff: Backoff = attrs.field(factory=Backoff.exponential)
    timeout: float | None = None
    non_retryable: tuple[type[BaseException] | str, ...] = attrs.field(default=(), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"RetryPolicy.timeout must be positive, got {self.timeout}")
        for entry in self.non_retryable:
            ok = isinstance(entry, str) and entry or isinstance(entry, type) and issubclass(entry, BaseException)
            if not ok:
                raise TypeError(
                    f"RetryPolicy.non_retryable takes exception classes and error kinds (strings), got {entry!r:.100}"
                )

    def is_retryable(self, details: ErrorDetails) -> bool:
        """False if ``details`` (a failed attempt) matches ``non_retryable`` (see the class docs).

        Args:
            details: The failure of an attempt.
        """
        if not self.non_retryable:
            return True
        raised = details.message.split(":", 1)[0].strip()  # "ValueError: bad input" -> "ValueError"
        names = {e if isinstance(e, str) else e.__name__ for e in self.non_retryable}
        return details.kind not in names and raised not in names


# ---------------------------------------------------------------------------------------------------------
# The context


class _ReplaySafeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    def __init__(self, logger: logging.Logger, ctx: OrchestrationContext) -> None:
        super().__init__(logger, {"instance_id": ctx.instance_id, "execution_id": ctx.execution_id,
                                  "orchestration": ctx.name})
        # A weak reference: the context holds this adapter, so a strong one would make a cycle that only
        # the cyclic garbage collector frees (every turn's whole object graph with it).
        self._ctx = weakref.ref(ctx)
        self._instance_id = ctx.instance_id

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging API
        ctx = self._ctx()
        replaying = ctx is None or ctx.is_replaying  # a context gone with its turn logs nothing more
        return not replaying and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})} if self.extra else kwargs.get("extra", {})
        return f"[{self._instance_id}] {msg}", kwargs


class OrchestrationContext:
    """What orchestration code uses to schedule durable work. Every call is recorded in history and must
    happen in the same order, with the same arguments, on every replay.

    The engine creates one per turn and passes it as the orchestration's first argument. Code that
    schedules differently from its history (after a code change) ends the instance Failed with category
    ``configuration`` (``nondeterministic: ...``). Await only the futures this context returns: awaiting
    anything else (``trio.sleep``, an HTTP call) fails the instance; do I/O in activities.

    Attributes:
        instance_id: This instance's id.
        execution_id: The current execution (1, then one more per continue-as-new).
        name: The orchestration's registered name.
        version: The version that runs (recorded in history; replays always use it).
        logger: A logger adapter that is silent while replaying and prefixes messages with the
            instance id (records carry ``instance_id``, ``execution_id`` and ``orchestration``).
        custom_status: The instance's custom status as this code last set it with
            :meth:`set_custom_status`; at the start of an execution after continue-as-new, the carried
            status as clients see it (plain JSON); ``None`` if there is none.
    """

    def __init__(
        self,
        engine: TurnEngine,
        *,
        instance_id: str,
        execution_id: int,
        name: str,
        version: str,
        logger: logging.Logger | None = None,
    ) -> None:
        self._engine = engine
        self.instance_id = instance_id
        self.execution_id = execution_id
        self.name = name
        self.version = version
        self._uuid_counter = 0
        self.logger = _ReplaySafeLogger(logger or logging.getLogger("duroxide_trio.orchestration"), self)

    # --- metadata ---
    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs through recorded history, False once it makes new decisions."""
        return self._engine.replaying

    def now(self) -> datetime:
        """Deterministic UTC time: the time of the history event the code is resuming from.

        Returns:
            A timezone-aware UTC ``datetime``, the same on every replay (use it instead of the clock).
        """
        return datetime.fromtimestamp(self._engine.current_ms / 1000.0, tz=UTC)

    def new_uuid(self) -> uuid.UUID:
        """Deterministic UUID: the same sequence on every replay of this execution.

        Returns:
            A version-5 UUID derived from the instance id, the execution id and a call counter.
        """
        self._uuid_counter += 1
        return uuid.uuid5(_UUID_NAMESPACE, f"{self.instance_id}:{self.execution_id}:{self._uuid_counter}")

    # --- scheduling ---
    def schedule_activity(
        self,
        name: str,
        input: Any = None,
        *,
        retry: RetryPolicy | None = None,
        tag: str | None = None,
        session_id: str | None = None,
    ) -> DurableFuture:
        """Run activity ``name`` with ``input``; the future resolves with its result or raises
        ``ActivityFailed``. ``retry`` retries failed (and, with ``timeout``, timed-out) attempts on durable
        timers; ``tag`` and ``session_id`` are recorded (and checked on replay). Raises ``TypeError`` for a
        bad name, ``PayloadError`` if ``input`` is not JSON-serialisable, ``LimitExceeded`` if it is over
        the payload limit.

        Args:
            name: The registered activity name.
            input: The activity's input (anything the payload converter turns into JSON; ``None``: none).
            retry: Retry failed attempts with this policy (default: one attempt).
            tag: A label recorded with the activity and given to it as ``ActivityContext.tag``.
            session_id: An id recorded with the activity and given to it as ``ActivityContext.session_id``.

        Returns:
            A future of the activity's result, converted to the activity's return annotation. Awaiting it
            raises ``ActivityFailed`` when the activity (every attempt, with ``retry``) failed or timed
            out, or ``PayloadError`` when the result does not convert; a poisoned activity fails the
            whole orchestration instead.

        Raises:
            TypeError: An empty or non-string name, tag or session id, or a ``retry`` that is not a
                ``RetryPolicy``.
            PayloadError: ``input`` cannot be turned into JSON.
            LimitExceeded: The JSON input is over 3 MiB, or a name over 64 KiB.
        """
        check_name(name, "activity name")
        check_name(tag, "activity tag", optional=True)
        check_name(session_id, "activity session_id", optional=True)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a dt.RetryPolicy, got {retry!r:.100}")
        encoded = self._engine.encode(input, f"input of activity {name!r}")
        if retry is None:
            return self._activity(name, encoded, tag, session_id)
        return self._spawn(self._retry_loop(name, encoded, retry, tag, session_id))

    def _activity(
        self, name: str, encoded: str | None, tag: str | None, session_id: str | None, attempt: int = 1
    ) -> LeafFuture:
        return self._leaf(ActivityScheduled(name, encoded, session_id, tag), attempt=attempt)

    def _leaf(self, kind: Any, *, attempt: int = 1, auto_instance: bool = False) -> LeafFuture:
        """A future completed by the history event that answers the decision ``kind``."""
        fut = LeafFuture(self._engine)
        self._engine.emit(Action(kind, future=fut, attempt=attempt, auto_instance=auto_instance))
        return fut

    async def _retry_loop(
        self, name: str, encoded: str | None, policy: RetryPolicy, tag: str | None, session_id: str | None
    ) -> Any:
        last: ActivityFailed | None = None
        for attempt in range(1, policy.max_attempts + 1):
            attempt_fut = self._activity(name, encoded, tag, session_id, attempt)
            try:
                if policy.timeout is None:
                    return await attempt_fut
                index, value = await self.select(attempt_fut, self.schedule_timer(policy.timeout))
                if index == 0:
                    return value
                last = ActivityFailed(
                    ErrorDetails(
                        "application",
                        "Timeout",
                        f"timeout: activity {name!r} attempt {attempt} did not finish within {policy.timeout}s",
                    )
                )
            except ActivityFailed as exc:
                if exc.details.category != "application" or not policy.is_retryable(exc.details):
                    raise
                last = exc
            if not policy.is_retryable(last.details):
                raise last
            if attempt < policy.max_attempts:
                self.logger.warning("activity %s attempt %d failed: %s; retrying", name, attempt, last)
                delay = policy.backoff.delay_for_attempt(attempt)
                if delay > 0:
                    await self.schedule_timer(delay)
        assert last is not None
        raise last

    def schedule_timer(self, delay: float | timedelta) -> DurableFuture:
        """A durable timer that fires ``delay`` (seconds or a ``timedelta``) after the current
        deterministic time. Raises ``ValueError`` outside 0 … 100 years.

        Args:
            delay: Seconds (``int`` or ``float``) or a ``timedelta``, from ``ctx.now()``.

        Returns:
            A future that resolves with ``None`` when the timer fires (it survives restarts).

        Raises:
            TypeError: ``delay`` is not a number or a ``timedelta`` (a ``bool`` is refused).
            LimitExceeded: ``delay`` is negative, NaN or over 100 years (a ``ValueError``).
        """
        if isinstance(delay, bool) or not isinstance(delay, (int, float, timedelta)):
            raise TypeError(f"timer delay must be seconds (a number) or a timedelta, got {delay!r:.100}")
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not (0 <= seconds <= limits.MAX_TIMER_SECONDS):  # also rejects NaN
            raise limits.LimitExceeded(
                "timer delay", seconds, limits.MAX_TIMER_SECONDS,
                message=f"limit exceeded: timer delay must be between 0 and {limits.MAX_TIMER_SECONDS:.0f} "
                        f"seconds (100 years), got {seconds!r}",
            )
        return self._leaf(TimerCreated(self._engine.current_ms + int(seconds * 1000)))

    def wait_for_event(self, name: str) -> DurableFuture:
        """Wait for the next external event ``name`` (``Client.raise_event``). Events raised before the
        wait are buffered in history and delivered in arrival order.

        Args:
            name: The event name.

        Returns:
            A future of the event's data (plain JSON values: dicts, lists, strings, numbers, ``None``).

        Raises:
            TypeError: ``name`` is empty or not a string.
            LimitExceeded: ``name`` is over 64 KiB.
        """
        check_name(name, "event name")
        return self._leaf(ExternalSubscribed(name))

    def dequeue_event(self, queue: str) -> DurableFuture:
        """Take the next message of the FIFO mailbox ``queue`` (``Client.enqueue_event``). Unconsumed
        messages are carried across continue-as-new.

        Args:
            queue: The mailbox name.

        Returns:
            A future of the message's data (plain JSON values).

        Raises:
            TypeError: ``queue`` is empty or not a string.
            LimitExceeded: ``queue`` is over 64 KiB.
        """
        check_name(queue, "queue name")
        return self._leaf(QueueSubscribed(queue))

    def schedule_sub_orchestration(
        self, name: str, input: Any = None, *, instance_id: str | None = None, version: str | None = None
    ) -> DurableFuture:
        """Run orchestration ``name`` as a child; the future resolves with its output or raises
        ``SubOrchestrationFailed``. The child's id is ``<this id>::sub::<event id>`` unless
        ``instance_id`` is given.

        Args:
            name: The registered orchestration name of the child.
            input: The child's input (anything the payload converter turns into JSON; ``None``: none).
            instance_id: The child's id (must not contain ``::sub::``); default: derived as above.
            version: Run exactly this version of the child; default: the latest registered one.

        Returns:
            A future of the child's output, converted to the return annotation of the latest registered
            version. Awaiting it raises ``SubOrchestrationFailed`` when the child failed or was cancelled
            (or its id is taken by another instance: kind ``InstanceAlreadyExists``); a child's system
            failure (poison, nondeterminism) fails this orchestration too.

        Raises:
            TypeError: An empty or non-string name or instance id.
            ValueError: ``instance_id`` contains ``::sub::``.
            PayloadError: ``input`` cannot be turned into JSON.
            LimitExceeded: The JSON input is over 3 MiB, or a name or id over 64 KiB.
        """
        check_name(name, "sub-orchestration name")
        if instance_id is not None:
            check_instance_id(instance_id, "sub-orchestration instance_id")
        encoded = self._engine.encode(input, f"input of sub-orchestration {name!r}")
        return self._leaf(
            SubOrchestrationScheduled(name, instance_id or "", encoded, version), auto_instance=instance_id is None
        )

    def start_orchestration(
        self, name: str, instance_id: str, input: Any = None, *, version: str | None = None
    ) -> None:
        """Start a detached orchestration (fire and forget; no result, no parent link).

        The start is sent when this turn commits; the new instance runs on its own and is not cancelled
        with this one.

        Args:
            name: The registered orchestration name.
            instance_id: The new instance's id (must not contain ``::sub::``).
            input: Its input (anything the payload converter turns into JSON; ``None``: none).
            version: Run exactly this version; default: the latest registered one.

        Raises:
            TypeError: An empty or non-string name or instance id.
            ValueError: ``instance_id`` contains ``::sub::``.
            PayloadError: ``input`` cannot be turned into JSON.
            LimitExceeded: The JSON input is over 3 MiB, or a name or id over 64 KiB.
        """
        check_name(name, "orchestration name")
        check_instance_id(instance_id)
        encoded = self._engine.encode(input, f"input of orchestration {name!r}")
        self._engine.emit(Action(OrchestrationChained(name, instance_id, encoded, version)))

    def continue_as_new(self, input: Any = None, *, version: str | None = None) -> DurableFuture:
        """End this execution and start a fresh one with ``input`` (``return await ctx.continue_as_new(x)``).

        The new execution (``execution_id + 1``) starts with an empty history; mailbox messages not yet
        dequeued, the custom status and the parent link are carried over. Only the first call of a turn
        counts, and the code does not run on after it.

        Args:
            input: The next execution's input (anything the payload converter turns into JSON).
            version: The version the next execution runs; default: the latest registered one.

        Returns:
            A future that never resolves: await it (and return) to end the execution.

        Raises:
            PayloadError: ``input`` cannot be turned into JSON.
            LimitExceeded: The JSON input is over 3 MiB.
        """
        encoded = self._engine.encode(input, "input of continue_as_new")
        self._engine.continue_as_new(encoded, version)
        return NeverFuture(self._engine)

    def set_custom_status(self, value: Any) -> None:
        """Publish ``value`` as the instance's custom status (``Client.get_status(...).custom_status``).
        Raises ``LimitExceeded`` over 256 KiB.

        Clients see it once the turn commits; it is carried over by continue-as-new.

        Args:
            value: Anything the payload converter turns into JSON; ``None`` clears the status.

        Raises:
            PayloadError: ``value`` cannot be turned into JSON.
            LimitExceeded: The JSON value is over 256 KiB.
        """
        encoded = None if value is None else self._engine.encode(value, "custom status", limits.MAX_CUSTOM_STATUS_BYTES)
        self.custom_status = value
        self._engine.emit(Action(CustomStatusUpdated(encoded)))

    custom_status: Any = None

    # --- durable key-value state ---
    def set_value(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` in this instance's durable key-value state.

        The write is recorded in history (``KeyValueSet``) and reaches the provider's key-value table in
        the same commit as the rest of the turn (an abandoned turn writes nothing). The state is carried
        over by continue-as-new and deleted with the instance; clients read it with
        ``Client.get_value`` / ``Client.get_values``.

        Args:
            key: A non-empty string (at most 64 KiB).
            value: Anything the payload converter turns into JSON (``None`` is stored as JSON ``null``;
                use :meth:`clear_value` to remove a key).

        Raises:
            TypeError: ``key`` is not a non-empty string.
            PayloadError: ``value`` cannot be turned into JSON.
            LimitExceeded: The encoded value is over 64 KiB, or the instance already holds 150 keys
                and ``key`` is a new one (uncaught, it fails the instance: ``configuration`` /
                ``LimitExceeded``).
        """
        _check_key(key)
        text = self._engine.encode(value, f"value of key {key[:200]!r}", limits.MAX_PAYLOAD_BYTES)
        if text is None:
            text = "null"
        size = limits.text_bytes(text)
        if size > limits.MAX_KV_VALUE_BYTES:
            raise limits.LimitExceeded(
                f"value of key {key[:200]!r}", size, limits.MAX_KV_VALUE_BYTES,
                message=f"limit exceeded: the value of key {key[:200]!r} is {size} bytes encoded, over the "
                        f"{limits.human(limits.MAX_KV_VALUE_BYTES)} limit of a key-value value",
            )
        state = self._engine.kv
        if key not in state and len(state) >= limits.MAX_KV_KEYS:
            raise limits.LimitExceeded(
                "key-value keys", len(state) + 1, limits.MAX_KV_KEYS,
                message=f"limit exceeded: setting key {key[:200]!r} would make {len(state) + 1} keys, over "
                        f"the limit of {limits.MAX_KV_KEYS} keys per instance",
            )
        self._engine.kv_write(KeyValueSet(key, text))

    def get_value(self, key: str, default: Any = None, *, type: Any = None) -> Any:
        """The value stored under ``key``, as of this point of the orchestration (deterministic: it is
        the state carried into this execution plus the writes the code has made so far, never a read
        of storage).

        Args:
            key: A non-empty string.
            default: Returned when ``key`` holds nothing.
            type: Convert the JSON value to this type (an attrs class, a dataclass...); default: plain
                JSON values.

        Returns:
            The value, or ``default``.

        Raises:
            TypeError: ``key`` is not a non-empty string.
            PayloadError: The stored value does not convert to ``type``.
        """
        _check_key(key)
        text = self._engine.kv.get(key)
        if text is None:
            return default
        return self._engine.decode_value(text, type)

    def get_values(self) -> dict[str, Any]:
        """Every key and its value (plain JSON values), as :meth:`get_value` sees them.

        Returns:
            A new dict (changing it changes nothing).
        """
        return {k: self._engine.decode_value(v, None) for k, v in self._engine.kv.items()}

    def clear_value(self, key: str) -> None:
        """Remove ``key`` from the key-value state (recorded as ``KeyValueCleared``; nothing if absent
        is still recorded, so replays match).

        Args:
            key: A non-empty string.

        Raises:
            TypeError: ``key`` is not a non-empty string.
        """
        _check_key(key)
        self._engine.kv_write(KeyValueCleared(key))

    def clear_values(self) -> None:
        """Remove every key of this instance's key-value state (recorded as ``KeyValueCleared``)."""
        self._engine.kv_write(KeyValueCleared(None))

    def get_value_from_instance(self, instance_id: str, key: str, *, type: Any = None) -> DurableFuture:
        """Read ``key`` of another instance's key-value state, deterministically.

        Design: the read is an *action with a completion event*, reusing the activity machinery. On
        first execution the engine schedules the built-in activity ``__duroxide.get_value``
        (``ActivityScheduled``); a runtime serves it by reading the provider's key-value table of
        ``instance_id`` (what ``Client.get_value`` returns: the last committed state) and its result is
        recorded as ``ActivityCompleted``. Replays use the recorded value and never read storage again,
        so the code sees the same value on every replay. Like any activity it can lose a ``select``.

        Args:
            instance_id: The instance to read (it need not exist: then the key holds nothing).
            key: A non-empty string.
            type: Convert the JSON value to this type; default: plain JSON values.

        Returns:
            A future of the value, or ``None`` when the key (or the instance) holds nothing.

        Raises:
            TypeError: ``instance_id`` or ``key`` is not a non-empty string.
        """
        check_name(instance_id, "instance_id")
        _check_key(key)
        request = self._engine.encode({"instance": instance_id, "key": key}, "key-value read")
        leaf = self._activity(KV_READ_ACTIVITY, request, None, None)
        return self._spawn(self._read_remote(leaf, type))

    async def _read_remote(self, leaf: LeafFuture, hint: Any) -> Any:
        answer = await leaf
        if not isinstance(answer, dict) or answer.get("value") is None:
            return None
        return self._engine.decode_value(answer["value"], hint)

    def history_size_bytes(self) -> int:
        """The size of this execution's history, counted as the 5 MiB history limit counts it; call
        ``continue_as_new`` well before it reaches ``dt.MAX_HISTORY_BYTES``.

        Returns:
            Bytes: the stored events and this turn's new ones, each counted as its text fields plus a
            small envelope. A turn whose commit would pass 5 MiB fails the instance (``LimitExceeded``).
        """
        return self._engine.history_size_bytes()

    # --- composition ---
    def join(
        self, futures: Iterable[DurableFuture | Coroutine[Any, Any, Any]], *, return_exceptions: bool = False
    ) -> DurableFuture:
        """Wait for all ``futures`` (fan-in).

        Args:
            futures: Durable futures from this context (``schedule_*``, ``select``, ``join``, ``task``) or
                async blocks: coroutines of ``async def`` functions that await ctx futures (each runs as
                :meth:`task`, started here in argument order).
            return_exceptions: Put the exception of a failed future in its place in the list instead of
                raising it.

        Returns:
            A future of the results, in argument order (``[]`` for no futures). It resolves once every
            future is done; without ``return_exceptions`` it then raises the failure that came first in
            history order.

        Raises:
            TypeError: One of ``futures`` is neither a durable future nor an unstarted coroutine.
        """
        children = self._check_futures(list(futures), "join")
        return JoinFuture(self._engine, children, return_exceptions)

    def select(self, *futures: DurableFuture | Coroutine[Any, Any, Any]) -> DurableFuture:
        """Resolve with ``(index, value)`` of the first future to complete *in history order*; the others
        are cancelled (activities lose their lock, subscriptions are released, children are cancelled; a
        losing async block is closed and everything it scheduled that is still open is cancelled).

        Args:
            *futures: Durable futures from this context or async blocks (coroutines, as in :meth:`join`),
                or one list or tuple of them.

        Returns:
            A future of ``(index, value)`` of the winner; it raises the winner's exception if the first
            future to complete failed. An async block completes when its coroutine returns.

        Raises:
            ValueError: No futures were given.
            TypeError: One of ``futures`` is neither a durable future nor an unstarted coroutine.
        """
        if len(futures) == 1 and isinstance(futures[0], (list, tuple)):
            futures = tuple(futures[0])
        if not futures:
            raise ValueError("select needs at least one future")
        return SelectFuture(self._engine, self._check_futures(list(futures), "select"))

    def task(self, block: Coroutine[Any, Any, Any]) -> DurableFuture:
        """Run the async block ``block`` (a coroutine that awaits ctx futures) alongside the orchestration,
        starting it at once; the future resolves with what it returns or raises what it raises.

        Passing a coroutine to :meth:`join` / :meth:`select` does this for you. A block is deterministic
        like the rest of the code: it resumes in history order. When a block loses a ``select`` (or the
        task is cancelled), what it scheduled and still waits for is cancelled and recorded, the tasks it
        started are cancelled too, and its coroutine is closed.

        Args:
            block: An unstarted coroutine, e.g. ``step_two(ctx)`` for ``async def step_two(ctx): ...``.

        Returns:
            A durable future of the block's result.

        Raises:
            TypeError: ``block`` is not a coroutine, or it has already started.
        """
        return self._check_futures([block], "task")[0]

    def _check_futures(self, futures: Sequence[Any], what: str) -> list[DurableFuture]:
        for i, f in enumerate(futures):
            if isinstance(f, DurableFuture):
                continue
            problem = _not_a_future(f)
            if problem is not None:
                for other in futures:  # do not leave "coroutine was never awaited" warnings behind
                    if inspect.iscoroutine(other) and inspect.getcoroutinestate(other) == inspect.CORO_CREATED:
                        other.close()
                where = f"argument {i + 1}" if len(futures) > 1 else "its argument"
                raise TypeError(
                    f"ctx.{what} takes durable futures (from ctx.schedule_*) or async blocks (coroutines of "
                    f"async functions that await ctx futures); {where} is {problem}"
                )
        return [f if isinstance(f, DurableFuture) else self._spawn(f) for f in futures]

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> TaskFuture:
        task = TaskFuture(self._engine, coro)
        self._engine.add_task(task)
        return task
