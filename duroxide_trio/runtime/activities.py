"""The activity dispatcher: fetch a work item, run the activity with lock renewal, ack its completion."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..history import ActivityError, ActivityExecute, ActivityResult, ErrorDetails
from ..providers.base import ProviderError, WorkItemLease
from ..registry import PayloadError, decode_payload, encode_payload

if TYPE_CHECKING:
    from ..client import Client
    from .runtime import Runtime

__all__ = ["ActivityContext", "CancellationSignal"]

log = logging.getLogger("duroxide_trio.runtime.activities")


class CancellationSignal:
    """Set when the orchestration no longer wants this activity's result (or its lock was lost).
    ``bool(signal)`` tells whether it is set; ``await signal`` waits for it."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.reason = ""

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def __await__(self) -> Any:
        return self._event.wait().__await__()


class ActivityContext:
    """What an activity gets as its first argument."""

    def __init__(self, runtime: Runtime, item: ActivityExecute, attempt: int) -> None:
        self.instance_id = item.instance
        self.execution_id = item.execution_id
        self.activity_name = item.name
        self.activity_id = item.id
        self.orchestration_name = item.orchestration_name
        self.attempt = attempt
        self.client: Client = runtime.client
        self.cancelled = CancellationSignal()
        self.logger = logging.LoggerAdapter(
            logging.getLogger("duroxide_trio.activity"),
            {"instance_id": item.instance, "activity": item.name},
        )

    def __repr__(self) -> str:
        return f"<ActivityContext {self.activity_name} of {self.instance_id} attempt {self.attempt}>"


async def activity_worker(runtime: Runtime, index: int) -> None:
    provider = runtime.provider
    notifier = provider.notifier
    options = runtime.options
    failures = 0
    while not runtime.stopping:
        generation = notifier.generation("worker")
        try:
            lease = await provider.fetch_work_item(options.worker_lock_timeout)
        except ProviderError as exc:
            failures += 1
            await runtime.backoff_after_error("activity dispatcher", exc, failures)
            continue
        failures = 0
        runtime.stats.activity_fetches += 1
        if lease is None:
            if runtime.stopping:
                break
            await notifier.wait("worker", generation, options.poll_interval)
            continue
        runtime.stats.busy_activity_workers += 1
        try:
            await run_activity(runtime, lease)
        finally:
            runtime.stats.busy_activity_workers -= 1


def _failure(kind: str, message: str, category: str = "application") -> ErrorDetails:
    return ErrorDetails(category, kind, message)


async def run_activity(runtime: Runtime, lease: WorkItemLease) -> None:
    item = lease.item
    options = runtime.options
    provider = runtime.provider

    def error(details: ErrorDetails) -> ActivityError:
        return ActivityError(item.instance, item.execution_id, item.id, details)

    if lease.attempt_count > options.max_attempts:
        details = _failure(
            "Activity",
            f"poison: activity {item.name!r} (id {item.id} of {item.instance!r}) exceeded {options.max_attempts} "
            "attempts",
            "poison",
        )
        log.error("%s", details.message)
        await _ack(runtime, lease, error(details))
        return

    handler = runtime.registry.get_activity(item.name)
    if handler is None:
        if lease.attempt_count >= options.max_attempts:
            details = _failure(
                "Unregistered",
                f"poison: activity {item.name!r} is not registered (gave up after {lease.attempt_count} attempts)",
                "poison",
            )
            await _ack(runtime, lease, error(details))
            return
        delay = options.unregistered_delay(lease.attempt_count)
        log.warning(
            "activity %r is not registered in this runtime (registered: %s); retrying in %.1fs",
            item.name, ", ".join(runtime.registry.activity_names) or "none", delay,
        )
        runtime.stats.record_error("activity dispatcher", f"activity {item.name!r} is not registered", expected=False)
        try:
            await provider.abandon_work_item(lease.lock_token, delay)
        except ProviderError as exc:
            log.warning("abandon failed: %s", exc)
        return

    ctx = ActivityContext(runtime, item, lease.attempt_count)
    completion: Any = None
    interval = options.renewal_interval(options.worker_lock_timeout, options.worker_lock_renewal_buffer)
    lost = False

    async def renew(scope: anyio.CancelScope) -> None:
        nonlocal lost
        while True:
            await anyio.sleep(interval)
            try:
                await provider.renew_work_item_lock(lease.lock_token, options.worker_lock_timeout)
            except ProviderError as exc:
                if exc.retryable:
                    continue
                lost = True
                ctx.cancelled.set("the orchestration no longer needs this result, or the lock was lost")
                log.info("activity %s of %s cancelled: %s", item.name, item.instance, exc)
                await anyio.sleep(options.activity_cancellation_grace)
                scope.cancel()
                return

    try:
        async with anyio.create_task_group() as tg:
            work_scope = anyio.CancelScope()
            tg.start_soon(renew, work_scope)
            with work_scope:
                completion = await _invoke(runtime, handler, ctx, item)
            tg.cancel_scope.cancel()
    except anyio.get_cancelled_exc_class():
        # Shutdown after the grace period: give the item back at once, without counting an attempt.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await provider.abandon_work_item(lease.lock_token, None, ignore_attempt=True)
            except ProviderError as exc:
                log.warning("abandon on shutdown failed: %s", exc)
        raise
    if lost or completion is None:
        return  # cancelled by lock stealing: nobody wants the result
    if isinstance(completion, ActivityError):
        runtime.stats.activities_failed += 1
    else:
        runtime.stats.activities_completed += 1
    await _ack(runtime, lease, completion)


async def _invoke(runtime: Runtime, handler: Any, ctx: ActivityContext, item: ActivityExecute) -> Any:
    try:
        if handler.takes_input:
            value = decode_payload(item.input, handler.input_type)
            args: tuple[Any, ...] = (ctx, value)
        else:
            args = (ctx,)
        if handler.is_async:
            result = await handler.fn(*args)
        else:
            result = await anyio.to_thread.run_sync(functools.partial(handler.fn, *args))
        text = encode_payload(result, f"result of activity {item.name!r}")
        return ActivityResult(item.instance, item.execution_id, item.id, text)
    except anyio.get_cancelled_exc_class():
        raise
    except PayloadError as exc:
        return ActivityError(item.instance, item.execution_id, item.id, _failure("ActivityFailed", str(exc)))
    except Exception as exc:  # noqa: BLE001 - any activity exception becomes an ActivityFailed
        log.debug("activity %s of %s raised", item.name, item.instance, exc_info=True)
        return ActivityError(
            item.instance, item.execution_id, item.id, _failure("ActivityFailed", f"{type(exc).__name__}: {exc}")
        )


async def _ack(runtime: Runtime, lease: WorkItemLease, completion: Any) -> None:
    for attempt in range(5):
        try:
            await runtime.provider.ack_work_item(lease.lock_token, completion)
            return
        except ProviderError as exc:
            if not exc.retryable or attempt == 4:
                log.info("activity %s of %s: completion not recorded (%s)", lease.item.name, lease.item.instance, exc)
                runtime.stats.record_error("activity dispatcher", exc, expected=not exc.retryable)
                return
            runtime.stats.record_error("activity dispatcher", exc, expected=True)
            await anyio.sleep(0.01 * (2**attempt))
