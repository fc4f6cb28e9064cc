"""Client: start orchestrations, raise events, cancel, query status, wait, and manage instances.

The client talks only to the provider. Give it the registry (``runtime.client`` does) and it also checks
orchestration names at start and returns typed outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import attrs

from .clock import clock_of
from .errors import ManagementNotAvailable, OrchestrationTimeout, UnknownOrchestration
from .history import (
    CancelInstance,
    ErrorDetails,
    Event,
    ExternalRaised,
    QueueMessage,
    StartOrchestration,
    Status,
    kv_state,
)
from .orchestration.context import check_instance_id
from .orchestration.limits import MAX_NAME_BYTES, MAX_PAYLOAD_BYTES, check_text
from .providers.base import (
    DeleteResult,
    ExecutionInfo,
    InstanceFilter,
    InstanceInfo,
    InstanceNotFound,
    OrchestrationItem,
    Provider,
    ProviderAdmin,
    PruneOptions,
    PruneResult,
    QueueDepths,
    SystemMetrics,
    TurnRequest,
    as_key_values,
    as_start_fetching,
)
from .registry import Registry, decode_payload, encode_payload, parse_version

__all__ = [
    "Client",
    "FirstTurnHandoff",
    "FirstTurnSlot",
    "ManagementNotAvailable",
    "OrchestrationState",
    "OrchestrationTimeout",
    "Status",
    "UnknownOrchestration",
]


#: The statuses ``list_instances`` filters by (a current execution's status).
_LISTABLE = (Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.CONTINUED_AS_NEW)


@attrs.frozen
class OrchestrationState:
    """An instance's state, from ``Client.get_status`` / ``Client.wait_for_orchestration``.

    Attributes:
        instance_id: The instance asked about.
        status: ``Status.NOT_FOUND`` (then every other field is at its default), ``RUNNING``,
            ``COMPLETED`` or ``FAILED``.
        output: The orchestration's return value when ``COMPLETED`` (else ``None``): converted to the
            return annotation of the version that ran if the client has a registry, plain JSON otherwise.
        error: Why it failed, when ``FAILED`` (else ``None``).
        custom_status: The last value given to ``ctx.set_custom_status`` (decoded JSON), or ``None``.
        custom_status_version: Goes up by one with every turn that changed the custom status (0: never
            set); pass it to ``Client.get_custom_status`` to wait for changes.
        name: The orchestration's name.
        version: The version that runs (or ran).
        execution_id: The current execution (1, then one more per continue-as-new).
        created_at: When the instance was created (UTC).
        updated_at: When it was last changed (UTC).
        parent_instance_id: The parent, for a sub-orchestration; ``None`` for a root instance.
    """

    instance_id: str
    status: Status
    output: Any = None
    error: ErrorDetails | None = None
    custom_status: Any = None
    custom_status_version: int = 0
    name: str | None = None
    version: str | None = None
    execution_id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    parent_instance_id: str | None = None


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def _check_id(value: Any, what: str) -> str:
    """A name or id given to the client: a non-empty string within the 64 KiB name limit."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r:.100}")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters (\\x00), got {value[:100]!r}")
    check_text(value, MAX_NAME_BYTES, what)
    return value


def _payload(value: Any, what: str) -> str | None:
    text = encode_payload(value, what)
    check_text(text, MAX_PAYLOAD_BYTES, what)
    return text


def _seconds(value: float) -> str:
    """``0.09227751299986267`` -> ``92 ms``; ``12.5`` -> ``12.5 s``."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


class FirstTurnSlot(Protocol):
    """A turn slot reserved by :meth:`FirstTurnHandoff.reserve` for one start's first turn."""

    #: What the start may lock (one batch, the runtime's lock timeout and version filter).
    request: TurnRequest

    async def hand_over(self, item: OrchestrationItem | None) -> None:
        """Run ``item``, the batch the start locked, in the slot; ``None``: free the slot."""
        ...


class FirstTurnHandoff(Protocol):
    """Where a runtime's own client hands the first turns its starts lock (``open_runtime`` gives
    ``runtime.client`` one): with a provider that declares ``start_fetches_turn``, a start stored while
    a turn slot is free also locks the new instance's first turn, which runs in that runtime at once."""

    def reserve(self) -> FirstTurnSlot | None:
        """A free turn slot, or ``None`` (never waits)."""
        ...


class Client:
    """``Client(provider)``; ``Client(provider, registry=registry)`` also validates names and types outputs.

    Starts orchestrations, sends them events, cancels them, reads their state and waits for them; the
    management methods (``list_instances``, ``get_history``, ``delete_instance`` ...) need a provider with
    a management interface. ``runtime.client`` is a client with the runtime's registry. Every method may
    also raise ``ProviderError`` when the store fails (``retryable`` ones may be retried).

    Args:
        provider: The store (``SqliteProvider``, ``PostgresProvider`` or any ``Provider``).
        registry: If given, ``start_orchestration`` refuses names and versions it does not have, and
            outputs are converted to the orchestrations' return annotations.
        first_turns: Set by ``open_runtime`` for ``runtime.client`` (see :class:`FirstTurnHandoff`):
            its starts hand their first turns straight to that runtime.

    Raises:
        TypeError: ``provider`` is not a provider.
    """

    def __init__(
        self, provider: Provider, *, registry: Registry | None = None, first_turns: FirstTurnHandoff | None = None
    ) -> None:
        if not isinstance(provider, Provider):
            raise TypeError(f"Client needs a provider, got {type(provider).__name__}")
        self.provider = provider
        self.registry = registry
        self._first_turns = first_turns
        self._start_fetching = as_start_fetching(provider) if first_turns is not None else None
        self._clock = clock_of(provider)  # virtual in tests; looked up once (a Protocol isinstance check)

    # starting and signalling ----------------------------------------------------------------------
    async def start_orchestration(
        self, instance_id: str, name: str, input: Any = None, *, version: str | None = None
    ) -> None:
        """Start ``name`` as ``instance_id``. Raises ``InstanceAlreadyExists`` if the id is taken,
        ``UnknownOrchestration`` if a registry was given and does not know ``name``, ``PayloadError``
        (a ``TypeError``) if ``input`` cannot be turned into JSON, ``LimitExceeded`` (a ``ValueError``) if
        it is over 3 MiB, and ``ValueError`` for an empty or over-long id or one that contains the
        reserved ``::sub::`` marker.

        Returns once the start is stored; a runtime runs the first turn (until then ``get_status``
        says ``NOT_FOUND``).

        Args:
            instance_id: The new instance's id (unique; at most 64 KiB; must not contain ``::sub::``).
            name: The registered orchestration name.
            input: The orchestration's input: any value the payload converter turns into JSON (JSON
                values, attrs classes, dataclasses, enums, datetimes, UUIDs); ``None`` for none.
            version: Run exactly this version (``"1.0.0"``); default: the latest registered one.

        Raises:
            InstanceAlreadyExists: ``instance_id`` already has an instance or a pending start.
            UnknownOrchestration: The client's registry has no ``name`` (or no such ``version``).
            PayloadError: ``input`` cannot be turned into JSON.
            LimitExceeded: The JSON input is over 3 MiB.
            ValueError: An empty, over-long or ``::sub::`` id, an empty name, or a malformed version.
        """
        _check_id(instance_id, "instance_id")
        try:
            check_instance_id(instance_id)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        _check_id(name, "orchestration name")
        if version is not None:
            parse_version(version)
        if self.registry is not None:
            if not self.registry.has_orchestration(name):
                known = ", ".join(self.registry.orchestration_names) or "none"
                raise UnknownOrchestration(f"orchestration {name!r} is not registered (registered: {known})")
            if version is not None and self.registry.resolve_orchestration(name, version) is None:
                raise UnknownOrchestration(
                    f"orchestration {name!r} has no version {version} (registered: "
                    f"{', '.join(self.registry.versions(name))})"
                )
        text = _payload(input, f"input of orchestration {name!r}")
        start = StartOrchestration(instance_id, name, text, version)
        notifier = self.provider.notifier
        # Watched from before the start is stored: a wait that follows knows the new instance has not
        # finished unless something was notified for it meanwhile, and need not read it first.
        notifier.watch_start(instance_id)
        try:
            fetching = self._start_fetching
            slot = self._first_turns.reserve() if fetching is not None and self._first_turns is not None else None
            if slot is None:
                await self.provider.enqueue_start(start)
                return
            # The runtime's first turn: locked with the start, run in the reserved slot (never dropped).
            with anyio.CancelScope(shield=True):
                item: OrchestrationItem | None = None
                try:
                    assert fetching is not None
                    item = await fetching.enqueue_start_and_fetch(start, slot.request)
                finally:
                    await slot.hand_over(item)
        except BaseException:
            notifier.forget_start(instance_id)
            raise

    async def _require_instance(self, instance_id: str, operation: str) -> None:
        if not await self.provider.instance_exists(instance_id):
            raise InstanceNotFound(operation, instance_id)

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Deliver external event ``name`` with ``data`` to ``instance_id`` (``ctx.wait_for_event``).
        Raises ``InstanceNotFound`` if the id has no instance and no pending start, ``PayloadError`` /
        ``LimitExceeded`` for data that is not JSON or over 3 MiB, ``ValueError`` for a bad id or name.

        Events raised before the orchestration waits are kept and delivered in order; an event for an
        instance that has already finished is accepted and dropped.

        Args:
            instance_id: The instance to notify.
            name: The event name the orchestration waits for.
            data: The event's value (anything the payload converter turns into JSON; ``None`` for none).

        Raises:
            InstanceNotFound: No instance and no pending start has this id.
            PayloadError: ``data`` cannot be turned into JSON.
            LimitExceeded: The JSON data is over 3 MiB.
            ValueError: An empty or over-long id or name.
        """
        _check_id(instance_id, "instance_id")
        _check_id(name, "event name")
        text = _payload(data, f"data of event {name!r}")
        await self._require_instance(instance_id, "raise_event")
        await self.provider.enqueue_for_orchestrator(ExternalRaised(instance_id, name, text))

    async def enqueue_event(self, instance_id: str, queue: str, data: Any = None) -> None:
        """Put ``data`` into the FIFO mailbox ``queue`` of ``instance_id`` (``ctx.dequeue_event``). Raises
        as :meth:`raise_event` does.

        Messages not yet dequeued are carried over to the next execution on continue-as-new.

        Args:
            instance_id: The instance that owns the mailbox.
            queue: The mailbox name the orchestration dequeues from.
            data: The message (anything the payload converter turns into JSON; ``None`` for none).

        Raises:
            InstanceNotFound: No instance and no pending start has this id.
            PayloadError: ``data`` cannot be turned into JSON.
            LimitExceeded: The JSON data is over 3 MiB.
            ValueError: An empty or over-long id or queue name.
        """
        _check_id(instance_id, "instance_id")
        _check_id(queue, "queue name")
        text = _payload(data, f"data for queue {queue!r}")
        await self._require_instance(instance_id, "enqueue_event")
        await self.provider.enqueue_for_orchestrator(QueueMessage(instance_id, queue, text))

    async def cancel_instance(self, instance_id: str, reason: str = "") -> None:
        """Ask ``instance_id`` to stop: it ends Failed with kind ``Cancelled`` at its next turn, its
        activities are told (``ActivityContext.cancelled``) and its children are cancelled too. A no-op
        for an instance that has already finished; ``InstanceNotFound`` for an unknown id.

        Args:
            instance_id: The instance to cancel.
            reason: Why (kept in the error message: ``"canceled: <reason>"``).

        Raises:
            InstanceNotFound: No instance and no pending start has this id.
            TypeError: ``reason`` is not a string.
            LimitExceeded: ``reason`` is over 64 KiB.
            ValueError: An empty or over-long id.
        """
        _check_id(instance_id, "instance_id")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a string, got {reason!r:.100}")
        check_text(reason, MAX_NAME_BYTES, "cancel reason")
        await self._require_instance(instance_id, "cancel_instance")
        await self.provider.enqueue_for_orchestrator(CancelInstance(instance_id, reason))

    # status ---------------------------------------------------------------------------------------
    async def get_status(self, instance_id: str) -> OrchestrationState:
        """The current state of ``instance_id``.

        Args:
            instance_id: The instance to look up.

        Returns:
            Its state; ``status`` is ``Status.NOT_FOUND`` for an unknown id (never an exception).

        Raises:
            PayloadError: The output does not convert to the orchestration's return annotation.
        """
        info = await self.provider.get_instance_info(instance_id)
        return self._state(instance_id, info)

    def _state(self, instance_id: str, info: InstanceInfo | None) -> OrchestrationState:
        if info is None:
            return OrchestrationState(instance_id, Status.NOT_FOUND)
        output: Any = None
        error: ErrorDetails | None = None
        if info.status == Status.COMPLETED:
            status = Status.COMPLETED
            hint = None
            if self.registry is not None:
                h = self.registry.resolve_orchestration(info.name, info.version)
                hint = h.output_type if h else None
            output = decode_payload(info.output, hint)
        elif info.status == Status.FAILED:
            status = Status.FAILED
            try:
                error = ErrorDetails(**json.loads(info.output or "{}"))
            except (TypeError, ValueError):
                error = ErrorDetails("application", "OrchestrationFailed", info.output or "")
        else:
            status = Status.RUNNING
        custom: Any = None
        if info.custom_status is not None:
            try:
                custom = json.loads(info.custom_status)
            except ValueError:
                custom = info.custom_status
        return OrchestrationState(
            instance_id=instance_id,
            status=status,
            output=output,
            error=error,
            custom_status=custom,
            custom_status_version=info.custom_status_version,
            name=info.name,
            version=info.version,
            execution_id=info.current_execution_id,
            created_at=_dt(info.created_at_ms),
            updated_at=_dt(info.updated_at_ms),
            parent_instance_id=info.parent_instance_id,
        )

    async def wait_for_orchestration(
        self, instance_id: str, timeout: float, *, poll_interval: float = 1.0
    ) -> OrchestrationState:
        """Return the state once the instance is Completed or Failed; ``TimeoutError`` after ``timeout``
        seconds. Wakes on the provider's notifications; ``poll_interval`` is only the fallback for
        completions made by other processes on providers without notifications.

        An unknown (or not yet started) instance is waited for like a running one; continue-as-new does
        not end the wait.

        Args:
            instance_id: The instance to wait for.
            timeout: The longest wait, in seconds (``0`` checks once).
            poll_interval: Seconds between fallback status reads.

        Returns:
            The terminal state (``status`` is ``COMPLETED`` or ``FAILED``).

        Raises:
            TimeoutError: Not finished within ``timeout`` (the message gives the last status).
            ValueError: ``timeout`` is negative, NaN or not a number, or the id is empty or over-long.
            PayloadError: The output does not convert to the orchestration's return annotation.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
            raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
        _check_id(instance_id, "instance_id")
        clock = self._clock
        deadline = clock.monotonic() + timeout
        notifier = self.provider.notifier
        final: InstanceInfo | None = None
        # Started here and nothing notified for it since: not finished yet, so the first read is skipped.
        unread = notifier.unnotified_start(instance_id) and timeout > 0
        while True:
            event = notifier.instance_event(instance_id)
            try:
                if unread:
                    unread = False
                    remaining = deadline - clock.monotonic()
                else:
                    # The provider may hand over the committed terminal state with its notification.
                    state = self._state(instance_id, final) if final is not None else await self.get_status(instance_id)
                    if state.status.is_terminal:
                        return state
                    remaining = deadline - clock.monotonic()
                    if remaining <= 0:
                        raise OrchestrationTimeout(
                            f"instance {instance_id!r} did not finish within {_seconds(timeout)} "
                            f"(status {state.status.value})"
                        )
                with clock.move_on_after(min(remaining, poll_interval)):
                    await event.wait()
                final = notifier.take_final(instance_id) if event.is_set() else None
            finally:
                notifier.release_instance_event(instance_id)

    async def get_custom_status(self, instance_id: str, last_seen_version: int = 0) -> tuple[Any, int] | None:
        """The custom status of ``instance_id`` if it changed since ``last_seen_version``.

        Args:
            instance_id: The instance to look up.
            last_seen_version: The ``custom_status_version`` already seen (0: none).

        Returns:
            ``(value, version)`` (the decoded JSON value, ``None`` if cleared) when the stored version is
            newer than ``last_seen_version``; ``None`` if it is not, or the instance does not exist.
        """
        got = await self.provider.get_custom_status(instance_id, last_seen_version)
        if got is None:
            return None
        text, version = got
        return (None if text is None else json.loads(text)), version

    # durable key-value state ----------------------------------------------------------------------
    async def get_value(self, instance_id: str, key: str, default: Any = None, *, type: Any = None) -> Any:
        """The committed value of ``key`` in the key-value state of ``instance_id`` (``ctx.set_value``).

        Args:
            instance_id: The instance.
            key: The key.
            default: Returned when the key (or the instance) holds nothing.
            type: Convert the JSON value to this type; default: plain JSON values.

        Returns:
            The value as of the instance's last committed turn, or ``default``.

        Raises:
            ValueError: An empty or non-string instance id or key.
            PayloadError: The value does not convert to ``type``.
        """
        _check_id(key, "key")
        text = (await self._value_texts(instance_id)).get(key)
        return default if text is None else decode_payload(text, type)

    async def get_values(self, instance_id: str) -> dict[str, Any]:
        """Every key of the key-value state of ``instance_id`` with its value (plain JSON values).

        Args:
            instance_id: The instance.

        Returns:
            ``{key: value}`` as of the last committed turn (empty for an unknown instance).

        Raises:
            ValueError: An empty or non-string instance id.
        """
        return {k: decode_payload(v) for k, v in sorted((await self._value_texts(instance_id)).items())}

    async def _value_texts(self, instance_id: str) -> dict[str, str]:
        """Key to JSON text: the provider's key-value table, or (a provider without one) the state
        rebuilt from the current execution's history."""
        _check_id(instance_id, "instance_id")
        store = as_key_values(self.provider)
        if store is not None:
            return await store.get_kv_values(instance_id)
        return kv_state(await self._admin().read_history(instance_id))

    # management -----------------------------------------------------------------------------------
    def _admin(self) -> ProviderAdmin:
        admin = self.provider.as_admin()
        if admin is None:
            raise ManagementNotAvailable(f"provider {self.provider.name!r} has no management capability")
        return admin

    async def list_instances(self, status: Status | str | None = None) -> list[str]:
        """Instance ids, newest first, optionally only those whose current execution has ``status``.

        Args:
            status: ``Status.RUNNING`` / ``COMPLETED`` / ``FAILED``, the same as strings in any case
                (``"running"``), or ``"ContinuedAsNew"``; ``None`` lists every instance.

        Returns:
            The matching instance ids.

        Raises:
            ValueError: An unknown status (``Status.NOT_FOUND`` included).
            ManagementNotAvailable: The provider has no management interface.
        """
        value = status.value if isinstance(status, Status) else status
        if isinstance(value, str):
            known = {s.value.lower(): s.value for s in _LISTABLE}
            value = known.get(value.lower().replace("_", ""), value)
        if value is not None and value not in _LISTABLE:
            raise ValueError(
                f"unknown status {status!r}: use dt.Status.RUNNING, COMPLETED or FAILED (or 'running', "
                "'completed', 'failed')"
            )
        return await self._admin().list_instances(value)

    async def get_history(self, instance_id: str, execution_id: int | None = None) -> list[Event]:
        """The history events of one execution of ``instance_id``, in order.

        Args:
            instance_id: The instance.
            execution_id: The execution (see :meth:`list_executions`); default: the current one.

        Returns:
            Its events (empty for an unknown instance or execution).

        Raises:
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().read_history(instance_id, execution_id)

    async def list_executions(self, instance_id: str) -> list[int]:
        """The execution ids of ``instance_id`` in ascending order (one more per continue-as-new; pruned
        ones are gone); empty for an unknown instance.

        Args:
            instance_id: The instance.

        Returns:
            Its execution ids.

        Raises:
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().list_executions(instance_id)

    async def get_instance_info(self, instance_id: str) -> InstanceInfo | None:
        """The raw stored row of ``instance_id`` (status string, output JSON text, epoch-ms times), or
        ``None`` if unknown; :meth:`get_status` gives the decoded view.

        Args:
            instance_id: The instance.

        Returns:
            Its ``InstanceInfo`` (name, version, current execution, status, output, custom status,
            times, parent), or ``None``.

        Raises:
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().get_instance_info(instance_id)

    async def get_execution_info(self, instance_id: str, execution_id: int) -> ExecutionInfo | None:
        """Status, output, start and end times and event count of one execution, or ``None`` if it does
        not exist.

        Args:
            instance_id: The instance.
            execution_id: The execution (see :meth:`list_executions`).

        Returns:
            Its ``ExecutionInfo``, or ``None``.

        Raises:
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().get_execution_info(instance_id, execution_id)

    async def get_system_metrics(self) -> SystemMetrics:
        """Counts over the whole store: instances (total, running, completed, failed), executions, events.

        Returns:
            A ``SystemMetrics``.

        Raises:
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().get_system_metrics()

    async def get_queue_depths(self) -> QueueDepths:
        """Messages waiting in the orchestrator, worker and timer queues, and the age of the oldest ready
        message of each; ``worker_by_tag`` counts ready activities per tag (untagged under ``None``), so
        work that no runtime's ``activity_tags`` accepts is visible; ``orchestrator_by_version`` counts
        instances with ready orchestration work per the version their next turn runs at (``None``: a start
        that asks for no version), so work no runtime's ``supported_replay_versions`` contains is visible.

        Returns:
            A ``QueueDepths`` (ages in ms; ``None`` when nothing is ready).

        Raises:
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().get_queue_depths()

    async def get_instance_tree(self, instance_id: str) -> list[str]:
        """``instance_id`` and all its sub-orchestrations, recursively (``instance_id`` first).

        Args:
            instance_id: The instance (usually a root).

        Returns:
            The instance ids of the tree.

        Raises:
            InstanceNotFound: The instance does not exist.
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().get_instance_tree(instance_id)

    async def delete_instance(self, instance_id: str, force: bool = False) -> DeleteResult:
        """Delete a root instance and its sub-orchestrations. Refuses running instances unless ``force``.

        Args:
            instance_id: A root instance (not a sub-orchestration).
            force: Delete even if it (or a descendant) is still running.

        Returns:
            How many instances, executions, events and queue messages were removed.

        Raises:
            InstanceNotFound: The instance does not exist.
            CannotDeleteSubOrchestration: It is a sub-orchestration; delete its root.
            InstanceStillRunning: It is running and ``force`` is false.
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().delete_instance(instance_id, force)

    async def delete_instance_bulk(
        self,
        *,
        instance_ids: Sequence[str] | None = None,
        completed_before: datetime | None = None,
        limit: int = 1000,
    ) -> DeleteResult:
        """Delete terminal root instances (and their children) matching the filter; running ones are skipped.

        Args:
            instance_ids: Only these ids (default: any); sub-orchestration ids are skipped.
            completed_before: Only instances that finished before this time.
            limit: At most this many root instances (the oldest first).

        Returns:
            How many instances, executions, events and queue messages were removed.

        Raises:
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().delete_instance_bulk(
            InstanceFilter(
                list(instance_ids) if instance_ids is not None else None,
                int(completed_before.timestamp() * 1000) if completed_before else None,
                limit,
            )
        )

    async def prune_executions(
        self, instance_id: str, *, keep_last: int | None = None, completed_before: datetime | None = None
    ) -> PruneResult:
        """Delete old executions (from continue-as-new) of an instance; never the current or a running one.

        With neither option every old execution is deleted; with both, an execution must meet both.

        Args:
            instance_id: The instance.
            keep_last: Keep the newest this many executions (the current one counts).
            completed_before: Only delete executions that finished before this time.

        Returns:
            How many executions and events were removed.

        Raises:
            InstanceNotFound: The instance does not exist.
            ManagementNotAvailable: The provider has no management interface.
        """
        return await self._admin().prune_executions(
            instance_id,
            PruneOptions(keep_last, int(completed_before.timestamp() * 1000) if completed_before else None),
        )
