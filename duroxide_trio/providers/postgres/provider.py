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
import logging
import re
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..._masking import redact, url_password_problem, url_secrets
from ..._retry import Retry
from ..base import (
    WALL_CLOCK,
    CannotDeleteSubOrchestration,
    Clock,
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    Notifier,
    ProviderCapabilities,
    ProviderError,
    ProviderErrorKind,
)
from ._base import PgBase, connection_dead
from ._driver import AnyioConnection, mask_url
from ._errors import classify_sqlstate, too_large
from ._history import HistoryJob
from ._leases import LeasesJob
from ._listener import ListenerJob
from ._management import ManagementJob
from ._migrations import migrate
from ._pool import Pool, PoolClosed
from ._queries import Fetch, Queries, channel_name
from ._queues import QueuesJob

__all__ = ["DEFAULT_SCHEMA", "PostgresProvider", "check_schema_name"]

logger = logging.getLogger("duroxide_trio.providers.postgres")

DEFAULT_SCHEMA = "duroxide"

#: Rolled back for sure, so even a write is safe to re-run at once.
_RERUN_STATES = frozenset({"40001", "40P01"})


_INTERNAL_RETRIES = 3
#: Waits between the internal retries of one statement.
_STATEMENT_RETRY = Retry(base=0.002, factor=2.0, cap=0.016)


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

class PostgresProvider(QueuesJob, HistoryJob, ManagementJob, ListenerJob, LeasesJob, PgBase):
    """Durable state in a PostgreSQL schema. Create with ``await PostgresProvider.connect(url)``; run it
    with ``async with provider:`` (which also owns the LISTEN connection for cross-process wake-ups)."""

    #: Batch work items, the LISTEN listener, process leases and eager dispatch (no work outlook: tests' virtual time
    #: runs on SQLite).
    capabilities = ProviderCapabilities(
        batch_work_items=True, listener=True, process_leases=True, key_values=True, worker_routing=True,
        eager_dispatch=True,
        ack_fetches_turns=True,
        start_fetches_turn=True,
    )

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
        self._q = Queries(quoted_schema)
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
                    await migrate(conn, schema, quoted)
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
                text = f"{too_large(message)} (server: {message}; SQLSTATE {state})"
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
                # anyio.fail_after, without its generator-based context manager (a few per cent of a
                # call's CPU): only this scope's deadline can cancel it, so a caught cancel is the timeout.
                with anyio.CancelScope(deadline=anyio.current_time() + self._command_timeout):
                    return await self._run_once(query, params, fetch)
                raise TimeoutError
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
                        await _STATEMENT_RETRY.sleep(attempt - 1)
                        continue
                raise error from None

    async def _run_once(self, query: str, params: Sequence[Any] | dict[str, Any] | None, fetch: Fetch) -> Any:
        """One statement on one pooled connection (``_exec``'s body, without its retries and timeout)."""
        conn = await self._pool.acquire()
        try:
            if connection_dead(conn):
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
        finally:
            await self._pool.release(conn)

    async def _one(self, op: str, query: str, params: Any, *, idempotent: bool = False) -> Any:
        return await self._exec(op, query, params, "one", idempotent=idempotent)

    async def _all(self, op: str, query: str, params: Any, *, idempotent: bool = False) -> list[Any]:
        rows: list[Any] = await self._exec(op, query, params, "all", idempotent=idempotent)
        return rows

