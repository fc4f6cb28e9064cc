"""The validation suite catches broken providers: for every category, a deliberately broken wrapper around
a real SQLite provider makes at least one of that category's tests fail (and the same tests pass through
an unbroken wrapper, so the failure comes from the bug, not from the wrapping)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import attrs
import pytest

from duroxide_trio.history import ActivityExecute, Event, KeyValueSet, StartOrchestration, TimerDue, WorkItem
from duroxide_trio.providers.base import (
    AckedWithTurns,
    DeleteResult,
    EagerLock,
    ExecutionMetadata,
    InstanceFilter,
    OrchestrationItem,
    ProviderError,
    PruneOptions,
    PruneResult,
    QueueDepths,
    ScheduledActivity,
    TagFilter,
    TurnRequest,
    VersionRange,
    WorkerRouting,
    WorkItemLease,
    now_ms,
)
from duroxide_trio.providers.sqlite import SqliteFactory, SqliteProvider
from duroxide_trio.testing.validation import CATEGORIES, run_test, run_validation

pytestmark = pytest.mark.anyio


class Wrapper:
    """Delegates everything to a real SQLite provider; subclasses override one method badly."""

    def __init__(self, inner: SqliteProvider) -> None:
        self._inner = inner
        self.notifier = inner.notifier

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def name(self) -> str:
        return f"broken-{self._inner.name}"

    def as_admin(self) -> Wrapper:
        return self

    async def close(self) -> None:
        await self._inner.close()

    async def _sql(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._inner._run("broken", lambda conn: conn.execute(sql, params))


class WrapperFactory:
    def __init__(self, wrapper: type[Wrapper]) -> None:
        self.inner = SqliteFactory(":memory:")
        self.wrapper = wrapper
        self.lock_timeout = self.inner.lock_timeout

    async def create_provider(self) -> Wrapper:
        return self.wrapper(await self.inner.create_provider())

    async def cleanup(self, provider: Wrapper) -> None:
        await self.inner.cleanup(provider._inner)

    def test_hooks(self, provider: Wrapper) -> Any:
        return self.inner.test_hooks(provider._inner)


# --- the bugs ---------------------------------------------------------------------------------------------


class NonAtomicAck(Wrapper):
    """Writes the turn's outgoing work before (and apart from) the history append."""

    async def ack_orchestration_item(
        self,
        lock_token: str,
        execution_id: int,
        history_delta: Sequence[Event],
        worker_items: Sequence[ActivityExecute],
        orchestrator_items: Sequence[WorkItem],
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivity] = (),
    ) -> None:
        for w in worker_items:
            await self._inner.enqueue_for_worker(w)
        for o in orchestrator_items:
            await self._inner.enqueue_for_orchestrator(o)
        await self._inner.ack_orchestration_item(
            lock_token, execution_id, history_delta, [], [], metadata, cancelled_activities
        )


class AckSkipsLockCheck(Wrapper):
    """Trusts any token it handed out: re-creates the instance lock before acking (stale, expired, reused
    or deleted locks all 'work')."""

    def __init__(self, inner: SqliteProvider) -> None:
        super().__init__(inner)
        self._instances: dict[str, str] = {}
        self._lock = anyio.Lock()  # make "re-lock, then ack" one step, so a repeated ack really succeeds

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0
    ) -> OrchestrationItem | None:
        item = await self._inner.fetch_orchestration_item(lock_timeout, poll_timeout)
        if item is not None:
            self._instances[item.lock_token] = item.instance_id
        return item

    async def ack_orchestration_item(self, lock_token: str, *args: Any, **kwargs: Any) -> None:
        async with self._lock:
            instance = self._instances.get(lock_token)
            if instance is not None:
                await self._sql(
                    "INSERT OR REPLACE INTO instance_locks(instance_id, lock_token, locked_until) VALUES (?, ?, ?)",
                    (instance, lock_token, now_ms() + 60_000),
                )
            await self._inner.ack_orchestration_item(lock_token, *args, **kwargs)


class AckAcceptsUnknownToken(Wrapper):
    """Treats an ack with an unknown token as an idempotent success."""

    async def ack_orchestration_item(self, lock_token: str, *args: Any, **kwargs: Any) -> None:
        try:
            await self._inner.ack_orchestration_item(lock_token, *args, **kwargs)
        except ProviderError as exc:
            if "invalid lock token" not in str(exc):
                raise


class FetchIgnoresLocks(Wrapper):
    """Fetches as if no instance were locked."""

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0
    ) -> OrchestrationItem | None:
        await self._sql("DELETE FROM instance_locks")
        return await self._inner.fetch_orchestration_item(lock_timeout, poll_timeout)


class AckDeletesLateMessages(Wrapper):
    """An ack that also consumes the messages that arrived after the fetch."""

    async def ack_orchestration_item(self, lock_token: str, *args: Any, **kwargs: Any) -> None:
        await self._sql(
            "DELETE FROM orchestrator_queue WHERE lock_token IS NOT ? AND instance_id = "
            "(SELECT instance_id FROM instance_locks WHERE lock_token = ?)",
            (lock_token, lock_token),
        )
        await self._inner.ack_orchestration_item(lock_token, *args, **kwargs)


class RenewNeverFails(Wrapper):
    """Worker lock renewal that extends whatever row carries the token and never reports failure."""

    async def renew_work_item_lock(self, lock_token: str, extend_for: float) -> None:
        await self._sql(
            "UPDATE worker_queue SET locked_until = ? WHERE lock_token = ?",
            (now_ms() + int(extend_for * 1000), lock_token),
        )


class ReadsFirstExecution(Wrapper):
    """``read`` returns the first execution instead of the latest."""

    async def read(self, instance_id: str) -> list[Any]:
        return await self._inner.read_with_execution(instance_id, 1)


class IgnoresDelays(Wrapper):
    """Enqueued timers and delayed messages are visible at once."""

    async def enqueue_for_orchestrator(self, item: WorkItem, delay: float | None = None) -> None:
        if isinstance(item, TimerDue):
            item = attrs.evolve(item, fire_at_ms=now_ms())
        await self._inner.enqueue_for_orchestrator(item, None)


class DropsEarlyMessages(Wrapper):
    """duroxide's behaviour, not ours: messages for instances that do not exist (yet) are dropped."""

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0
    ) -> OrchestrationItem | None:
        await self._sql(
            "DELETE FROM orchestrator_queue WHERE instance_id NOT IN (SELECT instance_id FROM instances) "
            "AND instance_id NOT IN (SELECT instance_id FROM orchestrator_queue WHERE is_start = 1)"
        )
        return await self._inner.fetch_orchestration_item(lock_timeout, poll_timeout)


class AcceptsDuplicateStarts(Wrapper):
    """``enqueue_start`` without the existence check."""

    async def enqueue_start(self, item: StartOrchestration) -> None:
        await self._inner.enqueue_for_orchestrator(item)


class ListIgnoresStatus(Wrapper):
    async def list_instances(self, status: str | None = None) -> list[str]:
        return await self._inner.list_instances(None)


class SlowEmptyPoll(Wrapper):
    """Sleeps well past ``poll_timeout`` when there is no work."""

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0
    ) -> OrchestrationItem | None:
        item = await self._inner.fetch_orchestration_item(lock_timeout, poll_timeout)
        if item is None:
            await anyio.sleep(poll_timeout + 1.0)
        return item

    async def fetch_work_item(self, lock_timeout: float, poll_timeout: float = 0.0) -> WorkItemLease | None:
        lease = await self._inner.fetch_work_item(lock_timeout, poll_timeout)
        if lease is None:
            await anyio.sleep(poll_timeout + 1.0)
        return lease


class NoAttemptCounting(Wrapper):
    """Every delivery claims to be the first."""

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0
    ) -> OrchestrationItem | None:
        item = await self._inner.fetch_orchestration_item(lock_timeout, poll_timeout)
        return None if item is None else attrs.evolve(item, attempt_count=1)

    async def fetch_work_item(self, lock_timeout: float, poll_timeout: float = 0.0) -> WorkItemLease | None:
        lease = await self._inner.fetch_work_item(lock_timeout, poll_timeout)
        return None if lease is None else attrs.evolve(lease, attempt_count=1)


class IgnoresCancelledActivities(Wrapper):
    async def ack_orchestration_item(
        self,
        lock_token: str,
        execution_id: int,
        history_delta: Sequence[Event],
        worker_items: Sequence[ActivityExecute],
        orchestrator_items: Sequence[WorkItem],
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivity] = (),
    ) -> None:
        await self._inner.ack_orchestration_item(
            lock_token, execution_id, history_delta, worker_items, orchestrator_items, metadata, ()
        )


class DeleteIgnoresForce(Wrapper):
    async def delete_instance(self, instance_id: str, force: bool = False) -> DeleteResult:
        return await self._inner.delete_instance(instance_id, True)

    async def delete_instances_atomic(self, instance_ids: Sequence[str], force: bool = False) -> DeleteResult:
        return await self._inner.delete_instances_atomic(instance_ids, True)


class PruneIgnoresKeepLast(Wrapper):
    async def prune_executions(self, instance_id: str, options: PruneOptions) -> PruneResult:
        return await self._inner.prune_executions(instance_id, attrs.evolve(options, keep_last=None))


class BulkDeleteIgnoresLimit(Wrapper):
    async def delete_instance_bulk(self, filter: InstanceFilter) -> DeleteResult:
        return await self._inner.delete_instance_bulk(attrs.evolve(filter, limit=1000))


class CustomStatusAlwaysChanged(Wrapper):
    """``get_custom_status`` ignores the caller's last seen version."""

    async def get_custom_status(
        self, instance_id: str, last_seen_version: int
    ) -> tuple[str | None, int] | None:
        return await self._inner.get_custom_status(instance_id, -1)


class KvWritesBeforeAck(Wrapper):
    """Writes the turn's ``KeyValueSet`` rows in their own statement before the ack (not atomic with it)."""

    async def ack_orchestration_item(
        self, lock_token: str, execution_id: int, history_delta: Sequence[Event], *rest: Any
    ) -> None:
        for e in history_delta:
            if isinstance(e.kind, KeyValueSet):
                await self._sql(
                    "INSERT OR REPLACE INTO kv_store(instance_id, key, value, last_updated_at_ms) "
                    "SELECT instance_id, ?, ?, 0 FROM instance_locks WHERE lock_token = ?",
                    (e.kind.key, e.kind.value, lock_token),
                )
        await self._inner.ack_orchestration_item(lock_token, execution_id, history_delta, *rest)


class KvSurvivesDelete(Wrapper):
    """Deleting an instance leaves its key-value rows behind."""

    async def delete_instance(self, instance_id: str, force: bool = False) -> DeleteResult:
        kept = await self._inner.get_kv_values(instance_id)
        result = await self._inner.delete_instance(instance_id, force)
        for key, value in kept.items():
            await self._sql(
                "INSERT INTO kv_store(instance_id, key, value, last_updated_at_ms) VALUES (?, ?, ?, 0)",
                (instance_id, key, value),
            )
        return result


class IgnoresVersionFilter(Wrapper):
    """Capability filtering accepted but not applied: every instance is fetched."""

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0, *, versions: VersionRange | None = None
    ) -> OrchestrationItem | None:
        return await self._inner.fetch_orchestration_item(lock_timeout, poll_timeout)


class HandoverIgnoresVersionFilter(Wrapper):
    """The activity ack hands over the next turn of any instance, whatever the runtime can replay."""

    async def ack_work_items_and_fetch(
        self, entries: Sequence[tuple[str, WorkItem | None]], turns: TurnRequest
    ) -> AckedWithTurns:
        return await self._inner.ack_work_items_and_fetch(entries, attrs.evolve(turns, versions=None))


class StartHandoverIgnoresVersionFilter(Wrapper):
    """The start hands over the new instance's first turn whatever version it asks for."""

    async def enqueue_start_and_fetch(self, item: StartOrchestration, turn: TurnRequest) -> OrchestrationItem | None:
        return await self._inner.enqueue_start_and_fetch(item, attrs.evolve(turn, versions=None))


class StartHandoverLocksForAnHour(Wrapper):
    """The handed-over first turn is locked for an hour whatever timeout was asked: a runtime that crashes
    after the start strands the instance for that long."""

    async def enqueue_start_and_fetch(self, item: StartOrchestration, turn: TurnRequest) -> OrchestrationItem | None:
        return await self._inner.enqueue_start_and_fetch(item, attrs.evolve(turn, lock_timeout=3600.0))


class StartHandoverOnlyItsOwn(Wrapper):
    """The start hands over only the new instance's own first turn: with a backlog it gives the queue's
    head back and hands over nothing, so the start is never a way into the backlog."""

    async def enqueue_start_and_fetch(self, item: StartOrchestration, turn: TurnRequest) -> OrchestrationItem | None:
        batch = await self._inner.enqueue_start_and_fetch(item, turn)
        if batch is not None and batch.instance_id != item.instance:
            await self._inner.abandon_orchestration_item(batch.lock_token, ignore_attempt=True)
            return None
        return batch


class IgnoresStartVersion(Wrapper):
    """Filters by the recorded version only: a start (or continue-as-new) is fetched whatever version it
    asks for, so the wrong runtime locks it and has to give it back."""

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0, *, versions: VersionRange | None = None
    ) -> OrchestrationItem | None:
        await self._sql("UPDATE orchestrator_queue SET start_version_key = NULL, is_successor = 0")
        return await self._inner.fetch_orchestration_item(lock_timeout, poll_timeout, versions=versions)


class DepthsByRecordedVersion(Wrapper):
    """``orchestrator_by_version`` counts ready messages per recorded version: new instances count under
    ``None``, a pending continue-as-new under its old version, and an instance once per message."""

    async def get_queue_depths(self) -> QueueDepths:
        depths = await self._inner.get_queue_depths()
        rows = await self._inner._run("broken", lambda conn: conn.execute(
            "SELECT i.version, COUNT(*) FROM orchestrator_queue q LEFT JOIN instances i USING (instance_id) "
            "WHERE q.visible_at <= ? AND q.lock_token IS NULL GROUP BY i.version", (now_ms(),)).fetchall())
        return attrs.evolve(depths, orchestrator_by_version={v: n for v, n in rows})


class AbandonLosesMessages(Wrapper):
    """An abandon that drops the batch's messages instead of making them visible again."""

    async def abandon_orchestration_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        await self._sql("DELETE FROM orchestrator_queue WHERE lock_token = ?", (lock_token,))
        await self._inner.abandon_orchestration_item(lock_token, delay, ignore_attempt)


class StartOverwritesInstance(Wrapper):
    """A start for an existing id re-creates the instance row from the start message (name, version)."""

    async def enqueue_start(self, item: StartOrchestration) -> None:
        await self._sql(
            "UPDATE instances SET name = ?, version = ? WHERE instance_id = ?", (item.name, item.version, item.instance)
        )
        await self._inner.enqueue_start(item)


#: (category, broken wrapper, tests of that category that must catch it)
class IgnoresTagFilter(Wrapper):
    """Filters worker fetches by session but takes every tag."""

    async def fetch_routed_work_items(
        self, lock_timeout: float, max_items: int, routing: WorkerRouting, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        routing = attrs.evolve(routing, tags=TagFilter.any())
        return await self._inner.fetch_routed_work_items(lock_timeout, max_items, routing, poll_timeout)


class TruncatesLargePayloads(Wrapper):
    """Stores at most 1 MiB of a start input or an enqueued event's data (a column too narrow)."""

    LIMIT = 1_000_000

    async def enqueue_start(self, item: StartOrchestration) -> None:
        if item.input is not None and len(item.input) > self.LIMIT:
            item = attrs.evolve(item, input=item.input[: self.LIMIT])
        await self._inner.enqueue_start(item)

    async def enqueue_for_orchestrator(self, item: WorkItem, delay: float | None = None) -> None:
        data = getattr(item, "data", None)
        if isinstance(data, str) and len(data) > self.LIMIT:
            item = attrs.evolve(item, data=data[: self.LIMIT])  # type: ignore[misc]
        await self._inner.enqueue_for_orchestrator(item, delay)


class AbandonDoesNotCount(Wrapper):
    """Every abandon gives its attempt back, as if ``ignore_attempt`` were always set."""

    async def abandon_orchestration_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        await self._inner.abandon_orchestration_item(lock_token, delay, ignore_attempt=True)

    async def abandon_work_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        await self._inner.abandon_work_item(lock_token, delay, ignore_attempt=True)


class IgnoresSessions(Wrapper):
    """Filters worker fetches by tag but ignores session ownership and ordering."""

    async def fetch_routed_work_items(
        self, lock_timeout: float, max_items: int, routing: WorkerRouting, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        leases = await self._inner.fetch_work_items(lock_timeout, max_items * 4, poll_timeout)
        keep = [lease for lease in leases if routing.tags.accepts(lease.item.tag)][:max_items]
        for lease in leases:
            if lease not in keep:
                await self._inner.abandon_work_item(lease.lock_token, None, ignore_attempt=True)
        return keep


class EagerLeasesNotLocked(Wrapper):
    """Eager dispatch that only pretends: the ack returns leases, but the items are left unlocked in the
    queue (so another runtime fetches them too)."""

    async def ack_orchestration_item(self, *args: Any, eager: EagerLock | None = None, **kwargs: Any) -> list[WorkItemLease]:
        await self._inner.ack_orchestration_item(*args, **kwargs)
        if eager is None:
            return []
        items = [w for w in args[3] if eager.accepts(w)][: eager.max_items]
        return [WorkItemLease(item=w, lock_token=f"fake-{w.id}", attempt_count=1) for w in items]


class EagerIgnoresTags(Wrapper):
    """Eager dispatch locks every item, whatever the runtime's tag filter and sessions."""

    async def ack_orchestration_item(self, *args: Any, eager: EagerLock | None = None, **kwargs: Any) -> list[WorkItemLease]:
        if eager is not None:
            eager = attrs.evolve(eager, tags=TagFilter.any(), activities=None)
        return await self._inner.ack_orchestration_item(*args, eager=eager, **kwargs)


class EagerReleaseDoesNothing(Wrapper):
    """``release_eager`` reports success but leaves the locks in place (they wait out their timeout)."""

    async def release_eager(self, claim: str) -> int:
        return 2 if claim else 0


CASES: list[tuple[str, type[Wrapper], list[str]]] = [
    ("atomicity", NonAtomicAck, ["test_atomicity_failure_rollback"]),
    ("atomicity", AckSkipsLockCheck, ["test_concurrent_ack_prevention"]),
    ("error_handling", AckAcceptsUnknownToken, ["test_invalid_lock_token_on_ack"]),
    ("error_handling", AckSkipsLockCheck, ["test_lock_expiration_during_ack"]),
    (
        "instance_locking",
        FetchIgnoresLocks,
        ["test_exclusive_instance_lock", "test_concurrent_instance_fetching"],
    ),
    ("instance_locking", AckDeletesLateMessages, ["test_message_tagging_during_lock"]),
    (
        "lock_expiration",
        RenewNeverFails,
        ["test_worker_lock_renewal_invalid_token", "test_worker_lock_renewal_after_ack"],
    ),
    ("multi_execution", ReadsFirstExecution, ["test_latest_execution_detection"]),
    ("queue_semantics", IgnoresDelays, ["test_timer_delayed_visibility"]),
    ("queue_semantics", DropsEarlyMessages, ["test_messages_for_unstarted_instance_kept"]),
    (
        "instance_creation",
        AcceptsDuplicateStarts,
        ["test_duplicate_start_rejected", "test_concurrent_duplicate_start"],
    ),
    ("management", ListIgnoresStatus, ["test_list_instances_by_status"]),
    (
        "long_polling",
        SlowEmptyPoll,
        ["test_short_poll_returns_immediately", "test_fetch_respects_timeout_upper_bound"],
    ),
    ("poison", NoAttemptCounting, ["test_orchestration_attempt_count_increments_on_refetch"]),
    ("cancellation", IgnoresCancelledActivities, ["test_cancelled_activities_deleted_from_worker_queue"]),
    ("deletion", DeleteIgnoresForce, ["test_delete_running_rejected_force_succeeds"]),
    ("deletion", AckSkipsLockCheck, ["test_force_delete_prevents_ack_recreation"]),
    ("pruning", PruneIgnoresKeepLast, ["test_prune_options_combinations"]),
    ("bulk_deletion", BulkDeleteIgnoresLimit, ["test_delete_instance_bulk_safety_and_limits"]),
    ("custom_status", CustomStatusAlwaysChanged, ["test_custom_status_polling_no_change"]),
    (
        "tag_routing",
        IgnoresTagFilter,
        ["test_default_filter_fetches_only_untagged", "test_unaccepted_item_waits", "test_filter_is_part_of_the_fetch"],
    ),
    (
        "sessions",
        IgnoresSessions,
        ["test_session_items_one_at_a_time", "test_unowned_session_claimed_on_first_fetch"],
    ),
    ("kv", KvWritesBeforeAck, ["test_kv_failed_ack_writes_nothing"]),
    ("kv", KvSurvivesDelete, ["test_kv_deleted_with_instance"]),
    (
        "capability_filtering",
        IgnoresVersionFilter,
        ["test_filter_skips_instances_outside_the_range", "test_skipped_instance_does_not_block_others"],
    ),
    (
        "capability_filtering",
        IgnoresStartVersion,
        ["test_start_outside_the_range_is_not_fetched", "test_start_bounds_are_inclusive_then_exclusive",
         "test_start_outside_the_range_does_not_block_others",
         "test_continue_as_new_to_another_version_moves_the_instance"],
    ),
    (
        "capability_filtering",
        DepthsByRecordedVersion,
        ["test_queue_depths_count_waiting_instances_by_version", "test_queue_depths_show_work_no_range_takes"],
    ),
    ("continue_as_new_races", AbandonLosesMessages, ["test_successor_keeps_its_input_across_abandons"]),
    (
        "duplicate_start",
        AcceptsDuplicateStarts,
        ["test_duplicate_start_keeps_the_pending_input", "test_duplicate_start_of_a_completed_instance_is_refused"],
    ),
    ("duplicate_start", StartOverwritesInstance, ["test_duplicate_start_of_a_completed_instance_is_refused"]),
    (
        "size_limits",
        TruncatesLargePayloads,
        ["test_start_input_at_payload_limit", "test_several_large_messages_in_one_batch"],
    ),
    (
        "poison_accounting",
        AbandonDoesNotCount,
        ["test_orch_count_has_no_cap", "test_worker_count_rises_on_each_abandon", "test_orch_mixed_abandons_accumulate"],
    ),
    (
        "eager_dispatch",
        EagerLeasesNotLocked,
        ["test_eager_locks_up_to_max_items_in_order", "test_eager_leases_ack_like_fetched_ones"],
    ),
    ("eager_dispatch", EagerIgnoresTags, ["test_eager_respects_tags_sessions_and_names"]),
    ("eager_dispatch", EagerReleaseDoesNothing, ["test_release_gives_back_what_a_lost_answer_locked"]),
    ("ack_fetches_turns", HandoverIgnoresVersionFilter, ["test_version_filter_applies"]),
    ("start_fetches_turn", StartHandoverIgnoresVersionFilter, ["test_version_filter_applies"]),
    ("start_fetches_turn", StartHandoverLocksForAnHour, ["test_handed_over_lock_expires"]),
    ("start_fetches_turn", StartHandoverOnlyItsOwn, ["test_a_waiting_turn_goes_first"]),
]


def test_every_category_has_a_broken_provider() -> None:
    assert {c for c, _, _ in CASES} == set(CATEGORIES)


@pytest.mark.parametrize(
    ("category", "wrapper", "catchers"), CASES, ids=[f"{c}-{w.__name__}" for c, w, _ in CASES]
)
async def test_category_catches_bug(category: str, wrapper: type[Wrapper], catchers: list[str]) -> None:
    tests = {t.__name__: t for t in CATEGORIES[category]}
    # The wrapping itself is harmless: the catching tests pass through an unbroken wrapper.
    for name in catchers:
        outcome, message = await run_test(WrapperFactory(Wrapper), tests[name])
        assert outcome == "passed", f"{name} fails through a pass-through wrapper: {message}"
    report = await run_validation(WrapperFactory(wrapper), [category])
    result = report.categories[category]
    assert result.failed > 0, f"no {category} test caught {wrapper.__name__}"
    missed = [name for name in catchers if name not in result.failures]
    assert not missed, f"{missed} did not catch {wrapper.__name__}; failures: {result.failures}"
    for r in result.results:
        if r.outcome == "failed":
            assert r.message, f"{r.name} failed without a message"
