"""From the command line to a provider: the one place every CLI command chooses its storage.

- ``instances``, ``replay`` and ``instances export`` work on an existing database: ``--db PATH`` (SQLite)
  or ``--database-url URL`` / ``$DATABASE_URL`` (PostgreSQL) with ``--schema``; :func:`open_provider`
  opens it without creating anything.
- ``validate`` and ``stress`` need a fresh database per test or run: ``--provider sqlite|sqlite-memory|
  postgres`` with ``--database-url``; :func:`choose_provider` resolves the options to a
  :class:`ProviderChoice`, whose :meth:`ProviderChoice.factory` makes the provider factory.

Passwords are masked (:func:`masked`) in everything these print.
"""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import attrs
import typer

from .._masking import mask_url, redact


class ProviderKind(enum.StrEnum):
    """``--provider`` values."""

    sqlite = "sqlite"
    sqlite_memory = "sqlite-memory"
    postgres = "postgres"


class Backend(enum.StrEnum):
    """``--backend`` values (anyio backends)."""

    trio = "trio"
    asyncio = "asyncio"


# -- option declarations shared by the commands ---------------------------------------------------------

DbOption = Annotated[
    str | None, typer.Option("--db", help="SQLite database file (never created).", show_default=False)
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL (default: $DATABASE_URL when --db is not given).",
        show_default=False,
    ),
]
SchemaOption = Annotated[str, typer.Option("--schema", help="PostgreSQL schema (never created).")]


def provider_option(help: str, *, short: bool = False, show_default: bool = True) -> Any:
    """The ``--provider`` option (``-p`` too with ``short``) with this command's help text, for
    ``Annotated[ProviderKind, provider_option(...)] = default``."""
    names = ("--provider", "-p") if short else ("--provider",)
    return typer.Option(*names, help=help, case_sensitive=False, show_default=show_default)


def url_option(help: str) -> Any:
    """The ``--database-url`` option with this command's help text, for ``Annotated[str | None, ...]``."""
    return typer.Option("--database-url", help=help, show_default=False)


def backend_option() -> Any:
    """The ``--backend`` option, for ``Annotated[Backend, backend_option()] = Backend.trio``."""
    return typer.Option("--backend", help="anyio backend to run on.")


# -- masking -------------------------------------------------------------------------------------------


def masked(text: object, url: str | None = None) -> str:
    """``text`` with every password masked (URL and conninfo patterns, and the password of ``url``)."""
    return redact(text, url)


def database_url(option: str | None) -> str | None:
    """The ``--database-url`` option, else ``$DATABASE_URL``, else ``None``."""
    return option or os.environ.get("DATABASE_URL") or None


# -- an existing database ------------------------------------------------------------------------------


class CannotOpen(Exception):
    """The database could not be opened; the message is safe to print (passwords masked)."""


@asynccontextmanager
async def open_provider(db: str | None, url: str | None, schema: str) -> AsyncIterator[Any]:
    """The provider for ``--db`` or ``--database-url`` / ``$DATABASE_URL``, closed on exit. Nothing is
    created: a missing file or schema is a ``CannotOpen``; neither option nor ``$DATABASE_URL`` is a
    ``typer.BadParameter``."""
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
        raise CannotOpen(masked(exc.message)) from None
    async with provider:
        yield provider


# -- a fresh database per run --------------------------------------------------------------------------


@attrs.frozen
class ProviderChoice:
    """What ``--provider`` and ``--database-url`` chose: the kind and its PostgreSQL URL or SQLite file
    (``None``: a temporary file, in memory, or a PostgreSQL cluster the command starts itself)."""

    kind: ProviderKind
    url: str | None = None

    @property
    def shown(self) -> str:
        """The target for people: the masked URL, the file, or ``temporary file``."""
        if self.kind is ProviderKind.postgres:
            return mask_url(self.url)
        return self.url or "temporary file"

    @property
    def postgres_url(self) -> str | None:
        """The PostgreSQL URL (``None`` for SQLite): what reports may name, masked."""
        return self.url if self.kind is ProviderKind.postgres else None

    def factory(self, *, lock_timeout: float | None = None, pool_max: int | None = None) -> Any:
        """A provider factory that makes a fresh provider per test or run (a new PostgreSQL schema, a new
        SQLite file unless a file was given).

        Raises:
            typer.BadParameter: the PostgreSQL provider cannot be imported.
        """
        extra: dict[str, Any] = {} if lock_timeout is None else {"lock_timeout": lock_timeout}
        if self.kind is ProviderKind.postgres:
            try:
                from ..providers.postgres import PostgresFactory
            except ImportError as exc:
                raise typer.BadParameter(
                    f"the PostgreSQL provider is not available: {exc}", param_hint="--provider"
                ) from exc
            return PostgresFactory(self.url or "", schema=None, pool_max=pool_max, **extra)
        from ..providers.sqlite import SqliteFactory

        if self.kind is ProviderKind.sqlite_memory:
            return SqliteFactory(":memory:", **extra)
        return SqliteFactory(self.url, **extra)


def choose_provider(
    kind: ProviderKind | None, url_option: str | None, *, sqlite_file: bool = False, url_required: bool = True
) -> ProviderChoice:
    """Resolve ``--provider`` and ``--database-url``.

    Args:
        kind: ``--provider``; ``None`` picks postgres for a ``postgres://``/``postgresql://`` URL, else sqlite.
        url_option: ``--database-url``. PostgreSQL falls back to ``$DATABASE_URL``.
        sqlite_file: with sqlite, ``--database-url`` names the file to use (a path or ``sqlite:///path``)
            instead of a temporary one; otherwise it is ignored for SQLite.
        url_required: PostgreSQL needs a URL (``False`` when the command starts its own cluster).

    Returns:
        The choice.

    Raises:
        typer.BadParameter: PostgreSQL without a URL, or a non-SQLite URL for ``--provider sqlite``.
    """
    if kind is None:
        looks_pg = bool(url_option) and str(url_option).lower().startswith(("postgres://", "postgresql://"))
        kind = ProviderKind.postgres if looks_pg else ProviderKind.sqlite
    if kind is ProviderKind.postgres:
        url = database_url(url_option)
        if not url and url_required:
            raise typer.BadParameter(
                "--provider postgres needs --database-url or the DATABASE_URL environment variable",
                param_hint="--database-url",
            )
        return ProviderChoice(kind, url)
    if kind is ProviderKind.sqlite and sqlite_file:
        return ProviderChoice(kind, _sqlite_path(url_option))
    return ProviderChoice(kind)


def _sqlite_path(url: str | None) -> str | None:
    if not url:
        return None
    if url.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute.db
        return url[len("sqlite:///") :]
    if url.startswith("sqlite://"):
        return url[len("sqlite://") :]
    if url.startswith("sqlite:"):
        return url[len("sqlite:") :]
    if "://" in url:
        raise typer.BadParameter(
            f"--provider sqlite takes a file path or sqlite:///path, not {mask_url(url)}",
            param_hint="--database-url",
        )
    return url
