"""The ``SqliteProvider`` class: the jobs assembled, and its lifecycle (open, close)."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..base import (
    Clock,
    ProviderCapabilities,
    ProviderError,
)
from ._history import HistoryJob
from ._leases import LeasesJob
from ._management import ManagementJob
from ._migrations import migrate as _migrate
from ._queues import QueuesJob


class SqliteProvider(QueuesJob, HistoryJob, ManagementJob, LeasesJob):
    """Durable state in one SQLite file (or in memory). Use ``await SqliteProvider.open(path)``."""

    #: Batch work items, process leases, the work outlook and eager dispatch; no cross-process listener (SQLite has none).
    capabilities = ProviderCapabilities(
        batch_work_items=True, process_leases=True, work_outlook=True, key_values=True, worker_routing=True,
        eager_dispatch=True,
        ack_fetches_turns=True,
        start_fetches_turn=True,
    )

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 10.0,
        create: bool = True,
        clock: Clock | None = None,
    ) -> SqliteProvider:
        """Open the database at ``path`` (``":memory:"`` for an in-memory one) and apply pending migrations.

        Args:
            path: the database file.
            busy_timeout: seconds a statement waits for another connection's write lock.
            create: create the file (and the schema) when it does not exist. With ``create=False`` a
                missing file, or a SQLite file that is not a duroxide-trio database, is an error and
                nothing is written to disk (what read-only tools such as ``duroxide-trio instances`` use).
            clock: the time of locks, visibility and timers (default: the wall clock; tests pass a
                ``VirtualClock``).

        Returns:
            The provider; use it as ``async with provider:`` or call :meth:`close`.

        Raises:
            ProviderError: (permanent, operation ``"open"``) the file does not exist (``create=False``),
                is not a SQLite database, is not a duroxide-trio database (``create=False``), or cannot
                be opened; the message names the path.
        """
        path = os.fspath(path)
        memory = path == ":memory:"
        if not create and not memory and not os.path.isfile(path):
            why = "it is a directory" if os.path.isdir(path) else "the file does not exist"
            raise ProviderError.permanent("open", f"no SQLite database at {path!r} ({why})")

        def _open() -> sqlite3.Connection | None:  # None: a SQLite file without our tables
            if create or memory:
                conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            else:  # mode=rw never creates the file
                uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
                conn = sqlite3.connect(
                    uri, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=True
                )
            try:
                if not create and not memory:
                    known = conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_duroxide_migrations'"
                    ).fetchone()
                    if known is None:
                        conn.close()
                        return None
                if not memory:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=OFF")
                conn.execute("PRAGMA cache_size=-65536")
                _migrate(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await anyio.to_thread.run_sync(_open)
        except sqlite3.Error as exc:
            raise ProviderError.permanent("open", f"cannot open SQLite database {path!r}: {exc}") from exc
        if conn is None:
            raise ProviderError.permanent(
                "open", f"{path!r} is a SQLite database but not a duroxide-trio one (it has no duroxide tables)"
            )
        return cls(conn, path, clock)

    @classmethod
    async def in_memory(cls, *, clock: Clock | None = None) -> SqliteProvider:
        """A fresh in-memory database (gone when the provider closes); same as ``open(":memory:")``."""
        return await cls.open(":memory:", clock=clock)

    @property
    def name(self) -> str:
        """``"sqlite"`` for a file, ``"sqlite-memory"`` in memory."""
        return "sqlite-memory" if self._path == ":memory:" else "sqlite"

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` in memory)."""
        return self._path

    def __repr__(self) -> str:
        return f"SqliteProvider({self._path!r})"

    async def close(self) -> None:
        """Close the connection: a running batch is waited for, operations still queued are refused
        (``ProviderError``, kind ``closed``), the connection thread ends; idempotent."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._stop_thread()
            await anyio.to_thread.run_sync(self._conn.close)

    async def __aenter__(self) -> SqliteProvider:
        return self
