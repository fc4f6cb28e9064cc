"""duroxide-trio: durable orchestrations for Python on Trio/anyio.

Orchestrations are ``async def`` functions replayed deterministically from a persisted history;
activities run at-least-once; state lives in a provider (SQLite embedded, PostgreSQL for scale-out).
"""

from .activity import ActivityContext, CancellationSignal
from .client import Client, OrchestrationState
from .errors import (
    ActivityFailed,
    DuroxideError,
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    ManagementNotAvailable,
    OrchestrationTimeout,
    PayloadError,
    ProviderError,
    ProviderErrorKind,
    SubOrchestrationFailed,
    TaskFailed,
    UnknownOrchestration,
)
from .history import ErrorDetails, Event, Status
from .orchestration.context import Backoff, DurableFuture, OrchestrationContext, RetryPolicy
from .orchestration.limits import (
    MAX_CUSTOM_STATUS_BYTES,
    MAX_HISTORY_BYTES,
    MAX_KV_KEYS,
    MAX_KV_VALUE_BYTES,
    MAX_NAME_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_TIMER_SECONDS,
    LimitExceeded,
)
from .providers.base import Provider, ProviderAdmin, ProviderFactory, TagFilter, VersionRange
from .providers.sqlite import SqliteFactory, SqliteProvider
from .registry import Registry
from .runtime import Runtime, RuntimeOptions, open_runtime

__version__ = "0.1.0"

__all__ = [
    "ActivityContext",
    "ActivityFailed",
    "Backoff",
    "CancellationSignal",
    "Client",
    "DuroxideError",
    "DurableFuture",
    "ErrorDetails",
    "Event",
    "InstanceAlreadyExists",
    "InstanceNotFound",
    "InstanceStillRunning",
    "LimitExceeded",
    "MAX_CUSTOM_STATUS_BYTES",
    "MAX_HISTORY_BYTES",
    "MAX_KV_KEYS",
    "MAX_KV_VALUE_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_TIMER_SECONDS",
    "ManagementNotAvailable",
    "OrchestrationContext",
    "OrchestrationState",
    "OrchestrationTimeout",
    "PayloadError",
    "PostgresFactory",
    "PostgresProvider",
    "Provider",
    "ProviderAdmin",
    "ProviderError",
    "ProviderErrorKind",
    "ProviderFactory",
    "Registry",
    "RetryPolicy",
    "Runtime",
    "RuntimeOptions",
    "SqliteFactory",
    "SqliteProvider",
    "Status",
    "TagFilter",
    "SubOrchestrationFailed",
    "TaskFailed",
    "UnknownOrchestration",
    "VersionRange",
    "open_runtime",
]


def __getattr__(name: str) -> object:  # PostgreSQL loads lazily so that SQLite users never import psycopg
    if name in ("PostgresProvider", "PostgresFactory"):
        from .providers import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module 'duroxide_trio' has no attribute {name!r}")
