"""Testing the order workflow of ``order_workflow.py`` the way a user would: pytest, the ``duroxide_env``
fixture (an in-memory runtime on virtual time), fake activities, and a replay check.

    pytest examples/test_order_workflow.py

The one-hour shipment deadline and the charge retries' backoff take no real time: while the test waits,
the environment's clock jumps to the next deadline whenever nothing else can happen.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from order_workflow import Order, registry  # noqa: E402

import duroxide_trio as dt  # noqa: E402
from duroxide_trio.testing import Replayer  # noqa: E402

pytestmark = pytest.mark.anyio
ORDER = Order("o-1", "book", 2, 3998)


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request):
    return request.param


@pytest.fixture
def duroxide_registry():
    return registry


async def test_shipped_in_time(duroxide_env):
    env = duroxide_env
    await env.client.start_orchestration("o-1", "ProcessOrder", ORDER)
    await env.client.raise_event("o-1", "Shipped", {"tracking": "TRK-1"})
    state = await env.client.wait_for_orchestration("o-1", timeout=timedelta(days=1))
    assert state.status is dt.Status.COMPLETED and state.output == "shipped: TRK-1"
    assert [c.name for c in env.calls()] == ["Reserve", "Charge"]


async def test_charge_is_retried_with_backoff(duroxide_env):
    env = duroxide_env
    attempts = []

    async def flaky_charge(ctx, order):
        attempts.append(env.now())
        if len(attempts) < 3:
            raise ConnectionError("payment service unavailable")
        return "pay-ok"

    env.mock_activity("Charge", flaky_charge)
    await env.client.start_orchestration("o-1", "ProcessOrder", ORDER)
    await env.client.raise_event("o-1", "Shipped", {"tracking": "TRK-2"})
    state = await env.client.wait_for_orchestration("o-1", timeout=timedelta(days=1))
    assert state.output == "shipped: TRK-2"
    charges = env.calls("Charge")
    assert [(c.attempt, c.succeeded) for c in charges] == [(1, False), (2, False), (3, True)]
    assert charges[0].input == ORDER  # typed input, as the real activity gets it
    assert [b - a for a, b in zip(attempts, attempts[1:], strict=False)] == [timedelta(seconds=10), timedelta(seconds=20)]


async def test_payment_failure_releases_the_stock(duroxide_env):
    env = duroxide_env
    env.mock_activity("Charge", raises=ValueError("card declined"))
    state = await env.run("ProcessOrder", ORDER, instance_id="o-1")
    assert state.output == "payment failed: ValueError: card declined"
    assert [c.name for c in env.calls()] == ["Reserve", "Charge", "Charge", "Charge", "Release"]


async def test_no_shipment_within_an_hour_is_compensated(duroxide_env):
    env = duroxide_env
    start = env.now()
    await env.client.start_orchestration("o-1", "ProcessOrder", ORDER)
    state = await env.client.wait_for_orchestration("o-1", timeout=timedelta(hours=24))
    assert state.output == "cancelled: not shipped within 1:00:00"
    assert [c.name for c in env.calls()] == ["Reserve", "Charge", "Refund", "Release"]
    assert env.calls("Refund")[0].input == "pay-o-1"
    assert env.now() - start == timedelta(hours=1)


async def test_time_is_the_tests_to_move(duroxide_env):
    env = duroxide_env
    await env.client.start_orchestration("o-1", "ProcessOrder", ORDER)
    await env.advance(timedelta(minutes=59))
    assert (await env.client.get_status("o-1")).custom_status == "waiting for shipment"
    await env.client.raise_event("o-1", "Shipped", {"tracking": "TRK-3"})
    state = await env.client.wait_for_orchestration("o-1", timeout=timedelta(minutes=1))
    assert state.output == "shipped: TRK-3"


async def test_recorded_history_replays_deterministically(duroxide_env):
    """What CI does with production histories (``duroxide-trio replay``), on this test's own history."""
    env = duroxide_env
    await env.run("ProcessOrder", ORDER, instance_id="o-1")
    report = await Replayer(registry).replay_from_provider(env.provider, "o-1")
    assert report.deterministic, report.describe()
