"""The orchestration dispatcher: fetch a locked batch, replay one turn, commit it in one ack."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence

import anyio
import anyio.abc
import attrs

try:
    import trio
    import trio.lowlevel
except ImportError:  # pragma: no cover - trio is a dependency; asyncio-only installs still work
    trio = None  # type: ignore[assignment]

from .._retry import Retry
from .._tokens import new_token
from ..history import ErrorDetails, Status
from ..orchestration._decide import Abandon, Decision, TurnPolicy, decide_turn, refused_commit
from ..orchestration._replay import TurnResult
from ..providers.base import (
    EagerCapable,
    EagerLock,
    ExecutionMetadata,
    OrchestrationItem,
    ProviderError,
    ProviderErrorKind,
    ScheduledActivity,
    WorkItemLease,
    as_eager,
    as_provider_error,
    now_ms,
)
from ._env import EagerSlots, Fetcher, FetchFailed, WorkerEnv
from ._spawn import Spawner

log = logging.getLogger("duroxide_trio.runtime.orchestrations")
_user_log = logging.getLogger("duroxide_trio.orchestration")

ACK_RETRIES = 5
#: A turn's commit: transient errors are retried through a database restart, at least ``ACK_RETRIES``
#: times and up to half the lock (at most ``ACK_RETRY_FOR`` seconds, set per commit).
ACK_RETRY_FOR = 10.0
_ACK_RETRY = Retry(attempts=ACK_RETRIES, base=0.01, factor=2.0, cap=0.5)


@functools.lru_cache(maxsize=8)
def _ack_policy(deadline: float) -> Retry:
    """``_ACK_RETRY`` with ``deadline`` (one per lock timeout in use, not a new policy per commit)."""
    return _ACK_RETRY.with_deadline(deadline)
_ROLE = "orchestration dispatcher"
#: The ``outcome`` attribute of the turn metrics, by the execution's status after the turn.
_OUTCOMES: dict[str, str] = {
    Status.RUNNING: "running",
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.CONTINUED_AS_NEW: "continued_as_new",
}


def error_to_output(details: ErrorDetails) -> str:
    """``details`` as the JSON stored as a failed execution's output (``Client.get_status`` reads it)."""
    return json.dumps(attrs.asdict(details), separators=(",", ":"))


async def orchestration_worker(
    env: WorkerEnv,
    index: int,
    slots: anyio.Semaphore,
    task_group: Spawner,
    eager: EagerSlots | None = None,
) -> None:
    """Fetch locked batches while a turn slot is free; each turn runs as its own task, so a turn's commit
    overlaps the next fetch (the engine itself is synchronous and fast). With ``eager`` (eager dispatch),
    a turn's commit hands the activities it locked for this runtime to the activity slots."""
    options = env.options
    versions = options.supported_replay_versions
    if versions.is_any:  # no filter: a provider that predates capability filtering works unchanged
        fetch = lambda: env.provider.fetch_orchestration_item(options.orchestrator_lock_timeout)  # noqa: E731
    else:
        fetch = lambda: env.provider.fetch_orchestration_item(  # noqa: E731
            options.orchestrator_lock_timeout, versions=versions
        )
    fetcher = Fetcher(env, "orchestrator", "fetch_orchestration_item", _ROLE, fetch)
    while not env.stopping:
        await slots.acquire()
        started = False
        try:
            item = await fetcher.fetch()
            if isinstance(item, FetchFailed):
                continue
            if item is None:
                if env.stopping:
                    break
                slots.release()
                started = True  # released already
                await fetcher.wait_for_work()
                continue
            start_turn(env, item, slots, task_group, eager)
            started = True
        finally:
            if not started:
                slots.release()


def start_turn(
    env: WorkerEnv,
    item: OrchestrationItem,
    slots: anyio.Semaphore,
    task_group: Spawner,
    eager: EagerSlots | None = None,
) -> None:
    """Run the locked batch ``item`` as a turn (lock renewal, decide, commit or abandon) in its own task,
    in a slot of ``slots`` acquired by the caller and released when the turn ends. The one turn path:
    for a batch a dispatcher fetched and for one an activity ack handed over."""
    task_group.start_soon(_turn_in_slot, env, item, slots, eager, name=f"turn {item.instance_id}")


async def give_back_turn(env: WorkerEnv, item: OrchestrationItem) -> None:
    """Release a locked batch that will not run here (e.g. handed over as the runtime stops) without
    counting an attempt; never raises (the lock expires instead)."""
    await _abandon(env, item, 0.0, ignore_attempt=True)


async def _turn_in_slot(
    env: WorkerEnv, item: OrchestrationItem, slots: anyio.Semaphore, eager: EagerSlots | None
) -> None:
    env.stats.busy_orchestration_workers += 1
    try:
        await _process_with_renewal(env, item, eager)
    finally:
        env.stats.busy_orchestration_workers -= 1
        slots.release()


async def _process_with_renewal(env: WorkerEnv, item: OrchestrationItem, eager: EagerSlots | None) -> None:
    options = env.options

    def on_lost(exc: BaseException) -> None:
        env.metrics.locks_lost.add(1, {"kind": "orchestration"})
        log.warning("instance %s: lock renewal failed: %s", item.instance_id, exc)

    held = env.leases.hold(
        lambda: env.provider.renew_orchestration_item_lock(item.lock_token, options.orchestrator_lock_timeout),
        options.renewal_interval(options.orchestrator_lock_timeout, options.orchestrator_lock_renewal_buffer),
        on_lost,
    )
    try:
        await process_item(env, item, eager)
    finally:
        env.leases.release(held)


def _decide(env: WorkerEnv, item: OrchestrationItem) -> Decision:
    """The pure decision, run with trio's KeyboardInterrupt protection: a real Ctrl-C is delivered at the
    next checkpoint, so a KeyboardInterrupt seen inside is raised by the orchestration's own code."""
    options = env.options
    return decide_turn(
        item,
        handlers=env.registry,
        codec=env.registry,
        policy=TurnPolicy(options.max_attempts, options.unregistered_delay,
                          options.supported_replay_versions.contains),
        now_ms=env.clock.now_ms(),
        logger=_user_log,
    )


if trio is not None:
    _decide = trio.lowlevel.enable_ki_protection(_decide)


async def process_item(env: WorkerEnv, item: OrchestrationItem, eager: EagerSlots | None = None) -> None:
    """Decide what the batch means, then commit or abandon it (the only I/O); with ``eager``, the commit
    hands the activities it locked for this runtime to the activity slots."""
    began = time.perf_counter()
    decision = _decide(env, item)
    if decision.note:
        log.log(decision.level, "%s", decision.note,
                extra={"instance_id": item.instance_id, "execution_id": item.execution_id})
        if decision.level >= logging.WARNING:
            env.errors.record(_ROLE, decision.note, expected=False)
    metrics = env.metrics
    if isinstance(decision, Abandon):
        await _abandon(env, item, decision.delay, ignore_attempt=not decision.count_attempt)
        metrics.turns.add(1, {"outcome": "abandoned"})
        return
    result = decision.result
    if decision.ran_code:
        env.stats.orchestration_turns += 1
    await _ack(env, item, result, eager)
    if metrics.enabled:
        outcome = _OUTCOMES.get(result.status or Status.RUNNING, "running")
        metrics.turns.add(1, {"outcome": outcome})
        metrics.turn_duration.record(time.perf_counter() - began, {"outcome": outcome})
        if result.error is not None and result.error.category == "poison":
            metrics.poison.add(1, {"kind": "orchestration"})
        retries = sum(1 for w in result.worker_items if w.attempt > 1)
        if retries:
            metrics.retries.add(retries)


async def _abandon(env: WorkerEnv, item: OrchestrationItem, delay: float, *, ignore_attempt: bool = False) -> None:
    try:
        await env.provider.abandon_orchestration_item(item.lock_token, delay, ignore_attempt)
    except Exception as exc:  # noqa: BLE001 - a ProviderError or a provider's bug: the lock expires instead
        log.warning("instance %s: abandon failed (%s); the lock will expire", item.instance_id, exc)


async def _ack(
    env: WorkerEnv, item: OrchestrationItem, result: TurnResult, eager: EagerSlots | None = None
) -> None:
    output = result.output
    if result.status == Status.FAILED and result.error is not None:
        output = error_to_output(result.error)
    metadata = ExecutionMetadata(
        orchestration_name=result.name or None,
        orchestration_version=result.version or None,
        parent_instance_id=result.parent_instance,
        status=result.status,
        output=output,
    )
    cancelled = [ScheduledActivity(i, e, a) for (i, e, a) in result.cancelled_activities]
    # A commit is never skipped by a cancellation (shutdown): a terminal state must be written.
    with anyio.CancelScope(shield=True):
        request = eager.reserve(result.worker_items) if eager is not None else None
        leases: Sequence[WorkItemLease] = ()
        try:
            leases = await _ack_retrying(env, item, result, metadata, cancelled, request)
        finally:
            if eager is not None and request is not None:
                await eager.hand_over(request, leases)


async def _release_eager(env: WorkerEnv, eager: EagerCapable, claim: str) -> None:
    """After a failed eager commit attempt: give back whatever it may have locked (bounded, never raises)."""
    with anyio.move_on_after(5):
        try:
            await eager.release_eager(claim)
        except Exception as exc:  # noqa: BLE001 - the locks expire instead
            log.info("giving back the eager locks of a failed commit failed (%s); they expire instead", exc)


async def _ack_retrying(
    env: WorkerEnv,
    item: OrchestrationItem,
    result: TurnResult,
    metadata: ExecutionMetadata,
    cancelled: list[ScheduledActivity],
    request: EagerLock | None = None,
) -> Sequence[WorkItemLease]:
    """Commit the turn, retrying transient errors; the activities it locked for ``request`` (eager
    dispatch; empty without one or when the turn was not committed as it is)."""
    eager = as_eager(env.provider) if request is not None else None

    async def commit() -> Sequence[WorkItemLease]:
        try:
            if eager is not None and request is not None:
                # A fresh claim per attempt: if this attempt's answer is lost after it committed, its
                # eager locks are given back at once instead of waiting out the worker lock.
                attempt = attrs.evolve(request, claim=new_token())
                try:
                    leases = await eager.ack_orchestration_item(
                        item.lock_token,
                        result.execution_id,
                        result.history_delta,
                        result.worker_items,
                        result.orchestrator_items,
                        metadata,
                        cancelled,
                        eager=attempt,
                    )
                except Exception:
                    await _release_eager(env, eager, attempt.claim)
                    raise
                if leases is None:  # a wrapper that drops the answer: nothing may stay locked unseen
                    await _release_eager(env, eager, attempt.claim)
                    return ()
                return leases
            await env.provider.ack_orchestration_item(
                item.lock_token,
                result.execution_id,
                result.history_delta,
                result.worker_items,
                result.orchestrator_items,
                metadata,
                cancelled,
            )
            return ()
        except ProviderError:
            raise
        except Exception as caught:  # noqa: BLE001 - a provider's bug: retried as a transient error
            raise as_provider_error("ack_orchestration_item", caught) from caught

    def refused(exc: ProviderError) -> bool:
        # The store cannot hold this turn (a value too large for it): replaying it would fail the same way
        # until poison (unless this already is the refusal's own turn).
        return exc.kind is ProviderErrorKind.INVALID and (
            result.error is None or result.error.kind != "StorageRejected"
        )

    def on_retry(exc: Exception, retry: int, delay: float) -> None:
        assert isinstance(exc, ProviderError)
        env.errors.count(_ROLE, exc)
        env.errors.record(_ROLE, exc, expected=True)

    policy = _ack_policy(min(ACK_RETRY_FOR, env.options.orchestrator_lock_timeout / 2))
    try:
        return await policy.call(
            commit,
            retry_if=lambda exc: isinstance(exc, ProviderError) and exc.retryable and not refused(exc),
            on_retry=on_retry,
        )
    except ProviderError as exc:
        env.errors.count(_ROLE, exc)
        if refused(exc):
            log.error("instance %s: the storage refused the turn (%s); failing the instance",
                      item.instance_id, exc.message)
            await _ack(env, item, refused_commit(item, exc.message, now_ms=now_ms()))
            return ()
        env.errors.record(_ROLE, exc, expected=False)
        log.warning(
            "instance %s: turn not committed (%s); the lock will expire and the turn will be replayed",
            item.instance_id, exc,
        )
        if exc.retryable:
            await _abandon(env, item, 0.1)
        return ()
