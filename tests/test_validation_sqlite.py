"""The provider validation suite against the SQLite provider (file and in-memory), on both anyio backends,
through the pytest plugin exactly as a third-party provider author would use it."""

from __future__ import annotations

import pytest

from duroxide_trio.providers.sqlite import SqliteFactory
from duroxide_trio.testing.validation.plugin import validation_tests


@pytest.fixture(params=["file", "memory"])
def duroxide_provider_factory(request: pytest.FixtureRequest) -> SqliteFactory:
    return SqliteFactory() if request.param == "file" else SqliteFactory(":memory:")


test_sqlite_provider = validation_tests()
