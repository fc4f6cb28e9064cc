"""PostgreSQL provider (psycopg 3 driven through anyio, so it runs under Trio and asyncio).

provider = await PostgresProvider.connect("postgresql://user@host/db", schema="duroxide")
async with provider, dt.open_runtime(provider, registry) as runtime:
    ...
"""

from .provider import PostgresFactory, PostgresProvider

__all__ = ["PostgresFactory", "PostgresProvider"]
