"""pytest fixtures for testing orchestrations: ``duroxide_env`` (registered as the ``duroxide_trio`` plugin).

Say which registry your tests use, then ask for ``duroxide_env`` in an async test::

    # conftest.py
    import pytest
    from myapp.workflows import registry

    @pytest.fixture
    def duroxide_registry():
        return registry

    # test_orders.py (anyio's pytest plugin, shipped with anyio)
    @pytest.mark.anyio
    async def test_order(duroxide_env):
        state = await duroxide_env.run("Order", {"id": "o-1"})
        assert state.status is dt.Status.COMPLETED

``duroxide_env`` is a :class:`~duroxide_trio.testing.TestEnvironment` on virtual time, entered for the
test and closed after it. Override ``duroxide_env_options`` (a dict of ``TestEnvironment`` keyword
arguments: ``overrides``, ``virtual_time``, ``start``, ``options``) to change it.

- **anyio plugin**: mark tests ``@pytest.mark.anyio`` (or ``pytestmark``) and the test and the fixture
  run on each backend of the ``anyio_backend`` fixture (trio and asyncio if you parametrise it).
- **pytest-trio**: mark tests ``@pytest.mark.trio`` (or use ``trio_mode = true``); pytest-trio runs the
  fixture in the test's Trio run. Its ``autojump_clock`` / ``mock_clock`` fixtures work too: the
  environment's virtual time does not depend on Trio's clock. Beware that ``trio_mode`` runs *every*
  async test on Trio, asyncio ones included; with both plugins installed, prefer explicit marks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from .environment import TestEnvironment

__all__ = ["duroxide_env", "duroxide_env_options", "duroxide_registry"]


@pytest.fixture
def duroxide_registry() -> Any:
    """The registry ``duroxide_env`` runs. Override it in your conftest.py or test module."""
    raise pytest.UsageError(
        "duroxide_env needs your registry: define a fixture named 'duroxide_registry' that returns it "
        "(in conftest.py or the test module)"
    )


@pytest.fixture
def duroxide_env_options() -> dict[str, Any]:
    """Keyword arguments for the ``TestEnvironment`` of ``duroxide_env`` (override to change them)."""
    return {}


@pytest.fixture
async def duroxide_env(duroxide_registry: Any, duroxide_env_options: dict[str, Any]) -> AsyncIterator[TestEnvironment]:
    """A ``TestEnvironment`` (in-memory provider and runtime, virtual time) for the test's registry."""
    async with TestEnvironment(duroxide_registry, **duroxide_env_options) as env:
        yield env
