"""The activity dispatcher: fetch a work item, run the activity with lock renewal, ack its completion."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import attrs
import sniffio

from .._retry import Retry
from ..activity import ActivityContext
from ..history import ActivityError, ActivityExecute, ActivityResult, ErrorDetails, kv_state
from ..orchestration import limits
from ..orchestration._replay import describe_exception
from ..orchestration.context import KV_READ_ACTIVITY
from ..providers.base import (
    AckFetchesTurns,
    EagerLock,
    OrchestrationItem,
    ProviderError,
    ProviderErrorKind,
    TurnRequest,
    WorkerRouting,
    WorkItemLease,
    as_ack_fetching,
    as_batch,
    as_key_values,
    as_provider_error,
    as_routing,
)
from ..registry import ActivityHandler, Registry, decode_payload, encode_payload
from ._env import EagerSlots, Fetcher, FetchFailed, WorkerEnv
from ._orchestrations import give_back_turn, start_turn
from ._spawn import Spawner
from .options import RuntimeOptions

try:
    import trio
    import trio.lowlevel
except ImportError:  # pragma: no cover
    trio = None  # type: ignore[assignment]

__all__ = [
    "Acker",
    "EagerActivities",
    "TurnHandoff",
    "activity_outcome",
    "activity_worker",
    "decide_activity",
    "routing_of",
    "run_activity",
    "run_session_renewer",
]

log = logging.getLogger("duroxide_trio.runtime.activities")


MAX_BATCH = 32
#: How long an activity completion's ack keeps retrying transient errors (at most half the lock).
ACK_RETRY_FOR = 10.0
#: A completion's ack: at least 5 tries, and up to ``ACK_RETRY_FOR`` (set per ack).
_ACK_RETRY = Retry(attempts=5, base=0.01, factor=2.0, cap=0.5)


@functools.lru_cache(maxsize=8)
def _ack_policy(deadline: float) -> Retry:
    """``_ACK_RETRY`` with ``deadline`` (one per lock timeout in use, not a new policy per commit)."""
    return _ACK_RETRY.with_deadline(deadline)
_ROLE = "activity dispatcher"


async def activity_worker(
    env: WorkerEnv, index: int, slots: anyio.Semaphore, task_group: Spawner, acker: Acker
) -> None:
    """Fetch activities while slots are free (several per round trip when the provider can); each runs
    as its own task in the runtime's task group."""
    provider = env.provider
    options = env.options
    batch = as_batch(provider)
    routed = as_routing(provider)
    routing = routing_of(env)
    fetch_many = batch.fetch_work_items if batch is not None else None
    if routed is not None:
        fetch_routed = routed.fetch_routed_work_items

        async def fetch_filtered(lock_timeout: float, max_items: int, poll_timeout: float = 0.0) -> list[WorkItemLease]:
            return list(await fetch_routed(lock_timeout, max_items, routing))

        fetch_many = fetch_filtered
    held = 0

    async def fetch() -> list[WorkItemLease]:
        if fetch_many is not None:
            leases = list(await fetch_many(options.worker_lock_timeout, held))
        else:
            one = await provider.fetch_work_item(options.worker_lock_timeout)
            leases = [one] if one is not None else []
        if routed is None:
            # The provider cannot filter: give back at once what this runtime's tags do not accept.
            refused = [lease for lease in leases if not options.activity_tags.accepts(lease.item.tag)]
            if refused:
                with anyio.CancelScope(shield=True):
                    for lease in refused:
                        await _give_back(env, lease, delay=options.poll_interval)
                leases = [lease for lease in leases if options.activity_tags.accepts(lease.item.tag)]
        return leases

    fetcher = Fetcher(env, "worker", "fetch_work_items", _ROLE, fetch)
    while not env.stopping:
        await slots.acquire()
        held = 1
        if fetch_many is not None:
            while held < MAX_BATCH and slots.value > 0:
                slots.acquire_nowait()
                held += 1
        try:
            leases = await fetcher.fetch()
            if isinstance(leases, FetchFailed):
                continue
            if leases and env.stopping:
                # Fetched as the runtime stops: give them back at once instead of holding the locks.
                with anyio.CancelScope(shield=True):
                    for lease in leases:
                        await _give_back(env, lease)
                break
            if any(lease.item.session_id is not None for lease in leases):
                env.sessions.fetched()
            # Fetched work counts as busy from now on: the acker outlives every fetched item.
            env.stats.busy_activity_workers += len(leases)
            # Fewer than asked for: the queue held no more (for this runtime's filter) at the fetch. Wait
            # for the next notification (or the poll) instead of an idle fetch right away; one committed
            # during this fetch ends the wait at once.
            drained = routed is not None and fetch_many is not None and 0 < len(leases) < held
            for lease in leases:
                task_group.start_soon(_run_in_slot, env, lease, slots, acker, name=f"activity {lease.item.name}")
                held -= 1
            if drained:
                for _ in range(held):
                    slots.release()
                held = 0
                await fetcher.wait_for_work()
            elif not leases:
                if env.stopping:
                    break
                for _ in range(held):
                    slots.release()
                held = 0
                await fetcher.wait_for_work()
        finally:
            for _ in range(held):
                slots.release()


class EagerActivities:
    """Eager dispatch, seen from the orchestration dispatcher: the activity slots of this runtime, for
    the activities a turn's commit locks for it (``ProviderCapabilities.eager_dispatch``).

    Before the commit, :meth:`reserve` takes free slots for the activities this runtime would run
    (its tags, no session, registered here), at most one per activity, so nothing is over-committed;
    after it, :meth:`hand_over` starts the locked ones on the activity dispatcher's own run path
    (``run_activity``: decide, run with lock renewal, group ack) and gives the unused slots back.
    Nothing is reserved while the runtime stops."""

    def __init__(self, env: WorkerEnv, slots: anyio.Semaphore, task_group: Spawner, acker: Acker) -> None:
        self._env = env
        self._slots = slots
        self._task_group = task_group
        self._acker = acker

    def _runs_here(self, item: ActivityExecute) -> bool:
        return item.session_id is None and self._env.options.activity_tags.accepts(item.tag) and (
            self._env.registry.get_activity(item.name) is not None or item.name in _BUILTIN_ACTIVITIES
        )

    def reserve(self, worker_items: Sequence[ActivityExecute]) -> EagerLock | None:
        """Take free slots for the ``worker_items`` this runtime would run; the request for the commit
        (``None``: nothing reserved). Every reservation must be ended by :meth:`hand_over`."""
        env = self._env
        if env.stopping or not worker_items:
            return None
        names = frozenset(w.name for w in worker_items if self._runs_here(w))
        wanted = sum(1 for w in worker_items if w.name in names and self._runs_here(w))
        taken = 0
        while taken < wanted and self._slots.value > 0:
            self._slots.acquire_nowait()
            taken += 1
        if taken == 0:
            return None
        # Reserved slots count as busy: the acker outlives every activity that may still be handed over.
        env.stats.busy_activity_workers += taken
        return EagerLock(taken, env.options.worker_lock_timeout, env.options.activity_tags, names)

    async def hand_over(self, request: EagerLock, leases: Sequence[WorkItemLease]) -> None:
        """Run the ``leases`` the commit locked for ``request`` (empty if it failed) in reserved slots
        and give the others back; as the runtime stops, give the leases back to the queue at once."""
        env = self._env
        leases = list(leases)
        # More than asked for (a provider's bug), or fetched as the runtime stops: back to the queue.
        extra, leases = leases[request.max_items :], leases[: request.max_items]
        if leases and env.stopping:
            extra, leases = extra + leases, []
        if extra:
            with anyio.CancelScope(shield=True):
                for lease in extra:
                    await _give_back(env, lease)
        env.stats.activities_eager += len(leases)
        for lease in leases:
            self._task_group.start_soon(
                _run_in_slot, env, lease, self._slots, self._acker, name=f"activity {lease.item.name}"
            )
        for _ in range(request.max_items - len(leases)):
            env.stats.busy_activity_workers -= 1
            self._slots.release()
        if len(leases) < request.max_items:
            self._acker.poke()


def routing_of(env: WorkerEnv) -> WorkerRouting:
    """What this runtime's worker fetches may take: its tag filter, and sessions owned by its id."""
    options = env.options
    return WorkerRouting(
        tags=options.activity_tags,
        owner=env.worker_id,
        session_lock_timeout=options.worker_lock_timeout,
        max_sessions=options.max_sessions,
    )


async def run_session_renewer(env: WorkerEnv) -> None:
    """Keep this runtime's sessions: renew the locks of those with work (or recent work) and release the
    idle ones, every renewal interval of the worker lock while it owns any (it sleeps on
    ``env.sessions`` otherwise); release them all when the runtime stops."""
    routed = as_routing(env.provider)
    if routed is None:
        return
    options = env.options
    interval = min(
        options.renewal_interval(options.worker_lock_timeout, options.worker_lock_renewal_buffer),
        max(options.session_idle_timeout / 2, 0.05),
    )
    owned = 0
    try:
        while not env.stopping:
            if owned == 0:
                await env.sessions.wait()  # no timer while this runtime owns no session
            await env.clock.sleep(interval)
            try:
                owned = await routed.renew_sessions(
                    env.worker_id, options.worker_lock_timeout, options.session_idle_timeout
                )
            except ProviderError as exc:
                owned = max(owned, 1)  # unknown: keep renewing
                env.errors.record(_ROLE, exc, expected=exc.retryable)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await routed.renew_sessions(env.worker_id, options.worker_lock_timeout, 0.0)
            except Exception as exc:  # noqa: BLE001 - the sessions expire instead
                log.info("releasing sessions on shutdown failed (%s); they expire instead", exc)


async def _give_back(env: WorkerEnv, lease: WorkItemLease, delay: float | None = None) -> None:
    """Return a fetched item to the queue at once without counting a delivery (bounded, never raises)."""
    with anyio.move_on_after(5):
        try:
            await env.provider.abandon_work_item(lease.lock_token, delay, ignore_attempt=True)
        except Exception as exc:  # noqa: BLE001 - never raises
            log.warning("activity %s of %s: giving it back failed (%s); its lock will expire",
                        lease.item.name, lease.item.instance, exc)


async def _run_in_slot(env: WorkerEnv, lease: WorkItemLease, slots: anyio.Semaphore, acker: Acker) -> None:
    try:
        await run_activity(env, lease, acker)
    finally:
        env.stats.busy_activity_workers -= 1
        slots.release()
        acker.poke()


@attrs.frozen
class TurnHandoff:
    """Where an activity ack's handed-over turns run: the runtime's orchestration turn slots and the
    dispatchers' task group (see :meth:`Acker.hand_turns_to`)."""

    slots: anyio.Semaphore
    task_group: Spawner
    #: Eager dispatch for those turns' activities (``None``: off).
    eager: EagerSlots | None = None


class Acker:
    """Group commit for activity completions: everything finished while the previous ack was in flight is
    acked in the next single round trip (when the provider has ``ack_work_items``).

    With a provider that declares ``ack_fetches_turns`` and a :class:`TurnHandoff` (this runtime runs
    orchestration dispatchers), the same round trip also locks the next turns of the instances the
    completions go to, as many as there are free turn slots, and runs them on the dispatchers' turn path:
    no orchestration fetch for them, and no dispatcher is woken for nothing."""

    def __init__(self, env: WorkerEnv) -> None:
        self._env = env
        self._pending: list[tuple[WorkItemLease, Any]] = []
        self._wake = anyio.Event()
        self._turns: TurnHandoff | None = None

    def hand_turns_to(self, handoff: TurnHandoff | None) -> None:
        """Hand the turns an ack locks to ``handoff`` from now on (``None``: stop asking for turns, e.g.
        when the dispatchers' task group ends)."""
        self._turns = handoff

    def poke(self) -> None:
        """Wake the ack loop (new work, or a state change such as shutdown)."""
        self._wake.set()

    def submit(self, lease: WorkItemLease, completion: Any) -> None:
        """Queue ``completion`` of ``lease`` for the next group ack. Nobody waits for it: the acker
        handles the outcome itself (:meth:`_settled`), so an activity's task ends as soon as its result
        is queued instead of sleeping through the round trip (a task step and a wake-up less per
        activity). Every queued completion is committed (or refused) before :meth:`run` returns."""
        self._pending.append((lease, completion))
        self._wake.set()

    async def run(self) -> None:
        """Ack queued completions in batches (retrying retryable errors up to 5 times); returns when the
        runtime stops and no activity is in flight."""
        env = self._env
        while True:
            if not self._pending:
                if env.stopping and env.stats.busy_activity_workers == 0:
                    return
                self._wake = anyio.Event()
                with env.clock.move_on_after(0.5):
                    await self._wake.wait()
                continue
            batch, self._pending = self._pending, []
            with anyio.CancelScope(shield=True):  # a completion taken for commit is never dropped
                results = await self._ack_batch([(e[0].lock_token, e[1]) for e in batch])
            for (lease, completion), result in zip(batch, results, strict=True):
                self._settled(lease, completion, result)

    def _settled(self, lease: WorkItemLease, completion: Any, error: ProviderError | None) -> None:
        """The outcome of a submitted completion: a result the store cannot hold (e.g. a NUL character on
        PostgreSQL) is recorded as a configuration failure instead (queued for the next ack); any other
        refusal (e.g. a lost lock) is logged and dropped, the item being someone else's now."""
        if error is None:
            return
        item = lease.item
        if error.kind is ProviderErrorKind.INVALID and isinstance(completion, ActivityResult):
            details = _failure("StorageRejected", f"the storage refused the result of activity {item.name!r}: "
                                                  f"{error.message}", "configuration")
            self.submit(lease, ActivityError(item.instance, item.execution_id, item.id, details))
            return
        log.info("activity %s of %s: completion not recorded (%s)", item.name, item.instance, error)

    async def _ack_batch(self, entries: list[tuple[str, Any]]) -> list[ProviderError | None]:
        env = self._env
        handoff = self._turns
        fetching = as_ack_fetching(env.provider)
        reserved = 0
        if fetching is not None and handoff is not None and not env.stopping:
            # Reserve a free turn slot per instance these completions go to (never wait for one).
            wanted = len({c.target_instance for _, c in entries if c is not None})
            while reserved < wanted and handoff.slots.value > 0:
                handoff.slots.acquire_nowait()
                reserved += 1
        if not reserved:
            return await self._commit(entries, None)
        assert fetching is not None and handoff is not None
        options = env.options
        versions = options.supported_replay_versions
        request = TurnRequest(options.orchestrator_lock_timeout, reserved, None if versions.is_any else versions)
        items: list[OrchestrationItem] = []
        try:
            results = await self._commit(entries, (fetching, request, items))
        finally:
            await self._hand_over(handoff, items, reserved)
        return results

    async def _hand_over(self, handoff: TurnHandoff, items: list[OrchestrationItem], reserved: int) -> None:
        """Run the handed-over turns in their reserved slots (given back if the dispatchers are gone);
        release the reservations left unused."""
        env = self._env
        for item in items[:reserved]:
            reserved -= 1
            if self._turns is handoff:
                env.stats.turns_handed_over += 1
                start_turn(env, item, handoff.slots, handoff.task_group, handoff.eager)
            else:
                handoff.slots.release()
                await give_back_turn(env, item)
        for _ in range(reserved):
            handoff.slots.release()

    async def _commit(
        self,
        entries: list[tuple[str, Any]],
        turns: tuple[AckFetchesTurns, TurnRequest, list[OrchestrationItem]] | None,
    ) -> list[ProviderError | None]:
        """The ack of ``entries`` with retries; with ``turns``, through ``ack_work_items_and_fetch``, the
        batches it locked put in the given list."""
        env = self._env
        provider = env.provider
        batch = as_batch(provider)
        many = batch.ack_work_items if batch is not None else None

        async def commit() -> list[ProviderError | None]:
            try:
                if turns is not None:
                    fetching, request, items = turns
                    acked = await fetching.ack_work_items_and_fetch(entries, request)
                    items.extend(acked.items)
                    return list(acked.results)
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
            except ProviderError:
                raise
            except Exception as caught:  # noqa: BLE001 - a provider's bug: retried as a transient error
                raise as_provider_error("ack_work_items", caught) from caught

        def on_retry(exc: Exception, retry: int, delay: float) -> None:
            env.errors.record(_ROLE, exc, expected=True)

        # Keep retrying transient errors through a database restart (not only 5 quick attempts): a
        # completion given up on waits for its lock to expire (30 s by default) and runs again.
        policy = _ack_policy(min(ACK_RETRY_FOR, env.options.worker_lock_timeout / 2))
        try:
            return await policy.call(
                commit, retry_if=lambda exc: isinstance(exc, ProviderError) and exc.retryable, on_retry=on_retry
            )
        except ProviderError as exc:
            env.errors.record(_ROLE, exc, expected=exc.retryable)
            return [exc] * len(entries)


async def _kv_read(ctx: ActivityContext, request: dict[str, Any]) -> dict[str, Any]:
    """The built-in activity behind ``ctx.get_value_from_instance``: the committed value of
    ``request["key"]`` of ``request["instance"]`` as JSON text (``None``: nothing stored)."""
    instance = str(request["instance"])
    store = as_key_values(ctx.client.provider)
    if store is not None:
        texts = await store.get_kv_values(instance)
    else:  # a provider without the table: the state rebuilt from the current execution's history
        texts = kv_state(await ctx.client.get_history(instance))
    return {"value": texts.get(str(request["key"]))}


#: Activities every runtime serves itself (their names are reserved in the registry).
_BUILTIN_ACTIVITIES = {
    KV_READ_ACTIVITY: ActivityHandler(KV_READ_ACTIVITY, _kv_read, dict, dict, True, True),
}


def _failure(kind: str, message: str, category: str = "application") -> ErrorDetails:
    return ErrorDetails(category, kind, limits.truncate_message(message))


@attrs.frozen
class _Run:
    handler: ActivityHandler
    args: tuple[Any, ...]


@attrs.frozen
class _Complete:
    completion: ActivityError
    note: str = ""


@attrs.frozen
class _GiveBack:
    delay: float
    note: str


def decide_activity(
    lease: WorkItemLease, registry: Registry, options: RuntimeOptions, blocked_note: str = ""
) -> _Run | _Complete | _GiveBack:
    """Everything decided about a work item before its code runs: poison, unregistered, input decoding.
    Never raises."""
    item = lease.item

    def error(details: ErrorDetails) -> ActivityError:
        return ActivityError(item.instance, item.execution_id, item.id, details)

    if lease.attempt_count > options.max_attempts:
        message = (
            f"poison: activity {item.name!r} (id {item.id} of {item.instance!r}) was delivered "
            f"{lease.attempt_count} times, over max_attempts={options.max_attempts}"
        )
        message += f"; {blocked_note}" if blocked_note else " (each delivery crashed its process or lost its lock)"
        return _Complete(error(_failure("Activity", message, "poison")), message)
    handler = registry.get_activity(item.name) or _BUILTIN_ACTIVITIES.get(item.name)
    if handler is None:
        if lease.attempt_count >= options.max_attempts:
            message = (f"poison: activity {item.name!r} is not registered (gave up after "
                       f"{lease.attempt_count} attempts)")
            return _Complete(error(_failure("Unregistered", message, "poison")), message)
        delay = options.unregistered_delay(lease.attempt_count)
        return _GiveBack(delay, f"activity {item.name!r} is not registered in this runtime (registered: "
                                f"{', '.join(registry.activity_names) or 'none'}); retrying in {delay:.1f}s")
    if not handler.takes_input:
        return _Run(handler, ())
    try:
        value = decode_payload(item.input, handler.input_type)
    except Exception as exc:  # noqa: BLE001 - bad input ends this activity as a failure the code can see
        message = f"input of activity {item.name!r} cannot be passed to the code: {exc}"
        return _Complete(error(_failure("BadInput", message)))
    return _Run(handler, (value,))


def activity_outcome(item: ActivityExecute, value: Any = None, exc: BaseException | None = None) -> Any:
    """The completion to record for what the code returned (``value``) or raised (``exc``). Never raises."""
    if exc is None:
        try:
            text = encode_payload(value, f"result of activity {item.name!r}")
            limits.check_text(text, limits.MAX_PAYLOAD_BYTES, f"result of activity {item.name!r}")
            return ActivityResult(item.instance, item.execution_id, item.id, text)
        except Exception as err:  # noqa: BLE001 - PayloadError, LimitExceeded, a hook of the user's
            exc = err
    details = getattr(exc, "details", None)
    if not isinstance(details, ErrorDetails):
        details = _failure("ActivityFailed", describe_exception(exc))
    return ActivityError(item.instance, item.execution_id, item.id, details)


async def run_activity(env: WorkerEnv, lease: WorkItemLease, acker: Acker) -> None:
    """Run one fetched activity: give it back if unregistered here, fail it if poison or its input does
    not convert, else run the code with lock renewal and ack its completion (nothing is acked if the lock
    was lost). Shutdown cancellation gives the item back and propagates."""
    item = lease.item
    options = env.options
    provider = env.provider
    key = (item.instance, item.execution_id, item.id)

    plan = decide_activity(lease, env.registry, options, env.watchdog.blocked_note(key))
    if isinstance(plan, _GiveBack):
        log.warning("%s", plan.note)
        env.errors.record(_ROLE, plan.note, expected=False)
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await provider.abandon_work_item(lease.lock_token, plan.delay)
            except Exception as exc:  # noqa: BLE001 - the lock expires instead
                log.warning("abandon failed: %s", exc)
        return
    metrics = env.metrics
    if isinstance(plan, _Complete):
        if plan.note:
            log.error("%s", plan.note)
        env.stats.activities_failed += 1
        poison = plan.completion.details.category == "poison"
        metrics.activities.add(1, {"outcome": "poison" if poison else "failed"})
        if poison:
            metrics.poison.add(1, {"kind": "activity"})
        acker.submit(lease, plan.completion)
        return

    ctx = ActivityContext(item, lease.attempt_count, env.client)
    completion: Any = None
    lost = False
    work_scope = anyio.CancelScope()

    def on_lost(exc: BaseException) -> None:
        nonlocal lost
        lost = True
        metrics.locks_lost.add(1, {"kind": "activity"})
        ctx.cancelled.set("the orchestration no longer needs this result, or the lock was lost")
        note = env.watchdog.blocked_note(key)
        log.log(logging.WARNING if note else logging.INFO, "activity %s of %s cancelled: %s%s",
                item.name, item.instance, exc, f" ({note})" if note else "")
        work_scope.deadline = anyio.current_time() + options.activity_cancellation_grace

    held = env.leases.hold(
        lambda: provider.renew_work_item_lock(lease.lock_token, options.worker_lock_timeout),
        options.renewal_interval(options.worker_lock_timeout, options.worker_lock_renewal_buffer),
        on_lost,
    )
    began = time.perf_counter()
    try:
        with work_scope:
            completion = await _invoke(env, plan.handler, ctx, item, plan.args)
    except anyio.get_cancelled_exc_class():
        # Shutdown after the grace period: give the item back at once, without counting an attempt.
        with anyio.CancelScope(shield=True):
            await _give_back(env, lease)
        metrics.activities.add(1, {"outcome": "abandoned"})
        raise
    finally:
        env.leases.release(held)
    if lost or completion is None:
        metrics.activities.add(1, {"outcome": "lost"})
        return  # cancelled by lock stealing: nobody wants the result
    outcome = "failed" if isinstance(completion, ActivityError) else "completed"
    if outcome == "failed":
        env.stats.activities_failed += 1
    else:
        env.stats.activities_completed += 1
    metrics.activities.add(1, {"outcome": outcome})
    metrics.activity_duration.record(time.perf_counter() - began, {"outcome": outcome})
    acker.submit(lease, completion)


async def _invoke(
    env: WorkerEnv, handler: ActivityHandler, ctx: ActivityContext, item: ActivityExecute, args: tuple[Any, ...]
) -> Any:
    """Run the user's code; whatever it raises (even ``KeyboardInterrupt`` or ``SystemExit``) becomes the
    activity's failure. Under trio it runs KeyboardInterrupt-protected, so a real Ctrl-C goes to the main
    task, not into activity code. A sync activity runs in a thread that is abandoned on cancellation."""
    try:
        if handler.loop == "asyncio" and sniffio.current_async_library() == "trio":
            value = await env.asyncio_loop.run(env.services, handler.fn(ctx, *args))
        elif handler.is_async:
            value = await handler.fn(ctx, *args)
        else:
            value = await anyio.to_thread.run_sync(functools.partial(handler.fn, ctx, *args), abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class() as exc:
        if _cancellation_requested():
            raise
        # asyncio.CancelledError raised by the activity's own code (nobody cancelled it): a failure.
        return activity_outcome(item, exc=exc)
    except BaseException as exc:  # noqa: BLE001 - any exception of activity code fails the activity
        log.debug("activity %s of %s raised", item.name, item.instance, exc_info=True)
        return activity_outcome(item, exc=exc)
    return activity_outcome(item, value)


def _cancellation_requested() -> bool:
    """Whether the current task was really cancelled (by a cancel scope). Under asyncio, code can raise
    ``asyncio.CancelledError`` itself; then no cancellation is pending on the task."""
    if sniffio.current_async_library() != "asyncio":
        return True
    import asyncio

    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


if trio is not None:
    _invoke = trio.lowlevel.enable_ki_protection(_invoke)
