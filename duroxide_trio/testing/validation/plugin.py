"""pytest integration of the provider validation suite.

This module is registered as the ``duroxide_trio_validation`` pytest plugin (entry point), so pytest
imports it in every run: it defines no hooks and no fixtures and does nothing until a test module opts in.

Opt in with a fixture and two lines::

    # conftest.py (or the test module)
    import pytest
    from my_provider import MyFactory

    @pytest.fixture
    def duroxide_provider_factory():
        return MyFactory()

    # test_my_provider.py
    from duroxide_trio.testing.validation.plugin import validation_tests

    test_my_provider = validation_tests()

pytest then collects one test per suite test and anyio backend, with ids like
``test_my_provider[trio-atomicity/test_concurrent_ack_prevention]`` (select with ``-k atomicity``). The
anyio pytest plugin (shipped with anyio) runs them; ``backends`` narrows the backends, ``categories``
the categories. The fixture may be parametrised (several factories) and may be async (anyio fixture).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["validation_tests"]

FIXTURE = "duroxide_provider_factory"


def validation_tests(
    *,
    categories: Iterable[str] | None = None,
    backends: Sequence[str] = ("trio", "asyncio"),
    timeout: float | None = None,
) -> Callable[..., Any]:
    """A pytest test function running the validation suite against the ``duroxide_provider_factory``
    fixture, parametrised by category/test name and anyio backend. Assign it to a ``test_*`` name."""
    import pytest

    from ._runner import DEFAULT_TIMEOUT, select
    from ._support import ValidationSkipped

    limit = DEFAULT_TIMEOUT if timeout is None else timeout
    cases = [pytest.param(test, id=f"{category}/{test.__name__}") for category, test in select(categories)]

    @pytest.mark.anyio
    @pytest.mark.parametrize("duroxide_validation_test", cases)
    @pytest.mark.parametrize("anyio_backend", list(backends))
    async def test_provider_validation(
        duroxide_validation_test: Callable[[Any], Any], duroxide_provider_factory: Any, anyio_backend: str
    ) -> None:
        """The duroxide-trio provider validation suite (one case per suite test and backend)."""
        import anyio

        try:
            with anyio.fail_after(limit):
                await duroxide_validation_test(duroxide_provider_factory)
        except ValidationSkipped as exc:
            pytest.skip(str(exc))

    test: Callable[..., Any] = test_provider_validation
    return test
