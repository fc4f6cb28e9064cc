"""Human approval: an external event raced against a durable timer.

The first request is approved by a "human" (the client raises the event); the second gets no answer
and times out. The timer is durable: if the process dies, the deadline survives the restart.

    python examples/human_approval.py [state.db]
"""

import sys
import tempfile

import trio

import duroxide_trio as dt

registry = dt.Registry()


@registry.activity("Notify")
async def notify(ctx: dt.ActivityContext, message: str) -> None:
    print("notify:", message)


@registry.orchestration("ApproveExpense")
async def approve_expense(ctx: dt.OrchestrationContext, request: dict) -> str:
    await ctx.schedule_activity("Notify", f"please approve {request['amount']} for {request['who']}")
    ctx.set_custom_status("waiting for approval")
    index, decision = await ctx.select(
        ctx.wait_for_event("decision"), ctx.schedule_timer(request["timeout_seconds"])
    )
    if index == 1:
        return "escalated: no answer in time"
    return f"{decision['verdict']} by {decision['by']}"


async def main(path: str) -> None:
    provider = await dt.SqliteProvider.open(path)
    async with provider, dt.open_runtime(provider, registry) as runtime:
        client = runtime.client
        await client.start_orchestration("expense-1", "ApproveExpense", {"who": "ana", "amount": 120,
                                                                         "timeout_seconds": 30})
        await client.start_orchestration("expense-2", "ApproveExpense", {"who": "bo", "amount": 99,
                                                                         "timeout_seconds": 0.5})
        await client.raise_event("expense-1", "decision", {"verdict": "approved", "by": "manager"})
        for instance in ("expense-1", "expense-2"):
            state = await client.wait_for_orchestration(instance, timeout=10)
            print(instance, state.status.value, state.output)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else tempfile.mktemp(suffix=".db"))
