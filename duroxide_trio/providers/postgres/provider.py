"""PostgreSQL provider: psycopg 3 on anyio (Trio or asyncio), one server round trip per operation.

    provider = await PostgresProvider.connect(url, schema="duroxide", pool_max=10)
    async with provider, dt.open_runtime(provider, registry) as runtime:
        ...

Design (see ``migrations/0001_initial.sql`` for the server side):

- Everything lives in one schema (created on first connect), every identifier is quoted, and the schema
  is migrated by numbered ``migrations/NNNN_*.sql`` files, tracked in ``<schema>._duroxide_migrations``
  and applied under a transaction-level advisory lock keyed by the schema, so any number of processes
  starting at once migrate exactly once.
- Every hot operation (fetch-and-lock of an orchestration item, the turn ack, fetch and ack of work
  items, batch forms included, enqueues, abandons) is one call of a PL/pgSQL function: one round trip on
  an autocommit connection, prepared after first use. Time is always passed in as epoch milliseconds.
  Domain errors come back as custom SQLSTATEs (``DX001``...), never recognised by their text.
- Wake-ups: the committing functions ``pg_notify`` ONE channel per schema (``duroxide:<schema>``, see
  ``channel_name``) with small payloads: ``o``/``w`` (orchestrator/worker work visible now),
  ``o<ms>[,<ms>...]``/``w<ms>`` (visible at those epoch-ms: timers, delays), ``d<instance id>`` (instance
  Completed/Failed). ``async with provider`` runs ONE listener connection (its own, not from the pool)
  in a task group owned by that ``async with`` block (or an owner runs ``provider.run_listener`` in its
  own task group); it maps notifications from *other* processes onto ``provider.notifier`` (notify /
  notify_at / notify_instance); this provider's own commits notify in-process directly, so their echoes
  are ignored (recognised by the sending backend pid). If the listener connection drops it logs, backs
  off and reconnects; the runtime's fallback poll covers the gap. A provider used without a listener
  works the same, minus cross-process wake-ups.
- Errors are classified by SQLSTATE only (``classify_sqlstate``), never by their text, and carry
  ``ProviderError.kind``: connection exceptions (08), transaction rollback / deadlock (40), insufficient
  resources (53), operator intervention (57P0x), lock not available (55P03), a cancelled statement (57014)
  and ``0A000`` (cached plan invalidated by a concurrent migration) are retryable; data exceptions (22),
  program limits (54: a key too large to index), integrity (23), the DX codes and everything else are
  permanent, with a message saying what was invalid. Errors without a SQLSTATE (a lost connection, the
  pool) are connection problems. Integers beyond int64 (a timer far in the future) are refused before
  they are sent, naming the value. Reads are retried internally on transient errors; a pooled connection
  the server closed while it sat idle is detected before use and replaced.
- ``connect`` refuses a schema that is not a plain identifier (``ValueError`` naming it and the rule), a
  URL whose password libpq would misread (raw ``@``, ``/``, spaces), and reports a refused or unreachable
  server naming host:port/database, within ``connect_timeout``.
- The password of the URL never appears in ``repr``, error messages or log records: every message built
  from the URL or a driver's text goes through ``duroxide_trio._masking.redact``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import logging
import re
import select
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import anyio
import anyio.abc
import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..._masking import redact, url_password_problem, url_secrets
from ...history import (
    ActivityExecute,
    Event,
    HistoryDecodeError,
    StartOrchestration,
    WorkItem,
    decode_event,
    encode_event,
    encode_work_item,
)
from .._kernel import (
    ProviderKernel,
    TurnCommitted,
    TurnToCommit,
    decode_activity,
    decode_batch,
    ms,
)
from ..base import (
    WALL_CLOCK,
    CannotDeleteSubOrchestration,
    Clock,
    DeleteResult,
    ExecutionInfo,
    InstanceAlreadyExists,
    InstanceFilter,
    InstanceInfo,
    InstanceNotFound,
    InstanceStillRunning,
    Notifier,
    OrchestrationItem,
    ProviderCapabilities,
    ProviderError,
    ProviderErrorKind,
    PruneOptions,
    PruneResult,
    QueueDepths,
    SystemMetrics,
    WorkItemLease,
)
from ._driver import AnyioConnection, connect, mask_url
from ._pool import Pool, PoolClosed

__all__ = ["PostgresFactory", "PostgresProvider"]

logger = logging.getLogger("duroxide_trio.providers.postgres")

DEFAULT_SCHEMA = "duroxide"
MIGRATIONS_TABLE = "_duroxide_migrations"
_MIGRATION_FILE = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")

#: Rolled back for sure, so even a write is safe to re-run at once.
_RERUN_STATES = frozenset({"40001", "40P01"})
_INDEX_NAME = re.compile(r'index "([^"]+)"')


def classify_sqlstate(state: str | None) -> tuple[bool, ProviderErrorKind | None]:
    """``(retryable, kind)`` of a server error, by its SQLSTATE only (never by its text).

    Retryable: connection exceptions (class 08), transaction rollback (class 40: serialization failure,
    deadlock), insufficient resources (53), operator intervention (57P0x: admin shutdown, crash
    recovery), lock not available (55P03), a cancelled statement (57014, statement_timeout) and 0A000
    (a prepared statement made stale by a concurrent migration: another connection succeeds). Everything
    else is permanent: data exceptions (22), integrity (23), program limits (54), the project's own DX
    codes, syntax and the rest. ``None`` (no SQLSTATE: a client-side error) is decided by the caller."""
    if not state:
        return False, None
    cls = state[:2]
    if state == "55P03" or cls == "40":
        return True, ProviderErrorKind.CONTENTION
    if cls == "08" or state.startswith("57P0"):
        return True, ProviderErrorKind.CONNECTION
    if cls == "53":
        return True, ProviderErrorKind.RESOURCES
    if state == "57014":
        return True, ProviderErrorKind.TIMEOUT
    if state == "0A000":  # "cached plan must not change result type": a fresh connection fixes it
        return True, ProviderErrorKind.CONNECTION
    if cls in ("22", "54"):
        return False, ProviderErrorKind.INVALID
    if cls == "23":
        return False, ProviderErrorKind.CONFLICT
    if state in ("DX001", "DX002"):
        return False, ProviderErrorKind.LOCK_LOST
    if cls == "DX":
        return False, ProviderErrorKind.CONFLICT
    if cls in ("28", "3D", "42"):
        return False, ProviderErrorKind.CONFIG
    return False, None


def _too_large(message: str) -> str:
    """What a program-limit error (54000, e.g. an index row too large) was about, for the message."""
    m = _INDEX_NAME.search(message)
    index = f" (index {m.group(1)!r})" if m else ""
    return (
        f"a key is too large to store{index}: PostgreSQL indexes keys of at most about 2.7 KB, so an "
        "instance id (or an orchestration or activity name, a session id, an event name) is too long"
    )


_IDLE = pq.TransactionStatus.IDLE
_INTERNAL_RETRIES = 3


def _hash64(text: str) -> int:
    """A stable signed 64-bit integer for ``text`` (advisory-lock keys, seeds)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def channel_name(schema: str) -> str:
    """The NOTIFY channel of ``schema`` (at most 63 bytes, PostgreSQL's identifier limit)."""
    name = f"duroxide:{schema}"
    if len(name.encode()) > 63:
        name = "duroxide:" + hashlib.blake2b(schema.encode(), digest_size=16).hexdigest()
    return name


def _row_id(token: str) -> int | None:
    """Work-item tokens are ``'<row id>.<random>'``; None for anything else."""
    head, dot, _ = token.partition(".")
    if not dot or not head.isdigit() or len(head) > 18:
        return None
    return int(head)


def _load_migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, sql)`` of the embedded migrations, in order."""
    folder = importlib.resources.files(__package__) / "migrations"
    out = []
    for entry in folder.iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m is not None:
            out.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if not out or len(set(versions)) != len(versions):
        raise RuntimeError(f"bad migration set in {folder}: {[n for _, n, _ in out]}")
    return out


def _connection_dead(conn: AnyioConnection[Any]) -> bool:
    """True if an idle pooled connection was closed by the server (terminated backend, restart): the
    server's goodbye is already waiting in the socket. Costs one non-blocking poll."""
    if conn.closed or conn.broken:
        return True
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(0):
                return False
        else:  # pragma: no cover - Windows
            readable, _, _ = select.select([fd], [], [], 0)
            if not readable:
                return False
        conn.pgconn.consume_input()
    except (OSError, psycopg.Error):
        return True
    while conn.pgconn.notifies() is not None:  # nothing listens on pool connections; drop strays
        pass
    return conn.pgconn.status != pq.ConnStatus.OK or conn.pgconn.transaction_status != _IDLE


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def check_schema_name(schema: object) -> None:
    """Refuse a schema name that is not a plain identifier: ``ValueError`` naming it and the rule."""
    rule = (
        "a PostgreSQL schema name must be 1 to 63 bytes of ASCII letters, digits, '_' or '-', start "
        "with a letter or '_', and not start with 'pg_'"
    )
    if not isinstance(schema, str):
        raise ValueError(f"schema must be a string, not {schema!r}; {rule}")
    if not schema:
        raise ValueError(f"schema {schema!r} is empty; {rule}")
    if len(schema.encode()) > 63:
        raise ValueError(f"schema {schema!r} is {len(schema.encode())} bytes long; {rule}")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema {schema!r} contains characters that are not allowed; {rule}")
    if schema.lower().startswith("pg_"):
        raise ValueError(f"schema {schema!r} uses the prefix reserved by PostgreSQL; {rule}")


def _where(params: dict[str, Any]) -> str:
    """``host:port/database`` of a connection (libpq defaults where unset); never the password."""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "")
    user = params.get("user")
    text = f"{host}:{port}/{dbname}"
    return f"{text} (user {user!r})" if user else text


#: How a server that refuses a connection says why (libpq gives no SQLSTATE for connection failures).
_REFUSED_FOR_GOOD = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "no password supplied",
    "password is required",
    "not permitted to log in",
    "invalid",
)


def _connect_error(
    ex: psycopg.Error, where: str, masked: str, schema: str, secrets: Sequence[str]
) -> ProviderError:
    """The error of a failed connect or migration: names host:port/database, never the password, and
    says whether trying again can help."""
    state = ex.sqlstate or ""
    raw = (ex.diag.message_primary if state else None) or str(ex) or type(ex).__name__
    reason = " ".join(redact(raw, secrets=secrets).split())
    reason = reason.removeprefix("connection failed: ")
    if state:  # the connection worked: creating or migrating the schema failed
        retryable, kind = classify_sqlstate(state)
        return ProviderError(
            "connect",
            f"connected to {where}, but creating/migrating schema {schema!r} failed: {reason} "
            f"(SQLSTATE {state})",
            retryable=retryable,
            kind=kind,
        )
    if isinstance(ex, psycopg.OperationalError):
        fatal = "FATAL:" in raw
        lowered = raw.lower()
        if fatal and any(w in lowered for w in _REFUSED_FOR_GOOD):
            return ProviderError.permanent(
                "connect",
                f"the server at {where} refused the connection: {reason} (check the user, password and "
                "database name of the URL)",
                kind=ProviderErrorKind.CONFIG,
            )
        return ProviderError.transient(
            "connect", f"cannot connect to {where}: {reason}", kind=ProviderErrorKind.CONNECTION
        )
    return ProviderError.permanent("connect", f"cannot connect to {where}: {reason}", kind=ProviderErrorKind.CONFIG)


class _StaleConnection(Exception):
    pass


class _Queries:
    """Every statement the provider sends, built once for one (quoted) schema."""

    def __init__(self, s: str) -> None:
        self.fetch_orch = f"SELECT * FROM {s}.fetch_orchestration_item(%s, %s, %s)"
        self.ack_orch = (
            f"SELECT * FROM {s}.ack_orchestration_item(%s, %s, %s, "
            "%b::bigint[], %b::text[], %b::text[], "
            "%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[], "
            "%b::text[], %b::text[], %b::boolean[], %b::bigint[], "
            "%b::text[], %b::bigint[], %b::bigint[], "
            "%s, %s, %s, %s, %s, %s, %s)"
        )
        self.abandon_orch = f"SELECT {s}.abandon_orchestration_item(%s, %s, %s, %s)"
        self.renew_orch = (
            f"UPDATE {s}.instance_locks SET locked_until = %s WHERE lock_token = %s AND locked_until > %s"
        )
        self.enqueue_orch = f"SELECT {s}.enqueue_orchestrator(%s, %s, %s, %s, %s)"
        self.enqueue_start = f"SELECT {s}.enqueue_start(%s, %s, %s)"
        self.enqueue_worker = f"SELECT {s}.enqueue_worker(%s, %s, %s, %s, %s, %s, %s)"
        self.fetch_work = f"SELECT * FROM {s}.fetch_work_items(%s, %s, %s::integer, %s)"
        self.ack_work = f"SELECT {s}.ack_work_items(%s, %b::bigint[], %b::text[], %b::text[], %b::text[])"
        self.renew_work = (
            f"UPDATE {s}.worker_queue SET locked_until = %s, visible_at = %s "
            "WHERE id = %s AND lock_token = %s AND locked_until > %s"
        )
        self.abandon_work = f"SELECT {s}.abandon_work_item(%s, %s, %s, %s, %s)"
        self.drop_work = f"DELETE FROM {s}.worker_queue WHERE id = ANY(%b::bigint[])"
        self.read = (
            f"SELECT h.event_data FROM {s}.history h WHERE h.instance_id = %(id)s AND h.execution_id = "
            f"COALESCE((SELECT i.current_execution_id FROM {s}.instances i WHERE i.instance_id = %(id)s), "
            f"(SELECT max(x.execution_id) FROM {s}.history x WHERE x.instance_id = %(id)s)) "
            "ORDER BY h.event_id"
        )
        self.read_execution = f"SELECT event_data FROM {s}.history WHERE instance_id = %s AND execution_id = %s ORDER BY event_id"
        self.instance_exists = (
            f"SELECT 1 FROM {s}.instances WHERE instance_id = %s "
            f"UNION ALL SELECT 1 FROM {s}.orchestrator_queue WHERE instance_id = %s AND is_start LIMIT 1"
        )
        self.append = (
            f"INSERT INTO {s}.history (instance_id, execution_id, event_id, event_type, event_data) "
            "SELECT %s, %s, u.i, u.t, u.d FROM unnest(%b::bigint[], %b::text[], %b::text[]) AS u(i, t, d)"
        )
        self.instance_info = (
            "SELECT i.name, i.version, i.current_execution_id, COALESCE(e.status, 'Running'), e.output, "
            "i.custom_status, i.custom_status_version, i.created_at, i.updated_at, i.parent_instance_id "
            f"FROM {s}.instances i LEFT JOIN {s}.executions e "
            "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id "
            "WHERE i.instance_id = %s"
        )
        self.custom_status = (
            f"SELECT custom_status, custom_status_version FROM {s}.instances WHERE instance_id = %s"
        )
        self.list_instances = f"SELECT instance_id FROM {s}.instances ORDER BY created_at DESC, seq DESC"
        self.list_instances_by_status = (
            f"SELECT i.instance_id FROM {s}.instances i JOIN {s}.executions e "
            "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id "
            "WHERE e.status = %s ORDER BY i.created_at DESC, i.seq DESC"
        )
        self.list_executions = (
            f"SELECT execution_id FROM {s}.executions WHERE instance_id = %s ORDER BY execution_id"
        )
        self.execution_info = (
            "SELECT e.status, e.output, e.started_at, e.completed_at, "
            f"(SELECT count(*) FROM {s}.history h WHERE h.instance_id = e.instance_id "
            "AND h.execution_id = e.execution_id) "
            f"FROM {s}.executions e WHERE e.instance_id = %s AND e.execution_id = %s"
        )
        self.metrics = (
            f"SELECT (SELECT count(*) FROM {s}.instances), (SELECT count(*) FROM {s}.executions), "
            f"(SELECT count(*) FROM {s}.history), "
            "count(*) FILTER (WHERE e.status IN ('Running', 'ContinuedAsNew')), "
            "count(*) FILTER (WHERE e.status = 'Completed'), count(*) FILTER (WHERE e.status = 'Failed') "
            f"FROM {s}.instances i JOIN {s}.executions e "
            "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id"
        )
        self.queue_depths = (
            f"SELECT (SELECT count(*) FROM {s}.orchestrator_queue q WHERE NOT EXISTS ("
            f"SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > %(now)s)), "
            f"(SELECT count(*) FROM {s}.worker_queue WHERE lock_token IS NULL OR locked_until <= %(now)s), "
            f"(SELECT min(q.visible_at) FROM {s}.orchestrator_queue q WHERE q.visible_at <= %(now)s AND NOT EXISTS ("
            f"SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > %(now)s)), "
            f"(SELECT min(visible_at) FROM {s}.worker_queue WHERE visible_at <= %(now)s AND "
            "(lock_token IS NULL OR locked_until <= %(now)s))"
        )
        self.children = (
            f"SELECT instance_id FROM {s}.instances WHERE parent_instance_id = %s ORDER BY created_at, seq"
        )
        self.parent = f"SELECT parent_instance_id FROM {s}.instances WHERE instance_id = %s"
        self.tree = (
            f"SELECT {s}.instance_tree(%(id)s) WHERE EXISTS "
            f"(SELECT 1 FROM {s}.instances WHERE instance_id = %(id)s)"
        )
        self.delete_instance = f"SELECT * FROM {s}.delete_instance(%s, %s)"
        self.delete_instances = f"SELECT * FROM {s}.delete_instances(%b::text[], %s)"
        self.delete_bulk = f"SELECT * FROM {s}.delete_instance_bulk(%b::text[], %s::bigint, %s::integer)"
        self.prune = f"SELECT * FROM {s}.prune_executions(%s, %s::integer, %s::bigint)"
        self.prune_bulk = (
            f"SELECT * FROM {s}.prune_executions_bulk(%b::text[], %s::integer, %s::integer, %s::bigint)"
        )
        self.corrupt = f"UPDATE {s}.history SET event_data = '{{not json' WHERE instance_id = %s"
        self.max_attempt = f"SELECT max(attempt_count) FROM {s}.orchestrator_queue WHERE instance_id = %s"


Fetch = Literal["none", "one", "all", "rowcount"]


class PostgresProvider(ProviderKernel):
    """Durable state in a PostgreSQL schema. Create with ``await PostgresProvider.connect(url)``; run it
    with ``async with provider:`` (which also owns the LISTEN connection for cross-process wake-ups)."""

    #: Batch work items, the LISTEN listener and process leases (no work outlook: tests' virtual time
    #: runs on SQLite).
    capabilities = ProviderCapabilities(batch_work_items=True, listener=True, process_leases=True)

    def __init__(
        self,
        *,
        url: str,
        schema: str,
        quoted_schema: str,
        pool: Pool,
        command_timeout: float,
        connect_timeout: float,
        listen_conninfo: str,
        prepare: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.clock: Clock = clock or WALL_CLOCK  # the time of locks, visibility and timers (sent as parameters)
        self._url = url
        self._prepare = prepare
        self._schema = schema
        self._pool = pool
        self._q = _Queries(quoted_schema)
        self._channel = channel_name(schema)
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._listen_conninfo = listen_conninfo
        self._secrets = url_secrets(url)
        self._own: dict[int, AnyioConnection[Any]] = {}  # backend pid -> pool connection
        self._closed = False
        self._entered = 0
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._listener_scopes: set[anyio.CancelScope] = set()
        self._listener_pid: int | None = None
        self.notifier = Notifier(self.clock)

    # lifecycle -------------------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_max: int | None = None,
        connect_timeout: float = 10.0,
        acquire_timeout: float = 30.0,
        command_timeout: float = 30.0,
        application_name: str | None = None,
        prepared_statements: bool = True,
        create_schema: bool = True,
        clock: Clock | None = None,
    ) -> PostgresProvider:
        """Connect to ``url`` (a ``postgresql://`` URL or a libpq conninfo), create and migrate ``schema``
        if needed, and return the provider.

        Args:
            url: where to connect; a password in it never appears in messages.
            schema: the schema holding this provider's tables (one schema per provider).
            pool_max: pooled connections (default: env ``DUROXIDE_PG_POOL_MAX``, else 10); one more is
                used for LISTEN while the provider runs as ``async with provider:``.
            connect_timeout: bounds each connection attempt; ``acquire_timeout`` the wait for a pooled
                connection; ``command_timeout`` every provider operation.
            application_name: shown in ``pg_stat_activity`` (default ``duroxide-trio:<schema>``).
            prepared_statements: ``False`` for PgBouncer in transaction mode.
            create_schema: create the schema when it does not exist. With ``False`` a missing schema is
                an error and nothing is created (what read-only tools such as ``duroxide-trio
                instances`` use); pending migrations of an existing schema are still applied.

        Returns:
            The provider; use it as ``async with provider:`` or call ``close()``.

        Raises:
            ValueError: ``schema`` is not a valid name.
            ProviderError: operation ``"connect"``: a bad connection string, the server cannot be
                reached (retryable), the connection timed out (retryable), or ``schema`` does not exist
                and ``create_schema`` is false (permanent; the message names the schema).
        """
        check_schema_name(schema)
        masked = mask_url(url)
        secrets = url_secrets(url)
        problem = url_password_problem(url)
        if problem is not None:
            raise ProviderError.permanent(
                "connect", f"malformed connection URL {masked}: {problem}", kind=ProviderErrorKind.CONFIG
            )
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as ex:
            reason = redact(ex, secrets=secrets).strip()
            raise ProviderError.permanent(
                "connect", f"bad connection string {masked}: {reason}", kind=ProviderErrorKind.CONFIG
            ) from None
        where = _where(params)
        extra: dict[str, Any] = {}
        if "application_name" not in params:
            extra["application_name"] = (application_name or f"duroxide-trio:{schema}")[:63]
        pool_conninfo = make_conninfo(url, **extra)
        listen_extra = dict(extra)
        if "application_name" in listen_extra:
            listen_extra["application_name"] = (str(listen_extra["application_name"])[:56] + ":listen")[:63]
        listen_extra.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
        listen_conninfo = make_conninfo(url, **listen_extra)

        holder: list[PostgresProvider] = []

        async def configure(conn: AnyioConnection[Any]) -> None:
            if not prepared_statements:
                conn.prepare_threshold = None
            if holder:
                holder[0]._remember(conn)

        pool = Pool(
            pool_conninfo,
            max_size=pool_max,
            acquire_timeout=acquire_timeout,
            connect_timeout=connect_timeout,
            configure=configure,
            autocommit=True,
        )
        try:
            with anyio.fail_after(max(command_timeout, connect_timeout) + 60):
                async with pool.connection() as conn:
                    quoted = sql.Identifier(schema).as_string(conn)
                    if not create_schema:
                        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
                        if await cur.fetchone() is None:
                            raise ProviderError.permanent(
                                "connect", f"schema {schema!r} does not exist in {masked}", kind=ProviderErrorKind.CONFIG
                            )
                    await _migrate(conn, schema, quoted)
                    first = conn
        except BaseException as ex:
            with anyio.CancelScope(shield=True):
                await pool.close()
            if isinstance(ex, TimeoutError):
                raise ProviderError.transient(
                    "connect", f"connecting to {where} ({masked}) timed out", kind=ProviderErrorKind.TIMEOUT
                ) from None
            if isinstance(ex, psycopg.Error):
                raise _connect_error(ex, where, masked, schema, secrets) from None
            raise
        provider = cls(
            url=url,
            schema=schema,
            quoted_schema=quoted,
            pool=pool,
            command_timeout=command_timeout,
            connect_timeout=connect_timeout,
            listen_conninfo=listen_conninfo,
            prepare=prepared_statements,
            clock=clock,
        )
        provider._remember(first)
        holder.append(provider)
        logger.debug("connected to %s, schema %r", masked, schema)
        return provider

    @property
    def name(self) -> str:
        """``"postgres"``."""
        return "postgres"

    @property
    def schema(self) -> str:
        """The schema this provider's tables live in."""
        return self._schema

    @property
    def url(self) -> str:
        """The connection URL with its password masked."""
        return mask_url(self._url)

    @property
    def channel(self) -> str:
        """The NOTIFY channel this provider's schema uses."""
        return self._channel

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (only inside ``async with provider``)."""
        return self._listener_pid is not None

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"PostgresProvider({mask_url(self._url)!r}, schema={self._schema!r}){state}"

    async def __aenter__(self) -> PostgresProvider:
        """Start the LISTEN task (owned by this ``async with`` block) and return the provider."""
        if self._closed:
            raise ProviderError.permanent("open", "provider is closed", kind=ProviderErrorKind.CLOSED)
        self._entered += 1
        if self._entered > 1:
            return self
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(self.run_listener)
        except BaseException:
            self._entered -= 1
            await stack.__aexit__(None, None, None)
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._entered -= 1
        if self._entered > 0:
            return
        try:
            await self.close()  # cancels the listener
        finally:
            stack, self._exit_stack = self._exit_stack, None
            if stack is not None:
                # The body's exception is not handed to the task group: it propagates unchanged (not
                # wrapped in an ExceptionGroup). The task group only waits for the cancelled listener.
                await stack.__aexit__(None, None, None)

    async def close(self) -> None:
        """Stop listening and close the pool (idempotent). Operations afterwards raise ProviderError."""
        if self._closed:
            return
        self._closed = True
        for scope in list(self._listener_scopes):
            scope.cancel()
        with anyio.CancelScope(shield=True):
            if self._lease_conn is not None:  # the process lease dies with its connection
                lease, self._lease_conn = self._lease_conn, None
                with contextlib.suppress(Exception):
                    await lease.close()
            await self._pool.close()

    # plumbing --------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        """``text`` with every form of the URL's password masked (see ``duroxide_trio._masking``)."""
        return redact(text, secrets=self._secrets)

    def _error(self, op: str, ex: psycopg.Error) -> ProviderError:
        """Map a psycopg error to a ProviderError: typed where the function raised a DX SQLSTATE, else
        classified by SQLSTATE (``classify_sqlstate``); only errors without one (the client side: a
        lost connection, the pool) are classified by their exception class."""
        state = ex.sqlstate or ""
        diag = ex.diag
        message = self._scrub(diag.message_primary or str(ex) or type(ex).__name__)
        detail = diag.message_detail or ""
        if state == "DX003":
            return InstanceAlreadyExists(detail)
        if state == "DX004":
            return InstanceNotFound(op, detail)
        if state == "DX005":
            return InstanceStillRunning(op, detail)
        if state == "DX006":
            return CannotDeleteSubOrchestration(op, detail, diag.message_hint or "")
        if isinstance(ex, PoolClosed):
            return ProviderError.permanent(op, "provider is closed", kind=ProviderErrorKind.CLOSED)
        if state:
            retryable, kind = classify_sqlstate(state)
            if state.startswith("54"):
                text = f"{_too_large(message)} (server: {message}; SQLSTATE {state})"
            elif state.startswith("22"):
                text = f"invalid value: {message} (SQLSTATE {state})"
            elif state == "23505":
                text = f"duplicate: {message} (SQLSTATE {state})"
            else:
                text = f"{message} (SQLSTATE {state})"
            return ProviderError(op, text, retryable=retryable, kind=kind)
        if isinstance(ex, (psycopg.OperationalError, psycopg.InterfaceError)):
            return ProviderError.transient(op, f"connection problem: {message}", kind=ProviderErrorKind.CONNECTION)
        if isinstance(ex, psycopg.DataError):
            return ProviderError.permanent(op, f"invalid value: {message}", kind=ProviderErrorKind.INVALID)
        return ProviderError.permanent(op, f"{message} ({type(ex).__name__})")

    async def _exec(
        self,
        op: str,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None,
        fetch: Fetch,
        *,
        idempotent: bool = False,
    ) -> Any:
        """Run one statement on a pooled autocommit connection: one round trip.

        Retried here: a connection found dead before use (always safe), a deadlock or serialisation
        failure (rolled back), and, for ``idempotent`` operations, any transient error."""
        if self._closed:
            raise ProviderError.permanent(op, "provider is closed", kind=ProviderErrorKind.CLOSED)
        attempt = 0
        while True:
            attempt += 1
            try:
                with anyio.fail_after(self._command_timeout):
                    async with self._pool.connection() as conn:
                        if _connection_dead(conn):
                            await conn.close()  # the pool discards it
                            raise _StaleConnection
                        try:
                            cur = await conn.execute(query, params, prepare=self._prepare)
                        except psycopg.errors.FeatureNotSupported:
                            # 0A000, e.g. "cached plan must not change result type" after a migration
                            # redefined a function: this connection's prepared statements are stale.
                            await conn.close()
                            raise _StaleConnection from None
                        if fetch == "one":
                            return await cur.fetchone()
                        if fetch == "all":
                            return await cur.fetchall()
                        if fetch == "rowcount":
                            return cur.rowcount
                        return None
            except _StaleConnection:
                if attempt <= self._pool.max_size + 1:
                    continue
                raise ProviderError.transient(
                    op, "no live database connection (server restarting?)", kind=ProviderErrorKind.CONNECTION
                ) from None
            except TimeoutError:
                raise ProviderError.transient(
                    op, f"timed out after {self._command_timeout:g} s", kind=ProviderErrorKind.TIMEOUT
                ) from None
            except psycopg.Error as ex:
                error = self._error(op, ex)
                if error.retryable and not self._closed:
                    if (ex.sqlstate or "") in _RERUN_STATES:
                        limit = _INTERNAL_RETRIES
                    elif idempotent:  # e.g. every pooled connection was cut at once: try each, then a new one
                        limit = self._pool.max_size + _INTERNAL_RETRIES
                    else:
                        limit = 0
                    if attempt < limit:
                        logger.debug("%s: retrying after %s", op, error)
                        await anyio.sleep(0.002 * attempt)
                        continue
                raise error from None

    async def _one(self, op: str, query: str, params: Any, *, idempotent: bool = False) -> Any:
        return await self._exec(op, query, params, "one", idempotent=idempotent)

    async def _all(self, op: str, query: str, params: Any, *, idempotent: bool = False) -> list[Any]:
        rows: list[Any] = await self._exec(op, query, params, "all", idempotent=idempotent)
        return rows

    def _remember(self, conn: AnyioConnection[Any]) -> None:
        """Note a pool connection's backend pid: NOTIFYs it sends are our own commits."""
        if len(self._own) > 4 * self._pool.max_size:
            self._own = {pid: c for pid, c in self._own.items() if not c.closed}
        self._own[conn.info.backend_pid] = conn

    # LISTEN ----------------------------------------------------------------------------------------
    async def run_listener(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the LISTEN connection and map notifications from other processes onto ``self.notifier``,
        until the provider closes or the caller's scope is cancelled.

        ``async with provider`` runs this in a task group it owns; an owner with its own task group may
        run it instead (``await tg.start(provider.run_listener)``). With ``tg.start`` it reports started
        once listening (or after the first failure: polling works meanwhile). If the connection drops it
        logs, backs off (0.1 s doubling to 5 s) and reconnects, then wakes every waiter once, since
        notifications may have been missed. Returns at once if a listener already runs."""
        if self._closed or self._listener_scopes:
            task_status.started()
            return
        started = False
        delay = 0.1
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        with anyio.CancelScope() as scope:
            self._listener_scopes.add(scope)
            try:
                while True:
                    conn: AnyioConnection[Any] | None = None
                    try:
                        conn = await connect(
                            self._listen_conninfo, connect_timeout=self._connect_timeout, autocommit=True
                        )
                        with anyio.fail_after(self._command_timeout):
                            await conn.execute(listen)
                        self._listener_pid = conn.info.backend_pid
                        if started:
                            logger.info("LISTEN connection to %s re-established", mask_url(self._url))
                            self.notifier.notify_all()  # notifications may have been missed meanwhile
                        else:
                            started = True
                            task_status.started()
                        delay = 0.1
                        async with contextlib.aclosing(conn.notifies()) as notifications:
                            async for notification in notifications:
                                self._on_notify(notification)
                    except Exception as ex:
                        message = self._scrub(str(ex)) or type(ex).__name__
                        logger.warning(
                            "LISTEN connection to %s (schema %r) failed: %s; reconnecting in %.1f s",
                            mask_url(self._url),
                            self._schema,
                            message,
                            delay,
                        )
                    finally:
                        self._listener_pid = None
                        if conn is not None:
                            with anyio.CancelScope(shield=True):
                                with contextlib.suppress(Exception):
                                    await conn.close()
                    if not started:
                        started = True
                        task_status.started()
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            finally:
                self._listener_scopes.discard(scope)

    def _on_notify(self, notification: psycopg.Notify) -> None:
        own = self._own.get(notification.pid)
        if own is not None and not own.closed:
            return  # our own commit: already notified in-process
        payload = notification.payload
        if not payload:
            return
        kind, rest = payload[0], payload[1:]
        if kind == "d":
            self.notifier.notify_instance(rest)
            return
        key = "orchestrator" if kind == "o" else "worker" if kind == "w" else None
        if key is None:
            return
        if not rest:
            self.notifier.notify(key)
            return
        now = self.clock.now_ms()
        for part in rest.split(","):
            try:
                at = int(part)
            except ValueError:
                continue
            if at <= now:
                self.notifier.notify(key)
            else:
                self.notifier.notify_at(key, at)

    # orchestrator queue ----------------------------------------------------------------------------
    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0
    ) -> OrchestrationItem | None:
        token = self._new_token()
        async with self._releasing_unseen_claim("orchestrator", token):
            row = await self._one(
                "fetch_orchestration_item", self._q.fetch_orch, (self.clock.now_ms(), ms(lock_timeout), token)
            )
        (
            instance_id,
            name,
            version,
            execution_id,
            has_instance,
            texts,
            attempt,
            history_texts,
            next_visible,
        ) = row
        if instance_id is None:
            if next_visible is not None:
                self.notifier.notify_at("orchestrator", next_visible)
            return None
        return decode_batch(
            instance_id=instance_id,
            lock_token=token,
            attempt_count=attempt,
            message_texts=texts,
            has_instance=bool(has_instance),
            name=name,
            version=version,
            execution_id=execution_id,
            history_texts=history_texts or (),
        )

    async def _commit_turn(self, commit: TurnToCommit) -> TurnCommitted:
        lock_token, execution_id, turn = commit.lock_token, commit.execution_id, commit.turn
        metadata, cancelled_activities = commit.metadata, commit.cancelled_activities
        now = turn.now
        orch_visible = [o.visible(now) for o in turn.orchestrator]
        params = (
            lock_token,
            now,
            execution_id,
            turn.event_ids,
            turn.event_types,
            turn.event_texts,
            [w.text for w in turn.workers],
            [w.instance for w in turn.workers],
            [w.execution_id for w in turn.workers],
            [w.activity_id for w in turn.workers],
            [w.session_id for w in turn.workers],
            [w.tag for w in turn.workers],
            [o.target for o in turn.orchestrator],
            [o.text for o in turn.orchestrator],
            [o.start for o in turn.orchestrator],
            orch_visible,
            [c.instance_id for c in cancelled_activities],
            [c.execution_id for c in cancelled_activities],
            [c.activity_id for c in cancelled_activities],
            metadata.orchestration_name,
            metadata.orchestration_version,
            metadata.parent_instance_id,
            metadata.status,
            metadata.output,
            turn.custom_status_changed,
            turn.custom_status,
        )
        instance_id, wake = await self._one("ack_orchestration_item", self._q.ack_orch, params)
        return TurnCommitted(instance_id, bool(wake), [at for at in orch_visible if at > now])

    async def abandon_orchestration_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        row = await self._one(
            "abandon_orchestration_item",
            self._q.abandon_orch,
            (lock_token, self.clock.now_ms(), ms(delay), ignore_attempt),
        )
        if row[0] is not None:
            self.notifier.notify_at("orchestrator", row[0])
        else:
            self.notifier.notify("orchestrator")

    async def renew_orchestration_item_lock(self, lock_token: str, extend_for: float) -> None:
        now = self.clock.now_ms()
        count = await self._exec(
            "renew_orchestration_item_lock",
            self._q.renew_orch,
            (now + ms(extend_for), lock_token, now),
            "rowcount",
            idempotent=True,
        )
        if count == 0:
            raise ProviderError.permanent(
                "renew_orchestration_item_lock", "lock token invalid or lock already expired", kind=ProviderErrorKind.LOCK_LOST
            )

    async def _insert_orchestrator_message(self, target: str, text: str, start: bool, visible: int, now: int) -> None:
        await self._exec(
            "enqueue_for_orchestrator", self._q.enqueue_orch, (target, text, start, visible, now), "none"
        )

    async def enqueue_start(self, item: StartOrchestration) -> None:
        await self._exec(
            "enqueue_start", self._q.enqueue_start, (item.instance, encode_work_item(item), self.clock.now_ms()), "none"
        )
        self.notifier.notify("orchestrator")

    # history ---------------------------------------------------------------------------------------
    async def read(self, instance_id: str) -> list[Event]:
        rows = await self._all("read", self._q.read, {"id": instance_id}, idempotent=True)
        return self._decode_history("read", rows)

    async def read_with_execution(self, instance_id: str, execution_id: int) -> list[Event]:
        rows = await self._all(
            "read_with_execution", self._q.read_execution, (instance_id, execution_id), idempotent=True
        )
        return self._decode_history("read_with_execution", rows)

    def _decode_history(self, op: str, rows: list[Any]) -> list[Event]:
        try:
            return [decode_event(r[0]) for r in rows]
        except HistoryDecodeError as exc:
            raise ProviderError.permanent(op, str(exc), kind=ProviderErrorKind.CORRUPT) from None

    async def append_with_execution(
        self, instance_id: str, execution_id: int, events: Sequence[Event]
    ) -> None:
        await self._exec(
            "append_with_execution",
            self._q.append,
            (
                instance_id,
                execution_id,
                [e.event_id for e in events],
                [e.type_name for e in events],
                [encode_event(e) for e in events],
            ),
            "none",
        )

    # worker queue ----------------------------------------------------------------------------------
    async def enqueue_for_worker(self, item: ActivityExecute) -> None:
        await self._exec(
            "enqueue_for_worker",
            self._q.enqueue_worker,
            (
                encode_work_item(item),
                item.instance,
                item.execution_id,
                item.id,
                item.session_id,
                item.tag,
                self.clock.now_ms(),
            ),
            "none",
        )
        self.notifier.notify("worker")

    async def fetch_work_items(
        self, lock_timeout: float, max_items: int, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        """Lock up to ``max_items`` visible work items in one round trip (each gets its own token)."""
        salt = self._new_token()
        async with self._releasing_unseen_claim("worker", salt):
            rows = await self._all(
                "fetch_work_item",
                self._q.fetch_work,
                (self.clock.now_ms(), ms(lock_timeout), max(1, int(max_items)), salt),
            )
        found: list[tuple[int, WorkItemLease]] = []
        bad: list[tuple[int, str]] = []
        for row_id, token, text, attempts, next_visible in rows:
            if row_id is None:
                if next_visible is not None:
                    self.notifier.notify_at("worker", next_visible)
                continue
            try:
                item = decode_activity(text)
            except HistoryDecodeError as exc:
                bad.append((row_id, str(exc)))
                continue
            found.append((row_id, WorkItemLease(item=item, lock_token=token, attempt_count=attempts)))
        if bad:
            # An undecodable row can never run: drop it rather than loop on it forever.
            logger.error("dropping undecodable work items: %s", [m for _, m in bad])
            with contextlib.suppress(ProviderError):
                await self._exec("fetch_work_item", self._q.drop_work, ([i for i, _ in bad],), "none")
        found.sort(key=lambda pair: pair[0])
        return [lease for _, lease in found]

    async def ack_work_items(
        self, entries: Sequence[tuple[str, WorkItem | None]]
    ) -> list[ProviderError | None]:
        """Ack several work items in one round trip; one result per entry (``None`` = acked)."""

        def lost() -> ProviderError:
            return ProviderError.permanent(
                "ack_work_item",
                "lock token invalid or expired (the activity was cancelled or its lock lost)",
                kind=ProviderErrorKind.LOCK_LOST,
            )

        results: list[ProviderError | None] = [None] * len(entries)
        positions: list[int] = []
        ids: list[int] = []
        tokens: list[str] = []
        items: list[str | None] = []
        targets: list[str | None] = []
        seen: set[int] = set()
        for k, (token, completion) in enumerate(entries):
            row_id = _row_id(token) if isinstance(token, str) else None
            if row_id is None or row_id in seen:
                results[k] = lost()
                continue
            seen.add(row_id)
            positions.append(k)
            ids.append(row_id)
            tokens.append(token)
            items.append(encode_work_item(completion) if completion is not None else None)
            targets.append(completion.target_instance if completion is not None else None)
        if not ids:
            return results
        row = await self._one("ack_work_item", self._q.ack_work, (self.clock.now_ms(), ids, tokens, items, targets))
        enqueued = False
        for k, ok, item in zip(positions, row[0], items, strict=True):
            if ok:
                enqueued = enqueued or item is not None
            else:
                results[k] = lost()
        if enqueued:
            self.notifier.notify("orchestrator")
        return results

    async def renew_work_item_lock(self, lock_token: str, extend_for: float) -> None:
        row_id = _row_id(lock_token)
        count = 0
        if row_id is not None:
            now = self.clock.now_ms()
            until = now + ms(extend_for)
            count = await self._exec(
                "renew_work_item_lock",
                self._q.renew_work,
                (until, until, row_id, lock_token, now),
                "rowcount",
                idempotent=True,
            )
        if count == 0:
            raise ProviderError.permanent(
                "renew_work_item_lock", "lock token invalid or expired", kind=ProviderErrorKind.LOCK_LOST
            )

    async def abandon_work_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        row_id = _row_id(lock_token)
        if row_id is None:
            raise ProviderError.permanent(
                "abandon_work_item", f"invalid lock token {lock_token!r}", kind=ProviderErrorKind.LOCK_LOST
            )
        now = self.clock.now_ms()
        row = await self._one(
            "abandon_work_item", self._q.abandon_work, (row_id, lock_token, now, ms(delay), ignore_attempt)
        )
        if row[0] > now:
            self.notifier.notify_at("worker", row[0])
        else:
            self.notifier.notify("worker")

    # status ----------------------------------------------------------------------------------------
    async def get_instance_info(self, instance_id: str) -> InstanceInfo | None:
        row = await self._one("get_instance_info", self._q.instance_info, (instance_id,), idempotent=True)
        if row is None:
            return None
        return InstanceInfo(instance_id, *row)

    async def instance_exists(self, instance_id: str) -> bool:
        """True if ``instance_id`` has an instance or a pending start."""
        row = await self._one("instance_exists", self._q.instance_exists, (instance_id, instance_id), idempotent=True)
        return row is not None

    async def get_custom_status(
        self, instance_id: str, last_seen_version: int
    ) -> tuple[str | None, int] | None:
        row = await self._one("get_custom_status", self._q.custom_status, (instance_id,), idempotent=True)
        if row is None or row[1] <= last_seen_version:
            return None
        return row[0], int(row[1])

    # management ------------------------------------------------------------------------------------
    async def list_instances(self, status: str | None = None) -> list[str]:
        if status is None:
            rows = await self._all("list_instances", self._q.list_instances, None, idempotent=True)
        else:
            rows = await self._all(
                "list_instances", self._q.list_instances_by_status, (status,), idempotent=True
            )
        return [r[0] for r in rows]

    async def list_executions(self, instance_id: str) -> list[int]:
        rows = await self._all("list_executions", self._q.list_executions, (instance_id,), idempotent=True)
        return [int(r[0]) for r in rows]

    async def get_execution_info(self, instance_id: str, execution_id: int) -> ExecutionInfo | None:
        row = await self._one(
            "get_execution_info", self._q.execution_info, (instance_id, execution_id), idempotent=True
        )
        if row is None:
            return None
        status, output, started_at, completed_at, count = row
        return ExecutionInfo(execution_id, status, output, started_at, completed_at, int(count))

    async def get_system_metrics(self) -> SystemMetrics:
        row = await self._one("get_system_metrics", self._q.metrics, None, idempotent=True)
        instances, executions, events, running, completed, failed = (int(v) for v in row)
        return SystemMetrics(
            total_instances=instances,
            total_executions=executions,
            running_instances=running,
            completed_instances=completed,
            failed_instances=failed,
            total_events=events,
        )

    async def get_queue_depths(self) -> QueueDepths:
        now = self.clock.now_ms()
        row = await self._one("get_queue_depths", self._q.queue_depths, {"now": now}, idempotent=True)
        return QueueDepths(
            orchestrator_queue=int(row[0]),
            worker_queue=int(row[1]),
            oldest_orchestrator_age_ms=None if row[2] is None else max(now - int(row[2]), 0),
            oldest_worker_age_ms=None if row[3] is None else max(now - int(row[3]), 0),
        )

    async def list_children(self, instance_id: str) -> list[str]:
        rows = await self._all("list_children", self._q.children, (instance_id,), idempotent=True)
        return [r[0] for r in rows]

    async def get_parent_id(self, instance_id: str) -> str | None:
        row = await self._one("get_parent_id", self._q.parent, (instance_id,), idempotent=True)
        if row is None:
            raise InstanceNotFound("get_parent_id", instance_id)
        parent: str | None = row[0]
        return parent

    async def get_instance_tree(self, instance_id: str) -> list[str]:
        row = await self._one("get_instance_tree", self._q.tree, {"id": instance_id}, idempotent=True)
        if row is None:
            raise InstanceNotFound("get_instance_tree", instance_id)
        return list(row[0])

    async def delete_instance(self, instance_id: str, force: bool = False) -> DeleteResult:
        row = await self._one("delete_instance", self._q.delete_instance, (instance_id, force))
        self.notifier.notify_instance(instance_id)
        return DeleteResult(*(int(v) for v in row))

    async def _delete_many(self, ids: list[str], force: bool) -> DeleteResult:
        row = await self._one("delete_instances_atomic", self._q.delete_instances, (ids, force))
        return DeleteResult(*(int(v) for v in row))

    async def _delete_bulk(self, filter: InstanceFilter) -> DeleteResult:
        row = await self._one(
            "delete_instance_bulk",
            self._q.delete_bulk,
            (filter.instance_ids, filter.completed_before_ms, filter.limit),
        )
        return DeleteResult(*(int(v) for v in row))

    async def prune_executions(self, instance_id: str, options: PruneOptions) -> PruneResult:
        row = await self._one(
            "prune_executions", self._q.prune, (instance_id, options.keep_last, options.completed_before_ms)
        )
        return PruneResult(*(int(v) for v in row))

    async def _prune_bulk(self, filter: InstanceFilter, options: PruneOptions) -> PruneResult:
        row = await self._one(
            "prune_executions_bulk",
            self._q.prune_bulk,
            (filter.instance_ids, filter.limit, options.keep_last, options.completed_before_ms),
        )
        return PruneResult(*(int(v) for v in row))

    # fault-injection hooks for the validation suite --------------------------------------------------
    # process liveness leases (optional capability, see runtime/liveness.py and migration 0003) --------
    _process_id: str | None = None
    _process_key: int = 0

    @property
    def process_id(self) -> str | None:
        """The process whose lease this provider holds (``None``: none registered)."""
        return self._process_id
    _lease_conn: AnyioConnection[Any] | None = None

    def _quoted_schema(self) -> str:
        return sql.Identifier(self._schema).as_string(None)

    def _new_token(self) -> str:
        """A fresh lock token; ``'<process>:<random>'`` once a process is registered, so survivors can
        release exactly a dead process's locks."""
        token = uuid.uuid4().hex
        return f"{self._process_id}:{token}" if self._process_id else token

    @contextlib.asynccontextmanager
    async def _releasing_unseen_claim(self, queue: str, token: str) -> AsyncIterator[None]:
        """A fetch that failed with a transient error (the connection dropped, a timeout) may have
        committed its claim without the caller ever seeing it: the locks would strand their work until
        they expire (a full worker lock timeout) although this process is alive. Release exactly that
        fetch's locks (found by its token), best effort for a few seconds, then re-raise."""
        try:
            yield
        except ProviderError as exc:
            if exc.retryable and not self._closed:
                s = self._quoted_schema()
                if queue == "worker":
                    query = (f"UPDATE {s}.worker_queue SET lock_token = NULL, locked_until = NULL, visible_at = %s "
                             "WHERE lock_token LIKE %s")  # fmt: skip
                    params: tuple[Any, ...] = (self.clock.now_ms(), "%." + token)
                else:
                    query, params = f"DELETE FROM {s}.instance_locks WHERE lock_token = %s", (token,)
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    while True:
                        try:
                            await self._exec("release_unseen_claim", query, params, "none", idempotent=True)
                            break
                        except ProviderError:
                            await anyio.sleep(0.25)
            raise

    async def register_process(self, process_id: str) -> bool:
        """Take this process's liveness lease: a row in ``processes`` and a session-level advisory lock
        (keyed by schema and process id) on a connection of its own, held until the connection dies or
        :meth:`unregister_process`. Locks fetched from now on carry ``process_id``. Returns True."""
        if not process_id.isalnum():
            raise ValueError(f"process id must be alphanumeric, got {process_id!r}")
        self._process_key = _hash64(f"duroxide_trio:process:{self._schema}:{process_id}")
        self._process_id = process_id
        await self.renew_process_lease(process_id, 3600.0)
        return True

    async def _lease_connection(self) -> AnyioConnection[Any]:
        conn = self._lease_conn
        if conn is not None and not conn.closed and not _connection_dead(conn):
            return conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        self._lease_conn = None
        conn = await connect(self._listen_conninfo, autocommit=True, connect_timeout=self._connect_timeout)
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self._process_key,))
            row = await cur.fetchone()
            if row is None or not row[0]:  # our previous session still holds it (a half-dead TCP peer)
                raise psycopg.OperationalError("process lease is still held by a previous session")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self._lease_conn = conn
        return conn

    async def renew_process_lease(
        self, process_id: str, stale_after: float, grace: float = 1.0
    ) -> list[str]:
        """Heartbeat this process's lease (taking it again after a lost connection) and reclaim the
        locks of every process whose lease is gone (advisory lock free for ``grace`` seconds, or no
        heartbeat for ``stale_after`` seconds, by the database's clock). Returns the reclaimed ids."""
        op = "renew_process_lease"
        if self._closed:
            raise ProviderError.permanent(op, "provider is closed")
        query = f"SELECT {self._quoted_schema()}.renew_process_lease(%s, %s, %s, %s, %s)"
        params = (process_id, self._process_key, self.clock.now_ms(), ms(stale_after), ms(grace))
        try:
            with anyio.fail_after(self._command_timeout):
                conn = await self._lease_connection()
                cur = await conn.execute(query, params, prepare=self._prepare)
                row = await cur.fetchone()
        except TimeoutError:
            raise ProviderError.transient(op, f"timed out after {self._command_timeout:g} s") from None
        except psycopg.Error as ex:
            if self._lease_conn is not None and _connection_dead(self._lease_conn):
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._lease_conn.close()
                self._lease_conn = None
            raise self._error(op, ex) from None
        reclaimed = list(row[0] or []) if row is not None else []
        if reclaimed:
            self.notifier.notify("orchestrator")
            self.notifier.notify("worker")
        return reclaimed

    async def unregister_process(self, process_id: str) -> None:
        """Give the lease back (clean shutdown): delete the row and close the lease connection."""
        conn, self._lease_conn = self._lease_conn, None
        self._process_id = None
        if conn is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(5):
                    await conn.execute(
                        f"DELETE FROM {self._quoted_schema()}.processes WHERE process_id = %s", (process_id,)
                    )
            except psycopg.Error:
                pass
            finally:
                await conn.close()

    async def _corrupt_instance_history(self, instance_id: str) -> None:
        await self._exec("corrupt", self._q.corrupt, (instance_id,), "none")

    async def _max_attempt_count(self, instance_id: str) -> int:
        row = await self._one("max_attempt_count", self._q.max_attempt, (instance_id,), idempotent=True)
        return int(row[0] or 0)


# ---------------------------------------------------------------------------------------------------------
# migrations


async def _migrate(conn: AnyioConnection[Any], schema: str, quoted: str) -> None:
    """Bring ``schema`` up to the newest embedded migration. Each pending migration runs in its own
    transaction holding an advisory lock keyed by the schema, so concurrent connects apply it once."""
    migrations = _load_migrations()
    table = f"{quoted}.{sql.Identifier(MIGRATIONS_TABLE).as_string(conn)}"
    if await _latest_applied(conn, table) >= migrations[-1][0]:
        return  # up to date: no lock needed
    lock_key = _hash64(f"duroxide_trio:migrations:{schema}")
    substitutions = {
        "@schema@": quoted,
        "@channel@": sql.Literal(channel_name(schema)).as_string(conn),
        "@lock_seed@": str(_hash64(f"duroxide_trio:locks:{schema}")),
    }
    for version, file_name, text in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if await cur.fetchone() is None:
                await conn.execute(f"CREATE SCHEMA {quoted}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur = await conn.execute(f"SELECT 1 FROM {table} WHERE version = %s", (version,))
            if await cur.fetchone() is not None:
                continue
            script = text
            for placeholder, value in substitutions.items():
                script = script.replace(placeholder, value)
            await conn.execute(script)
            await conn.execute(f"INSERT INTO {table} (version, name) VALUES (%s, %s)", (version, file_name))
            logger.info("schema %r: applied migration %s", schema, file_name)


async def _latest_applied(conn: AnyioConnection[Any], table: str) -> int:
    cur = await conn.execute("SELECT to_regclass(%s)", (table,))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return 0
    cur = await conn.execute(f"SELECT COALESCE(max(version), 0) FROM {table}")
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


# ---------------------------------------------------------------------------------------------------------
# factory


class PostgresFactory:
    """``ProviderFactory`` for PostgreSQL (validation suite, stress harness): each ``create_provider()``
    connects to a fresh schema ``duroxide_test_<random>`` that ``cleanup()`` drops again (unless
    ``keep_schema``); with ``schema`` given, every provider uses that schema and nothing is dropped."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_max: int | None = None,
        lock_timeout: float = 1.0,
        keep_schema: bool = False,
    ) -> None:
        self.url = url
        self.schema = schema
        self.pool_max = pool_max
        self.lock_timeout = lock_timeout
        self.keep_schema = keep_schema
        self._created: dict[int, str] = {}

    @property
    def description(self) -> str:
        """``"postgres"`` (shown in stress results)."""
        return "postgres"

    def __repr__(self) -> str:
        return f"PostgresFactory({mask_url(self.url)!r}, schema={self.schema!r})"

    async def create_provider(self) -> PostgresProvider:
        """Connect a provider to a fresh schema ``duroxide_test_<random>`` (or to ``schema``), created and
        migrated."""
        schema = self.schema or f"duroxide_test_{uuid.uuid4().hex[:8]}"
        provider = await PostgresProvider.connect(self.url, schema=schema, pool_max=self.pool_max)
        if self.schema is None:
            self._created[id(provider)] = schema
        return provider

    async def open_peer(self, provider: PostgresProvider) -> PostgresProvider:
        """Another provider (its own pool) on the same schema, like a second process."""
        return await PostgresProvider.connect(self.url, schema=provider.schema, pool_max=self.pool_max)

    async def cleanup(self, provider: PostgresProvider) -> None:
        """Close ``provider`` and drop the schema this factory created for it (unless ``keep_schema``)."""
        await provider.close()
        schema = self._created.pop(id(provider), None)
        if schema is not None and not self.keep_schema:
            await drop_schema(self.url, schema)

    async def corrupt_instance_history(self, provider: PostgresProvider, instance_id: str) -> None:
        """Validation hook: make the instance's stored history undecodable."""
        await provider._corrupt_instance_history(instance_id)

    async def get_max_attempt_count(self, provider: PostgresProvider, instance_id: str) -> int:
        """Validation hook: the highest attempt count among the instance's queued messages."""
        return await provider._max_attempt_count(instance_id)


async def drop_schema(url: str, schema: str, *, timeout: float = 30.0) -> None:
    """Drop ``schema`` and everything in it (its functions, tables and migration record)."""
    try:
        with anyio.fail_after(timeout):
            conn = await connect(url, autocommit=True)
            try:
                await conn.execute("SET lock_timeout = '10s'")
                await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.close()
    except psycopg.Error as ex:
        message = redact(ex, url)
        raise ProviderError.transient("drop_schema", f"cannot drop schema {schema!r}: {message}") from None
    except TimeoutError:
        raise ProviderError.transient("drop_schema", f"dropping schema {schema!r} timed out") from None
