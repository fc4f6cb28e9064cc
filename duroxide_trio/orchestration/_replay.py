"""One orchestration turn: (history, new messages, handler) -> TurnResult. Pure and deterministic.

The coroutine is re-run from the start against the persisted history. Every decision the code makes
(schedule an activity, a timer, a subscription, a child, a cancellation...) is an *action* that must match
the decision event at the same position in history; completions are delivered to the future bound to their
``source_event_id`` and the coroutine is polled after each one, so the first completion in history order
wins every race. Past the end of history, actions become new events and outgoing work.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, cast

import attrs

from ..errors import ActivityFailed, SubOrchestrationFailed
from ..history import (
    DECISION_KINDS,
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityError,
    ActivityExecute,
    ActivityFailedEvent,
    ActivityResult,
    ActivityScheduled,
    CancelInstance,
    ContinueAsNew,
    CustomStatusUpdated,
    ErrorDetails,
    Event,
    ExternalEvent,
    ExternalRaised,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    KeyValueCleared,
    KeyValueSet,
    OrchestrationCancelRequested,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueEventDelivered,
    QueueMessage,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    StartOrchestration,
    Status,
    SubOrchError,
    SubOrchestrationCancelRequested,
    SubOrchestrationCompleted,
    SubOrchestrationFailedEvent,
    SubOrchestrationScheduled,
    SubOrchResult,
    TimerCreated,
    TimerDue,
    TimerFired,
    WorkItem,
    kind_name,
)
from . import limits
from ._futures import BLOCKED, Action, EngineFailure, LeafFuture, TaskFuture
from .context import OrchestrationContext

__all__ = ["Codec", "Handler", "TurnPlan", "TurnResult", "plan_turn", "run_turn"]

MAX_QUIESCENCE = 10_000


class Codec(Protocol):
    """Turns orchestration values into JSON text and back (the registry provides the typed one)."""

    def encode(self, value: Any, what: str) -> str | None:
        """``value`` as JSON text (``None`` for ``None``); raises ``PayloadError`` naming ``what``."""
        ...

    def decode_activity_result(self, name: str, text: str | None) -> Any:
        """The result of activity ``name`` from its JSON ``text``."""
        ...

    def decode_sub_result(self, name: str, text: str | None) -> Any:
        """The output of sub-orchestration ``name`` from its JSON ``text``."""
        ...

    def decode_event_data(self, name: str, text: str | None) -> Any:
        """The data of external event or queue message ``name`` from its JSON ``text``."""
        ...

    def decode_value(self, text: str | None, hint: Any) -> Any:
        """A key-value value from its JSON ``text`` as type ``hint`` (plain JSON for ``None``)."""
        ...


class Handler(Protocol):
    """A resolved orchestration: ``start(ctx, input_text)`` returns the coroutine to drive."""

    @property
    def name(self) -> str:
        """The orchestration's registered name."""
        ...

    @property
    def version(self) -> str:
        """The version this handler runs (``"1.0.0"``)."""
        ...

    def start(self, ctx: OrchestrationContext, input_text: str | None) -> Coroutine[Any, Any, Any]:
        """The orchestration coroutine for ``ctx`` and the JSON input (raises if the input does not fit)."""
        ...


@attrs.frozen
class TurnPlan:
    """What a fetched batch means, decided before a handler is resolved."""

    action: str  # "run" | "discard" | "corrupt"
    name: str = ""
    version: str | None = None  # requested version (None = latest); from history when replaying
    execution_id: int = 1
    history: list[Event] = attrs.field(factory=list)
    start: StartOrchestration | ContinueAsNew | None = None
    messages: list[WorkItem] = attrs.field(factory=list)
    reason: str = ""


def plan_turn(execution_id: int, history: Sequence[Event], messages: Sequence[WorkItem]) -> TurnPlan:
    """What a fetched batch means, from its history and messages alone.

    Args:
        execution_id: The instance's current execution id.
        history: That execution's history.
        messages: The fetched messages.

    Returns:
        ``"run"`` (replay the history, or start from a ``StartOrchestration`` / ``ContinueAsNew``, with
        the other messages to apply), ``"discard"`` (a terminal instance, or no history and no start:
        the messages are dropped) or ``"corrupt"`` (the history does not begin with
        ``OrchestrationStarted``, or has a second one: an execution starts once). Never raises.
    """
    starts: list[StartOrchestration | ContinueAsNew] = [
        m for m in messages if isinstance(m, (StartOrchestration, ContinueAsNew))
    ]
    others: list[WorkItem] = [m for m in messages if not isinstance(m, (StartOrchestration, ContinueAsNew))]
    if history:
        first = history[0].kind
        if not isinstance(first, OrchestrationStarted):
            return TurnPlan("corrupt", "", None, execution_id, list(history),
                            reason=f"corrupted history: the first event is {history[0].type_name}, "
                                   "not OrchestrationStarted")
        again = next((e for e in history[1:] if isinstance(e.kind, OrchestrationStarted)), None)
        if again is not None:  # replaying it would rerun the code from the top on a second coroutine
            return TurnPlan("corrupt", "", None, execution_id, list(history),
                            reason=f"corrupted history: a second OrchestrationStarted at event {again.event_id}")
        if history[-1].is_terminal():
            if isinstance(history[-1].kind, OrchestrationContinuedAsNew):
                can = next(
                    (m for m in starts if isinstance(m, ContinueAsNew) and m.execution_id > execution_id), None
                )
                if can is not None:
                    return TurnPlan("run", can.name, can.version, can.execution_id, [], can, others)
            return TurnPlan("discard", first.name, first.version, execution_id, list(history),
                            reason="instance is terminal; late messages discarded")
        return TurnPlan("run", first.name, first.version, execution_id, list(history), None, others)
    start = starts[0] if starts else None
    if start is None:
        return TurnPlan("discard", reason="no history and no start message")
    return TurnPlan("run", start.name, start.version, start.execution_id, [], start, others)


@attrs.define
class TurnResult:
    """What one turn commits: new history events, activities for the worker queue, messages for
    orchestrator queues, activities to cancel (``(instance, execution, activity id)``), and the
    execution's new ``status`` (``None``: unchanged), ``output`` (JSON) or ``error``, with the
    ``name``/``version``/``parent_instance`` that create the instance row. ``warnings`` are logged."""

    history_delta: list[Event] = attrs.field(factory=list)
    worker_items: list[ActivityExecute] = attrs.field(factory=list)
    orchestrator_items: list[WorkItem] = attrs.field(factory=list)
    cancelled_activities: list[tuple[str, int, int]] = attrs.field(factory=list)
    status: Status | None = None
    output: str | None = None
    error: ErrorDetails | None = None
    name: str = ""
    version: str = ""
    parent_instance: str | None = None
    execution_id: int = 1
    warnings: list[str] = attrs.field(factory=list)  # e.g. user cleanup code that raised while closed


class _Nondeterminism(Exception):
    pass


class _Fail(EngineFailure):
    """End the instance as Failed with these details (system errors)."""

    def __init__(self, details: ErrorDetails) -> None:
        super().__init__(details.message)
        self.details = details


_EVENT_LOOP_PACKAGES = ("asyncio", "trio", "anyio", "sniffio", "curio")


def _event_loop_api(exc: BaseException) -> str | None:
    """``asyncio.sleep`` if ``exc`` is the RuntimeError an event-loop API raises when it finds no loop
    (the orchestration awaited it: the engine drives code with ``send()``, not on a loop), else ``None``."""
    if not isinstance(exc, RuntimeError):
        return None
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] in _EVENT_LOOP_PACKAGES:
            return f"{module.split('.', 1)[0]}.{tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return None


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of an exception raised by user code, cut at the message limit. Never raises
    (a ``__str__`` that raises is user code too)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = f"<{type(exc).__name__} whose str() raised>"
    return limits.truncate_message(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _describe(kind: Any) -> str:
    fields = attrs.asdict(kind, recurse=False) if attrs.has(type(kind)) else {}
    parts = ", ".join(f"{k}={v!r}" for k, v in fields.items() if v not in (None, "", [], ()))
    return f"{kind_name(kind)}({parts})"


def _nondeterministic(message: str) -> _Fail:
    return _Fail(ErrorDetails("configuration", "Nondeterminism", f"nondeterministic: {message}"))


@attrs.define(eq=False)
class _Schedule:
    kind: type
    future: LeafFuture | None
    state: str = "open"  # open | completed | cancelled
    name: str = ""
    instance: str = ""


class Turn:
    """State of one turn. Created by ``run_turn``; orchestration code sees it through the context."""

    def __init__(
        self,
        *,
        instance_id: str,
        plan: TurnPlan,
        handler: Handler,
        codec: Codec,
        now_ms: int,
        logger: Any = None,
    ) -> None:
        self.instance_id = instance_id
        self.plan = plan
        self.handler = handler
        self.codec = codec
        self.now_ms = now_ms
        self.current_ms = now_ms
        self.replaying = False
        self.execution_id = plan.execution_id
        self.ctx = OrchestrationContext(
            self,
            instance_id=instance_id,
            execution_id=plan.execution_id,
            name=handler.name,
            version=handler.version,
            logger=logger,
        )
        self.result = TurnResult(execution_id=plan.execution_id, name=handler.name, version=handler.version)
        self._seq = 0
        self._progress = 0
        self._pending: collections.deque[Action] = collections.deque()
        self._schedules: dict[int, _Schedule] = {}
        self._subs: dict[tuple[str, str], collections.deque[LeafFuture]] = {}
        self._buffers: dict[tuple[str, str], collections.deque[str | None]] = {}
        self._leaf_sub: dict[int, tuple[str, str]] = {}  # id(future) -> (space, name)
        self._tasks: list[TaskFuture] = []
        self._current_task: TaskFuture | None = None
        self._coro: Coroutine[Any, Any, Any] | None = None
        self._finished = False
        self._output: Any = None
        self._app_error: BaseException | None = None
        self._fail: ErrorDetails | None = None
        self._can: tuple[str | None, str | None] | None = None
        self._cancel_reason: str | None = None
        self._cancel_first = False
        self._next_event_id = len(plan.history) + 1
        self._started: OrchestrationStarted | None = None
        self._custom_status_set = False
        self._custom_status: str | None = None
        self._kv: dict[str, str] = {}
        self._closing = False
        self._base_bytes: int | None = None
        self.cleanup_errors: list[str] = []

    # ------------------------------------------------------------------ called by futures and context
    def next_seq(self) -> int:
        self._seq += 1
        self._progress += 1
        return self._seq

    def encode(self, value: Any, what: str, limit: int = limits.MAX_PAYLOAD_BYTES) -> str | None:
        """``value`` as JSON text through the codec; raises ``PayloadError``, or ``LimitExceeded`` if the
        text is over ``limit`` bytes."""
        text = self.codec.encode(value, what)
        limits.check_text(text, limit, what)
        return text

    def history_size_bytes(self) -> int:
        """The size of this execution's history so far (persisted events and this turn's new ones)."""
        if self._base_bytes is None:
            self._base_bytes = limits.history_bytes(self.plan.history)
        return self._base_bytes + limits.history_bytes(self.result.history_delta)

    @property
    def kv(self) -> dict[str, str]:
        return self._kv

    def kv_write(self, kind: Any) -> None:
        if self._closing or self._finished:
            return
        if isinstance(kind, KeyValueSet):
            self._kv[kind.key] = kind.value
        elif kind.key is None:
            self._kv.clear()
        else:
            self._kv.pop(kind.key, None)
        self.emit(Action(kind))

    def decode_value(self, text: str | None, hint: Any) -> Any:
        decode = getattr(self.codec, "decode_value", None)
        if decode is None:  # a codec without typed values: plain JSON
            return None if text is None else json.loads(text)
        return decode(text, hint)

    def emit(self, action: Action) -> None:
        if self._closing or self._finished:
            return
        action.task = self._current_task
        if action.future is not None:
            action.future.action = action
        self._pending.append(action)
        self._progress += 1

    def add_task(self, task: TaskFuture) -> None:
        if self._current_task is not None:
            self._current_task.adopt(task)
        self._tasks.append(task)
        self._progress += 1
        prev = self._current_task
        self._current_task = task
        try:
            task.step()  # start eagerly: the first attempt is scheduled where the call is made
        finally:
            self._current_task = prev

    def open_leaves_of_task(self, task: TaskFuture) -> list[LeafFuture]:
        out = []
        for act in list(self._pending):
            if act.task is task and act.future is not None and not act.future.done():
                out.append(act.future)
        for sched in self._schedules.values():
            f = sched.future
            if f is not None and sched.state == "open" and f.action is not None and f.action.task is task:
                out.append(f)
        for waiting in self._subs.values():
            out.extend(f for f in waiting if f.action is not None and f.action.task is task)
        return out

    def cancel_leaf(self, fut: LeafFuture) -> None:
        act = fut.action
        if act is None:
            return
        kind = act.kind
        space = self._leaf_sub.pop(id(fut), None)
        if space is not None:
            q = self._subs.get(space)
            if q is not None and fut in q:
                q.remove(fut)
        if isinstance(kind, ActivityScheduled):
            self.emit(Action(ActivityCancelRequested("dropped_future"), target=fut))
        elif isinstance(kind, SubOrchestrationScheduled):
            self.emit(Action(SubOrchestrationCancelRequested("dropped_future"), target=fut))
        elif isinstance(kind, ExternalSubscribed):
            self.emit(Action(ExternalSubscribedCancelled("dropped_future"), target=fut))
        elif isinstance(kind, QueueSubscribed):
            self.emit(Action(QueueSubscriptionCancelled("dropped_future"), target=fut))
        # timers: nothing to record; a late TimerFired for a cancelled timer is ignored
        if act.event_id is not None:
            sched = self._schedules.get(act.event_id)
            if sched is not None and sched.state == "open":
                sched.state = "cancelled"

    def continue_as_new(self, input_text: str | None, version: str | None) -> None:
        if self._can is None and not self._finished:
            self._can = (input_text, version)
            self._progress += 1

    def bad_await(self, yielded: Any, coro: Coroutine[Any, Any, Any]) -> None:
        raise _Fail(
            ErrorDetails(
                "application",
                "OrchestrationFailed",
                f"orchestration {self.handler.name!r} awaited {yielded!r}, which is not a durable future; "
                "orchestrations may only await ctx futures (use ctx.schedule_timer instead of trio.sleep/"
                "asyncio.sleep, and activities for I/O)",
            )
        )

    def close_coroutine(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Close a coroutine the orchestration no longer needs. Its ``finally`` blocks run now; whatever
        they raise (even a ``BaseException``) is user code's, so it is recorded, not propagated."""
        closing, self._closing = self._closing, True
        try:
            coro.close()
        except BaseException as exc:  # noqa: BLE001 - user cleanup code must not break the engine
            name = getattr(coro, "__qualname__", repr(coro))
            self.cleanup_errors.append(f"{name} raised {type(exc).__name__} while being closed: {exc}")
        finally:
            self._closing = closing

    def send(self, coro: Coroutine[Any, Any, Any], task: TaskFuture | None) -> Any:
        prev = self._current_task
        self._current_task = task
        try:
            return coro.send(None)
        except (StopIteration, _Fail):
            raise
        except BaseException as exc:
            if task is not None:  # an async block awaited an event-loop API: fail as the main code would
                self._check_foreign(exc)
            raise
        finally:
            self._current_task = prev

    def _check_foreign(self, exc: BaseException) -> None:
        """Raise ``_Fail`` naming the event-loop API if ``exc`` came from awaiting one."""
        foreign = _event_loop_api(exc)
        if foreign is not None:
            raise _Fail(ErrorDetails(
                "application", "OrchestrationFailed",
                limits.truncate_message(
                    f"orchestration {self.handler.name!r} awaited {foreign}, which is not a durable future "
                    f"(it raised {describe_exception(exc)}); orchestrations may only await ctx futures (use "
                    "ctx.schedule_timer instead of trio.sleep/asyncio.sleep, and activities for I/O)"),
            )) from None

    # ------------------------------------------------------------------ polling
    def _poll(self) -> None:
        """Step every live task and the orchestration until nothing changes."""
        for _ in range(MAX_QUIESCENCE):
            before = self._progress
            for task in list(self._tasks):
                if not task.finished:
                    task.step()
            if self._coro is not None and not self._finished and self._can is None:
                self._step_main()
            if self._progress == before or self._finished:
                return
        raise _Fail(ErrorDetails("infrastructure", "Quiescence", "orchestration did not settle after many polls"))

    def _step_main(self) -> None:
        assert self._coro is not None
        try:
            yielded = self.send(self._coro, None)
        except StopIteration as stop:
            self._finished = True
            self._output = stop.value
            self._progress += 1
            return
        except _Fail:
            raise
        except BaseException as exc:  # noqa: BLE001 - anything escaping the orchestration (even
            # KeyboardInterrupt/SystemExit raised by its code) fails this instance only
            self._check_foreign(exc)
            self._finished = True
            self._app_error = exc
            self._progress += 1
            return
        if yielded is not BLOCKED:
            self.bad_await(yielded, self._coro)

    # ------------------------------------------------------------------ binding actions to events
    def _matches(self, action: Action, ev: Event) -> bool:
        a, k = action.kind, ev.kind
        k = cast(Any, k)
        if type(a) is not type(k):
            return False
        if isinstance(a, ActivityScheduled):
            return (a.name, a.input, a.session_id, a.tag) == (k.name, k.input, k.session_id, k.tag)
        if isinstance(a, SubOrchestrationScheduled):
            if (a.name, a.input) != (k.name, k.input):
                return False
            return action.auto_instance or a.instance == k.instance
        if isinstance(a, OrchestrationChained):
            return (a.name, a.instance, a.input) == (k.name, k.instance, k.input)
        if isinstance(a, (ExternalSubscribed, QueueSubscribed)):
            return bool(a.name == k.name)
        if isinstance(a, KeyValueSet):
            return (a.key, a.value) == (k.key, k.value)
        if isinstance(a, KeyValueCleared):
            return bool(a.key == k.key)
        if action.target is not None:
            return action.target.action is not None and action.target.action.event_id == ev.source_event_id
        return True  # timers and custom status match by kind

    def _bind(self, action: Action, ev: Event, live: bool) -> None:
        action.event_id = ev.event_id
        kind = ev.kind
        fut = action.future
        if fut is not None:
            fut.action = action
        if isinstance(kind, ActivityScheduled):
            self._schedules[ev.event_id] = _Schedule(ActivityScheduled, fut, name=kind.name)
            if fut is not None and fut.is_cancelled:
                self._schedules[ev.event_id].state = "cancelled"
            if live:
                self.result.worker_items.append(
                    ActivityExecute(
                        self.instance_id, self.execution_id, ev.event_id, kind.name, kind.input,
                        kind.session_id, kind.tag, self.handler.name, action.attempt,
                    )
                )
        elif isinstance(kind, TimerCreated):
            self._schedules[ev.event_id] = _Schedule(TimerCreated, fut, state="cancelled" if fut and fut.is_cancelled
                                                     else "open")
            if live:
                self.result.orchestrator_items.append(
                    TimerDue(self.instance_id, self.execution_id, ev.event_id, kind.fire_at_ms)
                )
        elif isinstance(kind, SubOrchestrationScheduled):
            self._schedules[ev.event_id] = _Schedule(SubOrchestrationScheduled, fut, name=kind.name,
                                                     instance=kind.instance)
            if fut is not None and fut.is_cancelled:
                self._schedules[ev.event_id].state = "cancelled"
            if live:
                self.result.orchestrator_items.append(
                    StartOrchestration(
                        kind.instance, kind.name, kind.input, kind.version,
                        parent_instance=self.instance_id, parent_id=ev.event_id,
                        parent_execution_id=self.execution_id,
                    )
                )
        elif isinstance(kind, OrchestrationChained):
            if live:
                self.result.orchestrator_items.append(
                    StartOrchestration(kind.instance, kind.name, kind.input, kind.version)
                )
        elif isinstance(kind, (ExternalSubscribed, QueueSubscribed)):
            assert fut is not None
            space = ("event" if isinstance(kind, ExternalSubscribed) else "queue", kind.name)
            if fut.is_cancelled:
                return
            buf = self._buffers.get(space)
            if buf:
                self._deliver(fut, space, buf.popleft())
            else:
                self._subs.setdefault(space, collections.deque()).append(fut)
                self._leaf_sub[id(fut)] = space
        elif isinstance(kind, CustomStatusUpdated):
            self._custom_status_set = True
            self._custom_status = kind.status
        elif isinstance(kind, ActivityCancelRequested):
            if live and action.target is not None and action.target.action is not None:
                self.result.cancelled_activities.append(
                    (self.instance_id, self.execution_id, action.target.action.event_id or 0)
                )
        elif isinstance(kind, SubOrchestrationCancelRequested):
            if live and action.target is not None and action.target.action is not None:
                sched = self._schedules.get(action.target.action.event_id or 0)
                if sched is not None:
                    self.result.orchestrator_items.append(
                        CancelInstance(sched.instance, "parent dropped sub-orchestration future")
                    )

    def _deliver(self, fut: LeafFuture, space: tuple[str, str], data: str | None) -> None:
        fut.resolve_with(lambda: self.codec.decode_event_data(space[1], data))

    def _replay_decision(self, ev: Event) -> None:
        if not self._pending:
            if self._finished or self._can is not None:
                raise _nondeterministic(
                    f"history has {_describe(ev.kind)} at event {ev.event_id}, but the orchestration code "
                    "finished without scheduling it"
                )
            raise _nondeterministic(
                f"history has {_describe(ev.kind)} at event {ev.event_id}, but the orchestration code "
                "scheduled nothing there"
            )
        action = self._pending.popleft()
        if not self._matches(action, ev):
            raise _nondeterministic(
                f"history has {_describe(ev.kind)} at event {ev.event_id}, but the orchestration code "
                f"scheduled {_describe(action.kind)}"
            )
        self._bind(action, ev, live=False)
        self._poll()

    def _flush(self) -> None:
        """Turn pending actions into new history events (past the end of history)."""
        while self._pending:
            action = self._pending.popleft()
            kind = action.kind
            if isinstance(kind, SubOrchestrationScheduled) and action.auto_instance:
                # Unique across continue-as-new: later executions put their execution id in the child id.
                suffix = (str(self._next_event_id) if self.execution_id == 1
                          else f"{self.execution_id}.{self._next_event_id}")
                kind = SubOrchestrationScheduled(
                    kind.name, f"{self.instance_id}::sub::{suffix}", kind.input, kind.version
                )
                action.kind = kind
            source = None
            if action.target is not None and action.target.action is not None:
                source = action.target.action.event_id
            ev = self._new_event(kind, source)
            self._bind(action, ev, live=True)
            self._poll()

    def _new_event(self, kind: Any, source: int | None = None) -> Event:
        ev = Event(self._next_event_id, kind, source, self.now_ms)
        self._next_event_id += 1
        self.result.history_delta.append(ev)
        return ev

    # ------------------------------------------------------------------ completions
    def _apply_completion(self, ev: Event, persisted: bool) -> None:
        kind = ev.kind
        sched = self._schedules.get(ev.source_event_id or -1)
        expected = {
            ActivityCompleted: ActivityScheduled,
            ActivityFailedEvent: ActivityScheduled,
            TimerFired: TimerCreated,
            SubOrchestrationCompleted: SubOrchestrationScheduled,
            SubOrchestrationFailedEvent: SubOrchestrationScheduled,
        }[type(kind)]
        if sched is None:
            raise _nondeterministic(
                f"history has {_describe(kind)} at event {ev.event_id} for event {ev.source_event_id}, "
                "which the orchestration code never scheduled"
            )
        if sched.kind is not expected:
            raise _nondeterministic(
                f"history has {kind_name(kind)} at event {ev.event_id} completing event "
                f"{ev.source_event_id}, which is a {sched.kind.__name__}, not a {expected.__name__}"
            )
        if sched.state == "completed":
            raise _nondeterministic(
                f"history has {kind_name(kind)} at event {ev.event_id} for event {ev.source_event_id}, "
                "which was already completed"
            )
        if sched.state == "cancelled":
            sched.state = "completed"
            return
        sched.state = "completed"
        fut = sched.future
        if isinstance(kind, (ActivityFailedEvent, SubOrchestrationFailedEvent)) and kind.details.category != "application":
            # system errors of activities and children fail this orchestration too
            raise _Fail(kind.details)
        if fut is None:
            return
        if isinstance(kind, ActivityCompleted):
            fut.resolve_with(lambda: self.codec.decode_activity_result(sched.name, kind.result))
        elif isinstance(kind, ActivityFailedEvent):
            fut.reject(ActivityFailed(kind.details))
        elif isinstance(kind, TimerFired):
            fut.resolve(None)
        elif isinstance(kind, SubOrchestrationCompleted):
            fut.resolve_with(lambda: self.codec.decode_sub_result(sched.name, kind.result))
        elif isinstance(kind, SubOrchestrationFailedEvent):
            fut.reject(SubOrchestrationFailed(kind.details))
        self._poll()

    def _apply_arrival(self, ev: Event) -> None:
        kind = ev.kind
        assert isinstance(kind, (ExternalEvent, QueueEventDelivered))
        space = ("event" if isinstance(kind, ExternalEvent) else "queue", kind.name)
        subs = self._subs.get(space)
        if subs:
            fut = subs.popleft()
            self._leaf_sub.pop(id(fut), None)
            self._deliver(fut, space, kind.data)
            self._poll()
        else:
            self._buffers.setdefault(space, collections.deque()).append(kind.data)

    def _apply(self, ev: Event, persisted: bool) -> None:
        self.current_ms = ev.timestamp_ms if persisted else self.now_ms
        kind = ev.kind
        if isinstance(kind, OrchestrationStarted):
            self._start(kind)
        elif isinstance(kind, DECISION_KINDS):
            self._replay_decision(ev)
        elif isinstance(kind, (ActivityCompleted, ActivityFailedEvent, TimerFired, SubOrchestrationCompleted,
                               SubOrchestrationFailedEvent)):
            self._apply_completion(ev, persisted)
        elif isinstance(kind, (ExternalEvent, QueueEventDelivered)):
            self._apply_arrival(ev)
        elif isinstance(kind, OrchestrationCancelRequested):
            self._cancel_reason = kind.reason
        else:
            raise _nondeterministic(f"unexpected {_describe(kind)} at event {ev.event_id} in a running execution")

    def _start(self, started: OrchestrationStarted) -> None:
        self._started = started
        for queue, data in started.carry_forward:
            self._buffers.setdefault(("queue", queue), collections.deque()).append(data)
        if started.initial_custom_status is not None:
            self._custom_status = started.initial_custom_status
            try:  # what clients see: the carried status as plain JSON
                self.ctx.custom_status = self.codec.decode_event_data("custom status", started.initial_custom_status)
            except Exception:  # noqa: BLE001 - unreadable carried status: the code sees None, clients the text
                self.ctx.custom_status = None
        self._kv = dict(started.initial_values)
        if self._cancel_first:
            return  # a cancel queued before the first turn wins: the code never runs
        try:
            self._coro = self.handler.start(self.ctx, started.input)
        except BaseException as exc:  # noqa: BLE001 - the input could not become the code's argument
            what = f"input of orchestration {self.handler.name!r}"
            kind = "BadInput" if isinstance(exc, TypeError) else "OrchestrationFailed"
            raise _Fail(ErrorDetails(
                "application", kind,
                limits.truncate_message(f"{what} cannot be passed to the code: {type(exc).__name__}: {exc}"),
            )) from None
        self._poll()

    # ------------------------------------------------------------------ messages
    def _message_event(self, msg: WorkItem, completed: set[int]) -> Any:
        """Convert an incoming message to an event kind (or None to drop it), with its source id."""
        if isinstance(msg, (ActivityResult, ActivityError, TimerDue)):
            if msg.execution_id != self.execution_id:
                return None
            source = msg.id
            if isinstance(msg, ActivityResult):
                kind: Any = ActivityCompleted(msg.result)
            elif isinstance(msg, ActivityError):
                kind = ActivityFailedEvent(msg.details)
            else:
                kind = TimerFired(msg.fire_at_ms)
        elif isinstance(msg, (SubOrchResult, SubOrchError)):
            if msg.parent_execution_id != self.execution_id:
                return None
            source = msg.parent_id
            kind = (
                SubOrchestrationCompleted(msg.result) if isinstance(msg, SubOrchResult)
                else SubOrchestrationFailedEvent(msg.details)
            )
        elif isinstance(msg, ExternalRaised):
            return ExternalEvent(msg.name, msg.data), None
        elif isinstance(msg, QueueMessage):
            return QueueEventDelivered(msg.name, msg.data), None
        elif isinstance(msg, CancelInstance):
            if self._cancel_reason is not None:
                return None
            return OrchestrationCancelRequested(msg.reason), None
        else:
            return None  # duplicate starts and anything else are ignored
        if source in completed:
            return None  # duplicate delivery
        completed.add(source)
        return kind, source

    # ------------------------------------------------------------------ the turn
    def run(self) -> TurnResult:
        """Replay the history, apply the new messages, and return what to commit. Failures of the code or
        of the history (an exception, nondeterminism, a bad await) end the instance Failed in the result."""
        try:
            try:
                self._run()
            except _Fail as f:
                self._fail = f.details
            result = self._finalize()
            result.warnings.extend(self.cleanup_errors)
            return result
        finally:
            self._release()

    def _release(self) -> None:
        """Drop what the turn holds once its result is taken. The context, the futures, the coroutine and
        an escaped exception's traceback all refer back to the turn; cut here, the whole graph is freed
        at once by reference counting instead of waiting for (and feeding) the cyclic garbage collector."""
        for action in self._pending:
            if action.future is not None:
                action.future.action = None  # a future and its action refer to each other
        for sched in self._schedules.values():
            if sched.future is not None:
                sched.future.action = None
        self._pending.clear()
        self._schedules.clear()
        self._subs.clear()
        self._buffers.clear()
        self._leaf_sub.clear()
        self._tasks.clear()
        self._current_task = None
        self._coro = None
        self._output = None
        self._app_error = None
        del self.ctx

    def _run(self) -> None:
        history = self.plan.history
        if history:
            if not isinstance(history[0].kind, OrchestrationStarted):  # pragma: no cover - plan_turn catches it
                raise _Fail(
                    ErrorDetails(
                        "configuration",
                        "CorruptedHistory",
                        f"corrupted history: the first event is {history[0].type_name}, not OrchestrationStarted",
                    )
                )
            self.replaying = True
            for ev in history:
                self._apply(ev, persisted=True)
                if self._cancel_reason is not None:
                    break
            self.replaying = False
            self.current_ms = self.now_ms
        else:
            start = self.plan.start
            assert start is not None
            self._cancel_first = any(isinstance(m, CancelInstance) for m in self.plan.messages)
            ev = self._new_event(_started_event(start, self.handler.name, self.handler.version, carry=True))
            self._apply(ev, persisted=False)
        self._flush()
        completed = {
            e.source_event_id
            for e in history
            if isinstance(e.kind, (ActivityCompleted, ActivityFailedEvent, TimerFired, SubOrchestrationCompleted,
                                   SubOrchestrationFailedEvent))
        }
        leftovers: list[WorkItem] = []
        # A cancel in the batch wins over whatever else arrived with it (it is applied first).
        messages = sorted(self.plan.messages, key=lambda m: not isinstance(m, CancelInstance))
        for msg in messages:
            if self._finished or self._can is not None or self._cancel_reason is not None:
                leftovers.append(msg)
                if (self._finished and self._can is None and self._cancel_reason is None and self._fail is None
                        and isinstance(msg, (ExternalRaised, QueueMessage))):
                    # Arrived with the completion: recorded (not delivered), so history shows every event
                    # the instance received.
                    arrived = self._message_event(msg, completed)  # type: ignore[arg-type]
                    if arrived is not None:
                        self._new_event(arrived[0], arrived[1])
                continue
            converted = self._message_event(msg, completed)  # type: ignore[arg-type]
            if converted is None:
                continue
            kind, source = converted
            if source is not None and source not in self._schedules:
                raise _nondeterministic(
                    f"received {kind_name(kind)} for event {source}, which this execution never scheduled"
                )
            ev = self._new_event(kind, source)
            self._apply(ev, persisted=False)
            self._flush()
        self._leftovers = leftovers

    def _finalize(self) -> TurnResult:
        r = self.result
        started = self._started
        if started is not None:
            r.parent_instance = started.parent_instance
        self._close_all()
        terminal: Any = None
        if self._cancel_reason is not None and self._fail is None:
            self._fail = ErrorDetails("application", "Cancelled", f"canceled: {self._cancel_reason}")
        if self._fail is not None:
            terminal = OrchestrationFailed(self._fail)
            r.status, r.error = Status.FAILED, self._fail
        elif self._can is not None:
            input_text, version = self._can
            terminal = OrchestrationContinuedAsNew(input_text)
            r.status, r.output = Status.CONTINUED_AS_NEW, input_text
        elif self._finished and self._app_error is not None:
            err = self._app_error
            details = getattr(err, "details", None)
            if not isinstance(details, ErrorDetails):
                details = ErrorDetails("application", "OrchestrationFailed", describe_exception(err))
            self._fail = details
            terminal = OrchestrationFailed(details)
            r.status, r.error = Status.FAILED, details
        elif self._finished:
            try:
                out = self.encode(self._output, f"output of orchestration {self.handler.name!r}")
            except Exception as exc:  # noqa: BLE001
                found = getattr(exc, "details", None)
                details = found if isinstance(found, ErrorDetails) else ErrorDetails(
                    "application", "OrchestrationFailed", describe_exception(exc))
                terminal = OrchestrationFailed(details)
                r.status, r.error = Status.FAILED, details
            else:
                terminal = OrchestrationCompleted(out)
                r.status, r.output = Status.COMPLETED, out
        elif not self.plan.history:
            r.status = Status.RUNNING
        if terminal is None:
            return r
        self._cancel_outstanding(r.status or Status.FAILED)
        self._new_event(terminal)
        parent = _parent_of(started)
        if parent is not None and r.status != Status.CONTINUED_AS_NEW:
            if r.status == Status.COMPLETED:
                r.orchestrator_items.append(SubOrchResult(*parent, r.output))
            else:
                assert r.error is not None
                r.orchestrator_items.append(SubOrchError(*parent, r.error))
        if r.status == Status.CONTINUED_AS_NEW and self._can is not None:
            carry: list[tuple[str, str | None]] = []
            for (space, name), buf in self._buffers.items():
                if space == "queue":
                    carry.extend((name, d) for d in buf)
            carry.extend((m.name, m.data) for m in getattr(self, "_leftovers", []) if isinstance(m, QueueMessage))
            custom = self._custom_status
            r.orchestrator_items.append(
                ContinueAsNew(
                    self.instance_id,
                    self.handler.name,
                    self._can[0],
                    self._can[1],
                    self.execution_id + 1,
                    carry,
                    custom,
                    started.parent_instance if started else None,
                    started.parent_id if started else None,
                    started.parent_execution_id if started else None,
                    dict(self._kv),
                )
            )
        return r

    def _cancel_outstanding(self, status: Status) -> None:
        reason = f"orchestration_terminal_{status.lower()}"
        for event_id, sched in list(self._schedules.items()):
            if sched.state != "open":
                continue
            sched.state = "cancelled"
            if sched.kind is ActivityScheduled:
                self._new_event(ActivityCancelRequested(reason), event_id)
                self.result.cancelled_activities.append((self.instance_id, self.execution_id, event_id))
            elif sched.kind is SubOrchestrationScheduled:
                self._new_event(SubOrchestrationCancelRequested(reason), event_id)
                self.result.orchestrator_items.append(CancelInstance(sched.instance, "parent canceled"))

    def _close_all(self) -> None:
        self._pending.clear()
        for task in self._tasks:
            task.close()
        if self._coro is not None:
            self.close_coroutine(self._coro)
        self._pending.clear()


def run_turn(
    *,
    instance_id: str,
    plan: TurnPlan,
    handler: Handler,
    codec: Codec,
    now_ms: int,
    logger: Any = None,
) -> TurnResult:
    """Run one turn of ``handler`` for ``instance_id`` as described by ``plan`` (see ``plan_turn``)."""
    return Turn(instance_id=instance_id, plan=plan, handler=handler, codec=codec, now_ms=now_ms, logger=logger).run()


def fail_instance(
    *,
    instance_id: str,
    plan: TurnPlan,
    details: ErrorDetails,
    now_ms: int,
    name: str,
    version: str,
) -> TurnResult:
    """A turn that ends the instance as Failed without running code (poison, corrupted history, a limit).
    Writes ``OrchestrationStarted`` first when the execution has no history yet, cancels the activities
    and children still open in history (as a finished orchestration does), and tells a parent."""
    r = TurnResult(execution_id=plan.execution_id, name=name, version=version, status=Status.FAILED, error=details)
    history = plan.history
    next_id = len(history) + 1
    open_work: dict[int, Any] = {}
    for ev in history:
        if isinstance(ev.kind, (ActivityScheduled, SubOrchestrationScheduled)):
            open_work[ev.event_id] = ev.kind
        elif isinstance(ev.kind, (ActivityCompleted, ActivityFailedEvent, ActivityCancelRequested,
                                  SubOrchestrationCompleted, SubOrchestrationFailedEvent,
                                  SubOrchestrationCancelRequested)):
            open_work.pop(ev.source_event_id or -1, None)
    reason = "orchestration_terminal_failed"
    for event_id, kind in open_work.items():
        if isinstance(kind, ActivityScheduled):
            r.history_delta.append(Event(next_id, ActivityCancelRequested(reason), event_id, now_ms))
            r.cancelled_activities.append((instance_id, plan.execution_id, event_id))
        else:
            r.history_delta.append(Event(next_id, SubOrchestrationCancelRequested(reason), event_id, now_ms))
            r.orchestrator_items.append(CancelInstance(kind.instance, "parent failed"))
        next_id += 1
    started: OrchestrationStarted | None = None
    if history and isinstance(history[0].kind, OrchestrationStarted):
        started = history[0].kind
    elif not history:
        started = _started_event(plan.start, name, version, carry=False)
        r.history_delta.append(Event(next_id, started, None, now_ms))
        next_id += 1
    if started is not None:
        r.parent_instance = started.parent_instance
    r.history_delta.append(Event(next_id, OrchestrationFailed(details), None, now_ms))
    parent = _parent_of(started)
    if parent is not None:
        r.orchestrator_items.append(SubOrchError(*parent, details))
    return r


def _started_event(
    start: StartOrchestration | ContinueAsNew | None, name: str, version: str, *, carry: bool
) -> OrchestrationStarted:
    """The first event of an execution started by ``start`` (with a continue-as-new's carried messages and
    custom status if ``carry``)."""
    can = start if carry and isinstance(start, ContinueAsNew) else None
    return OrchestrationStarted(
        name=name,
        version=version,
        input=start.input if start else None,
        parent_instance=start.parent_instance if start else None,
        parent_id=start.parent_id if start else None,
        parent_execution_id=start.parent_execution_id if start else None,
        carry_forward=list(can.carry_forward) if can else [],
        initial_custom_status=can.initial_custom_status if can else None,
        initial_values=dict(can.initial_values) if can else {},
    )


def _parent_of(started: OrchestrationStarted | None) -> tuple[str, int, int] | None:
    """``(instance, execution id, event id)`` of the parent that scheduled this execution, if any."""
    if started is None or not started.parent_instance:
        return None
    return started.parent_instance, started.parent_execution_id or 1, started.parent_id or 0
