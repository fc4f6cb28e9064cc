"""Every exception the package raises, under one root: :class:`DuroxideError`.

``except dt.DuroxideError`` catches anything duroxide-trio raises on purpose (a storage failure, a bad
name, a payload that does not convert, a task that failed inside an orchestration, a wait that timed
out). Each class also keeps the built-in base it had before the root existed (``ValueError``,
``TypeError``, ``RuntimeError``, ``TimeoutError``), so older ``except`` clauses keep working.

It also defines :class:`ErrorDetails`, the stored description of a failure that ``TaskFailed`` carries
(``history`` re-exports it). This module is the bottom floor: it imports nothing of the package.
"""

from __future__ import annotations

from enum import StrEnum

import attrs

__all__ = [
    "ActivityFailed",
    "CannotDeleteSubOrchestration",
    "DuroxideError",
    "ErrorDetails",
    "InstanceAlreadyExists",
    "InstanceNotFound",
    "InstanceStillRunning",
    "ManagementNotAvailable",
    "OrchestrationTimeout",
    "PayloadError",
    "ProviderError",
    "ProviderErrorKind",
    "SubOrchestrationFailed",
    "TaskFailed",
    "UnknownOrchestration",
    "as_provider_error",
]


class DuroxideError(Exception):
    """The root of every exception duroxide-trio raises."""


@attrs.frozen
class ErrorDetails:
    """Why something failed. Only ``application`` errors are visible to orchestration code as exceptions;
    ``configuration`` (nondeterminism), ``infrastructure`` and ``poison`` fail the instance.

    Attributes:
        category: ``"application"`` (the code raised, an activity or child failed, a timeout, a cancel;
            orchestration code sees it as ``ActivityFailed`` / ``SubOrchestrationFailed``),
            ``"configuration"`` (nondeterminism, a size limit, a corrupted history),
            ``"infrastructure"`` (an engine error) or ``"poison"`` (a message that kept failing, or an
            orchestration or activity that is not registered anywhere).
        kind: A short machine-readable reason, e.g. ``"ActivityFailed"``, ``"OrchestrationFailed"``,
            ``"Timeout"``, ``"Cancelled"``, ``"BadInput"``, ``"Nondeterminism"``, ``"LimitExceeded"``,
            ``"Unregistered"``.
        message: The human-readable text (``"ValueError: card declined"``); cut at 64 KiB.
        retryable: Whether retrying may help (informational; the runtime does not act on it).
    """

    category: str
    kind: str
    message: str
    retryable: bool = False

    def display(self) -> str:
        """The text to show a person: ``message``."""
        return self.message


# ---------------------------------------------------------------------------------------------------------
# Storage (raised by providers, seen by the runtime and by client callers)


class ProviderErrorKind(StrEnum):
    """What a storage failure was, so that the runtime decides on a kind and never on a message's text.

    The values are the spellings stored and logged before this enum existed (``str(kind)`` is the value).
    ``retryable`` follows from the kind (:attr:`retryable`):

    - retryable (transient): ``CONTENTION`` (lock contention: SQLite busy/locked, PostgreSQL deadlock,
      serialization failure, lock not available; expected under load), ``CONNECTION`` (connection lost or
      refused, server shutting down, pool exhausted), ``RESOURCES`` (the server is out of memory, disk or
      connections), ``TIMEOUT`` (the operation or a statement timed out), ``BUG`` (the provider raised
      something that is not a ``ProviderError``: retried, and logged);
    - permanent: ``LOCK_LOST`` (lock token invalid or expired), ``NOT_FOUND`` (the named instance or item
      does not exist), ``CONFLICT`` (a constraint or duplicate), ``INVALID`` (a value the store cannot
      hold: too large, out of range, malformed), ``CORRUPT`` (the store is damaged or not a database),
      ``CONFIG`` (bad connection settings, credentials, database or path), ``CLOSED`` (the provider is
      closed).
    """

    CONTENTION = "contention"
    CONNECTION = "connection"
    RESOURCES = "resources"
    TIMEOUT = "timeout"
    BUG = "bug"
    LOCK_LOST = "lock"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"
    CORRUPT = "corrupt"
    CONFIG = "config"
    CLOSED = "closed"

    @property
    def retryable(self) -> bool:
        """Whether retrying (with backoff) may help: the transient kinds."""
        return self in _RETRYABLE_KINDS


_RETRYABLE_KINDS = frozenset(
    {
        ProviderErrorKind.CONTENTION,
        ProviderErrorKind.CONNECTION,
        ProviderErrorKind.RESOURCES,
        ProviderErrorKind.TIMEOUT,
        ProviderErrorKind.BUG,
    }
)


def _as_kind(kind: ProviderErrorKind | str | None) -> ProviderErrorKind | None:
    if kind is None or isinstance(kind, ProviderErrorKind):
        return kind
    try:
        return ProviderErrorKind(kind)
    except ValueError:
        known = ", ".join(repr(k.value) for k in ProviderErrorKind)
        raise ValueError(f"unknown ProviderError kind {kind!r}; one of {known}") from None


class ProviderError(DuroxideError):
    """A storage operation failed. ``retryable`` errors (busy, locked, deadlock, connection loss) may be
    retried with backoff; permanent ones (bad or expired lock token, duplicate event, corruption) not.

    ``kind`` (a :class:`ProviderErrorKind`, or ``None``: not classified) says what went wrong, so callers
    need not read the message; ``retryable`` follows from it. A third-party provider may still pass
    ``retryable=`` alone (an unclassified error), a kind's string spelling (``kind="contention"``), or
    ``contention=True``; ``retryable`` given explicitly wins over the kind's default.
    """

    def __init__(
        self,
        operation: str,
        message: str,
        *,
        retryable: bool | None = None,
        kind: ProviderErrorKind | str | None = None,
        contention: bool = False,
    ) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.message = message
        resolved = ProviderErrorKind.CONTENTION if contention else _as_kind(kind)
        self.kind: ProviderErrorKind | None = resolved
        self.retryable: bool = (
            retryable if retryable is not None else (resolved.retryable if resolved is not None else False)
        )

    @property
    def contention(self) -> bool:
        """Expected lock contention (retried quietly): ``kind is ProviderErrorKind.CONTENTION``."""
        return self.kind is ProviderErrorKind.CONTENTION

    @classmethod
    def transient(
        cls, operation: str, message: str, *, kind: ProviderErrorKind | str | None = None
    ) -> ProviderError:
        """A retryable error (busy, locked, deadlock, lost connection); ``kind`` as documented above."""
        return cls(operation, message, retryable=True, kind=kind)

    @classmethod
    def permanent(
        cls, operation: str, message: str, *, kind: ProviderErrorKind | str | None = None
    ) -> ProviderError:
        """An error that retrying does not fix (bad or expired lock token, duplicate, corruption)."""
        return cls(operation, message, retryable=False, kind=kind)


def as_provider_error(operation: str, exc: BaseException) -> ProviderError:
    """``exc`` itself if it is a ``ProviderError``; anything else a provider raised is a bug of that
    provider, turned into a retryable error of kind ``"bug"`` (the runtime retries it with backoff and
    logs it, instead of stopping)."""
    if isinstance(exc, ProviderError):
        return exc
    error = ProviderError.transient(
        operation, f"the provider raised {type(exc).__name__}: {exc} (a bug of the provider; retrying)",
        kind=ProviderErrorKind.BUG,
    )
    error.__cause__ = exc
    return error


class InstanceAlreadyExists(ProviderError):
    """``start_orchestration`` for an instance id that already has an instance (or a pending start)."""

    def __init__(self, instance_id: str) -> None:
        super().__init__("start_orchestration", f"instance {instance_id!r} already exists", kind=ProviderErrorKind.CONFLICT)
        self.instance_id = instance_id


class InstanceNotFound(ProviderError):
    """The operation named an instance that does not exist."""

    def __init__(self, operation: str, instance_id: str) -> None:
        super().__init__(operation, f"instance {instance_id!r} not found", kind=ProviderErrorKind.NOT_FOUND)
        self.instance_id = instance_id


class InstanceStillRunning(ProviderError):
    """``delete_instance`` of a running instance without ``force``."""

    def __init__(self, operation: str, instance_id: str) -> None:
        super().__init__(
            operation, f"instance {instance_id!r} is still running (use force=True)", kind=ProviderErrorKind.CONFLICT
        )
        self.instance_id = instance_id


class CannotDeleteSubOrchestration(ProviderError):
    """``delete_instance`` of a sub-orchestration: delete its root instead."""

    def __init__(self, operation: str, instance_id: str, parent_id: str) -> None:
        super().__init__(
            operation,
            f"instance {instance_id!r} is a sub-orchestration of {parent_id!r}; delete the root instead",
            kind=ProviderErrorKind.CONFLICT,
        )
        self.instance_id = instance_id


# ---------------------------------------------------------------------------------------------------------
# Seen by orchestration code


class TaskFailed(DuroxideError):
    """A scheduled task failed; ``details`` says why."""

    def __init__(self, details: ErrorDetails) -> None:
        super().__init__(details.message)
        self.details = details


class ActivityFailed(TaskFailed):
    """An activity raised (or timed out, or was poisoned). Not to be confused with the history event
    ``history.ActivityFailedEvent`` that records it."""


class SubOrchestrationFailed(TaskFailed):
    """A sub-orchestration ended Failed."""


# ---------------------------------------------------------------------------------------------------------
# Client and payloads


class UnknownOrchestration(DuroxideError, ValueError):
    """``start_orchestration`` named an orchestration the client's registry does not have."""


class ManagementNotAvailable(DuroxideError, RuntimeError):
    """The provider has no management (``ProviderAdmin``) capability."""


class OrchestrationTimeout(DuroxideError, TimeoutError):
    """``Client.wait_for_orchestration`` gave up before the instance finished (a ``TimeoutError``)."""


class PayloadError(DuroxideError, TypeError):
    """A value could not be turned into JSON (or JSON into the annotated type)."""
