"""The provider kernel: everything both providers do the same way, written once.

A dialect (``providers/sqlite``, ``providers/postgres``) adds only its SQL and its connection handling.
What lives here:

- **time and visibility**: :func:`ms` (seconds to milliseconds), :func:`is_start`, :func:`visible_at`,
  :func:`visible_what` and :func:`check_int64` (a value no 64-bit column can hold is refused, named);
- **codecs**: :func:`encode_turn` (one turn's history delta, enqueues, custom status and key-value writes
  (:func:`kv_rows`) as rows),
  :func:`decode_batch` (a fetched batch's message and history texts into an ``OrchestrationItem``,
  undecodable texts reported in ``history_error``) and :func:`decode_activity` (a worker-queue text);
- **errors** shared by both: :func:`lock_lost`;
- **the notification fan-out** after a commit: :func:`notify_visible` and :meth:`ProviderKernel._fan_out_turn`;
- :class:`ProviderKernel`, the base class of both providers: the operations whose logic is the same in
  both (the turn ack around the dialect's ``_commit_turn``, single-item worker forms over the batch ones,
  ``enqueue_for_orchestrator`` around ``_insert_orchestrator_message``, ``read_history``, ``as_admin``,
  the context manager's exit, id de-duplication and empty-filter shortcuts of the management calls).

This module imports ``history`` and ``providers.base`` only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from ..history import (
    ActivityExecute,
    ContinueAsNew,
    CustomStatusUpdated,
    Event,
    HistoryDecodeError,
    KeyValueCleared,
    KeyValueSet,
    StartOrchestration,
    TimerDue,
    WorkItem,
    decode_event,
    decode_work_item,
    encode_event,
    encode_work_item,
)
from .base import (
    COMPLETED,
    FAILED,
    Clock,
    DeleteResult,
    EagerLock,
    ExecutionMetadata,
    InstanceFilter,
    InstanceInfo,
    Notifier,
    OrchestrationItem,
    ProviderError,
    ProviderErrorKind,
    PruneOptions,
    PruneResult,
    ScheduledActivity,
    WorkItemLease,
)

if TYPE_CHECKING:
    from .base import ProviderAdmin

#: The range of every integer column (epoch milliseconds, ids): SQLite INTEGER, PostgreSQL BIGINT.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# ---------------------------------------------------------------------------------------------------------
# Time and visibility


def ms(seconds: float | None) -> int:
    """A duration in seconds as whole milliseconds, never negative (``None``: 0)."""
    return max(0, int((seconds or 0) * 1000))


def is_start(item: WorkItem) -> bool:
    """Whether ``item`` starts an execution (a start or a continue-as-new): such a message may create the
    instance it is addressed to."""
    return isinstance(item, (StartOrchestration, ContinueAsNew))


def visible_at(item: WorkItem, now: int, delay: float | None = None) -> int:
    """When an orchestrator message becomes visible (epoch ms): a timer at its fire time, anything else
    ``delay`` seconds after ``now``."""
    if isinstance(item, TimerDue):
        return item.fire_at_ms
    return now + ms(delay)


def visible_what(item: WorkItem) -> str:
    """What the visibility time of ``item`` is, for an out-of-range message."""
    if isinstance(item, TimerDue):
        return f"timer fire time (instance {item.instance!r}, timer {item.id}, epoch ms)"
    return "visible-at time (epoch ms)"


def check_int64(op: str, what: str, value: int) -> None:
    """Refuse an integer no 64-bit column can hold, naming it (instead of a driver error deep in a batch,
    or a retry loop)."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ProviderError.permanent(
            op,
            f"{what} {value} is out of range: it must fit in a signed 64-bit integer (at most "
            f"{INT64_MAX}); for a timer, the fire time is in epoch milliseconds, so the delay is too far "
            "in the future",
            kind=ProviderErrorKind.INVALID,
        )


def lock_lost(op: str, message: str) -> ProviderError:
    """The permanent error of an operation whose lock token is unknown or expired."""
    return ProviderError.permanent(op, message, kind=ProviderErrorKind.LOCK_LOST)


# ---------------------------------------------------------------------------------------------------------
# Codecs


@attrs.frozen
class OrchestratorRow:
    """One orchestrator message of a turn, encoded. ``timer_at`` is a timer's fire time (``None``: visible
    at the commit's ``now``)."""

    target: str
    text: str
    start: bool
    timer_at: int | None

    def visible(self, now: int) -> int:
        """When the message becomes visible if committed at ``now``."""
        return now if self.timer_at is None else self.timer_at


@attrs.frozen
class WorkerRow:
    """One activity of a turn, encoded, with the columns it is found by."""

    text: str
    instance: str
    execution_id: int
    activity_id: int
    session_id: str | None
    tag: str | None


@attrs.frozen
class EncodedTurn:
    """One turn's writes as rows, built (and range-checked) before the dialect commits them."""

    now: int
    event_ids: list[int]
    event_types: list[str]
    event_texts: list[str]
    workers: list[WorkerRow]
    orchestrator: list[OrchestratorRow]
    custom_status_changed: bool
    custom_status: str | None
    kv: KeyValueRows = attrs.field(factory=lambda: KeyValueRows())


@attrs.frozen
class KeyValueRows:
    """The net effect of a turn's ``KeyValueSet`` / ``KeyValueCleared`` events on the instance's
    key-value table, applied in this order: delete every row (``clear_all``), delete ``deleted`` keys,
    upsert ``keys`` with ``values``."""

    clear_all: bool = False
    deleted: list[str] = attrs.field(factory=list)
    keys: list[str] = attrs.field(factory=list)
    values: list[str] = attrs.field(factory=list)

    @property
    def changed(self) -> bool:
        """Whether the turn touches the table at all."""
        return self.clear_all or bool(self.deleted) or bool(self.keys)


def kv_rows(history_delta: Sequence[Event]) -> KeyValueRows:
    """The key-value writes of a turn's events, netted in event order (a set then a clear of the same
    key deletes it; a clear-all drops every earlier write of the turn)."""
    clear_all = False
    deleted: dict[str, None] = {}
    sets: dict[str, str] = {}
    for e in history_delta:
        kind = e.kind
        if isinstance(kind, KeyValueSet):
            sets[kind.key] = kind.value
            deleted.pop(kind.key, None)
        elif isinstance(kind, KeyValueCleared):
            if kind.key is None:
                clear_all = True
                sets.clear()
                deleted.clear()
            else:
                sets.pop(kind.key, None)
                deleted[kind.key] = None
    return KeyValueRows(clear_all, list(deleted), list(sets), list(sets.values()))


def encode_turn(
    now: int,
    history_delta: Sequence[Event],
    worker_items: Sequence[ActivityExecute],
    orchestrator_items: Sequence[WorkItem],
) -> EncodedTurn:
    """Encode a turn's writes; a visibility time beyond int64 (a timer too far ahead) is refused here."""
    for o in orchestrator_items:
        check_int64("ack_orchestration_item", visible_what(o), visible_at(o, now))
    custom = [e.kind for e in history_delta if isinstance(e.kind, CustomStatusUpdated)]
    return EncodedTurn(
        now=now,
        event_ids=[e.event_id for e in history_delta],
        event_types=[e.type_name for e in history_delta],
        event_texts=[encode_event(e) for e in history_delta],
        workers=[
            WorkerRow(encode_work_item(w), w.instance, w.execution_id, w.id, w.session_id, w.tag)
            for w in worker_items
        ],
        orchestrator=[
            OrchestratorRow(
                o.target_instance, encode_work_item(o), is_start(o), o.fire_at_ms if isinstance(o, TimerDue) else None
            )
            for o in orchestrator_items
        ],
        custom_status_changed=bool(custom),
        custom_status=custom[-1].status if custom else None,
        kv=kv_rows(history_delta),
    )


def decode_batch(
    *,
    instance_id: str,
    lock_token: str,
    attempt_count: int,
    message_texts: Iterable[str],
    has_instance: bool,
    name: str,
    version: str | None,
    execution_id: int,
    history_texts: Iterable[str],
) -> OrchestrationItem:
    """A fetched batch as an ``OrchestrationItem``. Messages that do not decode are left out and an
    unreadable history is empty; either is reported in ``history_error`` (the engine decides what that
    means). For an instance that does not exist yet, name, version and execution come from its start."""
    errors: list[str] = []
    messages: list[WorkItem] = []
    for text in message_texts:
        try:
            messages.append(decode_work_item(text))
        except HistoryDecodeError as exc:
            errors.append(str(exc))
    history: list[Event] = []
    if has_instance:
        try:
            history = [decode_event(t) for t in history_texts]
        except HistoryDecodeError as exc:
            history = []
            errors.append(str(exc))
    else:
        start = next((m for m in messages if isinstance(m, (StartOrchestration, ContinueAsNew))), None)
        name = start.name if start is not None else ""
        version = start.version if start is not None else None
        execution_id = start.execution_id if start is not None else 1
    return OrchestrationItem(
        instance_id=instance_id,
        orchestration_name=name,
        version=version,
        execution_id=execution_id,
        history=history,
        messages=messages,
        lock_token=lock_token,
        attempt_count=attempt_count,
        history_error="; ".join(errors) if errors else None,
    )


def decode_activity(text: str) -> ActivityExecute:
    """A worker-queue row's item; ``HistoryDecodeError`` if it is unreadable or not an activity (such a
    row can never run: the dialect drops it)."""
    item = decode_work_item(text)
    if not isinstance(item, ActivityExecute):
        raise HistoryDecodeError(f"worker queue holds a {type(item).__name__}, not ActivityExecute")
    return item


def acked_targets(
    entries: Sequence[tuple[str, WorkItem | None]], results: Sequence[ProviderError | None]
) -> list[str]:
    """The distinct instances the committed completions of an activity ack were sent to, in entry order
    (the candidates of ``ack_work_items_and_fetch``)."""
    targets: dict[str, None] = {}
    for (_, completion), result in zip(entries, results, strict=True):
        if result is None and completion is not None:
            targets.setdefault(completion.target_instance, None)
    return list(targets)


# ---------------------------------------------------------------------------------------------------------
# Notification fan-out


def notify_visible(notifier: Notifier, key: str, at: int | None, now: int) -> None:
    """Work on queue ``key`` became visible at ``at``: wake its waiters now, or at ``at`` if later."""
    if at is not None and at > now:
        notifier.notify_at(key, at)
    else:
        notifier.notify(key)


def eager_picks(
    worker_items: Sequence[ActivityExecute], cancelled: Sequence[ScheduledActivity], eager: EagerLock | None
) -> tuple[int, ...]:
    """The positions in ``worker_items`` that a turn's ack locks eagerly: the first ``eager.max_items``
    that ``eager.accepts`` and the same turn does not cancel (none without ``eager``)."""
    if eager is None or eager.max_items <= 0 or not worker_items:
        return ()
    gone = {(c.instance_id, c.execution_id, c.activity_id) for c in cancelled}
    picks: list[int] = []
    for k, w in enumerate(worker_items):
        if len(picks) >= eager.max_items:
            break
        if eager.accepts(w) and (w.instance, w.execution_id, w.id) not in gone:
            picks.append(k)
    return tuple(picks)


@attrs.frozen
class TurnToCommit:
    """What the dialect's ``_commit_turn`` commits: the encoded turn under its lock token, and the
    positions of ``turn.workers`` to lock eagerly for ``eager_lock_ms`` (eager dispatch; usually none)."""

    lock_token: str
    execution_id: int
    turn: EncodedTurn
    metadata: ExecutionMetadata
    cancelled_activities: Sequence[ScheduledActivity]
    eager: tuple[int, ...] = ()
    eager_lock_ms: int = 0
    eager_claim: str = ""

    def eager_suffix(self) -> str:
        """What the tokens of this turn's eager locks end with (``release_eager`` finds them by it)."""
        return f"~{self.eager_claim}" if self.eager_claim else ""


@attrs.frozen
class TurnCommitted:
    """What the dialect's commit of a turn found out, for the fan-out: the instance, whether it has
    messages visible now (``wake``), the later visibility times it enqueued, and its final info (a
    dialect that reads it in the same transaction hands it to waiters; ``None`` otherwise), and the
    lock token of each eagerly locked worker item by its position in the turn (``eager``)."""

    instance_id: str
    wake: bool
    later: Sequence[int] = ()
    final: InstanceInfo | None = None
    eager: Sequence[tuple[int, str]] = ()


# ---------------------------------------------------------------------------------------------------------
# The shared base class


class ProviderKernel:
    """The logic both providers share. A dialect subclasses it and implements the hooks declared below
    (its SQL): ``_commit_turn``, ``_insert_orchestrator_message``, ``fetch_work_items``,
    ``ack_work_items``, ``read``, ``read_with_execution``, ``_delete_many``, ``_delete_bulk``,
    ``_prune_bulk`` and ``close``."""

    clock: Clock
    notifier: Notifier

    if TYPE_CHECKING:  # the dialect's hooks (each a method of the dialect's class)
        #: Commit the turn atomically and release its lock.
        _commit_turn: Callable[[TurnToCommit], Awaitable[TurnCommitted]]
        #: Insert one orchestrator message: ``(target, text, is_start, visible_at, now)``.
        _insert_orchestrator_message: Callable[[str, str, bool, int, int], Awaitable[None]]
        #: ``BatchWorkItems``: several worker-queue items per round trip.
        fetch_work_items: Callable[[float, int, float], Awaitable[list[WorkItemLease]]]
        ack_work_items: Callable[[Sequence[tuple[str, WorkItem | None]]], Awaitable[list[ProviderError | None]]]
        #: The current execution's history, and one execution's.
        read: Callable[[str], Awaitable[list[Event]]]
        read_with_execution: Callable[[str, int], Awaitable[list[Event]]]
        #: Delete distinct, non-empty ids in one transaction; bulk delete and prune for a filter that
        #: can match something.
        _delete_many: Callable[[list[str], bool], Awaitable[DeleteResult]]
        _delete_bulk: Callable[[InstanceFilter], Awaitable[DeleteResult]]
        _prune_bulk: Callable[[InstanceFilter, PruneOptions], Awaitable[PruneResult]]
        close: Callable[[], Awaitable[None]]

    def as_admin(self) -> ProviderAdmin:
        """Both providers are their own management interface."""
        return self  # type: ignore[return-value]

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # orchestrator queue ---------------------------------------------------------------------------
    async def ack_orchestration_item(
        self,
        lock_token: str,
        execution_id: int,
        history_delta: Sequence[Event],
        worker_items: Sequence[ActivityExecute],
        orchestrator_items: Sequence[WorkItem],
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivity] = (),
        *,
        eager: EagerLock | None = None,
    ) -> list[WorkItemLease]:
        """Commit one turn atomically (see ``Provider.ack_orchestration_item``) and wake who it concerns;
        with ``eager`` (eager dispatch, see ``EagerCapable``), the activities it locked for the caller."""
        turn = encode_turn(self.clock.now_ms(), history_delta, worker_items, orchestrator_items)
        cancelled = tuple(cancelled_activities)
        picks = eager_picks(worker_items, cancelled, eager)
        lock_ms = ms(eager.lock_timeout) if eager is not None and picks else 0
        committed = await self._commit_turn(
            TurnToCommit(
                lock_token, execution_id, turn, metadata, cancelled, picks, lock_ms,
                eager.claim if eager is not None else "",
            )
        )
        leases = [WorkItemLease(item=worker_items[k], lock_token=token, attempt_count=1) for k, token in sorted(committed.eager)]
        self._fan_out_turn(turn, committed, metadata)
        return leases

    def _fan_out_turn(self, turn: EncodedTurn, committed: TurnCommitted, metadata: ExecutionMetadata) -> None:
        """The in-process wake-ups after a committed turn: workers for its activities (unless all were
        locked eagerly), the orchestrator queue now and at each later visibility, and the waiters of an
        instance that finished."""
        if len(turn.workers) > len(committed.eager):
            self.notifier.notify("worker")
        if committed.wake:
            self.notifier.notify("orchestrator")
        for at in committed.later:
            self.notifier.notify_at("orchestrator", at)
        if metadata.status in (COMPLETED, FAILED):
            self.notifier.notify_instance(committed.instance_id, committed.final)

    async def enqueue_for_orchestrator(self, item: WorkItem, delay: float | None = None) -> None:
        """Put a message on the orchestrator queue, visible after ``delay`` seconds (a timer at its time)."""
        now = self.clock.now_ms()
        visible = visible_at(item, now, delay)
        check_int64("enqueue_for_orchestrator", visible_what(item), visible)
        await self._insert_orchestrator_message(item.target_instance, encode_work_item(item), is_start(item), visible, now)
        notify_visible(self.notifier, "orchestrator", visible, now)

    # worker queue ---------------------------------------------------------------------------------
    async def fetch_work_item(self, lock_timeout: float, poll_timeout: float = 0.0) -> WorkItemLease | None:
        """The oldest visible activity, locked (``fetch_work_items`` of one)."""
        leases = await self.fetch_work_items(lock_timeout, 1, poll_timeout)
        return leases[0] if leases else None

    async def ack_work_item(self, lock_token: str, completion: WorkItem | None) -> None:
        """Ack one activity (``ack_work_items`` of one); its error, if any, is raised."""
        (error,) = await self.ack_work_items([(lock_token, completion)])
        if error is not None:
            raise error

    # history and management -----------------------------------------------------------------------
    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[Event]:
        """One execution's history (default: the current one); empty if unknown."""
        if execution_id is None:
            return await self.read(instance_id)
        return await self.read_with_execution(instance_id, execution_id)

    async def delete_instances_atomic(self, instance_ids: Sequence[str], force: bool = False) -> DeleteResult:
        """Delete these instances in one transaction (all or none); duplicates count once."""
        ids = list(dict.fromkeys(instance_ids))
        if not ids:
            return DeleteResult()
        return await self._delete_many(ids, force)

    async def delete_instance_bulk(self, filter: InstanceFilter) -> DeleteResult:
        """Delete terminal root instances matching ``filter`` (an empty id list matches nothing)."""
        if filter.instance_ids is not None and not filter.instance_ids:
            return DeleteResult()
        return await self._delete_bulk(filter)

    async def prune_executions_bulk(self, filter: InstanceFilter, options: PruneOptions) -> PruneResult:
        """``prune_executions`` for every instance matching ``filter`` (an empty id list matches nothing)."""
        if filter.instance_ids is not None and not filter.instance_ids:
            return PruneResult()
        return await self._prune_bulk(filter, options)

