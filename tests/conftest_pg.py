"""pytest plugin: PostgreSQL fixtures ``pg_url`` (session) and ``pg_schema`` (per test).

Load it from ``tests/conftest.py`` with ``pytest_plugins = ["conftest_pg"]`` (``tests/`` is on
``sys.path`` under pytest's default ``prepend`` import mode because ``tests/`` has no ``__init__.py``).

- ``pg_url``: ``DATABASE_URL`` when set (checked to be reachable), else a throwaway cluster from the local
  PostgreSQL binaries, started once per session and removed at the end. With neither, the tests that use
  it are skipped with the reason, repeated at the end of the run; with ``DUROXIDE_REQUIRE_POSTGRES=1`` they
  fail instead.
- ``pg_schema``: a fresh schema (created, empty) whose name is yielded; dropped with CASCADE afterwards.

Tests that use either fixture get the ``postgres`` marker, so ``-m "not postgres"`` deselects them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pg_support
import pytest

_outcome: dict[str, str] = {}


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        try:
            url, description = stack.enter_context(pg_support.postgres_url())
        except pg_support.PostgresUnavailable as ex:
            reason = (
                f"PostgreSQL tests NOT RUN: {ex}. Set DATABASE_URL=postgresql://user@host/db or install "
                "the PostgreSQL server binaries (initdb, pg_ctl)."
            )
            if pg_support.postgres_required():
                _outcome["failed"] = reason
                pytest.fail(f"{reason} ({pg_support.REQUIRE_ENV}=1 makes this an error)", pytrace=False)
            _outcome["skipped"] = reason
            pytest.skip(reason)
        _outcome["server"] = description
        yield url


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    name = pg_support.new_schema_name()
    pg_support.create_schema(pg_url, name)
    try:
        yield name
    finally:
        pg_support.drop_schema(pg_url, name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"pg_url", "pg_schema"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if reason := _outcome.get("skipped") or _outcome.get("failed"):
        terminalreporter.section("PostgreSQL", sep="!", yellow=True, bold=True)
        terminalreporter.write_line(reason, yellow=True, bold=True)
    elif server := _outcome.get("server"):
        terminalreporter.write_line(f"PostgreSQL tests ran against {server}")
