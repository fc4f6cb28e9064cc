"""The PostgreSQL schema: numbered ``migrations/NNNN_*.sql`` files applied under an advisory lock, and
``drop_schema``."""

from __future__ import annotations

import importlib.resources
import logging
import re
from typing import Any

import anyio
import anyio.abc
import psycopg
from psycopg import sql

from ..._masking import redact
from ..base import (
    ProviderError,
)
from ._driver import AnyioConnection, connect
from ._queries import channel_name, hash64

logger = logging.getLogger("duroxide_trio.providers.postgres")


MIGRATIONS_TABLE = "_duroxide_migrations"

_MIGRATION_FILE = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")

def _load_migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, sql)`` of the embedded migrations, in order."""
    folder = importlib.resources.files(__package__) / "migrations"
    out = []
    for entry in folder.iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m is not None:
            out.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if not out or len(set(versions)) != len(versions):
        raise RuntimeError(f"bad migration set in {folder}: {[n for _, n, _ in out]}")
    return out

async def migrate(conn: AnyioConnection[Any], schema: str, quoted: str) -> None:
    """Bring ``schema`` up to the newest embedded migration. Each pending migration runs in its own
    transaction holding an advisory lock keyed by the schema, so concurrent connects apply it once."""
    migrations = _load_migrations()
    table = f"{quoted}.{sql.Identifier(MIGRATIONS_TABLE).as_string(conn)}"
    if await _latest_applied(conn, table) >= migrations[-1][0]:
        return  # up to date: no lock needed
    lock_key = hash64(f"duroxide_trio:migrations:{schema}")
    substitutions = {
        "@schema@": quoted,
        "@channel@": sql.Literal(channel_name(schema)).as_string(conn),
        "@lock_seed@": str(hash64(f"duroxide_trio:locks:{schema}")),
        # The worker queue's identity sequence (migration 13 draws ids before inserting locked rows).
        "@worker_seq@": sql.Literal(f"{quoted}.worker_queue_id_seq").as_string(conn) + "::regclass",
    }
    for version, file_name, text in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if await cur.fetchone() is None:
                await conn.execute(f"CREATE SCHEMA {quoted}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur = await conn.execute(f"SELECT 1 FROM {table} WHERE version = %s", (version,))
            if await cur.fetchone() is not None:
                continue
            script = text
            for placeholder, value in substitutions.items():
                script = script.replace(placeholder, value)
            await conn.execute(script)
            await conn.execute(f"INSERT INTO {table} (version, name) VALUES (%s, %s)", (version, file_name))
            logger.info("schema %r: applied migration %s", schema, file_name)

async def _latest_applied(conn: AnyioConnection[Any], table: str) -> int:
    cur = await conn.execute("SELECT to_regclass(%s)", (table,))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return 0
    cur = await conn.execute(f"SELECT COALESCE(max(version), 0) FROM {table}")
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0

async def drop_schema(url: str, schema: str, *, timeout: float = 30.0) -> None:
    """Drop ``schema`` and everything in it (its functions, tables and migration record)."""
    try:
        with anyio.fail_after(timeout):
            conn = await connect(url, autocommit=True)
            try:
                await conn.execute("SET lock_timeout = '10s'")
                await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.close()
    except psycopg.Error as ex:
        message = redact(ex, url)
        raise ProviderError.transient("drop_schema", f"cannot drop schema {schema!r}: {message}") from None
    except TimeoutError:
        raise ProviderError.transient("drop_schema", f"dropping schema {schema!r} timed out") from None
