"""History and status reads of the SQLite provider."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ...history import (
    Event,
    decode_event,
    encode_event,
)
from ..base import (
    InstanceInfo,
)
from ._executor import SqliteBase


class HistoryJob(SqliteBase):
    """History and status: ``read``, ``append_with_execution``, ``get_instance_info``..."""

    async def read(self, instance_id: str) -> list[Event]:
        def _read(conn: sqlite3.Connection) -> list[Event]:
            row = conn.execute(
                "SELECT current_execution_id FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT MAX(execution_id) FROM history WHERE instance_id = ?", (instance_id,)
                ).fetchone()
                if row is None or row[0] is None:
                    return []
            return _read_history(conn, instance_id, row[0])

        return await self._run("read", _read, write=False)

    async def read_with_execution(self, instance_id: str, execution_id: int) -> list[Event]:
        return await self._run(
            "read_with_execution", lambda c: _read_history(c, instance_id, execution_id), write=False
        )

    async def append_with_execution(self, instance_id: str, execution_id: int, events: Sequence[Event]) -> None:
        rows = [(instance_id, execution_id, e.event_id, e.type_name, encode_event(e)) for e in events]

        def _append(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO history(instance_id, execution_id, event_id, event_type, event_data) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

        await self._run("append_with_execution", _append)

    async def get_instance_info(self, instance_id: str) -> InstanceInfo | None:
        return await self._run("get_instance_info", lambda c: instance_info(c, instance_id), write=False)

    async def instance_exists(self, instance_id: str) -> bool:
        """True if ``instance_id`` has an instance or a pending start."""

        def _exists(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "SELECT 1 FROM instances WHERE instance_id = ? "
                "UNION ALL SELECT 1 FROM orchestrator_queue WHERE instance_id = ? AND is_start = 1 LIMIT 1",
                (instance_id, instance_id),
            ).fetchone() is not None

        return bool(await self._run("instance_exists", _exists, write=False))

    async def get_custom_status(self, instance_id: str, last_seen_version: int) -> tuple[str | None, int] | None:
        def _get(conn: sqlite3.Connection) -> tuple[str | None, int] | None:
            row = conn.execute(
                "SELECT custom_status, custom_status_version FROM instances WHERE instance_id = ?",
                (instance_id,),
            ).fetchone()
            if row is None or row[1] <= last_seen_version:
                return None
            return row[0], row[1]

        return await self._run("get_custom_status", _get, write=False)


def _read_history(conn: sqlite3.Connection, instance_id: str, execution_id: int) -> list[Event]:
    return [
        decode_event(t)
        for (t,) in conn.execute(
            "SELECT event_data FROM history WHERE instance_id = ? AND execution_id = ? ORDER BY event_id",
            (instance_id, execution_id),
        )
    ]


def instance_info(conn: sqlite3.Connection, instance_id: str) -> InstanceInfo | None:
    row = conn.execute(
        """
        SELECT i.name, i.version, i.current_execution_id, COALESCE(e.status, 'Running'), e.output,
               i.custom_status, i.custom_status_version, i.created_at, i.updated_at, i.parent_instance_id
        FROM instances i LEFT JOIN executions e
          ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE i.instance_id = ?
        """,
        (instance_id,),
    ).fetchone()
    if row is None:
        return None
    return InstanceInfo(instance_id, *row)
