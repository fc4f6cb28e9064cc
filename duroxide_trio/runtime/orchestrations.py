"""The orchestration dispatcher: fetch a locked batch, replay one turn, commit it in one ack."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import attrs

from ..history import ErrorDetails, Event, OrchestrationFailed
from ..orchestration.replay import TurnResult, fail_instance, plan_turn, run_turn
from ..providers.base import ExecutionMetadata, OrchestrationItem, ProviderError, ScheduledActivity, now_ms

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("duroxide_trio.runtime.orchestrations")
_user_log = logging.getLogger("duroxide_trio.orchestration")

ACK_RETRIES = 5


def error_to_output(details: ErrorDetails) -> str:
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
                item = await provider.fetch_orchestration_item(options.orchestrator_lock_timeout)
            except ProviderError as exc:
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

    def on_lost(exc: ProviderError) -> None:
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


async def process_item(runtime: Runtime, item: OrchestrationItem) -> None:
    options = runtime.options
    plan = plan_turn(item.execution_id, item.history, item.messages)
    now = now_ms()

    if item.history_error is not None and item.attempt_count <= options.max_attempts:
        log.error("instance %s: cannot read its history (%s); retrying", item.instance_id, item.history_error)
        runtime.stats.record_error("orchestration dispatcher", item.history_error, expected=False)
        await _abandon(runtime, item, 1.0)
        return

    if item.attempt_count > options.max_attempts or item.history_error is not None:
        reason = item.history_error or "the turn kept failing"
        details = ErrorDetails(
            "poison",
            "Orchestration",
            f"poison: orchestration {plan.name or item.orchestration_name!r} instance {item.instance_id!r} "
            f"exceeded {options.max_attempts} attempts ({reason})",
        )
        log.error("%s", details.message)
        if item.history_error is not None:
            # The stored history cannot be read, so the next event id is unknown: append the failure under
            # a sentinel id far past any real one (acks are append-only).
            result = TurnResult(
                history_delta=[Event(99_999, OrchestrationFailed(details), None, now)],
                status="Failed", error=details, execution_id=item.execution_id,
                name=item.orchestration_name or "unknown", version=item.version or "0.0.0",
            )
        else:
            result = fail_instance(
                instance_id=item.instance_id, plan=plan, details=details, now_ms=now,
                name=plan.name or item.orchestration_name or "unknown",
                version=plan.version or item.version or "0.0.0",
            )
        await _ack(runtime, item, result)
        return

    if plan.action == "discard":
        await _ack(runtime, item, TurnResult(execution_id=item.execution_id))
        return

    if plan.action == "corrupt":
        details = ErrorDetails("configuration", "CorruptedHistory", plan.reason)
        result = fail_instance(
            instance_id=item.instance_id, plan=plan, details=details, now_ms=now,
            name=item.orchestration_name or "unknown", version=item.version or "0.0.0",
        )
        await _ack(runtime, item, result)
        return

    handler = runtime.registry.resolve_orchestration(plan.name, plan.version)
    if handler is None:
        delay = options.unregistered_delay(item.attempt_count)
        what = f"orchestration {plan.name!r}" + (f" version {plan.version}" if plan.version else "")
        log.warning(
            "instance %s: %s is not registered in this runtime (registered: %s); retrying in %.1fs "
            "(attempt %d of %d)",
            item.instance_id, what, ", ".join(runtime.registry.orchestration_names) or "none", delay,
            item.attempt_count, options.max_attempts,
        )
        runtime.stats.record_error("orchestration dispatcher", f"{what} is not registered", expected=False)
        if item.attempt_count >= options.max_attempts:
            details = ErrorDetails(
                "poison", "Unregistered",
                f"poison: {what} is not registered (gave up after {item.attempt_count} attempts)",
            )
            result = fail_instance(
                instance_id=item.instance_id, plan=plan, details=details, now_ms=now,
                name=plan.name, version=plan.version or "0.0.0",
            )
            await _ack(runtime, item, result)
            return
        await _abandon(runtime, item, delay)
        return

    result = run_turn(
        instance_id=item.instance_id, plan=plan, handler=handler, codec=runtime.registry, now_ms=now,
        logger=_user_log,
    )
    runtime.stats.orchestration_turns += 1
    if result.status == "Failed" and result.error is not None and result.error.category == "configuration":
        log.error("instance %s failed: %s", item.instance_id, result.error.message)
    await _ack(runtime, item, result)


async def _abandon(runtime: Runtime, item: OrchestrationItem, delay: float) -> None:
    try:
        await runtime.provider.abandon_orchestration_item(item.lock_token, delay)
    except ProviderError as exc:
        log.warning("instance %s: abandon failed (%s); the lock will expire", item.instance_id, exc)


async def _ack(runtime: Runtime, item: OrchestrationItem, result: TurnResult) -> None:
    output = result.output
    if result.status == "Failed" and result.error is not None:
        output = error_to_output(result.error)
    metadata = ExecutionMetadata(
        orchestration_name=result.name or None,
        orchestration_version=result.version or None,
        parent_instance_id=result.parent_instance,
        status=result.status,
        output=output,
    )
    cancelled = [ScheduledActivity(i, e, a) for (i, e, a) in result.cancelled_activities]
    for attempt in range(ACK_RETRIES):
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
        except ProviderError as exc:
            if not exc.retryable or attempt == ACK_RETRIES - 1:
                runtime.stats.provider_errors += 1
                runtime.stats.record_error("orchestration dispatcher", exc, expected=False)
                log.warning(
                    "instance %s: turn not committed (%s); the lock will expire and the turn will be replayed",
                    item.instance_id, exc,
                )
                if exc.retryable:
                    await _abandon(runtime, item, 0.1)
                return
            runtime.stats.provider_errors += 1
            runtime.stats.record_error("orchestration dispatcher", exc, expected=True)
            await anyio.sleep(0.01 * (2**attempt))
