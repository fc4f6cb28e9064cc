"""``PostgresFactory``: fresh, isolated PostgreSQL providers (a schema each) for the validation suite and
the stress harness."""

from __future__ import annotations

import uuid

from ._driver import mask_url
from ._migrations import drop_schema
from ._testhooks import PostgresTestHooks
from .provider import PostgresProvider


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

    def test_hooks(self, provider: PostgresProvider) -> PostgresTestHooks:
        """The validation suite's hooks into ``provider`` (``testing.validation.TestHooks``)."""
        return PostgresTestHooks(provider)
