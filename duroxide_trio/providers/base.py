"""The storage contract: ``Provider`` / ``ProviderAdmin`` / ``ProviderFactory``, item types, errors and the
in-process ``Notifier``.

A provider is a transactional store with two peek-lock queues (orchestrator queue, locked per instance;
worker queue, locked per item) plus instance, execution and history tables. It never invents event ids or
execution ids: the runtime owns all semantics. Instances are created only by ``ack_orchestration_item``
(from its metadata), never by an enqueue. All times given to and returned by providers are seconds
(floats) for durations and epoch milliseconds for points in time.
"""

from __future__ import annotations

import collections
import functools
import heapq
import re
from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

import anyio
import anyio.abc
import attrs

from ..clock import WALL_CLOCK, Clock
from ..errors import (
    CannotDeleteSubOrchestration,
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    ProviderError,
    ProviderErrorKind,
    as_provider_error,
)
from ..history import TERMINAL_STATUSES as TERMINAL_STATUSES
from ..history import ActivityExecute, Event, StartOrchestration, Status, WorkItem

__all__ = [
    "START_OVERTAKE_LIMIT",
    "WALL_CLOCK",
    "VersionRange",
    "version_key",
    "CannotDeleteSubOrchestration",
    "Clock",
    "DeleteResult",
    "ExecutionInfo",
    "ExecutionMetadata",
    "InstanceAlreadyExists",
    "InstanceFilter",
    "InstanceInfo",
    "InstanceNotFound",
    "InstanceStillRunning",
    "Notifier",
    "OrchestrationItem",
    "Provider",
    "ProviderAdmin",
    "ProviderError",
    "ProviderErrorKind",
    "ProviderFactory",
    "RoutingCapable",
    "AckFetchesTurns",
    "AckedWithTurns",
    "BatchWorkItems",
    "EagerCapable",
    "EagerLock",
    "TurnRequest",
    "StartFetchesTurn",
    "ListenerCapable",
    "NO_CAPABILITIES",
    "OutlookCapable",
    "ProcessLeases",
    "ProviderCapabilities",
    "PruneOptions",
    "PruneResult",
    "QueueDepths",
    "ScheduledActivity",
    "SystemMetrics",
    "TagFilter",
    "WorkItemLease",
    "WorkerRouting",
    "WorkOutlook",
    "KeyValueStore",
    "as_ack_fetching",
    "as_start_fetching",
    "as_batch",
    "as_eager",
    "as_key_values",
    "as_listener",
    "as_process_leases",
    "as_routing",
    "as_provider_error",
    "capabilities_of",
    "now_ms",
]

#: Execution statuses stored by providers (the one ``Status`` enum; these names stay for provider code).
RUNNING = Status.RUNNING
COMPLETED = Status.COMPLETED
FAILED = Status.FAILED
CONTINUED_AS_NEW = Status.CONTINUED_AS_NEW


def now_ms() -> int:
    """Wall-clock epoch milliseconds (the time base of ``visible_at``, locks and timers). Providers and the
    runtime read ``provider.clock.now_ms()`` instead, so that tests can run on virtual time."""
    return WALL_CLOCK.now_ms()


# ---------------------------------------------------------------------------------------------------------
# Errors: defined in ``duroxide_trio.errors`` (one root, ``DuroxideError``), re-exported here for providers

# ---------------------------------------------------------------------------------------------------------
# Capability filtering: which recorded orchestration versions a runtime can replay

_VERSION_PART_CAP = 999_999  # each of major/minor/patch is clamped here, so a key fits in a BIGINT
_VERSION_TEXT = re.compile(r"^[0-9]{1,18}(\.[0-9]{1,18}){0,2}$")


@functools.lru_cache(maxsize=1024)
def version_key(version: str | None) -> int | None:
    """``"1.2.3"`` as the integer ``major * 10**12 + minor * 10**6 + patch`` (each part clamped to
    999,999), the order providers filter on; ``None`` for ``None`` or text that is not a version. The
    SQL of both providers computes the same key from the stored text."""
    if version is None or not _VERSION_TEXT.match(version):
        return None
    parts = [min(int(p), _VERSION_PART_CAP) for p in version.split(".")] + [0, 0]
    return parts[0] * 10**12 + parts[1] * 10**6 + parts[2]


@attrs.frozen
class VersionRange:
    """The orchestration versions a runtime can replay: ``at_least <= version < below`` (either bound
    may be ``None``: open). ``RuntimeOptions.supported_replay_versions`` takes one; a runtime then only
    fetches instances whose next turn runs at a version inside it (the recorded one, or the one a start or
    continue-as-new asks for), so old and new code can run side by side during a rolling deploy. A start
    that asks for no version is fetched by any runtime (it runs at that runtime's latest version).

    Build one with :meth:`any`, :meth:`between`, :meth:`exactly` or :meth:`major`.

    Attributes:
        at_least: The lowest version included (``"1.0.0"``; ``None``: no lower bound).
        below: The first version excluded (``"2.0.0"``; ``None``: no upper bound).

    Raises:
        ValueError: A bound is not a version (``"1"``, ``"1.2"`` or ``"1.2.3"``), or the range is empty.
    """

    at_least: str | None = None
    below: str | None = None

    def __attrs_post_init__(self) -> None:
        for field in ("at_least", "below"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or version_key(value) is None):
                raise ValueError(f"VersionRange.{field} must be a version like '1.2.3', got {value!r:.100}")
        lo, hi = self.key_bounds()
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"VersionRange is empty: at_least {self.at_least!r} is not below {self.below!r}")

    @classmethod
    def any(cls) -> VersionRange:
        """Every version (the default: no filtering)."""
        return cls()

    @classmethod
    def between(cls, at_least: str | None, below: str | None) -> VersionRange:
        """``at_least <= version < below``.

        Args:
            at_least: The lowest version included (``None``: open).
            below: The first version excluded (``None``: open).
        """
        return cls(at_least, below)

    @classmethod
    def exactly(cls, version: str) -> VersionRange:
        """Only ``version`` (``"1.2"`` means ``"1.2.0"``).

        Args:
            version: The one version included.
        """
        key = version_key(version) if isinstance(version, str) else None
        if key is None:
            raise ValueError(f"VersionRange.exactly needs a version like '1.2.3', got {version!r:.100}")
        nxt = key + 1
        return cls(version, f"{nxt // 10**12}.{nxt // 10**6 % 10**6}.{nxt % 10**6}")

    @classmethod
    def major(cls, major: int) -> VersionRange:
        """Every ``major.x.y``.

        Args:
            major: The major version.
        """
        if isinstance(major, bool) or not isinstance(major, int) or not 0 <= major < _VERSION_PART_CAP:
            raise ValueError(f"VersionRange.major needs a major version number, got {major!r:.100}")
        return cls(f"{major}.0.0", f"{major + 1}.0.0")

    @property
    def is_any(self) -> bool:
        """True if the range has no bound (nothing is filtered)."""
        return self.at_least is None and self.below is None

    def key_bounds(self) -> tuple[int | None, int | None]:
        """The inclusive ``(low, high)`` version keys (see :func:`version_key`) providers filter on."""
        lo = version_key(self.at_least)
        hi = version_key(self.below)
        return lo, None if hi is None else hi - 1

    def contains(self, version: str | None) -> bool:
        """True if a runtime with this range may replay an instance recorded at ``version`` (an unreadable
        or missing version is taken by anyone).

        Args:
            version: The recorded orchestration version.
        """
        key = version_key(version)
        if key is None:
            return True
        lo, hi = self.key_bounds()
        return (lo is None or key >= lo) and (hi is None or key <= hi)

    def __str__(self) -> str:
        if self.is_any:
            return "any version"
        parts = ([f">={self.at_least}"] if self.at_least else []) + ([f"<{self.below}"] if self.below else [])
        return ",".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Item types


@attrs.frozen
class OrchestrationItem:
    """One locked batch: an instance's current-execution history plus every message visible at fetch."""

    instance_id: str
    orchestration_name: str
    version: str | None
    execution_id: int
    history: list[Event]
    messages: list[WorkItem]
    lock_token: str
    attempt_count: int
    history_error: str | None = None


@attrs.frozen
class WorkItemLease:
    """A locked activity from ``fetch_work_item``: the item, the token that acks/renews/abandons it, and how
    often it was fetched."""

    item: ActivityExecute
    lock_token: str
    attempt_count: int


#: The longest activity tag a ``TagFilter`` accepts.
MAX_TAG_LENGTH = 256


def _check_tag(tag: object) -> str:
    if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_LENGTH or not tag.isprintable():
        raise ValueError(
            f"an activity tag must be a non-empty printable string of at most {MAX_TAG_LENGTH} characters, "
            f"got {tag!r}"
        )
    return tag


def _tag_args(tags: tuple[Any, ...]) -> tuple[Any, ...]:
    """``tags`` as given, or the members of one set/list/tuple given alone (``TagFilter.tags({"a", "b"})``)."""
    if len(tags) == 1 and isinstance(tags[0], (set, frozenset, list, tuple)):
        return tuple(tags[0])
    return tags


@attrs.frozen
class TagFilter:
    """Which activity tags a runtime runs (``RuntimeOptions.activity_tags``). An activity scheduled with
    ``schedule_activity(..., tag="gpu")`` is fetched only by runtimes whose filter accepts ``"gpu"``; an
    untagged one only by runtimes that accept untagged work. Make one with a class method:

    - ``TagFilter.default_only()`` (the default): untagged activities only.
    - ``TagFilter.tags("gpu", "io")``: only activities with one of these tags.
    - ``TagFilter.default_and("gpu")``: untagged activities and these tags.
    - ``TagFilter.any()``: every activity, tagged or not.

    Raises:
        ValueError: ``tags()`` without a tag, or a tag that is not a non-empty printable string of at
            most 256 characters.
    """

    untagged: bool = True
    tags_accepted: tuple[str, ...] = ()  # sorted, no duplicates (JSON-friendly in attrs.asdict)
    all_tags: bool = False

    @classmethod
    def default_only(cls) -> TagFilter:
        """Untagged activities only (the default)."""
        return cls()

    @classmethod
    def tags(cls, *tags: str) -> TagFilter:
        """Only activities carrying one of ``tags`` (at least one)."""
        tags = _tag_args(tags)
        if not tags:
            raise ValueError("TagFilter.tags() needs at least one tag (TagFilter.default_only() runs untagged work)")
        return cls(untagged=False, tags_accepted=tuple(sorted({_check_tag(t) for t in tags})))

    @classmethod
    def default_and(cls, *tags: str) -> TagFilter:
        """Untagged activities and those carrying one of ``tags``."""
        tags = _tag_args(tags)
        return cls(untagged=True, tags_accepted=tuple(sorted({_check_tag(t) for t in tags})))

    @classmethod
    def any(cls) -> TagFilter:
        """Every activity, whatever its tag."""
        return cls(untagged=True, all_tags=True)

    def accepts(self, tag: str | None) -> bool:
        """Whether an activity with ``tag`` (``None``: untagged) is run by this filter."""
        if tag is None:
            return self.untagged
        return self.all_tags or tag in self.tags_accepted

    def __repr__(self) -> str:
        if self.all_tags:
            return "TagFilter.any()"
        names = ", ".join(repr(t) for t in self.tags_accepted)
        if not self.untagged:
            return f"TagFilter.tags({names})"
        return f"TagFilter.default_and({names})" if names else "TagFilter.default_only()"


@attrs.frozen
class WorkerRouting:
    """What a worker fetch may take (``ProviderCapabilities.worker_routing``): the tag filter, and for
    items with a ``session_id`` the session owner asking (``owner``, one id per runtime process), how long
    a claimed session stays locked to it (``session_lock_timeout``, renewed while it has work) and how many
    sessions it may own at once (``max_sessions``).

    Session items are fetched one at a time per session, in scheduling order, and only by the session's
    owner while its lock lives; an unowned (or expired) session is claimed by the fetch that takes its
    first item."""

    tags: TagFilter = attrs.field(factory=TagFilter)
    owner: str = ""
    session_lock_timeout: float = 30.0
    max_sessions: int = 1_000_000

    def tag_params(self) -> tuple[bool, bool, list[str]]:
        """``(untagged, all tags, accepted tags)`` for a fetch query."""
        return self.tags.untagged, self.tags.all_tags, list(self.tags.tags_accepted)


@attrs.frozen
class EagerLock:
    """Eager dispatch (``ProviderCapabilities.eager_dispatch``): what a turn's ack may lock for the runtime
    that commits it, in the same transaction, instead of leaving the activities for a later fetch.

    The ack locks, in scheduling order, up to ``max_items`` of the activities it enqueues that
    :meth:`accepts` (not cancelled in the same turn), each for ``lock_timeout`` seconds with its own token
    and counted as a delivery (attempt 1), exactly as ``fetch_work_items`` would have; the others stay in
    the queue for any runtime. Session items are never locked eagerly (a session's owner is chosen by
    the fetch that claims it).

    Attributes:
        max_items: At most this many items (the free activity slots the runtime reserved).
        lock_timeout: The worker lock timeout, seconds.
        tags: The runtime's tag filter: only items it accepts.
        activities: Only activities of these names (``None``: any name), e.g. those registered here.
        claim: The caller's id for this request's locks (letters and digits; unique per commit attempt):
            when an ack's answer is lost (a dropped connection after the commit), ``release_eager(claim)``
            gives back what it locked instead of leaving it locked until the lock expires. ``""``: none.
    """

    max_items: int
    lock_timeout: float
    tags: TagFilter = attrs.field(factory=TagFilter)
    activities: frozenset[str] | None = None
    claim: str = attrs.field(default="")

    @claim.validator
    def _check_claim(self, attribute: object, value: str) -> None:
        if not isinstance(value, str) or not (value == "" or (value.isascii() and value.isalnum())):
            raise ValueError(f"EagerLock.claim must be letters and digits, got {value!r:.100}")

    def accepts(self, item: ActivityExecute) -> bool:
        """Whether ``item`` may be locked eagerly: no session, its tag accepted, its name allowed."""
        return (
            item.session_id is None
            and self.tags.accepts(item.tag)
            and (self.activities is None or item.name in self.activities)
        )


@attrs.frozen
class ExecutionMetadata:
    """What an ack tells the provider about the instance. ``name``/``version`` create the instance row if it
    does not exist; ``status`` (one of the status strings) and ``output`` update the execution."""

    orchestration_name: str | None = None
    orchestration_version: str | None = None
    parent_instance_id: str | None = None
    status: str | None = None
    output: str | None = None


@attrs.frozen
class ScheduledActivity:
    """Names one scheduled activity (instance, execution, event id), e.g. to cancel it in an ack."""

    instance_id: str
    execution_id: int
    activity_id: int


@attrs.frozen
class InstanceInfo:
    """An instance row with its current execution's status and output (times in epoch milliseconds)."""

    instance_id: str
    name: str
    version: str | None
    current_execution_id: int
    status: str
    output: str | None
    custom_status: str | None
    custom_status_version: int
    created_at_ms: int
    updated_at_ms: int
    parent_instance_id: str | None = None


@attrs.frozen
class ExecutionInfo:
    """One execution of an instance (a new one starts at every continue-as-new)."""

    execution_id: int
    status: str
    output: str | None
    started_at_ms: int
    completed_at_ms: int | None
    event_count: int


@attrs.frozen
class SystemMetrics:
    """Counts over the whole store (``duroxide-trio instances metrics``)."""

    total_instances: int
    total_executions: int
    running_instances: int
    completed_instances: int
    failed_instances: int
    total_events: int


@attrs.frozen
class WorkOutlook:
    """Whether a store can make progress right now, for test time control (``TestEnvironment`` skips
    virtual time only when nothing is ready and nothing is in progress). Optional for providers."""

    ready: int  # visible messages of unlocked instances + visible, unlocked activity items
    in_progress: int  # live instance locks + live activity locks
    next_visible_ms: int | None  # when the next delayed message (a timer, a delayed retry) becomes visible


@attrs.frozen
class QueueDepths:
    """Messages waiting per queue (timers are orchestrator messages with delayed visibility)."""

    orchestrator_queue: int
    worker_queue: int
    timer_queue: int = 0
    #: How long the oldest message that is ready (visible and unlocked) has waited, in ms (None: none ready).
    oldest_orchestrator_age_ms: int | None = None
    oldest_worker_age_ms: int | None = None
    #: Ready (unlocked) worker items per activity tag; untagged items count under ``None``. An item no
    #: runtime's ``activity_tags`` accepts waits here.
    worker_by_tag: dict[str | None, int] = attrs.field(factory=dict)
    #: Instances with ready orchestration work (a visible message, no live lock) per the version their
    #: next turn runs at: the recorded version, or the one a pending continue-as-new asks for; for a new
    #: instance, the one its start asks for (``None``: no version asked, each runtime runs its latest). An
    #: instance at a version no runtime's ``supported_replay_versions`` contains waits here.
    orchestrator_by_version: dict[str | None, int] = attrs.field(factory=dict)


@attrs.frozen
class DeleteResult:
    """What a delete removed."""

    instances_deleted: int = 0
    executions_deleted: int = 0
    events_deleted: int = 0
    queue_messages_deleted: int = 0


@attrs.frozen
class PruneOptions:
    """Which old executions to prune: keep the newest ``keep_last`` and/or those finished after
    ``completed_before_ms``."""

    keep_last: int | None = None
    completed_before_ms: int | None = None


@attrs.frozen
class PruneResult:
    """What a prune removed."""

    instances_processed: int = 0
    executions_deleted: int = 0
    events_deleted: int = 0


@attrs.frozen
class InstanceFilter:
    """Selects instances for bulk operations: explicit ids and/or finished before ``completed_before_ms``, at
    most ``limit``."""

    instance_ids: list[str] | None = None
    completed_before_ms: int | None = None
    limit: int = 1000


# ---------------------------------------------------------------------------------------------------------
# Wake-ups


#: How many started-but-not-yet-waited-for instances a ``Notifier`` remembers (``watch_start``).
_WATCHED_STARTS = 4096


class Notifier:
    """In-process wake-ups between a provider and the runtime/client that share it.

    A provider calls :meth:`notify` after committing work to a queue (``"orchestrator"`` or ``"worker"``),
    :meth:`notify_at` when it knows work becomes visible later (timers, delayed abandons), and
    :meth:`notify_instance` when an instance reached a terminal state. Waiters take a generation first,
    check the store, then wait for the generation to move, so no notification is lost in between.
    Everything here runs on the event loop thread.
    """

    def __init__(self, clock: Clock = WALL_CLOCK) -> None:
        self.clock = clock
        self._gen: dict[str, int] = {}
        self._events: dict[str, anyio.Event] = {}
        self._deadlines: dict[str, list[float]] = {}
        self._final: dict[str, InstanceInfo] = {}
        self._waiters: dict[str, int] = {}
        # Instances started through this notifier's provider and not yet waited for: True once notified.
        self._started: collections.OrderedDict[str, bool] = collections.OrderedDict()

    # queues ---------------------------------------------------------------------------------------
    def generation(self, key: str) -> int:
        """Take this before checking the store; pass it to :meth:`wait`."""
        return self._gen.get(key, 0)

    def notify(self, key: str) -> None:
        """Work was committed to queue ``key``: wake its waiters now."""
        self._gen[key] = self._gen.get(key, 0) + 1
        ev = self._events.pop(key, None)
        if ev is not None:
            ev.set()

    def notify_at(self, key: str, at_ms: int) -> None:
        """Work on ``key`` becomes visible at ``at_ms`` (epoch ms)."""
        heap = self._deadlines.setdefault(key, [])
        heapq.heappush(heap, at_ms / 1000.0)
        if len(heap) > 4096:  # keep it bounded: the fallback poll covers anything dropped
            heap[:] = heapq.nsmallest(1024, heap)
        # Waiters must recompute their timeout against the new earliest deadline.
        ev = self._events.pop(key, None)
        if ev is not None:
            ev.set()

    def next_deadline(self, key: str) -> float | None:
        """The earliest known time (epoch seconds) at which work on ``key`` becomes visible, if any."""
        heap = self._deadlines.get(key)
        now = self.clock.now_ms() / 1000.0
        while heap and heap[0] <= now - 1.0:
            heapq.heappop(heap)
        return heap[0] if heap else None

    async def wait(self, key: str, generation: int, timeout: float) -> None:
        """Return when ``key`` was notified after ``generation``, a known deadline passed, or ``timeout``."""
        clock = self.clock
        deadline_end = clock.monotonic() + timeout
        while self._gen.get(key, 0) == generation:
            remaining = deadline_end - clock.monotonic()
            nd = self.next_deadline(key)
            if nd is not None:
                until = nd - clock.now_ms() / 1000.0
                if until <= 0:
                    heapq.heappop(self._deadlines[key])
                    return
                remaining = min(remaining, until + 0.001)
            if remaining <= 0:
                return
            ev = self._events.get(key)
            if ev is None:
                ev = self._events[key] = anyio.Event()
            with clock.move_on_after(remaining):
                await ev.wait()

    def notify_all(self) -> None:
        """Wake every waiter (e.g. on shutdown or after a reconnect)."""
        for key in list(self._events):
            ev = self._events.pop(key)
            ev.set()
        for key in list(self._gen):
            self._gen[key] += 1
        for instance_id in self._started:  # notifications may have been missed: read them all again
            self._started[instance_id] = True

    # instances -------------------------------------------------------------------------------------
    def notify_instance(self, instance_id: str, final: InstanceInfo | None = None) -> None:
        """``instance_id`` reached a terminal state; ``final`` (optional) is its committed info, handed to
        a waiter so that it need not read it back."""
        if instance_id in self._started:
            self._started[instance_id] = True
        ev = self._events.pop("instance:" + instance_id, None)
        if ev is not None:
            if final is not None:
                self._final[instance_id] = final
            ev.set()

    def watch_start(self, instance_id: str) -> None:
        """A client is about to store the start of the new instance ``instance_id``: from now on, any
        notification for it is remembered until :meth:`unnotified_start` is asked (bounded: the oldest
        of more than 4096 watched starts is forgotten, and its waiter reads the store as usual)."""
        self._started[instance_id] = False
        self._started.move_to_end(instance_id)
        if len(self._started) > _WATCHED_STARTS:
            self._started.popitem(last=False)

    def forget_start(self, instance_id: str) -> None:
        """The start watched by :meth:`watch_start` was not stored (it failed)."""
        self._started.pop(instance_id, None)

    def unnotified_start(self, instance_id: str) -> bool:
        """True (once) if ``instance_id`` was started through :meth:`watch_start` and nothing was notified
        for it since (no terminal state committed here, heard from another process, or possibly missed):
        it is not finished yet, so a waiter may skip its first read of the store."""
        return self._started.pop(instance_id, True) is False

    def take_final(self, instance_id: str) -> InstanceInfo | None:
        """The terminal info passed to the last ``notify_instance`` of ``instance_id`` (once)."""
        return self._final.pop(instance_id, None)

    def instance_event(self, instance_id: str) -> anyio.Event:
        """An event set the next time ``instance_id`` is notified. Take it *before* checking the store,
        and give it back with :meth:`release_instance_event` when done waiting."""
        key = "instance:" + instance_id
        ev = self._events.get(key)
        if ev is None:
            ev = self._events[key] = anyio.Event()
        self._waiters[key] = self._waiters.get(key, 0) + 1
        return ev

    def release_instance_event(self, instance_id: str) -> None:
        """A waiter of :meth:`instance_event` stopped waiting (e.g. timed out): forget the event when it
        was the last one, so waits that time out leave nothing behind."""
        key = "instance:" + instance_id
        left = self._waiters.get(key, 0) - 1
        if left > 0:
            self._waiters[key] = left
            return
        self._waiters.pop(key, None)
        ev = self._events.get(key)
        if ev is not None and not ev.is_set():
            del self._events[key]
        self._final.pop(instance_id, None)


# ---------------------------------------------------------------------------------------------------------
# Protocols


@runtime_checkable
class Provider(Protocol):
    """The storage contract the runtime and the client use. See ``../reference`` §3 for the full rules;
    the validation suite (``duroxide_trio.testing.validation``) is the executable definition."""

    notifier: Notifier

    @property
    def name(self) -> str:
        """A short name for messages and results (``"sqlite"``, ``"postgres"``)."""
        ...

    async def close(self) -> None:
        """Release connections and threads; idempotent. ``async with provider:`` calls it on exit."""
        ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...

    # orchestrator queue -----------------------------------------------------------------------------
    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0, *, versions: VersionRange | None = None
    ) -> OrchestrationItem | None:
        """Lock the instance of the oldest visible message whose instance is not locked, tag every visible
        message of that instance with a fresh token (attempt_count + 1 each; the batch reports the max),
        and return them with the current execution's history. ``None`` if there is no work.

        With ``versions`` (capability filtering), skip instances whose next turn runs at a version outside
        the range: an existing instance's recorded version, or, while a continue-as-new is pending, the
        version it asks for; a new instance's, the version its start asks for. A message that asks for no
        version (the runtime's latest) or a version that is not readable is not skipped. The runtime
        passes ``versions`` only when ``RuntimeOptions.supported_replay_versions`` is not "any"."""
        ...

    async def ack_orchestration_item(
        self,
        lock_token: str,
        execution_id: int,
        history_delta: Sequence[Event],
        worker_items: Sequence[ActivityExecute],
        orchestrator_items: Sequence[WorkItem],
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivity] = (),
    ) -> Sequence[WorkItemLease] | None:
        """Commit one turn atomically (history append, enqueues, deletion of the tagged messages, activity
        cancellation, status) and release the lock. Unknown or expired token: permanent ProviderError.
        Returns nothing (``None``); a provider with ``eager_dispatch`` may return its (empty) list of
        eagerly locked items (see :class:`EagerCapable`)."""
        ...

    async def abandon_orchestration_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        """Release a fetched batch without committing: its messages become visible again (after ``delay``
        seconds); ``ignore_attempt`` gives back the attempt the fetch counted (e.g. on shutdown)."""
        ...

    async def renew_orchestration_item_lock(self, lock_token: str, extend_for: float) -> None:
        """Extend the instance lock to ``extend_for`` seconds from now; permanent ProviderError if the
        token is unknown or expired."""
        ...

    async def enqueue_for_orchestrator(self, item: WorkItem, delay: float | None = None) -> None:
        """Put a message on the orchestrator queue for ``item``'s instance, visible after ``delay`` seconds."""
        ...

    async def enqueue_start(self, item: StartOrchestration) -> None:
        """Enqueue a start for a new instance; ``InstanceAlreadyExists`` if the id has an instance or a
        pending start already (checked atomically with the insert)."""
        ...

    # history ----------------------------------------------------------------------------------------
    async def read(self, instance_id: str) -> list[Event]:
        """The history of the instance's current execution (empty for an unknown instance)."""
        ...

    async def read_with_execution(self, instance_id: str, execution_id: int) -> list[Event]:
        """The history of one execution (empty if it does not exist)."""
        ...

    async def append_with_execution(self, instance_id: str, execution_id: int, events: Sequence[Event]) -> None:
        """Append events to an execution's history outside a turn (tests and tools)."""
        ...

    # worker queue -----------------------------------------------------------------------------------
    async def enqueue_for_worker(self, item: ActivityExecute) -> None:
        """Put an activity on the worker queue outside a turn (tests and tools)."""
        ...

    async def fetch_work_item(self, lock_timeout: float, poll_timeout: float = 0.0) -> WorkItemLease | None:
        """Lock the oldest visible activity for ``lock_timeout`` seconds (attempt_count + 1) and return it;
        ``None`` if there is none (waiting up to ``poll_timeout`` seconds for one). Tags and sessions are
        not looked at (a provider with ``worker_routing`` filters in ``fetch_routed_work_items``)."""
        ...

    async def ack_work_item(self, lock_token: str, completion: WorkItem | None) -> None:
        """Delete the locked activity and enqueue its ``completion`` for the orchestrator atomically
        (``None``: drop it). Unknown or expired token: permanent ProviderError."""
        ...

    async def renew_work_item_lock(self, lock_token: str, extend_for: float) -> None:
        """Extend an activity lock to ``extend_for`` seconds from now; permanent ProviderError if the token
        is unknown, expired, or the activity was cancelled."""
        ...

    async def abandon_work_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        """Release a locked activity so it is fetched again (after ``delay`` seconds); ``ignore_attempt``
        gives back the attempt the fetch counted."""
        ...

    # status -----------------------------------------------------------------------------------------
    async def get_instance_info(self, instance_id: str) -> InstanceInfo | None:
        """The instance row and its current execution's status and output; ``None`` if unknown."""
        ...

    async def instance_exists(self, instance_id: str) -> bool:
        """True if ``instance_id`` has an instance or a pending start (events and cancels for any other id
        are refused by the client with ``InstanceNotFound``)."""
        ...

    async def get_custom_status(self, instance_id: str, last_seen_version: int) -> tuple[str | None, int] | None:
        """``(custom status JSON, version)`` if its version is newer than ``last_seen_version``, else ``None``."""
        ...

    def as_admin(self) -> ProviderAdmin | None:
        """The management interface, or ``None`` if this provider has none."""
        ...


# ---------------------------------------------------------------------------------------------------------
# Optional capabilities: declared, never probed


@attrs.frozen
class ProviderCapabilities:
    """What optional operations a provider has, beyond :class:`Provider`. A provider declares them as its
    ``capabilities`` attribute; the runtime reads this declaration (``capabilities_of``) and never probes
    for methods. A provider that declares nothing has none of them (:data:`NO_CAPABILITIES`), which is
    always correct: every capability is a faster or richer path the runtime can do without.

    - ``batch_work_items``: :class:`BatchWorkItems` (``fetch_work_items`` / ``ack_work_items``: several
      activities per round trip). Without it the runtime calls ``fetch_work_item`` / ``ack_work_item``.
    - ``listener``: :class:`ListenerCapable` (``run_listener``: cross-process wake-ups, started in the
      runtime's task group). Without it only in-process wake-ups and the fallback poll wake dispatchers.
    - ``process_leases``: :class:`ProcessLeases` (a per-process lease, so that a dead process's locks move
      at once). Without it locks move when they expire.
    - ``work_outlook``: :class:`OutlookCapable` (``work_outlook``, for ``TestEnvironment``'s virtual time).
    - ``worker_routing``: :class:`RoutingCapable` (``fetch_routed_work_items`` filtering by activity tag
      and session inside the fetch, and ``renew_sessions``). Without it a runtime fetches unfiltered and
      gives back at once what its tag filter does not accept, and sessions give no affinity.
    - ``key_values``: :class:`KeyValueStore` (``get_kv_values``: the materialised key-value table, written
      by ``ack_orchestration_item`` from the turn's ``KeyValueSet`` / ``KeyValueCleared`` events). Without
      it clients rebuild the state from the current execution's history (``history.kv_state``).
    - ``eager_dispatch``: :class:`EagerCapable` (``ack_orchestration_item(..., eager=EagerLock(...))``
      locks some of the activities the turn enqueues for the committing runtime and returns them as
      leases, in the same round trip). Without it every activity waits for a worker fetch.
    - ``ack_fetches_turns``: :class:`AckFetchesTurns` (``ack_work_items_and_fetch``: the activity ack
      also locks and returns the next turns of the instances its completions were sent to, in the same
      transaction). Without it the runtime acks, and its orchestration dispatchers fetch those turns.
    - ``start_fetches_turn``: :class:`StartFetchesTurn` (``enqueue_start_and_fetch``: storing a start
      also locks and returns the queue's next turn, the new instance's first when nothing older waits,
      in the same transaction). Without it a
      runtime's client stores the start, and the orchestration dispatchers fetch the first turn.
    """

    batch_work_items: bool = False
    listener: bool = False
    process_leases: bool = False
    work_outlook: bool = False
    worker_routing: bool = False
    key_values: bool = False
    eager_dispatch: bool = False
    ack_fetches_turns: bool = False
    start_fetches_turn: bool = False


#: The capabilities of a provider that declares none.
NO_CAPABILITIES = ProviderCapabilities()


def capabilities_of(provider: object) -> ProviderCapabilities:
    """``provider.capabilities`` if it declares them (a :class:`ProviderCapabilities`), else none."""
    declared = getattr(provider, "capabilities", None)
    return declared if isinstance(declared, ProviderCapabilities) else NO_CAPABILITIES


class BatchWorkItems(Protocol):
    """``ProviderCapabilities.batch_work_items``: the worker queue several items per round trip."""

    async def fetch_work_items(
        self, lock_timeout: float, max_items: int, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        """Lock up to ``max_items`` visible activities (as ``fetch_work_item`` does one); may be empty."""
        ...

    async def ack_work_items(self, entries: Sequence[tuple[str, WorkItem | None]]) -> list[ProviderError | None]:
        """``ack_work_item`` for each ``(lock_token, completion)`` in one transaction; one entry per
        input: ``None`` when that ack committed, else its (permanent) error. Raises only when the whole
        batch failed (e.g. a lost connection)."""
        ...


@attrs.frozen
class TurnRequest:
    """What ``ack_work_items_and_fetch`` is asked to lock besides the acks: up to ``max_items`` turns
    (orchestration batches) of the instances the committed completions were sent to, each locked for
    ``lock_timeout`` seconds, filtered by ``versions`` as ``fetch_orchestration_item(versions=)`` does
    (``None``: no filter).

    Attributes:
        lock_timeout: The instance lock of each returned batch, in seconds (as the fetch's).
        max_items: At most this many batches (0: none, the call is then a plain ack).
        versions: The runtime's capability filter (``RuntimeOptions.supported_replay_versions``).
    """

    lock_timeout: float
    max_items: int
    versions: VersionRange | None = None


@attrs.frozen
class AckedWithTurns:
    """The answer of ``ack_work_items_and_fetch``: one ack result per entry (as ``ack_work_items``) and
    the batches it locked, each exactly what ``fetch_orchestration_item`` would have returned."""

    results: list[ProviderError | None]
    items: list[OrchestrationItem]


class AckFetchesTurns(Protocol):
    """``ProviderCapabilities.ack_fetches_turns``: acknowledging activities and fetching the next turns
    of their instances in one transaction (one round trip)."""

    async def ack_work_items_and_fetch(
        self, entries: Sequence[tuple[str, WorkItem | None]], turns: TurnRequest
    ) -> AckedWithTurns:
        """``ack_work_items(entries)``, and in the same transaction, for the distinct instances the
        committed completions were sent to (in entry order), lock up to ``turns.max_items`` of them as
        ``fetch_orchestration_item`` does: an instance is taken only if it is not locked by anyone (an
        expired lock counts as none), has a visible message and passes ``turns.versions``; every visible
        message of a taken instance is in its batch (attempt_count + 1 each). An instance not taken is
        left as it was, and its dispatchers are woken as after a plain ack."""
        ...


#: Seconds a claimable orchestrator message may have waited before a start handed over by
#: ``enqueue_start_and_fetch`` may no longer overtake it (see :class:`StartFetchesTurn`).
START_OVERTAKE_LIMIT = 0.1


class StartFetchesTurn(Protocol):
    """``ProviderCapabilities.start_fetches_turn``: storing a start and fetching the next turn in one
    transaction (one round trip)."""

    async def enqueue_start_and_fetch(self, item: StartOrchestration, turn: TurnRequest) -> OrchestrationItem | None:
        """``enqueue_start(item)`` (raising ``InstanceAlreadyExists`` exactly as it does), and in the same
        transaction, when ``turn.max_items >= 1``, lock and return a batch as ``fetch_orchestration_item``
        would (for ``turn.lock_timeout`` seconds, honouring ``turn.versions``; every visible message of
        the instance, attempt_count + 1): the new instance's first turn, unless a claimable message has
        waited in the queue for longer than :data:`START_OVERTAKE_LIMIT`; then the batch a fetch would
        take (the oldest claimable instance), so that starts never overtake a backlog. A provider may
        always take the fetch's batch (SQLite does). When the batch is another instance's, or ``None``
        (nothing claimable), the start is stored and left for any dispatcher, who is woken as after
        ``enqueue_start``."""
        ...


class RoutingCapable(Protocol):
    """``ProviderCapabilities.worker_routing``: worker fetches filtered by tag, with session affinity."""

    async def fetch_routed_work_items(
        self, lock_timeout: float, max_items: int, routing: WorkerRouting, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        """``fetch_work_items`` taking only what ``routing`` allows (see :class:`WorkerRouting`), in one
        round trip; claims the sessions of the session items it takes for ``routing.owner``."""
        ...

    async def renew_sessions(self, owner: str, lock_timeout: float, idle_timeout: float) -> int:
        """Extend the locks of ``owner``'s sessions that are busy (an item locked) or were active within
        ``idle_timeout`` seconds; release the others. Returns how many it still owns."""
        ...


class ListenerCapable(Protocol):
    """``ProviderCapabilities.listener``: cross-process wake-ups onto ``provider.notifier``."""

    async def run_listener(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled (start it with ``await tg.start(provider.run_listener)``); returns at
        once when the provider's own ``async with`` block already runs a listener."""
        ...


class ProcessLeases(Protocol):
    """``ProviderCapabilities.process_leases``: one lease per runtime process (``runtime._liveness``)."""

    @property
    def process_id(self) -> str | None:
        """The process whose lease this provider holds (``None``: none registered)."""
        ...

    async def register_process(self, process_id: str) -> bool:
        """Take the lease of ``process_id``; False if it could not be taken now (retried)."""
        ...

    async def renew_process_lease(self, process_id: str, stale_after: float, grace: float = 1.0) -> list[str]:
        """Renew the lease; release the locks of processes whose lease went stale; return their ids."""
        ...

    async def unregister_process(self, process_id: str) -> None:
        """Give the lease back (on shutdown)."""
        ...


class OutlookCapable(Protocol):
    """``ProviderCapabilities.work_outlook``: whether the store can make progress right now."""

    async def work_outlook(self) -> WorkOutlook:
        """Ready and in-progress work and the next delayed visibility (see :class:`WorkOutlook`)."""
        ...


class KeyValueStore(Protocol):
    """``ProviderCapabilities.key_values``: the per-instance key-value table.

    ``ack_orchestration_item`` applies the ``KeyValueSet`` / ``KeyValueCleared`` events of its history
    delta to the table in the same transaction (in event order); deleting an instance deletes its rows;
    pruning executions never touches them.
    """

    async def get_kv_values(self, instance_id: str) -> dict[str, str]:
        """Every key of ``instance_id`` and its JSON value text (empty for an unknown instance)."""
        ...


class EagerCapable(Protocol):
    """``ProviderCapabilities.eager_dispatch``: the turn's ack hands activities to the committing runtime."""

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
    ) -> Sequence[WorkItemLease]:
        """``Provider.ack_orchestration_item``; with ``eager``, also lock (in the same transaction) up to
        ``eager.max_items`` of the ``worker_items`` that ``eager.accepts`` for ``eager.lock_timeout``
        seconds and return them as leases (same shape as ``fetch_work_items``: own token, attempt 1), in
        scheduling order; empty without ``eager``. Nothing is locked if the ack fails."""
        ...

    async def release_eager(self, claim: str) -> int:
        """Give back every item an eager ack locked under ``claim`` (``EagerLock.claim``) and that is
        still locked by it: visible at once, its attempt not counted. For an ack whose answer was lost;
        returns how many (0 for ``""``)."""
        ...


def as_eager(provider: object) -> EagerCapable | None:
    """``provider`` as :class:`EagerCapable` if it declares ``eager_dispatch``, else ``None``."""
    return cast(EagerCapable, provider) if capabilities_of(provider).eager_dispatch else None


def as_key_values(provider: object) -> KeyValueStore | None:
    """``provider`` as :class:`KeyValueStore` if it declares that capability, else ``None``."""
    return cast(KeyValueStore, provider) if capabilities_of(provider).key_values else None


def as_ack_fetching(provider: object) -> AckFetchesTurns | None:
    """``provider`` as :class:`AckFetchesTurns` if it declares ``ack_fetches_turns``, else ``None``."""
    return cast(AckFetchesTurns, provider) if capabilities_of(provider).ack_fetches_turns else None


def as_start_fetching(provider: object) -> StartFetchesTurn | None:
    """``provider`` as :class:`StartFetchesTurn` if it declares ``start_fetches_turn``, else ``None``."""
    return cast(StartFetchesTurn, provider) if capabilities_of(provider).start_fetches_turn else None


def as_batch(provider: object) -> BatchWorkItems | None:
    """``provider`` as :class:`BatchWorkItems` if it declares that capability, else ``None``."""
    return cast(BatchWorkItems, provider) if capabilities_of(provider).batch_work_items else None


def as_routing(provider: object) -> RoutingCapable | None:
    """``provider`` as :class:`RoutingCapable` if it declares ``worker_routing``, else ``None``."""
    return cast(RoutingCapable, provider) if capabilities_of(provider).worker_routing else None


def as_listener(provider: object) -> ListenerCapable | None:
    """``provider`` as :class:`ListenerCapable` if it declares that capability, else ``None``."""
    return cast(ListenerCapable, provider) if capabilities_of(provider).listener else None


def as_process_leases(provider: object) -> ProcessLeases | None:
    """``provider`` as :class:`ProcessLeases` if it declares that capability, else ``None``."""
    return cast(ProcessLeases, provider) if capabilities_of(provider).process_leases else None


@runtime_checkable
class ProviderAdmin(Protocol):
    """Management operations (the Client's ``list_instances``, ``delete_instance``, ``prune_executions``...)."""

    async def list_instances(self, status: str | None = None) -> list[str]:
        """Instance ids, newest first; ``status`` (``"Running"``, ``"Completed"``, ``"Failed"``,
        ``"ContinuedAsNew"``) filters on the current execution."""
        ...

    async def list_executions(self, instance_id: str) -> list[int]:
        """The instance's execution ids in ascending order (empty if unknown)."""
        ...

    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[Event]:
        """One execution's history (default: the current one); empty if unknown."""
        ...

    async def get_instance_info(self, instance_id: str) -> InstanceInfo | None:
        """The instance row and its current execution; ``None`` if unknown."""
        ...

    async def get_execution_info(self, instance_id: str, execution_id: int) -> ExecutionInfo | None:
        """Status, output, times and event count of one execution; ``None`` if it does not exist."""
        ...

    async def get_system_metrics(self) -> SystemMetrics:
        """Counts of instances (by status), executions and history events."""
        ...

    async def get_queue_depths(self) -> QueueDepths:
        """Messages waiting in the orchestrator, worker and timer queues."""
        ...

    async def list_children(self, instance_id: str) -> list[str]:
        """Direct sub-orchestrations of an instance."""
        ...

    async def get_parent_id(self, instance_id: str) -> str | None:
        """The parent of a sub-orchestration; ``None`` for a root or an unknown instance."""
        ...

    async def get_instance_tree(self, instance_id: str) -> list[str]:
        """The instance and all its descendants (the instance first)."""
        ...

    async def delete_instance(self, instance_id: str, force: bool = False) -> DeleteResult:
        """Delete a root instance and its descendants. Raises ``InstanceNotFound``,
        ``CannotDeleteSubOrchestration``, or ``InstanceStillRunning`` unless ``force``."""
        ...

    async def delete_instances_atomic(self, instance_ids: Sequence[str], force: bool = False) -> DeleteResult:
        """Delete these instances in one transaction (all or none); same errors as ``delete_instance``."""
        ...

    async def delete_instance_bulk(self, filter: InstanceFilter) -> DeleteResult:
        """Delete terminal root instances matching ``filter`` (and their descendants); running ones and
        sub-orchestrations are skipped."""
        ...

    async def prune_executions(self, instance_id: str, options: PruneOptions) -> PruneResult:
        """Delete old terminal executions of one instance (``keep_last`` / ``completed_before_ms``); the
        current execution is never deleted."""
        ...

    async def prune_executions_bulk(self, filter: InstanceFilter, options: PruneOptions) -> PruneResult:
        """``prune_executions`` for every instance matching ``filter``."""
        ...


class ProviderFactory(Protocol):
    """Creates fresh, isolated providers (for the validation suite and the stress harness).

    Optional hooks used by a few validation tests: ``lock_timeout`` (seconds, short so lock-expiry tests
    are quick) and ``test_hooks(provider)`` (a ``testing.validation._support.TestHooks``: the suite's
    one way into the provider's storage); ``cleanup(provider)`` runs after use."""

    async def create_provider(self) -> Provider:
        """A fresh, isolated, migrated provider (a new file, schema or database)."""
        ...
