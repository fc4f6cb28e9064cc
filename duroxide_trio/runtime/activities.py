"""The activity dispatcher: fetch a work item, run the activity with lock renewal, ack its completion."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
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
        self._event: anyio.Event | None = None  # created on first wait: most activities never wait
        self._set = False
        self.reason = ""

    def __bool__(self) -> bool:
        return self._set

    def set(self, reason: str) -> None:
        if not self._set:
            self._set = True
            self.reason = reason
            if self._event is not None:
                self._event.set()

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def __await__(self) -> Any:
        return self.wait().__await__()


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


MAX_BATCH = 32


async def activity_worker(
    runtime: Runtime, index: int, slots: anyio.Semaphore, task_group: anyio.abc.TaskGroup, acker: Acker
) -> None:
    """Fetch activities while slots are free (several per round trip when the provider can); each runs
    as its own task in the runtime's task group."""
    provider = runtime.provider
    notifier = provider.notifier
    options = runtime.options
    fetch_many = getattr(provider, "fetch_work_items", None)
    failures = 0
    while not runtime.stopping:
        await slots.acquire()
        held = 1
        if fetch_many is not None:
            while held < MAX_BATCH and slots.value > 0:
                slots.acquire_nowait()
                held += 1
        try:
            generation = notifier.generation("worker")
            try:
                if fetch_many is not None:
                    leases = await fetch_many(options.worker_lock_timeout, held)
                else:
                    one = await provider.fetch_work_item(options.worker_lock_timeout)
                    leases = [one] if one is not None else []
            except ProviderError as exc:
                failures += 1
                await runtime.backoff_after_error("activity dispatcher", exc, failures)
                continue
            failures = 0
            runtime.stats.activity_fetches += 1
            for lease in leases:
                task_group.start_soon(_run_in_slot, runtime, lease, slots, acker, name=f"activity {lease.item.name}")
                held -= 1
            if not leases:
                if runtime.stopping:
                    break
                for _ in range(held):
                    slots.release()
                held = 0
                await notifier.wait("worker", generation, options.poll_interval)
        finally:
            for _ in range(held):
                slots.release()


async def _run_in_slot(runtime: Runtime, lease: WorkItemLease, slots: anyio.Semaphore, acker: Acker) -> None:
    runtime.stats.busy_activity_workers += 1
    try:
        await run_activity(runtime, lease, acker)
    finally:
        runtime.stats.busy_activity_workers -= 1
        slots.release()
        acker.poke()


class Acker:
    """Group commit for activity completions: everything finished while the previous ack was in flight is
    acked in the next single round trip (when the provider has ``ack_work_items``)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._pending: list[list[Any]] = []
        self._wake = anyio.Event()
        self._window: anyio.Event | None = None  # shared by every entry of the next batch

    def poke(self) -> None:
        self._wake.set()

    async def ack(self, lease: WorkItemLease, completion: Any) -> ProviderError | None:
        if self._window is None:
            self._window = anyio.Event()
        entry: list[Any] = [lease, completion, self._window, None]
        self._pending.append(entry)
        self._wake.set()
        await entry[2].wait()
        result: ProviderError | None = entry[3]
        return result

    async def run(self) -> None:
        runtime = self._runtime
        while True:
            if not self._pending:
                if runtime.stopping and runtime.stats.busy_activity_workers == 0:
                    return
                self._wake = anyio.Event()
                with anyio.move_on_after(0.5):
                    await self._wake.wait()
                continue
            batch, self._pending = self._pending, []
            self._window = None
            results = await self._ack_batch([(e[0].lock_token, e[1]) for e in batch])
            for entry, result in zip(batch, results, strict=True):
                entry[3] = result
            for window in {id(e[2]): e[2] for e in batch}.values():
                window.set()

    async def _ack_batch(self, entries: list[tuple[str, Any]]) -> list[ProviderError | None]:
        provider = self._runtime.provider
        many = getattr(provider, "ack_work_items", None)
        for attempt in range(5):
            try:
                if many is not None:
                    return list(await many(entries))
                results: list[ProviderError | None] = []
                for token, completion in entries:
                    try:
                        await provider.ack_work_item(token, completion)
                        results.append(None)
                    except ProviderError as exc:
                        if exc.retryable:
                            raise
                        results.append(exc)
                return results
            except ProviderError as exc:
                self._runtime.stats.record_error("activity dispatcher", exc, expected=exc.retryable)
                if not exc.retryable or attempt == 4:
                    return [exc] * len(entries)
                await anyio.sleep(0.01 * (2**attempt))
        raise AssertionError("unreachable")


def _failure(kind: str, message: str, category: str = "application") -> ErrorDetails:
    return ErrorDetails(category, kind, message)


async def run_activity(runtime: Runtime, lease: WorkItemLease, acker: Acker) -> None:
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
        await _ack(acker, lease, error(details))
        return

    handler = runtime.registry.get_activity(item.name)
    if handler is None:
        if lease.attempt_count >= options.max_attempts:
            details = _failure(
                "Unregistered",
                f"poison: activity {item.name!r} is not registered (gave up after {lease.attempt_count} attempts)",
                "poison",
            )
            await _ack(acker, lease, error(details))
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
    lost = False
    work_scope = anyio.CancelScope()

    def on_lost(exc: ProviderError) -> None:
        nonlocal lost
        lost = True
        ctx.cancelled.set("the orchestration no longer needs this result, or the lock was lost")
        log.info("activity %s of %s cancelled: %s", item.name, item.instance, exc)
        work_scope.deadline = anyio.current_time() + options.activity_cancellation_grace

    held = runtime.leases.hold(
        lambda: provider.renew_work_item_lock(lease.lock_token, options.worker_lock_timeout),
        options.renewal_interval(options.worker_lock_timeout, options.worker_lock_renewal_buffer),
        on_lost,
    )
    try:
        with work_scope:
            completion = await _invoke(runtime, handler, ctx, item)
    except anyio.get_cancelled_exc_class():
        # Shutdown after the grace period: give the item back at once, without counting an attempt.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await provider.abandon_work_item(lease.lock_token, None, ignore_attempt=True)
            except ProviderError as exc:
                log.warning("abandon on shutdown failed: %s", exc)
        raise
    finally:
        runtime.leases.release(held)
    if lost or completion is None:
        return  # cancelled by lock stealing: nobody wants the result
    if isinstance(completion, ActivityError):
        runtime.stats.activities_failed += 1
    else:
        runtime.stats.activities_completed += 1
    await _ack(acker, lease, completion)


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


async def _ack(acker: Acker, lease: WorkItemLease, completion: Any) -> None:
    error = await acker.ack(lease, completion)
    if error is not None:
        log.info("activity %s of %s: completion not recorded (%s)", lease.item.name, lease.item.instance, error)
