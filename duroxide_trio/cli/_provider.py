"""Opening the database a CLI command works on: ``--db PATH`` (SQLite) or ``--database-url`` (PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import typer

from .common import database_url, mask_url

DbOption = Annotated[str | None, typer.Option("--db", help="SQLite database file.", show_default=False)]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL (default: $DATABASE_URL when --db is not given).",
        show_default=False,
    ),
]
SchemaOption = Annotated[str, typer.Option("--schema", help="PostgreSQL schema.")]


class CannotOpen(Exception):
    """The database could not be opened; the message is safe to print (passwords masked)."""


@asynccontextmanager
async def open_provider(db: str | None, url: str | None, schema: str) -> AsyncIterator[Any]:
    """The provider for ``--db`` or ``--database-url`` / ``$DATABASE_URL``, closed on exit. Nothing is
    created: a missing file or schema is a ``CannotOpen``."""
    import duroxide_trio as dt

    from ..providers.base import ProviderError

    try:
        if db:
            provider: Any = await dt.SqliteProvider.open(db, create=False)
        else:
            target = database_url(url)
            if not target:
                raise typer.BadParameter(
                    "give --db PATH (SQLite) or --database-url URL / $DATABASE_URL (PostgreSQL)"
                )
            from ..providers.postgres import PostgresProvider

            provider = await PostgresProvider.connect(
                target, schema=schema, pool_max=2, create_schema=False, connect_timeout=10.0
            )
    except ProviderError as exc:
        raise CannotOpen(mask_url(exc.message)) from None
    async with provider:
        yield provider
