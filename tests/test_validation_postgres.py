"""The provider validation suite against the PostgreSQL provider (a fresh schema per test), on both anyio
backends, through the same pytest plugin a third-party provider author uses."""

from __future__ import annotations

import pytest

from duroxide_trio.testing.validation.plugin import validation_tests


@pytest.fixture
def duroxide_provider_factory(pg_url: str):
    from duroxide_trio.providers.postgres import PostgresFactory

    return PostgresFactory(pg_url, pool_max=4)


test_postgres_provider = validation_tests()
