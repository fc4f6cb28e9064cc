"""An order workflow: reserve stock, charge with retries, wait for the shipment (at most one hour),
compensate when it does not come. Its tests are in ``test_order_workflow.py`` (virtual time, fakes).

    python examples/order_workflow.py [state.db]     # runs one order for real, with a 0.2-second deadline
"""

from __future__ import annotations

import sys
import tempfile
from datetime import timedelta

import attrs
import trio

import duroxide_trio as dt

registry = dt.Registry()


@attrs.frozen
class Order:
    id: str
    sku: str
    quantity: int
    amount_cents: int
    ship_within_seconds: float = 3600.0


# Activities: the real ones would call the inventory and payment services.
@registry.activity("Reserve")
async def reserve(ctx: dt.ActivityContext, order: Order) -> str:
    return f"rsv-{order.id}"


@registry.activity("Charge")
async def charge(ctx: dt.ActivityContext, order: Order) -> str:
    return f"pay-{order.id}"


@registry.activity("Refund")
async def refund(ctx: dt.ActivityContext, payment: str) -> None:
    print("refunded", payment)


@registry.activity("Release")
async def release(ctx: dt.ActivityContext, reservation: str) -> None:
    print("released", reservation)


CHARGE_RETRY = dt.RetryPolicy(max_attempts=3, backoff=dt.Backoff.exponential(base=10, factor=2, cap=60))


@registry.orchestration("ProcessOrder")
async def process_order(ctx: dt.OrchestrationContext, order: Order) -> str:
    reservation = await ctx.schedule_activity("Reserve", order)
    try:
        payment = await ctx.schedule_activity("Charge", order, retry=CHARGE_RETRY)
    except dt.ActivityFailed as exc:
        await ctx.schedule_activity("Release", reservation)
        return f"payment failed: {exc.details.message}"
    ctx.set_custom_status("waiting for shipment")
    deadline = timedelta(seconds=order.ship_within_seconds)
    index, shipment = await ctx.select(ctx.wait_for_event("Shipped"), ctx.schedule_timer(deadline))
    if index == 0:
        return f"shipped: {shipment['tracking']}"
    await ctx.schedule_activity("Refund", payment)
    await ctx.schedule_activity("Release", reservation)
    return f"cancelled: not shipped within {deadline}"


async def main(path: str) -> None:
    provider = await dt.SqliteProvider.open(path)
    async with provider, dt.open_runtime(provider, registry) as runtime:
        order = Order("o-1", "book", 1, 1999, ship_within_seconds=0.2)
        await runtime.client.start_orchestration(order.id, "ProcessOrder", order)
        state = await runtime.client.wait_for_orchestration(order.id, timeout=30)
        print(order.id, state.status.value, state.output)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else tempfile.mktemp(suffix=".db"))
