"""Replay recorded histories against the current code, without side effects.

``Replayer(registry).replay(history)`` re-runs the registered orchestration against a recorded history the
way the runtime would on its next turn, with no new messages, and reports either ``deterministic`` or the
first step where the code decides differently from what history recorded (event id, what history
recorded, what the code did). Nothing is written anywhere and no activity runs: the engine is pure.

Two checks make up a replay of one execution:

1. The recorded events up to the end (a finished execution: up to its terminal event) are replayed as
   persisted history; the engine's own nondeterminism check compares every recorded decision with the
   code's (a ``Failed`` turn whose error kind is ``Nondeterminism``).
2. What the code decides *after* those events must be exactly what history recorded there: nothing for a
   running execution, the same breadcrumbs and terminal event (same output) for a finished one. This
   catches code that now schedules extra work where history ended, which the engine alone cannot see.

Sources: a history (a list of events), a ``RecordedInstance`` (all executions of an instance), an
instance in any provider, every instance of a provider matching a filter, or JSON files written by
``duroxide-trio instances export`` / :func:`export_instance`. Histories the engine cannot read (an
unknown event kind from a newer engine, undecodable data), a missing orchestration or version, and an
engine that raises are reported as such, never raised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from ..history import (
    COMPLETION_KINDS,
    ActivityCancelRequested,
    ActivityScheduled,
    CustomStatusUpdated,
    Event,
    ExternalSubscribed,
    HistoryDecodeError,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueSubscribed,
    Status,
    SubOrchestrationCancelRequested,
    SubOrchestrationScheduled,
    TimerCreated,
    UnknownEventKind,
    event_from_dict,
    event_to_dict,
)
from ..orchestration._replay import TurnResult, plan_turn, run_turn
from ..providers.base import Provider, ProviderError
from ..registry import Registry

__all__ = [
    "EXPORT_FORMAT",
    "Mismatch",
    "RecordedExecution",
    "RecordedInstance",
    "ReplayReport",
    "Replayer",
    "export_instance",
    "load_histories",
    "read_instance",
    "write_export",
]

#: The ``format`` field of exported history files.
EXPORT_FORMAT = "duroxide-trio/history"
EXPORT_FORMAT_VERSION = 1

DETERMINISTIC = "deterministic"
NONDETERMINISTIC = "nondeterministic"
MISSING_HANDLER = "missing-handler"
UNKNOWN_EVENT_KIND = "unknown-event-kind"
UNDECODABLE = "undecodable"
CORRUPT = "corrupt-history"
ENGINE_ERROR = "engine-error"
EMPTY = "empty"

#: Outcomes that are not a problem with the code under test.
OK_OUTCOMES = frozenset({DETERMINISTIC, EMPTY})

_silent = logging.Logger("duroxide_trio.replayer")
_silent.disabled = True  # orchestration code logging past the end of history must not look live


# ---------------------------------------------------------------------------------------------------------
# Recorded histories


@attrs.frozen
class RecordedExecution:
    """One execution's events, or why they could not be read."""

    execution_id: int
    events: list[Event] = attrs.field(factory=list)
    #: ``None`` when ``events`` is the whole history; otherwise ``(outcome, message)`` with outcome
    #: ``unknown-event-kind`` or ``undecodable``.
    error: tuple[str, str] | None = None


@attrs.frozen
class RecordedInstance:
    """Every execution of one instance, as read from a provider or an exported file."""

    instance_id: str
    executions: list[RecordedExecution]
    name: str | None = None
    version: str | None = None
    status: str | None = None
    source: str = ""


def _decode_execution(execution_id: int, raw_events: Any) -> RecordedExecution:
    if not isinstance(raw_events, list):
        return RecordedExecution(execution_id, [], (UNDECODABLE, "'events' is not a list"))
    events: list[Event] = []
    for i, raw in enumerate(raw_events):
        if not isinstance(raw, dict):
            return RecordedExecution(execution_id, events, (UNDECODABLE, f"event #{i + 1} is not a JSON object"))
        try:
            events.append(event_from_dict(raw))
        except UnknownEventKind as exc:
            return RecordedExecution(execution_id, events, (UNKNOWN_EVENT_KIND, str(exc)))
        except HistoryDecodeError as exc:
            return RecordedExecution(execution_id, events, (UNDECODABLE, str(exc)))
    return RecordedExecution(execution_id, events)


def _instance_from_dict(d: Any, source: str) -> RecordedInstance:
    if not isinstance(d, dict) or "instance_id" not in d:
        raise ValueError(f"{source}: not an exported instance (no 'instance_id')")
    executions: list[RecordedExecution] = []
    raw_execs = d.get("executions")
    if not isinstance(raw_execs, list):
        executions.append(RecordedExecution(1, [], (UNDECODABLE, "'executions' is not a list")))
    else:
        for n, raw in enumerate(raw_execs, start=1):
            if not isinstance(raw, dict):
                executions.append(RecordedExecution(n, [], (UNDECODABLE, "execution is not a JSON object")))
                continue
            try:
                eid = int(raw.get("execution_id", n))
            except (TypeError, ValueError):
                eid = n
            executions.append(_decode_execution(eid, raw.get("events")))
    return RecordedInstance(
        instance_id=str(d["instance_id"]),
        executions=executions,
        name=d.get("name"),
        version=d.get("version"),
        status=d.get("status"),
        source=source,
    )


def load_histories(path: str | Path) -> list[RecordedInstance]:
    """Read an exported file: one instance object, a list of them, or ``{"instances": [...]}``.
    A file that is not JSON at all raises ``ValueError``; events that cannot be decoded are recorded in
    the execution's ``error`` so that the replay reports them."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{p}: cannot read a history file: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("instances"), list):
        items = data["instances"]
    elif isinstance(data, list):
        items = data
    else:
        items = [data]
    return [_instance_from_dict(item, str(p)) for item in items]


def _instance_to_dict(instance: RecordedInstance) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "instance_id": instance.instance_id,
        "name": instance.name,
        "version": instance.version,
        "status": instance.status,
        "executions": [
            {"execution_id": ex.execution_id, "events": [event_to_dict(e) for e in ex.events]}
            for ex in instance.executions
        ],
    }


def write_export(path: str | Path, instances: RecordedInstance | Sequence[RecordedInstance]) -> None:
    """Write one instance (an object) or several (``{"instances": [...]}``) as JSON."""
    if isinstance(instances, RecordedInstance):
        data: Any = _instance_to_dict(instances)
    else:
        data = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "instances": [_instance_to_dict(i) for i in instances],
        }
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _classify_read_error(exc: BaseException) -> tuple[str, str]:
    text = str(exc)
    kind = UNKNOWN_EVENT_KIND if "unknown event kind" in text else UNDECODABLE
    return kind, text


async def read_instance(provider: Provider, instance_id: str) -> RecordedInstance:
    """Every execution of ``instance_id`` from a provider with management capability. Unreadable
    executions are kept with their error (the replay reports them); an unknown instance raises
    ``KeyError``."""
    admin = provider.as_admin()
    if admin is None:
        raise TypeError(f"provider {provider.name!r} has no management capability; cannot read histories")
    info = await admin.get_instance_info(instance_id)
    if info is None:
        raise KeyError(instance_id)
    executions: list[RecordedExecution] = []
    for eid in await admin.list_executions(instance_id) or [info.current_execution_id]:
        try:
            events = await admin.read_history(instance_id, eid)
        except (ProviderError, HistoryDecodeError) as exc:
            executions.append(RecordedExecution(eid, [], _classify_read_error(exc)))
        else:
            executions.append(RecordedExecution(eid, list(events)))
    return RecordedInstance(
        instance_id=instance_id,
        executions=executions,
        name=info.name,
        version=info.version,
        status=info.status,
        source=provider.name,
    )


async def export_instance(provider: Provider, instance_id: str) -> dict[str, Any]:
    """An instance's histories as the JSON-ready dict that ``duroxide-trio instances export`` writes."""
    instance = await read_instance(provider, instance_id)
    bad = [ex for ex in instance.executions if ex.error is not None]
    if bad:
        raise ValueError(f"instance {instance_id!r} execution {bad[0].execution_id}: {bad[0].error[1]}")  # type: ignore[index]
    return _instance_to_dict(instance)


# ---------------------------------------------------------------------------------------------------------
# Reports


@attrs.frozen
class Mismatch:
    """The first step where the code and history disagree."""

    event_id: int
    recorded: str  # what history holds at ``event_id`` ("end of history" if nothing)
    code: str  # what the code did there ("nothing" if it scheduled nothing)
    message: str = ""  # the engine's explanation, when it detected the mismatch itself

    def describe(self) -> str:
        """One line: where, what history recorded, what the code did."""
        text = f"event {self.event_id}: history recorded {self.recorded}, the code did {self.code}"
        if self.message and self.message not in text:
            text += f" ({self.message})"
        return text


@attrs.frozen
class ReplayReport:
    """The outcome of replaying one instance (every execution given, in order; the first problem wins)."""

    instance_id: str
    outcome: str
    name: str | None = None
    version: str | None = None
    execution_id: int | None = None
    mismatch: Mismatch | None = None
    detail: str = ""
    events_replayed: int = 0
    executions_replayed: int = 0
    source: str = ""

    @property
    def ok(self) -> bool:
        """True when the current code replays this instance with the decisions history recorded."""
        return self.outcome in OK_OUTCOMES

    @property
    def deterministic(self) -> bool:
        """True when the code made every decision history recorded (and nothing else)."""
        return self.outcome == DETERMINISTIC

    def describe(self) -> str:
        """One line for a person: instance, orchestration, outcome and the first mismatch or the detail."""
        what = f"{self.instance_id}"
        if self.name:
            what += f" ({self.name}{' ' + self.version if self.version else ''})"
        if self.execution_id is not None and self.outcome != DETERMINISTIC:
            what += f" execution {self.execution_id}"
        line = f"{what}: {self.outcome}"
        if self.mismatch is not None:
            line += f" at {self.mismatch.describe()}"
        elif self.detail:
            line += f": {self.detail}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``duroxide-trio replay --json`` prints), with ``ok``."""
        d = attrs.asdict(self)
        d["ok"] = self.ok
        return d


# ---------------------------------------------------------------------------------------------------------
# Comparing decisions


def _describe(ev: Event | None) -> str:
    if ev is None:
        return "end of history"
    kind: Any = ev.kind
    parts: list[str] = []
    for field in attrs.fields(type(kind)):
        value = getattr(kind, field.name)
        if value in (None, "", [], ()):
            continue
        if field.name == "details":
            value = f"{value.category}/{value.kind}: {value.message}"
        elif isinstance(value, str) and len(value) > 120:
            value = value[:117] + "..."
        parts.append(f"{field.name}={value!r}")
    if ev.source_event_id is not None:
        parts.append(f"source_event_id={ev.source_event_id}")
    return f"{ev.type_name}({', '.join(parts)})"


def _describe_code(delta: Sequence[Event]) -> str:
    return _describe(delta[0]) if delta else "nothing"


def _same_decision(a: Event, b: Event) -> bool:
    """Whether the code's event ``a`` is the decision history recorded as ``b`` (the engine's rules:
    timers and custom status match by kind; terminal events also compare their result)."""
    if type(a.kind) is not type(b.kind) or a.event_id != b.event_id or a.source_event_id != b.source_event_id:
        return False
    x: Any = a.kind
    y: Any = b.kind
    if isinstance(x, ActivityScheduled):
        return (x.name, x.input, x.session_id, x.tag) == (y.name, y.input, y.session_id, y.tag)
    if isinstance(x, (SubOrchestrationScheduled, OrchestrationChained)):
        return (x.name, x.instance, x.input, x.version) == (y.name, y.instance, y.input, y.version)
    if isinstance(x, (ExternalSubscribed, QueueSubscribed)):
        return bool(x.name == y.name)
    if isinstance(x, OrchestrationCompleted):
        return bool(x.output == y.output)
    if isinstance(x, OrchestrationContinuedAsNew):
        return bool(x.input == y.input)
    if isinstance(x, OrchestrationFailed):
        return (x.details.category, x.details.kind) == (y.details.category, y.details.kind)
    if isinstance(x, (TimerCreated, CustomStatusUpdated)):
        return True
    return True  # breadcrumbs: kind and source already compared


def _is_terminal_breadcrumb(ev: Event) -> bool:
    kind: Any = ev.kind
    return isinstance(kind, (ActivityCancelRequested, SubOrchestrationCancelRequested)) and str(
        kind.reason
    ).startswith("orchestration_terminal")


def _decided_by_runtime(ev: Event) -> bool:
    """A terminal failure the runtime wrote without the code deciding it (poison, corrupted history,
    a recorded nondeterminism or infrastructure failure): the code is not expected to reproduce it."""
    kind: Any = ev.kind
    return isinstance(kind, OrchestrationFailed) and kind.details.category != "application"


def _is_nondeterminism(result: TurnResult) -> bool:
    return result.status == Status.FAILED and result.error is not None and result.error.kind == "Nondeterminism"


# ---------------------------------------------------------------------------------------------------------
# The replayer


class Replayer:
    """Replays recorded histories against the orchestrations of ``registry``. Pure: no provider is
    written, no activity runs, no timer waits."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # single histories ------------------------------------------------------------------------------
    def replay(
        self,
        history: Sequence[Event] | RecordedInstance,
        *,
        instance_id: str = "replay",
        execution_id: int = 1,
    ) -> ReplayReport:
        """Replay one execution's events, or every execution of a ``RecordedInstance``."""
        if isinstance(history, RecordedInstance):
            return self.replay_instance(history)
        return self.replay_instance(
            RecordedInstance(instance_id, [RecordedExecution(execution_id, list(history))])
        )

    def replay_instance(self, instance: RecordedInstance) -> ReplayReport:
        """Replay every execution in order; the report is the first that does not replay, else the last."""
        total_events = 0
        name, version = instance.name, instance.version
        replayed = 0
        last: ReplayReport | None = None
        for execution in instance.executions:
            report = self._replay_execution(instance, execution)
            total_events += report.events_replayed
            name, version = report.name or name, report.version or version
            if report.outcome == EMPTY:
                continue
            replayed += 1
            last = report
            if not report.ok:
                return attrs.evolve(report, events_replayed=total_events, executions_replayed=replayed)
        if last is None:
            return ReplayReport(
                instance.instance_id, EMPTY, name, version, detail="no recorded events", source=instance.source
            )
        return attrs.evolve(last, events_replayed=total_events, executions_replayed=replayed, execution_id=None)

    def _report(self, instance: RecordedInstance, execution_id: int, outcome: str, **kw: Any) -> ReplayReport:
        return ReplayReport(instance.instance_id, outcome, execution_id=execution_id, source=instance.source, **kw)

    def _replay_execution(self, instance: RecordedInstance, execution: RecordedExecution) -> ReplayReport:
        eid = execution.execution_id
        events = execution.events
        if execution.error is not None:
            outcome, message = execution.error
            return self._report(instance, eid, outcome, name=instance.name, version=instance.version, detail=message)
        if not events:
            return self._report(instance, eid, EMPTY, name=instance.name, version=instance.version)
        started: Any = events[0].kind
        if not isinstance(started, OrchestrationStarted):
            return self._report(
                instance, eid, CORRUPT, name=instance.name, version=instance.version,
                detail=f"the first event is {events[0].type_name}, not OrchestrationStarted",
            )
        bad_ids = [(i + 1, e.event_id) for i, e in enumerate(events) if e.event_id != i + 1]
        if bad_ids:
            pos, seen_id = bad_ids[0]
            return self._report(
                instance, eid, CORRUPT, name=started.name, version=started.version,
                detail=f"event #{pos} has id {seen_id}; event ids must be dense from 1",
            )
        name, version = started.name, started.version
        handler = self.registry.resolve_orchestration(name, version)
        if handler is None:
            if self.registry.has_orchestration(name):
                detail = (
                    f"orchestration {name!r} has no version {version} in this registry "
                    f"(registered: {', '.join(self.registry.versions(name))})"
                )
            else:
                known = ", ".join(self.registry.orchestration_names) or "none"
                detail = f"orchestration {name!r} is not registered (registered: {known})"
            return self._report(instance, eid, MISSING_HANDLER, name=name, version=version, detail=detail)

        # Split: the prefix is replayed as persisted history; the tail is what the code must decide after it.
        terminal_at = next((i for i, e in enumerate(events) if e.is_terminal()), None)
        if terminal_at is None:
            prefix, tail = list(events), []
        else:
            cut = terminal_at
            while cut > 1 and _is_terminal_breadcrumb(events[cut - 1]):
                cut -= 1
            prefix, tail = list(events[:cut]), list(events[cut:])
        decided_by_runtime = bool(tail) and _decided_by_runtime(tail[-1]) and terminal_at == len(events) - 1
        if terminal_at is not None and terminal_at != len(events) - 1:
            return self._report(
                instance, eid, CORRUPT, name=name, version=version,
                detail=f"{events[terminal_at + 1].type_name} at event {events[terminal_at + 1].event_id} "
                f"follows the terminal {events[terminal_at].type_name}",
            )

        try:
            result = self._run(instance.instance_id, eid, prefix, handler, tail)
        except Exception as exc:  # noqa: BLE001 - the engine must not crash a replay report
            return self._report(
                instance, eid, ENGINE_ERROR, name=name, version=version,
                detail=f"the engine raised {type(exc).__name__}: {exc}",
            )
        base = {"name": name, "version": version, "events_replayed": len(events)}

        if _is_nondeterminism(result):
            # The engine met a recorded decision the code does not make (inside the replayed events).
            mismatch = self._locate(instance.instance_id, eid, prefix, handler, result)
            return self._report(instance, eid, NONDETERMINISTIC, mismatch=mismatch, **base)

        delta = result.history_delta
        for i in range(max(len(delta), len(tail))):
            got = delta[i] if i < len(delta) else None
            want = tail[i] if i < len(tail) else None
            if got is not None and want is not None and _same_decision(got, want):
                continue
            if decided_by_runtime:
                # The runtime ended this execution (poison, a recorded nondeterminism...): the code is not
                # expected to reproduce that ending; the events before it replayed with the same decisions.
                failed: Any = tail[-1].kind
                return self._report(
                    instance, eid, DETERMINISTIC,
                    detail=f"ended by the runtime ({failed.details.category}/{failed.details.kind}); the "
                    f"{len(prefix)} events before that replay with the same decisions",
                    **base,
                )
            if want is None:
                did = _describe(got)
                if got is not None and got.is_terminal():
                    did = f"finish: {did}"
                mismatch = Mismatch(len(events) + 1, "end of history", did)
            else:
                if got is None:
                    did = "nothing (it is still waiting)" if result.status is None else "nothing"
                elif got.is_terminal():
                    did = f"finish: {_describe(got)}"
                else:
                    did = _describe(got)
                mismatch = Mismatch(want.event_id, _describe(want), did)
            return self._report(instance, eid, NONDETERMINISTIC, mismatch=mismatch, **base)
        return self._report(instance, eid, DETERMINISTIC, **base)

    def _run(
        self, instance_id: str, execution_id: int, prefix: list[Event], handler: Any, tail: Sequence[Event] = ()
    ) -> TurnResult:
        plan = plan_turn(execution_id, prefix, [])
        if plan.action != "run":
            raise RuntimeError(f"the engine would not run this history ({plan.action}: {plan.reason})")
        now = tail[0].timestamp_ms if tail else (prefix[-1].timestamp_ms if prefix else 0)
        return run_turn(
            instance_id=instance_id, plan=plan, handler=handler, codec=self.registry, now_ms=now, logger=_silent
        )

    def _prefix_replays(self, instance_id: str, execution_id: int, prefix: list[Event], handler: Any) -> bool:
        return not _is_nondeterminism(self._run(instance_id, execution_id, prefix, handler))

    def _locate(
        self, instance_id: str, execution_id: int, prefix: list[Event], handler: Any, failed: TurnResult
    ) -> Mismatch:
        """The first event at which replaying ``prefix`` fails (binary search: a failing prefix stays
        failing when it grows), with what the code decided there instead."""
        message = failed.error.message if failed.error is not None else ""
        lo, hi = 1, len(prefix)  # prefix[:hi] fails; find the smallest failing length
        while lo < hi:
            mid = (lo + hi) // 2
            if _is_nondeterminism(self._run(instance_id, execution_id, prefix[:mid], handler)):
                hi = mid
            else:
                lo = mid + 1
        bad = prefix[lo - 1]
        before = self._run(instance_id, execution_id, prefix[: lo - 1], handler, [bad]) if lo > 1 else None
        if before is None:
            did = "nothing"
        elif isinstance(bad.kind, COMPLETION_KINDS):
            did = "not schedule what this completes"
        else:
            delta = before.history_delta
            if not delta and before.status is None:
                did = "nothing (it was waiting)"
            elif delta and delta[0].is_terminal():
                did = f"finish: {_describe(delta[0])}"
            else:
                did = _describe_code(delta)
        return Mismatch(bad.event_id, _describe(bad), did, message)

    # sources -----------------------------------------------------------------------------------------
    def replay_file(self, path: str | Path) -> list[ReplayReport]:
        """Replay every instance of an exported JSON file. A file that cannot be read at all gives one
        ``undecodable`` report named after the file."""
        try:
            instances = load_histories(path)
        except ValueError as exc:
            return [ReplayReport(str(path), UNDECODABLE, detail=str(exc), source=str(path))]
        return [self.replay_instance(i) for i in instances]

    def replay_files(self, paths: Iterable[str | Path]) -> list[ReplayReport]:
        """Replay files; a directory means every ``*.json`` file below it."""
        reports: list[ReplayReport] = []
        for p in paths:
            path = Path(p)
            files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
            for f in files:
                reports.extend(self.replay_file(f))
        return reports

    async def replay_from_provider(self, provider: Provider, instance_id: str) -> ReplayReport:
        """Read every execution of ``instance_id`` from ``provider`` and replay it (``empty`` if unknown)."""
        try:
            instance = await read_instance(provider, instance_id)
        except KeyError:
            return ReplayReport(instance_id, EMPTY, detail="no such instance", source=provider.name)
        return self.replay_instance(instance)

    async def replay_all(
        self,
        provider: Provider,
        *,
        name: str | None = None,
        status: Status | str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[ReplayReport]:
        """Replay every instance of ``provider`` whose orchestration is ``name``, whose status is
        ``status`` (``Status.RUNNING``, ``COMPLETED`` or ``FAILED``) and that was updated at or after
        ``since``."""
        admin = provider.as_admin()
        if admin is None:
            raise TypeError(f"provider {provider.name!r} has no management capability; cannot list instances")
        since_ms = None
        if since is not None:
            when = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
            since_ms = int(when.timestamp() * 1000)
        reports: list[ReplayReport] = []
        for instance_id in await admin.list_instances(status):
            info = await admin.get_instance_info(instance_id)
            if info is None:
                continue
            if name is not None and info.name != name:
                continue
            if since_ms is not None and info.updated_at_ms < since_ms:
                continue
            reports.append(await self.replay_from_provider(provider, instance_id))
            if limit is not None and len(reports) >= limit:
                break
        return reports

