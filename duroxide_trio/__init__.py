"""duroxide-trio: durable orchestrations for Python on Trio/anyio.

Orchestrations are ``async def`` functions replayed deterministically from a persisted history;
activities run at-least-once; state lives in a provider (SQLite embedded, PostgreSQL for scale-out).
"""

from .client import Client, ManagementNotAvailable, OrchestrationState, Status, UnknownOrchestration
from .history import ErrorDetails, Event
from .orchestration.context import (
    ActivityFailed,
    Backoff,
    DurableFuture,
    OrchestrationContext,
    RetryPolicy,
    SubOrchestrationFailed,
    TaskFailed,
)
from .orchestration.limits import (
    MAX_CUSTOM_STATUS_BYTES,
    MAX_HISTORY_BYTES,
    MAX_NAME_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_TIMER_SECONDS,
    LimitExceeded,
)
from .providers.base import (
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    Provider,
    ProviderAdmin,
    ProviderError,
    ProviderFactory,
)
from .providers.sqlite import SqliteFactory, SqliteProvider
from .registry import PayloadError, Registry
from .runtime.activities import ActivityContext
from .runtime.options import RuntimeOptions
from .runtime.runtime import Runtime, open_runtime

__version__ = "0.1.0"

__all__ = [
    "ActivityContext",
    "ActivityFailed",
    "Backoff",
    "Client",
    "DurableFuture",
    "ErrorDetails",
    "Event",
    "InstanceAlreadyExists",
    "InstanceNotFound",
    "InstanceStillRunning",
    "LimitExceeded",
    "MAX_CUSTOM_STATUS_BYTES",
    "MAX_HISTORY_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_TIMER_SECONDS",
    "ManagementNotAvailable",
    "OrchestrationContext",
    "OrchestrationState",
    "PayloadError",
    "PostgresFactory",
    "PostgresProvider",
    "Provider",
    "ProviderAdmin",
    "ProviderError",
    "ProviderFactory",
    "Registry",
    "RetryPolicy",
    "Runtime",
    "RuntimeOptions",
    "SqliteFactory",
    "SqliteProvider",
    "Status",
    "SubOrchestrationFailed",
    "TaskFailed",
    "UnknownOrchestration",
    "open_runtime",
]


def __getattr__(name: str) -> object:  # PostgreSQL loads lazily so that SQLite users never import psycopg
    if name in ("PostgresProvider", "PostgresFactory"):
        from .providers import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module 'duroxide_trio' has no attribute {name!r}")
