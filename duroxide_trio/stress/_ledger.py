"""The activity ledger of a chaos run: every activity execution writes one row into a table of the same
database, so executions are counted by the database, not by the harness's memory.

A row is written when an activity body has finished, just before its result is returned to the runtime:
an execution whose process was killed before that point never produced a result either. A logical
activity is ``(instance_id, execution_id, activity_id)``; more than one row for it is a duplicate
execution (allowed: activities are at-least-once). A row also holds when the body began
(``started_ms``) and the activity's ``session_id``, so that the verdict can check that a session's
activities ran one at a time, in order, on one process at a time.

``SqliteLedger`` uses a table ``chaos_ledger`` in the SQLite file; ``PostgresLedger`` a table
``chaos_ledger`` in the run's schema (both retry through database restarts); ``FileLedger`` an
append-only file, for providers of your own.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any, Protocol

import anyio
import anyio.to_thread
import attrs

__all__ = ["FileLedger", "Ledger", "LedgerRow", "PostgresLedger", "SqliteLedger", "open_ledger"]

#: How long one ledger write keeps retrying (a database restart) before it gives up.
WRITE_RETRY_FOR = 90.0


@attrs.frozen
class LedgerRow:
    """One activity execution as the database recorded it."""
    instance_id: str
    execution_id: int
    activity_id: int
    name: str
    pid: int
    attempt: int
    at_ms: int
    session_id: str | None = None
    started_ms: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        """The logical activity: ``(instance_id, execution_id, activity_id)``."""
        return (self.instance_id, self.execution_id, self.activity_id)


class Ledger(Protocol):
    """What the harness needs from a ledger."""

    async def create(self) -> None:
        """Create the ledger (table or file) if missing."""
        ...

    async def record(
        self, instance_id: str, execution_id: int, activity_id: int, name: str, attempt: int, *,
        session_id: str | None = None, started_ms: int | None = None,
    ) -> None:  # fmt: skip
        """Record one execution (retried through database restarts); ``started_ms``: when its body began
        (epoch milliseconds), ``session_id``: the activity's session."""
        ...

    async def read_all(self) -> list[LedgerRow]:
        """Every recorded execution."""
        ...

    async def close(self) -> None:
        """Release the ledger's connection."""
        ...


class _GroupCommit:
    """Ledger rows written by concurrent activities share one commit: the first writer becomes the
    leader and flushes every row queued meanwhile in one statement; the others wait for that batch.
    (One synchronous commit per row would cap a process at about one row per disk flush.)"""

    def __init__(self, flush: Any) -> None:
        self._flush = flush
        self._pending: list[tuple[Any, ...]] = []
        self._leading = False
        self._next: anyio.Event = anyio.Event()
        self._errors: dict[int, BaseException] = {}

    async def write(self, row: tuple[Any, ...]) -> None:
        self._pending.append(row)
        if self._leading:
            done = self._next
            await done.wait()
            error = self._errors.get(id(done))
            if error is not None:
                raise error
            return
        self._leading = True
        first_error: BaseException | None = None
        try:
            with anyio.CancelScope(shield=True):
                while self._pending:
                    batch, self._pending = self._pending, []
                    done, self._next = self._next, anyio.Event()
                    try:
                        await self._flush(batch)
                    except Exception as exc:  # noqa: BLE001 - handed to every writer of the batch
                        self._errors[id(done)] = exc
                        first_error = first_error or exc
                    done.set()
        finally:
            self._leading = False
        if first_error is not None:
            raise first_error


_CREATE = (
    "CREATE TABLE IF NOT EXISTS {t} (instance_id TEXT NOT NULL, execution_id BIGINT NOT NULL, "
    "activity_id BIGINT NOT NULL, name TEXT NOT NULL, pid INTEGER NOT NULL, attempt INTEGER NOT NULL, "
    "at_ms BIGINT NOT NULL, session_id TEXT, started_ms BIGINT)"
)


class SqliteLedger:
    """The ledger as a table ``chaos_ledger`` in the run's SQLite file."""
    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._group = _GroupCommit(self._flush)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        return self._conn

    async def _run(self, fn: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(self._connection()), limiter=self._limiter)

    async def create(self) -> None:
        """Create the table if missing."""
        await self._run(lambda c: c.execute(_CREATE.format(t="chaos_ledger")))

    async def record(
        self, instance_id: str, execution_id: int, activity_id: int, name: str, attempt: int, *,
        session_id: str | None = None, started_ms: int | None = None,
    ) -> None:  # fmt: skip
        """Record one execution (group-committed with concurrent ones)."""
        row = (instance_id, execution_id, activity_id, name, os.getpid(), attempt, int(time.time() * 1000),
               session_id, started_ms)  # fmt: skip
        await self._group.write(row)

    async def _flush(self, rows: list[tuple[Any, ...]]) -> None:
        def insert(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany("INSERT INTO chaos_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        deadline = time.monotonic() + WRITE_RETRY_FOR
        while True:
            try:
                await self._run(insert)
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.05)

    async def read_all(self) -> list[LedgerRow]:
        """Every recorded execution."""
        rows = await self._run(lambda c: c.execute("SELECT * FROM chaos_ledger").fetchall())
        return [LedgerRow(*r) for r in rows]

    async def close(self) -> None:
        """Close the ledger's connection."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)


class PostgresLedger:
    """The ledger as a table ``chaos_ledger`` in the run's PostgreSQL schema, on a connection of its own."""
    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self._conn: Any = None
        self._lock = anyio.Lock()
        self._group = _GroupCommit(self._flush)

    def _table(self) -> str:
        from psycopg import sql

        return sql.Identifier(self.schema, "chaos_ledger").as_string(None)

    async def _execute(self, query: str, params: Any = None, *, fetch: bool = False) -> Any:
        """One statement on the ledger's own connection; reconnects and retries through restarts."""
        import psycopg

        from ..providers.postgres._driver import connect

        deadline = time.monotonic() + WRITE_RETRY_FOR
        async with self._lock:
            while True:
                try:
                    with anyio.fail_after(30):
                        if self._conn is None or self._conn.closed:
                            self._conn = await connect(self.url, autocommit=True, connect_timeout=5)
                        cur = await self._conn.execute(query, params)
                        return await cur.fetchall() if fetch else None
                except (psycopg.OperationalError, psycopg.errors.AdminShutdown, TimeoutError, OSError):
                    if self._conn is not None:
                        with anyio.CancelScope(shield=True):
                            try:
                                await self._conn.close()
                            except Exception:  # noqa: BLE001 - a broken connection
                                pass
                        self._conn = None
                    if time.monotonic() > deadline:
                        raise
                    await anyio.sleep(0.2)

    async def create(self) -> None:
        """Create the table if missing."""
        await self._execute(_CREATE.format(t=self._table()))

    async def record(
        self, instance_id: str, execution_id: int, activity_id: int, name: str, attempt: int, *,
        session_id: str | None = None, started_ms: int | None = None,
    ) -> None:  # fmt: skip
        """Record one execution (group-committed with concurrent ones)."""
        await self._group.write(
            (instance_id, execution_id, activity_id, name, os.getpid(), attempt, int(time.time() * 1000),
             session_id, started_ms)  # fmt: skip
        )

    async def _flush(self, rows: list[tuple[Any, ...]]) -> None:
        columns = list(zip(*rows, strict=True))
        await self._execute(
            f"INSERT INTO {self._table()} SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], "
            "%s::text[], %s::integer[], %s::integer[], %s::bigint[], %s::text[], %s::bigint[])",
            [list(c) for c in columns],
        )

    async def read_all(self) -> list[LedgerRow]:
        """Every recorded execution."""
        rows = await self._execute(f"SELECT * FROM {self._table()}", fetch=True)
        return [LedgerRow(*r) for r in rows]

    async def close(self) -> None:
        """Close the ledger's connection."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with anyio.CancelScope(shield=True):
                await conn.close()


class FileLedger:
    """For a provider of your own: one JSON line per execution, appended with ``O_APPEND`` (atomic for
    lines this short) to a file every process of the run can reach."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def create(self) -> None:
        """Create the file if missing."""
        await anyio.to_thread.run_sync(lambda: open(self.path, "a").close())

    async def record(
        self, instance_id: str, execution_id: int, activity_id: int, name: str, attempt: int, *,
        session_id: str | None = None, started_ms: int | None = None,
    ) -> None:  # fmt: skip
        """Append one execution."""
        import json

        line = json.dumps([instance_id, execution_id, activity_id, name, os.getpid(), attempt,
                           int(time.time() * 1000), session_id, started_ms]) + "\n"  # fmt: skip

        def append() -> None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

        await anyio.to_thread.run_sync(append)

    async def read_all(self) -> list[LedgerRow]:
        """Every recorded execution."""
        import json

        def read() -> list[LedgerRow]:
            with open(self.path) as f:
                return [LedgerRow(*json.loads(line)) for line in f if line.strip()]

        return await anyio.to_thread.run_sync(read)

    async def close(self) -> None:
        """Nothing to release."""
        return None


def open_ledger(target: dict[str, Any]) -> SqliteLedger | PostgresLedger | FileLedger:
    """The ledger of a worker target (``{"kind": "sqlite", "path": ...}`` or ``{"kind": "postgres",
    "url": ..., "schema": ...}``)."""
    if target["kind"] == "postgres":
        return PostgresLedger(target["url"], target["schema"])
    if target["kind"] == "custom":
        return FileLedger(target["ledger"])
    return SqliteLedger(target["path"])
