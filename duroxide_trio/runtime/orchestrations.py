"""The orchestration dispatcher: fetch a locked batch, replay one turn, commit it in one ack."""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import attrs

try:
    import trio
    import trio.lowlevel
except ImportError:  # pragma: no cover - trio is a dependency; asyncio-only installs still work
    trio = None  # type: ignore[assignment]

from ..history import ErrorDetails, Status
from ..orchestration._decide import Abandon, Decision, TurnPolicy, decide_turn, refused_commit
from ..orchestration._replay import TurnResult
from ..providers.base import (
    ExecutionMetadata,
    OrchestrationItem,
    ProviderErrorKind,
    ScheduledActivity,
    as_provider_error,
    now_ms,
)

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("duroxide_trio.runtime.orchestrations")
_user_log = logging.getLogger("duroxide_trio.orchestration")

ACK_RETRIES = 5


def error_to_output(details: ErrorDetails) -> str:
    """``details`` as the JSON stored as a failed execution's output (``Client.get_status`` reads it)."""
    return json.dumps(attrs.asdict(details), separators=(",", ":"))


async def orchestration_worker(
    runtime: Runtime, index: int, slots: anyio.Semaphore, task_group: anyio.abc.TaskGroup
) -> None:
    """Fetch locked batches while a turn slot is free; each turn runs as its own task, so a turn's commit
    overlaps the next fetch (the engine itself is synchronous and fast)."""
    provider = runtime.provider
    notifier = provider.notifier
    options = runtime.options
    failures = 0
    while not runtime.stopping:
        await slots.acquire()
        started = False
        try:
            generation = notifier.generation("orchestrator")
            try:
                began = time.perf_counter()
                item = await provider.fetch_orchestration_item(options.orchestrator_lock_timeout)
                runtime.metrics.fetch_duration.record(time.perf_counter() - began, {"queue": "orchestrator"})
            except Exception as exc:  # noqa: BLE001 - a ProviderError, or a provider's bug: retried
                exc = as_provider_error("fetch_orchestration_item", exc)
                failures += 1
                await runtime.backoff_after_error("orchestration dispatcher", exc, failures)
                continue
            failures = 0
            runtime.stats.orchestration_fetches += 1
            if item is None:
                if runtime.stopping:
                    break
                slots.release()
                started = True  # released already
                await notifier.wait("orchestrator", generation, options.poll_interval)
                continue
            task_group.start_soon(_turn_in_slot, runtime, item, slots, name=f"turn {item.instance_id}")
            started = True
        finally:
            if not started:
                slots.release()


async def _turn_in_slot(runtime: Runtime, item: OrchestrationItem, slots: anyio.Semaphore) -> None:
    runtime.stats.busy_orchestration_workers += 1
    try:
        await _process_with_renewal(runtime, item)
    finally:
        runtime.stats.busy_orchestration_workers -= 1
        slots.release()


async def _process_with_renewal(runtime: Runtime, item: OrchestrationItem) -> None:
    options = runtime.options

    def on_lost(exc: BaseException) -> None:
        runtime.metrics.locks_lost.add(1, {"kind": "orchestration"})
        log.warning("instance %s: lock renewal failed: %s", item.instance_id, exc)

    held = runtime.leases.hold(
        lambda: runtime.provider.renew_orchestration_item_lock(item.lock_token, options.orchestrator_lock_timeout),
        options.renewal_interval(options.orchestrator_lock_timeout, options.orchestrator_lock_renewal_buffer),
        on_lost,
    )
    try:
        await process_item(runtime, item)
    finally:
        runtime.leases.release(held)


def _decide(runtime: Runtime, item: OrchestrationItem) -> Decision:
    """The pure decision, run with trio's KeyboardInterrupt protection: a real Ctrl-C is delivered at the
    next checkpoint, so a KeyboardInterrupt seen inside is raised by the orchestration's own code."""
    options = runtime.options
    return decide_turn(
        item,
        handlers=runtime.registry,
        codec=runtime.registry,
        policy=TurnPolicy(options.max_attempts, options.unregistered_delay),
        now_ms=runtime.clock.now_ms(),
        logger=_user_log,
    )


if trio is not None:
    _decide = trio.lowlevel.enable_ki_protection(_decide)


async def process_item(runtime: Runtime, item: OrchestrationItem) -> None:
    """Decide what the batch means, then commit or abandon it (the only I/O)."""
    began = time.perf_counter()
    decision = _decide(runtime, item)
    if decision.note:
        log.log(decision.level, "%s", decision.note,
                extra={"instance_id": item.instance_id, "execution_id": item.execution_id})
        if decision.level >= logging.WARNING:
            runtime.stats.record_error("orchestration dispatcher", decision.note, expected=False)
    metrics = runtime.metrics
    if isinstance(decision, Abandon):
        await _abandon(runtime, item, decision.delay)
        metrics.turns.add(1, {"outcome": "abandoned"})
        return
    result = decision.result
    if decision.ran_code:
        runtime.stats.orchestration_turns += 1
    await _ack(runtime, item, result)
    if metrics.enabled:
        outcome = (result.status or "running").lower().replace("continuedasnew", "continued_as_new")
        metrics.turns.add(1, {"outcome": outcome})
        metrics.turn_duration.record(time.perf_counter() - began, {"outcome": outcome})
        if result.error is not None and result.error.category == "poison":
            metrics.poison.add(1, {"kind": "orchestration"})
        retries = sum(1 for w in result.worker_items if w.attempt > 1)
        if retries:
            metrics.retries.add(retries)


async def _abandon(runtime: Runtime, item: OrchestrationItem, delay: float) -> None:
    try:
        await runtime.provider.abandon_orchestration_item(item.lock_token, delay)
    except Exception as exc:  # noqa: BLE001 - a ProviderError or a provider's bug: the lock expires instead
        log.warning("instance %s: abandon failed (%s); the lock will expire", item.instance_id, exc)


async def _ack(runtime: Runtime, item: OrchestrationItem, result: TurnResult) -> None:
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
        await _ack_retrying(runtime, item, result, metadata, cancelled)


async def _ack_retrying(
    runtime: Runtime,
    item: OrchestrationItem,
    result: TurnResult,
    metadata: ExecutionMetadata,
    cancelled: list[ScheduledActivity],
) -> None:
    # Transient errors are retried through a database restart, up to half the lock (at most 10 s).
    deadline = anyio.current_time() + min(10.0, runtime.options.orchestrator_lock_timeout / 2)
    for attempt in itertools.count():
        try:
            await runtime.provider.ack_orchestration_item(
                item.lock_token,
                result.execution_id,
                result.history_delta,
                result.worker_items,
                result.orchestrator_items,
                metadata,
                cancelled,
            )
            return
        except Exception as caught:  # noqa: BLE001 - a ProviderError, or a provider's bug: retried
            exc = as_provider_error("ack_orchestration_item", caught)
            if exc.kind is ProviderErrorKind.INVALID and (result.error is None or result.error.kind != "StorageRejected"):
                # The store cannot hold this turn (a value too large for it): replaying it would fail the
                # same way until poison. Fail the instance now, saying why.
                runtime.count_provider_error("orchestration dispatcher", exc)
                log.error("instance %s: the storage refused the turn (%s); failing the instance",
                          item.instance_id, exc.message)
                refused = refused_commit(item, exc.message, now_ms=now_ms())
                await _ack(runtime, item, refused)
                return
            if not exc.retryable or (attempt >= ACK_RETRIES - 1 and anyio.current_time() >= deadline):
                runtime.count_provider_error("orchestration dispatcher", exc)
                runtime.stats.record_error("orchestration dispatcher", exc, expected=False)
                log.warning(
                    "instance %s: turn not committed (%s); the lock will expire and the turn will be replayed",
                    item.instance_id, exc,
                )
                if exc.retryable:
                    await _abandon(runtime, item, 0.1)
                return
            runtime.count_provider_error("orchestration dispatcher", exc)
            runtime.stats.record_error("orchestration dispatcher", exc, expected=True)
            await anyio.sleep(min(0.01 * (2 ** min(attempt, 10)), 0.5))
