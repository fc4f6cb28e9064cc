"""PostgreSQL provider (psycopg 3 driven through anyio, so it runs under Trio and asyncio).

provider = await PostgresProvider.connect("postgresql://user@host/db", schema="duroxide")
async with provider, dt.open_runtime(provider, registry) as runtime:
    ...

Layout (private modules by job; this package's face is ``PostgresProvider``, ``PostgresFactory`` and
``drop_schema``): ``provider.py`` (the class, its lifecycle and its connection handling: the pool, one
round trip per operation, error mapping), ``_base`` (``PgBase``: what every job sees), ``_queues`` (the
orchestrator and worker queues), ``_history`` (history and status reads), ``_management``
(``ProviderAdmin``), ``_listener`` (LISTEN/NOTIFY wake-ups), ``_leases`` (process leases),
``_migrations`` (the schema and ``drop_schema``), ``_queries`` (the SQL text), ``_errors`` (SQLSTATE
classification), ``_testhooks`` (the validation suite's hooks, reached through
``PostgresFactory.test_hooks``), ``_factory``; ``_driver`` and ``_pool`` (psycopg on anyio).

The provider is **one class made of mixins by job** (``PostgresProvider(QueuesJob, HistoryJob,
ManagementJob, ListenerJob, LeasesJob)``, each a subclass of ``PgBase``, itself a ``ProviderKernel``):
every job runs its SQL through the same pool and round trip (``_exec``), so a job needs nothing but
``self``; per-job objects would each need that same connection handling handed in. What both providers
do the same way is in ``providers/_kernel.py``.
"""

from ._factory import PostgresFactory
from ._migrations import drop_schema
from .provider import PostgresProvider

__all__ = ["PostgresFactory", "PostgresProvider", "drop_schema"]
