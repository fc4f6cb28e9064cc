"""Shared fixtures: every async test runs on both anyio backends (trio and asyncio)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = ["conftest_pg"] if os.path.exists(os.path.join(os.path.dirname(__file__), "conftest_pg.py")) else []


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["sqlite", "postgres"])
def make_provider(request: pytest.FixtureRequest, tmp_path):
    """A factory of fresh providers for end-to-end tests: a SQLite file, or a fresh PostgreSQL schema.
    Several calls within one test open several providers on the same database (like several processes)."""
    import duroxide_trio as dt

    if request.param == "sqlite":
        path = tmp_path / "state.db"

        async def make_sqlite():
            return await dt.SqliteProvider.open(path)

        return make_sqlite
    url = request.getfixturevalue("pg_url")
    schema = request.getfixturevalue("pg_schema")

    async def make_pg():
        from duroxide_trio.providers.postgres import PostgresProvider

        return await PostgresProvider.connect(url, schema=schema, pool_max=4)

    return make_pg
