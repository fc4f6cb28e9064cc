"""Storage providers: the contract (``base``), SQLite and PostgreSQL."""

from .base import Provider, ProviderAdmin, ProviderError, ProviderFactory
from .sqlite import SqliteFactory, SqliteProvider

__all__ = ["Provider", "ProviderAdmin", "ProviderError", "ProviderFactory", "SqliteFactory", "SqliteProvider"]


def __getattr__(name: str) -> object:  # PostgreSQL pieces load lazily (psycopg import cost)
    if name in ("PostgresProvider", "PostgresFactory"):
        from . import postgres

        return getattr(postgres, name)
    raise AttributeError(name)
