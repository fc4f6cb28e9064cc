"""The validation suite's hooks into a PostgreSQL provider (``duroxide_trio.testing.validation.TestHooks``).

Test-only code lives here, not in the provider's job modules; ``PostgresFactory.test_hooks`` hands it out."""

from __future__ import annotations

from ._base import PgBase


class PostgresTestHooks:
    """``TestHooks`` of one PostgreSQL provider."""

    def __init__(self, provider: PgBase) -> None:
        """Hooks into ``provider``."""
        self._provider = provider

    async def corrupt_instance_history(self, instance_id: str) -> None:
        """Make the instance's stored history undecodable."""
        await self._provider._exec("corrupt", self._provider._q.corrupt, (instance_id,), "none")

    async def max_attempt_count(self, instance_id: str) -> int:
        """The highest attempt count among the instance's queued messages."""
        row = await self._provider._one("max_attempt_count", self._provider._q.max_attempt, (instance_id,), idempotent=True)
        return int(row[0] or 0)
