"""Process liveness leases of the PostgreSQL provider (``ProviderCapabilities.process_leases``, see
``runtime/_liveness.py`` and migration 0003): a row and a session advisory lock per process."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
import anyio.abc
import psycopg

from .._kernel import (
    ms,
)
from ..base import (
    ProviderError,
)
from ._base import PgBase, connection_dead
from ._driver import AnyioConnection, connect
from ._queries import hash64

logger = logging.getLogger("duroxide_trio.providers.postgres")


class LeasesJob(PgBase):
    """One lease per runtime process."""

    _process_key: int = 0

    _lease_conn: AnyioConnection[Any] | None = None

    @property
    def process_id(self) -> str | None:
        """The process whose lease this provider holds (``None``: none registered)."""
        return self._process_id

    async def register_process(self, process_id: str) -> bool:
        """Take this process's liveness lease: a row in ``processes`` and a session-level advisory lock
        (keyed by schema and process id) on a connection of its own, held until the connection dies or
        :meth:`unregister_process`. Locks fetched from now on carry ``process_id``. Returns True."""
        if not process_id.isalnum():
            raise ValueError(f"process id must be alphanumeric, got {process_id!r}")
        self._process_key = hash64(f"duroxide_trio:process:{self._schema}:{process_id}")
        self._process_id = process_id
        await self.renew_process_lease(process_id, 3600.0)
        return True

    async def _lease_connection(self) -> AnyioConnection[Any]:
        conn = self._lease_conn
        if conn is not None and not conn.closed and not connection_dead(conn):
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
            if self._lease_conn is not None and connection_dead(self._lease_conn):
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
