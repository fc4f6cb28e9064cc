"""Helpers shared by the validation test modules: provider lifecycle, builders and checks.

The checks raise ``AssertionError`` explicitly (never a bare ``assert``), so the suite keeps failing under
``python -O`` and every failure message says what was expected and what happened.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, ClassVar, NoReturn, Protocol, TypeVar, cast, overload

import anyio

from ...history import (
    ActivityExecute,
    ActivityResult,
    ContinueAsNew,
    Event,
    EventKind,
    ExternalEvent,
    ExternalRaised,
    OrchestrationStarted,
    StartOrchestration,
    WorkItem,
)
from ...providers.base import (
    ExecutionMetadata,
    OrchestrationItem,
    Provider,
    ProviderAdmin,
    ProviderError,
    ProviderFactory,
    RoutingCapable,
    WorkerRouting,
    WorkItemLease,
    as_routing,
)

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: Lock timeout for fetches where expiry is not the point of the test (seconds).
LONG = 30.0
ORCH = "TestOrch"
VERSION = "1.0.0"


class ValidationSkipped(Exception):
    """Raised by a test that does not apply to the provider under test (missing optional capability)."""


def skip(reason: str) -> NoReturn:
    raise ValidationSkipped(reason)


# ---------------------------------------------------------------------------------------------------------
# factory knobs


def lock_timeout(factory: ProviderFactory) -> float:
    """The factory's short lock timeout (seconds): lock-expiry tests sleep just past it."""
    value = float(getattr(factory, "lock_timeout", 1.0))
    if not math.isfinite(value) or value <= 0:
        return 1.0
    return value


def past(timeout: float) -> float:
    """How long to sleep so that a lock/visibility deadline of ``timeout`` seconds has surely passed."""
    return timeout + max(0.15, timeout * 0.1)


def short_poll_threshold(factory: ProviderFactory) -> float:
    """How quickly a fetch on an empty queue with ``poll_timeout=0`` must return (seconds)."""
    return float(getattr(factory, "short_poll_threshold", 0.25))


def is_long_poll(factory: ProviderFactory, provider: Provider) -> bool:
    """Whether the provider waits up to ``poll_timeout`` for work (declared by the factory or provider)."""
    for obj in (factory, provider):
        value = getattr(obj, "long_poll", None)
        if value is not None:
            return bool(value)
    return False


# ---------------------------------------------------------------------------------------------------------
# provider lifecycle


async def _dispose(factory: ProviderFactory, provider: Provider) -> None:
    with anyio.CancelScope(shield=True):
        cleanup = getattr(factory, "cleanup", None)
        if cleanup is not None:
            await cleanup(provider)
        else:
            await provider.close()


@contextlib.asynccontextmanager
async def fresh_provider(factory: ProviderFactory) -> AsyncIterator[Provider]:
    """A new, empty provider from the factory; cleaned up (``factory.cleanup`` or ``close``) afterwards."""
    provider = await factory.create_provider()
    try:
        yield provider
    finally:
        await _dispose(factory, provider)


async def _open_peer(factory: ProviderFactory, provider: Provider) -> Provider | None:
    hook = getattr(factory, "open_peer", None)
    if hook is not None:
        peer: Provider = await hook(provider)
        return peer
    # The reference SQLite provider: a second connection to the same database file.
    from ...providers.sqlite import SqliteProvider

    if isinstance(provider, SqliteProvider) and provider.path != ":memory:":
        return await SqliteProvider.open(provider.path)
    return None


async def open_peer(factory: ProviderFactory, provider: Provider) -> Provider | None:
    """Another provider on ``provider``'s store (close it with ``close()``), or ``None`` if the store
    cannot be opened twice (see :func:`peers`)."""
    return await _open_peer(factory, provider)


@contextlib.asynccontextmanager
async def peers(factory: ProviderFactory, provider: Provider, n: int) -> AsyncIterator[list[Provider]]:
    """``n`` providers on the same store as ``provider`` (the first is ``provider`` itself).

    The others come from the factory's optional ``open_peer(provider)`` hook (another connection or pool
    on the same store, closed with ``close()``), or for a file-backed SQLite provider from a new connection
    to the same file. A store that cannot be shared (an in-memory database) gets ``provider`` repeated:
    the tasks still run concurrently, through one provider object.
    """
    out: list[Provider] = [provider]
    opened: list[Provider] = []
    try:
        for _ in range(n - 1):
            peer = await _open_peer(factory, provider)
            if peer is None:
                out.append(provider)
            else:
                opened.append(peer)
                out.append(peer)
        yield out
    finally:
        with anyio.CancelScope(shield=True):
            for peer in opened:
                await peer.close()


def admin_of(provider: Provider) -> ProviderAdmin:
    admin = provider.as_admin()
    if admin is None:
        skip("provider has no management capability (as_admin() returned None)")
    return admin


class TestHooks(Protocol):
    """The validation suite's one way into a provider's storage, for the few tests that need to put the
    store in a state no contract operation produces. A factory hands them out as
    ``factory.test_hooks(provider) -> TestHooks``; each provider implements them in one private module
    (``providers/sqlite/_testhooks.py``, ``providers/postgres/_testhooks.py``), so production provider
    classes carry no test-only code.

    A factory without ``test_hooks`` may still offer the older per-hook methods
    ``corrupt_instance_history(provider, instance_id)`` and ``get_max_attempt_count(provider, instance_id)``.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    async def corrupt_instance_history(self, instance_id: str) -> None:
        """Make the instance's stored history undecodable (the poison tests)."""
        ...

    async def max_attempt_count(self, instance_id: str) -> int:
        """The highest stored attempt count among the instance's orchestrator messages."""
        ...


def hooks_of(factory: ProviderFactory, provider: Provider) -> TestHooks | None:
    """The factory's ``TestHooks`` for ``provider`` (``None``: the factory declares none)."""
    make = getattr(factory, "test_hooks", None)
    return None if make is None else cast(TestHooks, make(provider))


async def corrupt_history(factory: ProviderFactory, provider: Provider, instance_id: str) -> None:
    hooks = hooks_of(factory, provider)
    if hooks is not None:
        await hooks.corrupt_instance_history(instance_id)
        return
    legacy = getattr(factory, "corrupt_instance_history", None)
    if legacy is None:
        skip("factory has no test_hooks(provider) (nor a corrupt_instance_history(provider, instance_id) hook)")
    await legacy(provider, instance_id)


async def stored_max_attempt_count(
    factory: ProviderFactory, provider: Provider, instance_id: str
) -> int | None:
    hooks = hooks_of(factory, provider)
    if hooks is not None:
        return int(await hooks.max_attempt_count(instance_id))
    legacy = getattr(factory, "get_max_attempt_count", None)
    if legacy is None:
        return None
    return int(await legacy(provider, instance_id))


# ---------------------------------------------------------------------------------------------------------
# checks


def fail(message: str) -> NoReturn:
    raise AssertionError(message)


def expect(condition: object, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def expect_eq(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


@overload
async def expect_error(awaitable: Awaitable[Any], what: str) -> ProviderError: ...


@overload
async def expect_error(awaitable: Awaitable[Any], what: str, exc_type: type[E]) -> E: ...


async def expect_error(
    awaitable: Awaitable[Any], what: str, exc_type: type[BaseException] = ProviderError
) -> Any:
    """Await ``awaitable`` and require it to raise ``exc_type`` (a ``ProviderError`` by default)."""
    try:
        result = await awaitable
    except exc_type as exc:
        return exc
    except Exception as exc:
        fail(f"{what}: expected {exc_type.__name__}, got {type(exc).__name__}: {exc}")
    fail(f"{what}: expected {exc_type.__name__}, but the call succeeded (returned {result!r})")


def expect_permanent(err: ProviderError, what: str) -> None:
    expect(not err.retryable, f"{what}: the error must be permanent (retryable=False), got {err!r}")


async def ok(awaitable: Awaitable[T], what: str) -> T:
    """Await ``awaitable``; a ``ProviderError`` becomes a failure that names the step."""
    try:
        return await awaitable
    except ProviderError as exc:
        fail(f"{what}: unexpected ProviderError: {exc}")


# ---------------------------------------------------------------------------------------------------------
# builders


def start_item(
    instance: str,
    name: str = ORCH,
    version: str | None = VERSION,
    *,
    input: str | None = "{}",
    parent: str | None = None,
    parent_id: int | None = None,
) -> StartOrchestration:
    return StartOrchestration(
        instance=instance,
        name=name,
        input=input,
        version=version,
        parent_instance=parent,
        parent_id=parent_id,
        parent_execution_id=1 if parent is not None else None,
    )


def event(event_id: int, kind: EventKind, source_event_id: int | None = None) -> Event:
    return Event(event_id=event_id, kind=kind, source_event_id=source_event_id, timestamp_ms=0)


def started(name: str = ORCH, version: str = VERSION, event_id: int = 1, parent: str | None = None) -> Event:
    return event(
        event_id, OrchestrationStarted(name=name, version=version, input="{}", parent_instance=parent)
    )


def external_event(event_id: int, name: str = "Evt", data: str | None = '"x"') -> Event:
    return event(event_id, ExternalEvent(name=name, data=data))


def meta(
    status: str | None = "Running",
    *,
    name: str | None = ORCH,
    version: str | None = VERSION,
    parent: str | None = None,
    output: str | None = None,
) -> ExecutionMetadata:
    return ExecutionMetadata(
        orchestration_name=name,
        orchestration_version=version,
        parent_instance_id=parent,
        status=status,
        output=output,
    )


def activity(
    instance: str, id: int, execution_id: int = 1, name: str = "Act", input: str = '"in"'
) -> ActivityExecute:
    return ActivityExecute(instance=instance, execution_id=execution_id, id=id, name=name, input=input)


def activity_result(instance: str, id: int, execution_id: int = 1, result: str = '"ok"') -> ActivityResult:
    return ActivityResult(instance=instance, execution_id=execution_id, id=id, result=result)


def external(instance: str, name: str = "Evt", data: str | None = '"x"') -> ExternalRaised:
    return ExternalRaised(instance=instance, name=name, data=data)


def continue_as_new(instance: str, execution_id: int, name: str = ORCH) -> ContinueAsNew:
    return ContinueAsNew(instance=instance, name=name, input="{}", version=VERSION, execution_id=execution_id)


def describe(item: OrchestrationItem | None) -> str:
    if item is None:
        return "None"
    kinds = [type(m).__name__ for m in item.messages]
    return f"item for {item.instance_id!r} with messages {kinds}"


def message_names(item: OrchestrationItem) -> list[str]:
    """Names of the ExternalRaised messages of a batch, in batch order."""
    return [m.name for m in item.messages if isinstance(m, ExternalRaised)]


# ---------------------------------------------------------------------------------------------------------
# common steps


async def fetch_orch(provider: Provider, lock: float = LONG) -> OrchestrationItem | None:
    return await ok(provider.fetch_orchestration_item(lock, 0.0), "fetch_orchestration_item")


async def must_fetch_orch(
    provider: Provider,
    instance: str | None = None,
    lock: float = LONG,
    what: str = "fetch_orchestration_item",
) -> OrchestrationItem:
    item = await fetch_orch(provider, lock)
    if item is None:
        fail(f"{what}: expected an orchestration item{f' for {instance!r}' if instance else ''}, got None")
    if instance is not None and item.instance_id != instance:
        fail(f"{what}: expected an item for {instance!r}, got {describe(item)}")
    return item


async def expect_no_orch(provider: Provider, what: str) -> None:
    item = await fetch_orch(provider)
    if item is not None:
        fail(f"{what}: expected no orchestration item, got {describe(item)}")


async def fetch_work(provider: Provider, lock: float = LONG) -> WorkItemLease | None:
    return await ok(provider.fetch_work_item(lock, 0.0), "fetch_work_item")


async def must_fetch_work(
    provider: Provider, lock: float = LONG, what: str = "fetch_work_item"
) -> WorkItemLease:
    lease = await fetch_work(provider, lock)
    if lease is None:
        fail(f"{what}: expected a work item, got None")
    return lease


async def expect_no_work(provider: Provider, what: str) -> None:
    lease = await fetch_work(provider)
    if lease is not None:
        fail(f"{what}: expected no work item, got {lease.item!r}")


async def ack(
    provider: Provider,
    item: OrchestrationItem,
    events: Sequence[Event] = (),
    *,
    execution_id: int | None = None,
    worker_items: Sequence[ActivityExecute] = (),
    orchestrator_items: Sequence[WorkItem] = (),
    metadata: ExecutionMetadata | None = None,
    cancelled: Sequence[Any] = (),
    what: str = "ack_orchestration_item",
) -> None:
    await ok(
        provider.ack_orchestration_item(
            item.lock_token,
            item.execution_id if execution_id is None else execution_id,
            list(events),
            list(worker_items),
            list(orchestrator_items),
            metadata if metadata is not None else ExecutionMetadata(),
            list(cancelled),
        ),
        what,
    )


async def create_instance(
    provider: Provider,
    instance: str,
    *,
    status: str = "Running",
    output: str | None = None,
    name: str = ORCH,
    version: str = VERSION,
    parent: str | None = None,
    extra_events: Sequence[EventKind] = (),
    worker_items: Sequence[ActivityExecute] = (),
    orchestrator_items: Sequence[WorkItem] = (),
) -> None:
    """Start ``instance`` and run its first turn: enqueue the start, fetch it, ack ``OrchestrationStarted``
    (+ ``extra_events``) with metadata that creates the instance row. Requires no other pending work."""
    await ok(
        provider.enqueue_start(start_item(instance, name, version, parent=parent)),
        f"enqueue_start({instance!r})",
    )
    item = await must_fetch_orch(provider, instance, what=f"first turn of {instance!r}")
    events = [started(name, version, parent=parent)]
    events += [event(i + 2, kind) for i, kind in enumerate(extra_events)]
    await ack(
        provider,
        item,
        events,
        execution_id=1,
        worker_items=worker_items,
        orchestrator_items=orchestrator_items,
        metadata=meta(status, name=name, version=version, parent=parent, output=output),
        what=f"first ack of {instance!r}",
    )


async def new_turn(provider: Provider, instance: str, name: str = "Poke") -> OrchestrationItem:
    """Enqueue an external event for ``instance`` and fetch (lock) the resulting batch."""
    await ok(
        provider.enqueue_for_orchestrator(external(instance, name)), f"enqueue_for_orchestrator({instance!r})"
    )
    return await must_fetch_orch(provider, instance)


async def finish_instance(
    provider: Provider, instance: str, status: str = "Completed", output: str = '"done"'
) -> None:
    """Run one more turn of ``instance`` that ends its current execution with ``status``."""
    item = await new_turn(provider, instance, "Finish")
    n = len(item.history)
    await ack(
        provider,
        item,
        [external_event(n + 1, "Finish")],
        metadata=ExecutionMetadata(status=status, output=output),
        what=f"final ack of {instance!r}",
    )


async def create_executions(
    provider: Provider, instance: str, count: int, last_status: str = "Completed", *, pause: float = 0.0
) -> None:
    """Create ``instance`` with ``count`` executions chained by continue-as-new (each with 2 events); the
    last ends with ``last_status`` ("Running" leaves it running). ``pause`` sleeps between executions so
    their completion times differ."""
    await ok(provider.enqueue_start(start_item(instance)), f"enqueue_start({instance!r})")
    for execution_id in range(1, count + 1):
        item = await must_fetch_orch(
            provider, instance, what=f"turn of execution {execution_id} of {instance!r}"
        )
        last = execution_id == count
        status = last_status if last else "ContinuedAsNew"
        events = [started(), external_event(2, f"exec-{execution_id}")]
        await ack(
            provider,
            item,
            events,
            execution_id=execution_id,
            orchestrator_items=[] if last else [continue_as_new(instance, execution_id + 1)],
            metadata=meta(status, output=None if status == "Running" else f'"out-{execution_id}"'),
            what=f"ack of execution {execution_id} of {instance!r}",
        )
        if pause and not last:
            await anyio.sleep(pause)


def present(value: T | None, what: str) -> T:
    """``value``, which must not be None."""
    if value is None:
        fail(f"{what}: expected a value, got None")
    return value


# ---------------------------------------------------------------------------------------------------------
# worker routing (tags and sessions)


def routed_of(provider: Provider) -> RoutingCapable:
    """``provider`` as a routing provider, or skip the test (no ``worker_routing`` capability)."""
    routed = as_routing(provider)
    if routed is None:
        skip("provider does not declare ProviderCapabilities(worker_routing=True)")
    return routed


def routed_activity(
    instance: str, id: int, *, tag: str | None = None, session_id: str | None = None, name: str = "Act"
) -> ActivityExecute:
    return ActivityExecute(
        instance=instance, execution_id=1, id=id, name=name, input='"in"', tag=tag, session_id=session_id
    )


async def fetch_routed(
    provider: Provider,
    routing: WorkerRouting,
    max_items: int = 10,
    lock: float = LONG,
    what: str = "fetch_routed_work_items",
) -> list[WorkItemLease]:
    return list(await ok(routed_of(provider).fetch_routed_work_items(lock, max_items, routing, 0.0), what))


def lease_ids(leases: Sequence[WorkItemLease]) -> list[tuple[str, int]]:
    """``(instance, activity id)`` of each lease, in fetch order."""
    return [(lease.item.instance, lease.item.id) for lease in leases]
