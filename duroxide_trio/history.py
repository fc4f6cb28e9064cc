"""History events, work items and error details, with a JSON codec.

Pure data: no I/O, no clock. Every payload (inputs, outputs, event data) is JSON *text*; the registry
turns typed values into that text and back. The codec tolerates unknown fields and fills missing
optional fields with their defaults, so histories written by older or newer versions stay readable.
"""

from __future__ import annotations

import enum
import json
import re
import warnings
from typing import Any, Literal

import attrs
import cattrs
import orjson

from .errors import DuroxideError, ErrorDetails

__all__ = [
    "ErrorDetails",
    "Status",
    "TERMINAL_STATUSES",
    "Event",
    "EventKind",
    "WorkItem",
    "decode_event",
    "decode_work_item",
    "encode_event",
    "encode_work_item",
    "HistoryDecodeError",
    "UnknownEventKind",
    "kind_name",
    "kv_state",
]

#: Old names of event classes renamed because they clashed with exceptions (still importable, deprecated).
_DEPRECATED_NAMES = {
    "ActivityFailed": "ActivityFailedEvent",
    "SubOrchestrationFailed": "SubOrchestrationFailedEvent",
}


def __getattr__(name: str) -> Any:
    """The renamed event classes under their old names, with a ``DeprecationWarning``."""
    new = _DEPRECATED_NAMES.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"duroxide_trio.history.{name} is now {new} (the exception users catch is duroxide_trio.{name})",
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[new]

class Status(enum.StrEnum):
    """The status of an instance (``OrchestrationState.status``) or of one execution
    (``ExecutionInfo.status``). The one spelling of statuses in the package: providers store the value.

    ``NOT_FOUND``: no such instance, or it was started but its first turn has not been committed yet
    (instances are created by their first turn). ``RUNNING``: the current execution has not finished
    (also right after a continue-as-new, until the next execution starts). ``COMPLETED`` and ``FAILED``
    are terminal. ``CONTINUED_AS_NEW`` is only ever the status of an *execution* that ended by
    continuing as new (``Client.list_executions``); an instance is never reported in it. The value is the
    stored spelling (``"Running"``); ``str(status)`` gives it too; a ``Status`` compares equal to its text.
    """

    NOT_FOUND = "NotFound"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CONTINUED_AS_NEW = "ContinuedAsNew"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """True for ``COMPLETED`` and ``FAILED``: the instance will not change any more."""
        return self in (Status.COMPLETED, Status.FAILED)


#: Execution statuses after which an execution never changes again.
TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CONTINUED_AS_NEW})


Category = Literal["application", "infrastructure", "configuration", "poison"]


# ---------------------------------------------------------------------------------------------------------
# Event kinds. Each kind is a small frozen attrs class; the envelope (``Event``) carries ids and time.


@attrs.frozen
class OrchestrationStarted:
    """First event of every execution, written by the turn that starts it. ``name``/``version``: the
    orchestration and the version that runs; ``input``: its JSON input; ``parent_instance``/``parent_id``
    (the parent's ``SubOrchestrationScheduled`` event id)/``parent_execution_id``: set for a
    sub-orchestration; ``carry_forward``: ``(queue, data)`` messages not yet dequeued when the previous
    execution continued as new; ``initial_custom_status``: the custom status carried over with them;
    ``initial_values``: the key-value state (key to JSON value) carried over by a continue-as-new."""

    name: str
    version: str
    input: str | None = None
    parent_instance: str | None = None
    parent_id: int | None = None
    parent_execution_id: int | None = None
    carry_forward: list[tuple[str, str | None]] = attrs.field(factory=list)
    initial_custom_status: str | None = None
    initial_values: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class OrchestrationCompleted:
    """Terminal: the code returned; ``output`` is the return value as JSON (``None`` for ``None``)."""

    output: str | None = None


@attrs.frozen
class OrchestrationFailed:
    """Terminal: the execution failed (the code raised, was cancelled, or a system error); ``details``."""

    details: ErrorDetails


@attrs.frozen
class OrchestrationContinuedAsNew:
    """Terminal for this execution: ``ctx.continue_as_new`` ended it; ``input`` is the next one's input."""

    input: str | None = None


@attrs.frozen
class OrchestrationCancelRequested:
    """A ``CancelInstance`` arrived (``Client.cancel_instance`` or a cancelling parent); ``reason`` is its
    text. The execution then ends Failed with kind ``Cancelled``."""

    reason: str = ""


@attrs.frozen
class ActivityScheduled:
    """Decision: ``ctx.schedule_activity`` (one per retry attempt). Its ``event_id`` is the activity id;
    ``name``, JSON ``input``, ``session_id`` and ``tag`` are what the code passed (checked on replay)."""

    name: str
    input: str | None = None
    session_id: str | None = None
    tag: str | None = None


@attrs.frozen
class ActivityCompleted:
    """Completion of the ``ActivityScheduled`` named by ``source_event_id``; ``result`` is its JSON result."""

    result: str | None = None


@attrs.frozen
class ActivityFailedEvent:
    """Failure of the ``ActivityScheduled`` named by ``source_event_id``; ``details`` says why (stored with
    the type tag ``"ActivityFailed"``; orchestration code sees it as the ``ActivityFailed`` exception)."""

    details: ErrorDetails


@attrs.frozen
class ActivityCancelRequested:
    """Decision: the code dropped the activity (a ``select`` loser: ``reason`` ``"dropped_future"``) or the
    execution ended with it open (``"orchestration_terminal_<status>"``); ``source_event_id`` names the
    ``ActivityScheduled``, and its work item is cancelled in the same commit."""

    reason: str = ""


@attrs.frozen
class TimerCreated:
    """Decision: ``ctx.schedule_timer``; ``fire_at_ms`` is the deterministic time it fires (epoch ms)."""

    fire_at_ms: int


@attrs.frozen
class TimerFired:
    """Completion of the ``TimerCreated`` named by ``source_event_id``; ``fire_at_ms`` as scheduled."""

    fire_at_ms: int = 0


@attrs.frozen
class ExternalSubscribed:
    """Decision: ``ctx.wait_for_event(name)``."""

    name: str


@attrs.frozen
class ExternalEvent:
    """Arrival of an external event ``name`` (``Client.raise_event``) with JSON ``data``; it goes to the
    oldest open subscription to ``name``, or is buffered until the code subscribes."""

    name: str
    data: str | None = None


@attrs.frozen
class ExternalSubscribedCancelled:
    """Decision: the code dropped a ``wait_for_event`` future (a ``select`` loser); ``source_event_id``
    names the ``ExternalSubscribed``; ``reason`` says why."""

    reason: str = ""


@attrs.frozen
class QueueSubscribed:
    """Decision: ``ctx.dequeue_event(name)`` on the FIFO mailbox ``name``."""

    name: str


@attrs.frozen
class QueueEventDelivered:
    """Arrival of a mailbox message for queue ``name`` (``Client.enqueue_event``) with JSON ``data``; it goes
    to the oldest open ``dequeue_event`` of ``name``, or waits in the mailbox."""

    name: str
    data: str | None = None


@attrs.frozen
class QueueSubscriptionCancelled:
    """Decision: the code dropped a ``dequeue_event`` future (a ``select`` loser); ``source_event_id``
    names the ``QueueSubscribed``; ``reason`` says why."""

    reason: str = ""


@attrs.frozen
class SubOrchestrationScheduled:
    """Decision: ``ctx.schedule_sub_orchestration``. ``name``, JSON ``input`` and the requested
    ``version`` (``None``: the latest) of the child; ``instance`` is its id (``<parent>::sub::<event id>``
    unless the code chose one)."""

    name: str
    instance: str
    input: str | None = None
    version: str | None = None


@attrs.frozen
class SubOrchestrationCompleted:
    """Completion of the ``SubOrchestrationScheduled`` named by ``source_event_id``; ``result`` is the
    child's JSON output."""

    result: str | None = None


@attrs.frozen
class SubOrchestrationFailedEvent:
    """Failure of the ``SubOrchestrationScheduled`` named by ``source_event_id``; ``details`` says why
    (stored with the type tag ``"SubOrchestrationFailed"``; orchestration code sees it as the
    ``SubOrchestrationFailed`` exception)."""

    details: ErrorDetails


@attrs.frozen
class SubOrchestrationCancelRequested:
    """Decision: the code dropped a child (a ``select`` loser) or the execution ended with it running;
    ``source_event_id`` names the ``SubOrchestrationScheduled`` and a ``CancelInstance`` goes to the child."""

    reason: str = ""


@attrs.frozen
class OrchestrationChained:
    """Decision: ``ctx.start_orchestration`` (detached, no parent link): ``name``, ``instance``, JSON
    ``input`` and requested ``version`` of the started orchestration."""

    name: str
    instance: str
    input: str | None = None
    version: str | None = None


@attrs.frozen
class CustomStatusUpdated:
    """Decision: ``ctx.set_custom_status``; ``status`` is the value as JSON (``None``: cleared)."""

    status: str | None = None


@attrs.frozen
class KeyValueSet:
    """Decision: ``ctx.set_value``; ``key`` now holds ``value`` (JSON text). The provider's materialised
    key-value table is updated in the same commit as this event."""

    key: str
    value: str


@attrs.frozen
class KeyValueCleared:
    """Decision: ``ctx.clear_value(key)`` (``key`` set) or ``ctx.clear_values()`` (``key`` ``None``:
    every key of the instance)."""

    key: str | None = None


def kv_state(events: Any, initial: dict[str, str] | None = None) -> dict[str, str]:
    """The key-value state after ``events`` (key to JSON value), starting from ``initial`` (or from the
    ``initial_values`` of an ``OrchestrationStarted`` among them). Pure; what the provider's table holds
    after the same events."""
    state: dict[str, str] = dict(initial or {})
    for ev in events:
        kind = ev.kind
        if isinstance(kind, OrchestrationStarted):
            state = dict(kind.initial_values)
        elif isinstance(kind, KeyValueSet):
            state[kind.key] = kind.value
        elif isinstance(kind, KeyValueCleared):
            if kind.key is None:
                state.clear()
            else:
                state.pop(kind.key, None)
    return state


EventKind = (
    OrchestrationStarted
    | OrchestrationCompleted
    | OrchestrationFailed
    | OrchestrationContinuedAsNew
    | OrchestrationCancelRequested
    | ActivityScheduled
    | ActivityCompleted
    | ActivityFailedEvent
    | ActivityCancelRequested
    | TimerCreated
    | TimerFired
    | ExternalSubscribed
    | ExternalEvent
    | ExternalSubscribedCancelled
    | QueueSubscribed
    | QueueEventDelivered
    | QueueSubscriptionCancelled
    | SubOrchestrationScheduled
    | SubOrchestrationCompleted
    | SubOrchestrationFailedEvent
    | SubOrchestrationCancelRequested
    | OrchestrationChained
    | CustomStatusUpdated
    | KeyValueSet
    | KeyValueCleared
)

#: Stored type tags that are not the class name (the class was renamed; the stored tag never changes).
_RENAMED_TAGS: dict[type, str] = {
    ActivityFailedEvent: "ActivityFailed",
    SubOrchestrationFailedEvent: "SubOrchestrationFailed",
}

#: The event kind classes by their stored type tag (the JSON ``type`` field).
EVENT_KINDS: dict[str, type] = {
    _RENAMED_TAGS.get(cls, cls.__name__): cls
    for cls in (
        OrchestrationStarted,
        OrchestrationCompleted,
        OrchestrationFailed,
        OrchestrationContinuedAsNew,
        OrchestrationCancelRequested,
        ActivityScheduled,
        ActivityCompleted,
        ActivityFailedEvent,
        ActivityCancelRequested,
        TimerCreated,
        TimerFired,
        ExternalSubscribed,
        ExternalEvent,
        ExternalSubscribedCancelled,
        QueueSubscribed,
        QueueEventDelivered,
        QueueSubscriptionCancelled,
        SubOrchestrationScheduled,
        SubOrchestrationCompleted,
        SubOrchestrationFailedEvent,
        SubOrchestrationCancelRequested,
        OrchestrationChained,
        CustomStatusUpdated,
        KeyValueSet,
        KeyValueCleared,
    )
}

_TAG_OF: dict[type, str] = {cls: tag for tag, cls in EVENT_KINDS.items()}


def kind_name(kind: object) -> str:
    """The stored type tag of an event kind (``"ActivityFailed"`` for an ``ActivityFailedEvent``); the
    class name for anything that is not an event kind."""
    return _TAG_OF.get(type(kind)) or type(kind).__name__


TERMINAL_KINDS = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)
#: Events emitted by orchestration code (matched in order against the code's actions on replay).
DECISION_KINDS = (
    ActivityScheduled,
    TimerCreated,
    ExternalSubscribed,
    QueueSubscribed,
    SubOrchestrationScheduled,
    OrchestrationChained,
    CustomStatusUpdated,
    KeyValueSet,
    KeyValueCleared,
    ActivityCancelRequested,
    ExternalSubscribedCancelled,
    QueueSubscriptionCancelled,
    SubOrchestrationCancelRequested,
)
#: Events that complete a scheduling event (``source_event_id`` points at it).
COMPLETION_KINDS = (
    ActivityCompleted,
    ActivityFailedEvent,
    TimerFired,
    SubOrchestrationCompleted,
    SubOrchestrationFailedEvent,
)


@attrs.frozen
class Event:
    """One history event. ``event_id`` is 1-based and dense within an execution.

    Attributes:
        event_id: Position in the execution's history (1, 2, 3 ...).
        kind: What happened: one of the event kind classes of this module (``ActivityScheduled`` ...).
        source_event_id: For completions and cancellations, the ``event_id`` of the scheduling event they
            refer to; ``None`` otherwise.
        timestamp_ms: When the turn that wrote it ran (epoch ms); ``ctx.now()`` replays these.
    """

    event_id: int
    kind: EventKind
    source_event_id: int | None = None
    timestamp_ms: int = 0

    @property
    def type_name(self) -> str:
        """The kind's stored type tag (``"ActivityScheduled"``), the JSON ``type`` field."""
        return kind_name(self.kind)

    def is_terminal(self) -> bool:
        """True for the events that end an execution: completed, failed, continued as new."""
        return isinstance(self.kind, TERMINAL_KINDS)


# ---------------------------------------------------------------------------------------------------------
# Work items (queue messages). Everything except ActivityExecute goes to the orchestrator queue and is
# routed by ``target_instance``.


@attrs.frozen
class StartOrchestration:
    """Starts an execution of ``name`` as ``instance`` with JSON ``input`` and requested ``version``
    (``None``: the latest). Sent by ``Client.start_orchestration``, by a parent for a sub-orchestration
    (``parent_instance``, ``parent_id`` = its ``SubOrchestrationScheduled`` event id,
    ``parent_execution_id``) and by ``ctx.start_orchestration``; ``execution_id`` is 1."""

    instance: str
    name: str
    input: str | None = None
    version: str | None = None
    parent_instance: str | None = None
    parent_id: int | None = None
    parent_execution_id: int | None = None
    execution_id: int = 1

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


@attrs.frozen
class ActivityExecute:
    """Worker-queue message: run activity ``name`` with JSON ``input`` for ``instance``/``execution_id``;
    ``id`` is the ``ActivityScheduled`` event id, ``session_id``/``tag`` as scheduled,
    ``orchestration_name`` the scheduling orchestration, ``attempt`` the ``RetryPolicy`` attempt."""

    instance: str
    execution_id: int
    id: int
    name: str
    input: str | None = None
    session_id: str | None = None
    tag: str | None = None
    orchestration_name: str | None = None
    attempt: int = 1  # the RetryPolicy attempt (1-based) this execution belongs to

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


@attrs.frozen
class ActivityResult:
    """Completion of an activity (``ActivityCompleted`` in duroxide)."""

    instance: str
    execution_id: int
    id: int
    result: str | None = None

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


@attrs.frozen
class ActivityError:
    """Failure of an activity (``ActivityFailed`` in duroxide)."""

    instance: str
    execution_id: int
    id: int
    details: ErrorDetails

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


@attrs.frozen
class TimerDue:
    """A durable timer's firing (``TimerFired``), visible at ``fire_at_ms``."""

    instance: str
    execution_id: int
    id: int
    fire_at_ms: int

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


@attrs.frozen
class ExternalRaised:
    """``Client.raise_event``: external event ``name`` with JSON ``data`` for ``instance`` (recorded as
    ``ExternalEvent``)."""

    instance: str
    name: str
    data: str | None = None

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


@attrs.frozen
class QueueMessage:
    """``Client.enqueue_event``: a message with JSON ``data`` for mailbox ``name`` of ``instance`` (recorded
    as ``QueueEventDelivered``)."""

    instance: str
    name: str
    data: str | None = None

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


@attrs.frozen
class SubOrchResult:
    """A child completed: its JSON ``result`` for ``parent_instance``/``parent_execution_id``, completing the
    parent's ``SubOrchestrationScheduled`` event ``parent_id`` (recorded as ``SubOrchestrationCompleted``)."""

    parent_instance: str
    parent_execution_id: int
    parent_id: int
    result: str | None = None

    @property
    def target_instance(self) -> str:
        """The parent instance the result goes to (``parent_instance``)."""
        return self.parent_instance


@attrs.frozen
class SubOrchError:
    """A child failed (or could not start): ``details`` for ``parent_instance``/``parent_execution_id``,
    failing the parent's event ``parent_id`` (recorded as ``SubOrchestrationFailed``)."""

    parent_instance: str
    parent_execution_id: int
    parent_id: int
    details: ErrorDetails

    @property
    def target_instance(self) -> str:
        """The parent instance the result goes to (``parent_instance``)."""
        return self.parent_instance


@attrs.frozen
class CancelInstance:
    """Cancel ``instance`` with ``reason`` (``Client.cancel_instance``, or a parent cancelling its child);
    recorded as ``OrchestrationCancelRequested``."""

    instance: str
    reason: str = ""

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


@attrs.frozen
class ContinueAsNew:
    """Starts execution ``execution_id`` of ``instance`` after ``ctx.continue_as_new``: ``name``, JSON
    ``input``, requested ``version``, undelivered mailbox messages (``carry_forward``), the custom status
    (``initial_custom_status``), the parent link (``parent_*``) and the key-value state (``initial_values``)
    carried over."""

    instance: str
    name: str
    input: str | None = None
    version: str | None = None
    execution_id: int = 2
    carry_forward: list[tuple[str, str | None]] = attrs.field(factory=list)
    initial_custom_status: str | None = None
    parent_instance: str | None = None
    parent_id: int | None = None
    parent_execution_id: int | None = None
    initial_values: dict[str, str] = attrs.field(factory=dict)

    @property
    def target_instance(self) -> str:
        """The instance this message belongs to (``instance``)."""
        return self.instance


WorkItem = (
    StartOrchestration
    | ActivityExecute
    | ActivityResult
    | ActivityError
    | TimerDue
    | ExternalRaised
    | QueueMessage
    | SubOrchResult
    | SubOrchError
    | CancelInstance
    | ContinueAsNew
)

WORK_ITEM_KINDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        StartOrchestration,
        ActivityExecute,
        ActivityResult,
        ActivityError,
        TimerDue,
        ExternalRaised,
        QueueMessage,
        SubOrchResult,
        SubOrchError,
        CancelInstance,
        ContinueAsNew,
    )
}


# ---------------------------------------------------------------------------------------------------------
# Codec

_conv = cattrs.Converter(forbid_extra_keys=False)
#: ``json.dumps(value, separators=(",", ":"))`` without building an encoder per call (same bytes).
_dumps = json.JSONEncoder(separators=(",", ":")).encode
#: A run of digits long enough to be an integer orjson would read as a float (it reads integers beyond
#: 64 bits as floats instead of failing); such texts are decoded by ``json`` (13-digit timestamps pass).
_LONG_NUMBER = re.compile(r"\d{16}")
_LONG_NUMBER_BYTES = re.compile(rb"\d{16}")


def _dumps_envelope(d: dict[str, Any]) -> str:
    """The stored text of an event or work item: orjson's compact JSON (~10x faster than ``json``),
    unless it fails (an integer beyond 64 bits, a lone surrogate) or is not ASCII: then ``json``'s, which
    escapes non-ASCII, so stored texts stay ASCII whatever the database's encoding. Only the decoded
    values of an envelope matter (payload texts inside it are strings, kept exactly), so the two
    encoders need not agree byte for byte (they differ in a few float spellings such as ``1e-05``)."""
    try:
        text: str = orjson.dumps(d).decode()
    except TypeError:
        return _dumps(d)
    return text if text.isascii() else _dumps(d)


def _loads_envelope(text: str | bytes) -> Any:
    """``json.loads(text)``, through orjson when that gives the same values (no NaN/Infinity, no integer
    too long for it, no lone surrogate: those, and any error, go to ``json`` and its message)."""
    try:
        if (_LONG_NUMBER if isinstance(text, str) else _LONG_NUMBER_BYTES).search(text) is None:  # type: ignore[arg-type]
            return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    return json.loads(text)


class HistoryDecodeError(DuroxideError, ValueError):
    """A stored event or work item could not be decoded."""


class UnknownEventKind(HistoryDecodeError):
    """A stored event has a ``type`` this engine does not know (written by a newer engine, most likely)."""

    def __init__(self, type_name: object, event_id: object = None) -> None:
        at = f" (event {event_id})" if event_id is not None else ""
        super().__init__(
            f"unknown event kind {type_name!r}{at}: this engine does not know it (written by a newer engine?)"
        )
        self.type_name = type_name
        self.event_id = event_id


def _unstructure_kind(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = _conv.unstructure(obj)
    return data


_ENVELOPE = frozenset({"event_id", "source_event_id", "timestamp_ms", "type"})


def event_to_dict(ev: Event) -> dict[str, Any]:
    """The JSON-ready dict of ``ev``: the kind's fields plus ``type``, ``event_id``, ``source_event_id``
    (only when set) and ``timestamp_ms``."""
    d = _unstructure_kind(ev.kind)
    d["type"] = ev.type_name
    d["event_id"] = ev.event_id
    if ev.source_event_id is not None:
        d["source_event_id"] = ev.source_event_id
    d["timestamp_ms"] = ev.timestamp_ms
    return d


def event_from_dict(d: dict[str, Any]) -> Event:
    """The event a dict from :func:`event_to_dict` describes (unknown fields ignored, missing optional
    fields defaulted).

    Raises:
        UnknownEventKind: (a ``HistoryDecodeError``) a ``type`` this engine does not know.
        HistoryDecodeError: A missing required field or a field of the wrong type.
    """
    type_name = d.get("type")
    cls = EVENT_KINDS.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise UnknownEventKind(d.get("type"), d.get("event_id"))
    try:
        fields = {k: v for k, v in d.items() if k not in _ENVELOPE}
        kind: Any = _conv.structure(fields, cls)
        return Event(
            event_id=int(d["event_id"]),
            kind=kind,
            source_event_id=d.get("source_event_id"),
            timestamp_ms=int(d.get("timestamp_ms", 0)),
        )
    except HistoryDecodeError:
        raise
    except Exception as exc:
        raise HistoryDecodeError(f"cannot decode history event {str(d)[:200]}: {exc}") from exc


def encode_event(ev: Event) -> str:
    """``ev`` as compact JSON text (the stored form)."""
    return _dumps_envelope(event_to_dict(ev))


def decode_event(text: str | bytes) -> Event:
    """The event stored as JSON ``text``.

    Raises:
        HistoryDecodeError: ``text`` is not JSON, not a JSON object, or not a valid event.
    """
    try:
        d = _loads_envelope(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise HistoryDecodeError(f"history event is not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise HistoryDecodeError("history event is not a JSON object")
    return event_from_dict(d)


def work_item_to_dict(item: WorkItem) -> dict[str, Any]:
    """The JSON-ready dict of ``item``: its fields plus ``type`` (the class name)."""
    d: dict[str, Any] = _conv.unstructure(item)
    d["type"] = type(item).__name__
    return d


def work_item_from_dict(d: dict[str, Any]) -> WorkItem:
    """The work item a dict from :func:`work_item_to_dict` describes (unknown fields ignored).

    Raises:
        HistoryDecodeError: Unknown ``type``, a missing required field or a field of the wrong type.
    """
    try:
        cls = WORK_ITEM_KINDS[d["type"]]
        fields = {k: v for k, v in d.items() if k != "type"}
        item: WorkItem = _conv.structure(fields, cls)
        return item
    except Exception as exc:
        raise HistoryDecodeError(f"cannot decode work item {str(d)[:200]}: {exc}") from exc


def encode_work_item(item: WorkItem) -> str:
    """``item`` as compact JSON text (the stored queue message)."""
    return _dumps_envelope(work_item_to_dict(item))


def decode_work_item(text: str | bytes) -> WorkItem:
    """The work item stored as JSON ``text``.

    Raises:
        HistoryDecodeError: ``text`` is not JSON, not a JSON object, or not a valid work item.
    """
    try:
        d = _loads_envelope(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise HistoryDecodeError(f"work item is not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise HistoryDecodeError("work item is not a JSON object")
    return work_item_from_dict(d)
