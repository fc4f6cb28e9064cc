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
