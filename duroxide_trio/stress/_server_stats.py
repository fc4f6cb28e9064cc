"""PostgreSQL's own statistics around a stress run: database transactions and WAL bytes.

A snapshot reads ``xact_commit + xact_rollback`` of the current database from ``pg_stat_database`` and
``pg_current_wal_lsn()``; the difference of two snapshots (``pg_wal_lsn_diff``) is what the window cost the
server. Both are the server's figures, so other load on the same database (transactions) or the same
cluster (WAL is cluster-wide) during the window is counted too. A backend reports its transaction counts
when it goes idle or disconnects (at most once a second while busy), so the runner takes the closing
snapshot after its provider's connections are closed and the counter has settled.
"""

from __future__ import annotations

from typing import Any

import anyio
import attrs

__all__ = ["PgSnapshot", "pg_settled_snapshot", "pg_snapshot", "pg_wal_diff"]

_QUERY = (
    "SELECT xact_commit + xact_rollback, pg_current_wal_lsn()::text "
    "FROM pg_stat_database WHERE datname = current_database()"
)


@attrs.frozen
class PgSnapshot:
    """Transactions so far (``xact_commit + xact_rollback`` of this database) and the WAL position."""

    transactions: int
    wal_lsn: str


async def _read(conn: Any) -> PgSnapshot:
    cur = await conn.execute(_QUERY)
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("pg_stat_database has no row for the current database")
    return PgSnapshot(int(row[0]), str(row[1]))


async def pg_snapshot(url: str) -> PgSnapshot:
    """One snapshot, on a connection of its own (its own transaction is counted: one per snapshot)."""
    from ..providers.postgres._driver import connect

    conn = await connect(url, autocommit=True)
    try:
        return await _read(conn)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


async def pg_settled_snapshot(url: str, *, settle: float = 0.3, bound: float = 3.0) -> PgSnapshot:
    """A snapshot once the transaction counter stopped moving for ``settle`` seconds (at most ``bound``
    seconds of waiting): the statistics of connections that just went idle or closed have arrived."""
    from ..providers.postgres._driver import connect

    conn = await connect(url, autocommit=True)
    try:
        last = await _read(conn)
        with anyio.move_on_after(bound):
            while True:
                await anyio.sleep(settle)
                now = await _read(conn)
                # Our own reads are transactions too: one per read.
                if now.transactions - last.transactions <= 1:
                    return now
                last = now
        return last
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


async def pg_wal_diff(url: str, later: str, earlier: str) -> int:
    """``pg_wal_lsn_diff(later, earlier)`` in bytes."""
    from ..providers.postgres._driver import connect

    conn = await connect(url, autocommit=True)
    try:
        cur = await conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", (later, earlier))
        row = await cur.fetchone()
        return int(row[0]) if row is not None else 0
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()
