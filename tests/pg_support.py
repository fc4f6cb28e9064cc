"""Where the test suite's PostgreSQL comes from, and per-test schemas (plain sync psycopg).

Order: ``DATABASE_URL`` if set; else a throwaway cluster from the local binaries
(``duroxide_trio.providers.postgres._localcluster``); else ``PostgresUnavailable``, which the fixtures turn
into a skip, or into a failure when ``DUROXIDE_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from duroxide_trio.providers.postgres._driver import mask_url
from duroxide_trio.providers.postgres._localcluster import (
    ClusterUnavailable,
    find_bindir,
    throwaway_cluster,
)

__all__ = [
    "REQUIRE_ENV",
    "URL_ENV",
    "PostgresUnavailable",
    "create_schema",
    "drop_schema",
    "new_schema_name",
    "postgres_required",
    "postgres_url",
]

URL_ENV = "DATABASE_URL"
REQUIRE_ENV = "DUROXIDE_REQUIRE_POSTGRES"

#: A test cluster may lose everything on a crash: trade durability for speed.
TEST_CLUSTER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be used by the tests (the message says why)."""


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def check_reachable(url: str, timeout: float = 10.0) -> None:
    """Fail fast, with the (masked) URL in the message, when ``DATABASE_URL`` points nowhere."""
    try:
        with psycopg.connect(url, connect_timeout=max(2, int(timeout))) as conn:
            conn.execute("select 1")
    except psycopg.Error as ex:
        raise RuntimeError(f"{URL_ENV}={mask_url(url)} is set but the server is not usable: {ex}") from None


@contextlib.contextmanager
def postgres_url() -> Iterator[tuple[str, str]]:
    """Yield ``(url, description)`` of the server to test against; a throwaway cluster is stopped and
    removed when the block exits. Raises ``PostgresUnavailable`` when there is none."""
    if url := os.environ.get(URL_ENV, "").strip():
        check_reachable(url)
        yield url, f"{URL_ENV}={mask_url(url)}"
        return
    try:
        with throwaway_cluster(settings=TEST_CLUSTER_SETTINGS) as url:
            yield url, f"throwaway cluster from {find_bindir()} at {url}"
    except ClusterUnavailable as ex:
        raise PostgresUnavailable(
            f"{URL_ENV} is not set and no throwaway cluster can be started: {ex}"
        ) from ex


def new_schema_name(prefix: str = "t") -> str:
    """A fresh, safe, lowercase schema name."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def create_schema(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))


def drop_schema(url: str, name: str, *, lock_timeout_ms: int = 10_000) -> None:
    """Drop the schema and everything in it; fails (rather than hangs) if a leaked session holds locks."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("set lock_timeout = {}").format(sql.Literal(lock_timeout_ms)))
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))
