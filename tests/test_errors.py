"""One root for everything the package raises, and one Status enum."""

from __future__ import annotations

import inspect

import pytest

import duroxide_trio as dt
from duroxide_trio import errors


def _exception_classes() -> list[type[BaseException]]:
    names = [n for n in dt.__all__ if n not in ("PostgresProvider", "PostgresFactory")]
    found = [getattr(dt, n) for n in names]
    found += [obj for _, obj in inspect.getmembers(errors, inspect.isclass)]
    return [c for c in found if isinstance(c, type) and issubclass(c, BaseException)]


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: c.__name__)
def test_every_public_exception_has_the_one_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, dt.DuroxideError), f"{cls.__name__} does not derive from dt.DuroxideError"


def test_old_builtin_bases_still_catch() -> None:
    assert issubclass(dt.PayloadError, TypeError)
    assert issubclass(dt.UnknownOrchestration, ValueError)
    assert issubclass(dt.LimitExceeded, ValueError)
    assert issubclass(dt.ManagementNotAvailable, RuntimeError)
    assert issubclass(dt.OrchestrationTimeout, TimeoutError)


def test_status_is_the_stored_spelling() -> None:
    assert dt.Status.RUNNING == "Running" and str(dt.Status.COMPLETED) == "Completed"
    assert dt.Status.CONTINUED_AS_NEW == "ContinuedAsNew"
    assert not dt.Status.CONTINUED_AS_NEW.is_terminal and dt.Status.FAILED.is_terminal


@pytest.mark.anyio
async def test_wait_timeout_is_an_orchestration_timeout(tmp_path, anyio_backend) -> None:  # type: ignore[no-untyped-def]
    registry = dt.Registry()

    @registry.orchestration("Waits")
    async def waits(ctx: dt.OrchestrationContext) -> None:
        await ctx.wait_for_event("never")

    async with await dt.SqliteProvider.open(str(tmp_path / "s.db")) as provider:
        async with dt.open_runtime(provider, registry, dt.RuntimeOptions()) as runtime:
            await runtime.client.start_orchestration("w-1", "Waits")
            with pytest.raises(dt.OrchestrationTimeout, match="did not finish"):
                await runtime.client.wait_for_orchestration("w-1", timeout=0.2)
