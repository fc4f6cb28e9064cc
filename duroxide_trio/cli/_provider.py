"""Opening the database a CLI command works on: ``--db PATH`` (SQLite) or ``--database-url`` (PostgreSQL)."""

from __future__ import annotations

import os
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
    """The provider for ``--db`` or ``--database-url`` / ``$DATABASE_URL``, closed on exit."""
    import duroxide_trio as dt

    if db:
        if not os.path.exists(db):
            raise CannotOpen(f"{db}: no such database file")
        try:
            provider: Any = await dt.SqliteProvider.open(db)
        except Exception as exc:
            raise CannotOpen(f"cannot open {db}: {exc}") from exc
    else:
        target = database_url(url)
        if not target:
            raise typer.BadParameter("give --db PATH (SQLite) or --database-url URL / $DATABASE_URL (PostgreSQL)")
        from ..providers.postgres import PostgresProvider

        try:
            provider = await PostgresProvider.connect(target, schema=schema, pool_max=2)
        except Exception as exc:
            raise CannotOpen(f"cannot connect to {mask_url(target)}: {mask_url(str(exc))}") from exc
    async with provider:
        yield provider
