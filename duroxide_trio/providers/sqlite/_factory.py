"""``SqliteFactory``: fresh, isolated SQLite providers for the validation suite and the stress harness."""

from __future__ import annotations

import os

from ._provider import SqliteProvider
from ._testhooks import SqliteTestHooks


class SqliteFactory:
    """``ProviderFactory`` for SQLite: ``path=None`` makes a fresh file in a temp dir per provider,
    ``":memory:"`` an in-memory database, anything else that file."""

    def __init__(self, path: str | None = None, *, lock_timeout: float = 1.0) -> None:
        """Args: ``path`` (``None``: a fresh temporary file per provider; ``":memory:"``; or a file shared
        by every provider); ``lock_timeout``: the short lock timeout lock-expiry validation tests use."""
        self.path = path
        self.lock_timeout = lock_timeout
        self._tmpdirs: dict[int, str] = {}

    @property
    def description(self) -> str:
        """``"sqlite"`` or ``"sqlite-memory"`` (shown in stress results)."""
        if self.path == ":memory:":
            return "sqlite-memory"
        return "sqlite"

    async def create_provider(self) -> SqliteProvider:
        """Open a provider on a fresh temporary file (``path=None``), in memory, or on ``path``."""
        if self.path is None:
            import tempfile

            d = tempfile.mkdtemp(prefix="duroxide-sqlite-")
            provider = await SqliteProvider.open(os.path.join(d, "state.db"))
            self._tmpdirs[id(provider)] = d
            return provider
        return await SqliteProvider.open(self.path)

    async def cleanup(self, provider: SqliteProvider) -> None:
        """Close ``provider`` and remove its temporary directory, if this factory made one."""
        await provider.close()
        d = self._tmpdirs.pop(id(provider), None)
        if d is not None:
            import shutil

            shutil.rmtree(d, ignore_errors=True)

    def test_hooks(self, provider: SqliteProvider) -> SqliteTestHooks:
        """The validation suite's hooks into ``provider`` (``testing.validation.TestHooks``)."""
        return SqliteTestHooks(provider)
