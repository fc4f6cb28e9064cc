"""SQLite provider: stdlib ``sqlite3`` in WAL mode, one batch on the connection thread per operation.

One connection per provider, owned by it; its operations run on the provider's connection thread (started by
the first operation, ended by ``close()`` or after a second without work); every operation is one
function run there inside one transaction (``BEGIN IMMEDIATE`` for writes, so several processes on one
file serialise their writes and never double-process), the operations queued together sharing one
transaction. File and in-memory modes.
Schema changes are numbered migrations recorded in ``_duroxide_migrations``.

Layout (private modules by job; this package's face is ``SqliteProvider`` and ``SqliteFactory``):
``_executor`` (the connection and its group executor: ``SqliteBase``), ``_queues`` (the orchestrator and
worker queues), ``_history`` (history and status reads), ``_management`` (``ProviderAdmin``), ``_leases``
(process leases), ``_migrations`` (the schema), ``_errors`` (sqlite3 errors as ``ProviderError``),
``_testhooks`` (the validation suite's hooks, reached through ``SqliteFactory.test_hooks``), ``_factory``.

The provider is **one class made of mixins by job** (``SqliteProvider(QueuesJob, HistoryJob,
ManagementJob, LeasesJob)``, each a subclass of ``SqliteBase``, itself a ``ProviderKernel``): every job
runs its SQL through the one connection and executor in ``SqliteBase._run``, so a job needs nothing but
``self``; delegating to per-job objects would hand each of them the same executor and lose nothing but
indirection. What both providers do the same way is in ``providers/_kernel.py``.
"""

from ._factory import SqliteFactory
from ._provider import SqliteProvider

__all__ = ["SqliteFactory", "SqliteProvider"]
