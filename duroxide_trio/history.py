"""History events, work items and error details, with a JSON codec.

Pure data: no I/O, no clock. Every payload (inputs, outputs, event data) is JSON *text*; the registry
turns typed values into that text and back. The codec tolerates unknown fields and fills missing
optional fields with their defaults, so histories written by older or newer versions stay readable.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import attrs
import cattrs

__all__ = [
    "ErrorDetails",
    "Event",
    "EventKind",
    "WorkItem",
    "decode_event",
    "decode_work_item",
    "encode_event",
    "encode_work_item",
    "HistoryDecodeError",
    "UnknownEventKind",
]

Category = Literal["application", "infrastructure", "configuration", "poison"]


@attrs.frozen
class ErrorDetails:
    """Why something failed. Only ``application`` errors are visible to orchestration code as exceptions;
    ``configuration`` (nondeterminism), ``infrastructure`` and ``poison`` fail the instance."""

    category: str
    kind: str
    message: str
    retryable: bool = False

    def display(self) -> str:
        return self.message


# ---------------------------------------------------------------------------------------------------------
# Event kinds. Each kind is a small frozen attrs class; the envelope (``Event``) carries ids and time.


@attrs.frozen
class OrchestrationStarted:
    name: str
    version: str
    input: str | None = None
    parent_instance: str | None = None
    parent_id: int | None = None
    parent_execution_id: int | None = None
    carry_forward: list[tuple[str, str | None]] = attrs.field(factory=list)
    initial_custom_status: str | None = None


@attrs.frozen
class OrchestrationCompleted:
    output: str | None = None


@attrs.frozen
class OrchestrationFailed:
    details: ErrorDetails


@attrs.frozen
class OrchestrationContinuedAsNew:
    input: str | None = None


@attrs.frozen
class OrchestrationCancelRequested:
    reason: str = ""


@attrs.frozen
class ActivityScheduled:
    name: str
    input: str | None = None
    session_id: str | None = None
    tag: str | None = None


@attrs.frozen
class ActivityCompleted:
    result: str | None = None


@attrs.frozen
class ActivityFailed:
    details: ErrorDetails


@attrs.frozen
class ActivityCancelRequested:
    reason: str = ""


@attrs.frozen
class TimerCreated:
    fire_at_ms: int


@attrs.frozen
class TimerFired:
    fire_at_ms: int = 0


@attrs.frozen
class ExternalSubscribed:
    name: str


@attrs.frozen
class ExternalEvent:
    name: str
    data: str | None = None


@attrs.frozen
class ExternalSubscribedCancelled:
    reason: str = ""


@attrs.frozen
class QueueSubscribed:
    name: str


@attrs.frozen
class QueueEventDelivered:
    name: str
    data: str | None = None


@attrs.frozen
class QueueSubscriptionCancelled:
    reason: str = ""


@attrs.frozen
class SubOrchestrationScheduled:
    name: str
    instance: str
    input: str | None = None
    version: str | None = None


@attrs.frozen
class SubOrchestrationCompleted:
    result: str | None = None


@attrs.frozen
class SubOrchestrationFailed:
    details: ErrorDetails


@attrs.frozen
class SubOrchestrationCancelRequested:
    reason: str = ""


@attrs.frozen
class OrchestrationChained:
    name: str
    instance: str
    input: str | None = None
    version: str | None = None


@attrs.frozen
class CustomStatusUpdated:
    status: str | None = None


EventKind = (
    OrchestrationStarted
    | OrchestrationCompleted
    | OrchestrationFailed
    | OrchestrationContinuedAsNew
    | OrchestrationCancelRequested
    | ActivityScheduled
    | ActivityCompleted
    | ActivityFailed
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
    | SubOrchestrationFailed
    | SubOrchestrationCancelRequested
    | OrchestrationChained
    | CustomStatusUpdated
)

EVENT_KINDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        OrchestrationStarted,
        OrchestrationCompleted,
        OrchestrationFailed,
        OrchestrationContinuedAsNew,
        OrchestrationCancelRequested,
        ActivityScheduled,
        ActivityCompleted,
        ActivityFailed,
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
        SubOrchestrationFailed,
        SubOrchestrationCancelRequested,
        OrchestrationChained,
        CustomStatusUpdated,
    )
}

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
    ActivityCancelRequested,
    ExternalSubscribedCancelled,
    QueueSubscriptionCancelled,
    SubOrchestrationCancelRequested,
)
#: Events that complete a scheduling event (``source_event_id`` points at it).
COMPLETION_KINDS = (
    ActivityCompleted,
    ActivityFailed,
    TimerFired,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
)


@attrs.frozen
class Event:
    """One history event. ``event_id`` is 1-based and dense within an execution."""

    event_id: int
    kind: EventKind
    source_event_id: int | None = None
    timestamp_ms: int = 0

    @property
    def type_name(self) -> str:
        return type(self.kind).__name__

    def is_terminal(self) -> bool:
        return isinstance(self.kind, TERMINAL_KINDS)


# ---------------------------------------------------------------------------------------------------------
# Work items (queue messages). Everything except ActivityExecute goes to the orchestrator queue and is
# routed by ``target_instance``.


@attrs.frozen
class StartOrchestration:
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
        return self.instance


@attrs.frozen
class ActivityExecute:
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
        return self.instance


@attrs.frozen
class ExternalRaised:
    instance: str
    name: str
    data: str | None = None

    @property
    def target_instance(self) -> str:
        return self.instance


@attrs.frozen
class QueueMessage:
    instance: str
    name: str
    data: str | None = None

    @property
    def target_instance(self) -> str:
        return self.instance


@attrs.frozen
class SubOrchResult:
    parent_instance: str
    parent_execution_id: int
    parent_id: int
    result: str | None = None

    @property
    def target_instance(self) -> str:
        return self.parent_instance


@attrs.frozen
class SubOrchError:
    parent_instance: str
    parent_execution_id: int
    parent_id: int
    details: ErrorDetails

    @property
    def target_instance(self) -> str:
        return self.parent_instance


@attrs.frozen
class CancelInstance:
    instance: str
    reason: str = ""

    @property
    def target_instance(self) -> str:
        return self.instance


@attrs.frozen
class ContinueAsNew:
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

    @property
    def target_instance(self) -> str:
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


class HistoryDecodeError(ValueError):
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
    d = _unstructure_kind(ev.kind)
    d["type"] = ev.type_name
    d["event_id"] = ev.event_id
    if ev.source_event_id is not None:
        d["source_event_id"] = ev.source_event_id
    d["timestamp_ms"] = ev.timestamp_ms
    return d


def event_from_dict(d: dict[str, Any]) -> Event:
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
    return json.dumps(event_to_dict(ev), separators=(",", ":"))


def decode_event(text: str | bytes) -> Event:
    try:
        d = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise HistoryDecodeError(f"history event is not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise HistoryDecodeError("history event is not a JSON object")
    return event_from_dict(d)


def work_item_to_dict(item: WorkItem) -> dict[str, Any]:
    d: dict[str, Any] = _conv.unstructure(item)
    d["type"] = type(item).__name__
    return d


def work_item_from_dict(d: dict[str, Any]) -> WorkItem:
    try:
        cls = WORK_ITEM_KINDS[d["type"]]
        fields = {k: v for k, v in d.items() if k != "type"}
        item: WorkItem = _conv.structure(fields, cls)
        return item
    except Exception as exc:
        raise HistoryDecodeError(f"cannot decode work item {str(d)[:200]}: {exc}") from exc


def encode_work_item(item: WorkItem) -> str:
    return json.dumps(work_item_to_dict(item), separators=(",", ":"))


def decode_work_item(text: str | bytes) -> WorkItem:
    try:
        d = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise HistoryDecodeError(f"work item is not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise HistoryDecodeError("work item is not a JSON object")
    return work_item_from_dict(d)
