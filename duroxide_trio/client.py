"""Client: start orchestrations, raise events, cancel, query status, wait, and manage instances.

The client talks only to the provider. Give it the registry (``runtime.client`` does) and it also checks
orchestration names at start and returns typed outputs.
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs

from .history import CancelInstance, ErrorDetails, Event, ExternalRaised, QueueMessage, StartOrchestration
from .orchestration.context import check_instance_id
from .orchestration.limits import MAX_NAME_BYTES, MAX_PAYLOAD_BYTES, check_text
from .providers.base import (
    DeleteResult,
    ExecutionInfo,
    InstanceFilter,
    InstanceInfo,
    InstanceNotFound,
    Provider,
    ProviderAdmin,
    PruneOptions,
    PruneResult,
    QueueDepths,
    SystemMetrics,
)
from .registry import Registry, decode_payload, encode_payload, parse_version

__all__ = ["Client", "OrchestrationState", "Status", "UnknownOrchestration", "ManagementNotAvailable"]


class Status(enum.StrEnum):
    NOT_FOUND = "NotFound"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED)


class UnknownOrchestration(ValueError):
    """``start_orchestration`` named an orchestration the client's registry does not have."""


class ManagementNotAvailable(RuntimeError):
    """The provider has no management (``ProviderAdmin``) capability."""


@attrs.frozen
class OrchestrationState:
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


class Client:
    """``Client(provider)``; ``Client(provider, registry=registry)`` also validates names and types outputs."""

    def __init__(self, provider: Provider, *, registry: Registry | None = None) -> None:
        if not hasattr(provider, "fetch_orchestration_item"):
            raise TypeError(f"Client needs a provider, got {type(provider).__name__}")
        self.provider = provider
        self.registry = registry

    # starting and signalling ----------------------------------------------------------------------
    async def start_orchestration(
        self, instance_id: str, name: str, input: Any = None, *, version: str | None = None
    ) -> None:
        """Start ``name`` as ``instance_id``. Raises ``InstanceAlreadyExists`` if the id is taken,
        ``UnknownOrchestration`` if a registry was given and does not know ``name``, ``PayloadError``
        (a ``TypeError``) if ``input`` cannot be turned into JSON, ``LimitExceeded`` (a ``ValueError``) if
        it is over 3 MiB, and ``ValueError`` for an empty or over-long id or one that contains the
        reserved ``::sub::`` marker."""
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
        await self.provider.enqueue_start(StartOrchestration(instance_id, name, text, version))

    async def _require_instance(self, instance_id: str, operation: str) -> None:
        if not await self.provider.instance_exists(instance_id):
            raise InstanceNotFound(operation, instance_id)

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Deliver external event ``name`` with ``data`` to ``instance_id`` (``ctx.wait_for_event``).
        Raises ``InstanceNotFound`` if the id has no instance and no pending start, ``PayloadError`` /
        ``LimitExceeded`` for data that is not JSON or over 3 MiB, ``ValueError`` for a bad id or name."""
        _check_id(instance_id, "instance_id")
        _check_id(name, "event name")
        text = _payload(data, f"data of event {name!r}")
        await self._require_instance(instance_id, "raise_event")
        await self.provider.enqueue_for_orchestrator(ExternalRaised(instance_id, name, text))

    async def enqueue_event(self, instance_id: str, queue: str, data: Any = None) -> None:
        """Put ``data`` into the FIFO mailbox ``queue`` of ``instance_id`` (``ctx.dequeue_event``). Raises
        as :meth:`raise_event` does."""
        _check_id(instance_id, "instance_id")
        _check_id(queue, "queue name")
        text = _payload(data, f"data for queue {queue!r}")
        await self._require_instance(instance_id, "enqueue_event")
        await self.provider.enqueue_for_orchestrator(QueueMessage(instance_id, queue, text))

    async def cancel_instance(self, instance_id: str, reason: str = "") -> None:
        """Ask ``instance_id`` to stop: it ends Failed with kind ``Cancelled`` at its next turn, its
        activities are told (``ActivityContext.cancelled``) and its children are cancelled too. A no-op
        for an instance that has already finished; ``InstanceNotFound`` for an unknown id."""
        _check_id(instance_id, "instance_id")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a string, got {reason!r:.100}")
        check_text(reason, MAX_NAME_BYTES, "cancel reason")
        await self._require_instance(instance_id, "cancel_instance")
        await self.provider.enqueue_for_orchestrator(CancelInstance(instance_id, reason))

    # status ---------------------------------------------------------------------------------------
    async def get_status(self, instance_id: str) -> OrchestrationState:
        info = await self.provider.get_instance_info(instance_id)
        return self._state(instance_id, info)

    def _state(self, instance_id: str, info: InstanceInfo | None) -> OrchestrationState:
        if info is None:
            return OrchestrationState(instance_id, Status.NOT_FOUND)
        output: Any = None
        error: ErrorDetails | None = None
        if info.status == "Completed":
            status = Status.COMPLETED
            hint = None
            if self.registry is not None:
                h = self.registry.resolve_orchestration(info.name, info.version)
                hint = h.output_type if h else None
            output = decode_payload(info.output, hint)
        elif info.status == "Failed":
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
        completions made by other processes on providers without notifications."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
            raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
        _check_id(instance_id, "instance_id")
        deadline = time.monotonic() + timeout
        notifier = self.provider.notifier
        final: InstanceInfo | None = None
        while True:
            event = notifier.instance_event(instance_id)
            try:
                # The provider may hand over the committed terminal state with its notification.
                state = self._state(instance_id, final) if final is not None else await self.get_status(instance_id)
                if state.status.is_terminal:
                    return state
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"instance {instance_id!r} did not finish within {_seconds(timeout)} "
                        f"(status {state.status.value})"
                    )
                with anyio.move_on_after(min(remaining, poll_interval)):
                    await event.wait()
                final = notifier.take_final(instance_id) if event.is_set() else None
            finally:
                notifier.release_instance_event(instance_id)

    async def get_custom_status(self, instance_id: str, last_seen_version: int = 0) -> tuple[Any, int] | None:
        got = await self.provider.get_custom_status(instance_id, last_seen_version)
        if got is None:
            return None
        text, version = got
        return (None if text is None else json.loads(text)), version

    # management -----------------------------------------------------------------------------------
    def _admin(self) -> ProviderAdmin:
        admin = self.provider.as_admin()
        if admin is None:
            raise ManagementNotAvailable(f"provider {self.provider.name!r} has no management capability")
        return admin

    async def list_instances(self, status: Status | str | None = None) -> list[str]:
        value = status.value if isinstance(status, Status) else status
        if isinstance(value, str):
            known = {s.lower(): s for s in ("Running", "Completed", "Failed", "ContinuedAsNew")}
            value = known.get(value.lower().replace("_", ""), value)
        if value is not None and value not in ("Running", "Completed", "Failed", "ContinuedAsNew"):
            raise ValueError(
                f"unknown status {status!r}: use dt.Status.RUNNING, COMPLETED or FAILED (or 'running', "
                "'completed', 'failed')"
            )
        return await self._admin().list_instances(value)

    async def get_history(self, instance_id: str, execution_id: int | None = None) -> list[Event]:
        return await self._admin().read_history(instance_id, execution_id)

    async def list_executions(self, instance_id: str) -> list[int]:
        return await self._admin().list_executions(instance_id)

    async def get_instance_info(self, instance_id: str) -> InstanceInfo | None:
        return await self._admin().get_instance_info(instance_id)

    async def get_execution_info(self, instance_id: str, execution_id: int) -> ExecutionInfo | None:
        return await self._admin().get_execution_info(instance_id, execution_id)

    async def get_system_metrics(self) -> SystemMetrics:
        return await self._admin().get_system_metrics()

    async def get_queue_depths(self) -> QueueDepths:
        return await self._admin().get_queue_depths()

    async def get_instance_tree(self, instance_id: str) -> list[str]:
        return await self._admin().get_instance_tree(instance_id)

    async def delete_instance(self, instance_id: str, force: bool = False) -> DeleteResult:
        """Delete a root instance and its sub-orchestrations. Refuses running instances unless ``force``."""
        return await self._admin().delete_instance(instance_id, force)

    async def delete_instance_bulk(
        self,
        *,
        instance_ids: Sequence[str] | None = None,
        completed_before: datetime | None = None,
        limit: int = 1000,
    ) -> DeleteResult:
        """Delete terminal root instances (and their children) matching the filter; running ones are skipped."""
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
        """Delete old executions (from continue-as-new) of an instance; never the current or a running one."""
        return await self._admin().prune_executions(
            instance_id,
            PruneOptions(keep_last, int(completed_before.timestamp() * 1000) if completed_before else None),
        )
