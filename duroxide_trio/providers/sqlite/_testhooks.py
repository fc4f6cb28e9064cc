"""The validation suite's hooks into a SQLite provider (``duroxide_trio.testing.validation.TestHooks``).

Test-only code lives here, not in the provider's job modules; ``SqliteFactory.test_hooks`` hands it out."""

from __future__ import annotations

import sqlite3

from ._executor import SqliteBase


class SqliteTestHooks:
    """``TestHooks`` of one SQLite provider."""

    def __init__(self, provider: SqliteBase) -> None:
        """Hooks into ``provider``."""
        self._provider = provider

    async def corrupt_instance_history(self, instance_id: str) -> None:
        """Make the instance's stored history undecodable."""
        await self._provider._run(
            "corrupt",
            lambda c: c.execute("UPDATE history SET event_data = '{not json' WHERE instance_id = ?", (instance_id,)),
        )

    async def max_attempt_count(self, instance_id: str) -> int:
        """The highest attempt count among the instance's queued messages."""
        def _get(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT MAX(attempt_count) FROM orchestrator_queue WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            return int(row[0] or 0)

        return await self._provider._run("max_attempt_count", _get, write=False)
