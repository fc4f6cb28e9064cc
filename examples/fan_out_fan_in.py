"""Fan out N activities in parallel, fan in with ctx.join, with a retry policy on a flaky step.

    python examples/fan_out_fan_in.py [state.db]
"""

import sys
import tempfile

import trio

import duroxide_trio as dt

registry = dt.Registry()
_flaky_calls = {"n": 0}


@registry.activity("Square")
async def square(ctx: dt.ActivityContext, x: int) -> int:
    await trio.sleep(0.01)  # real I/O belongs in activities
    return x * x


@registry.activity("Publish")
async def publish(ctx: dt.ActivityContext, total: int) -> str:
    _flaky_calls["n"] += 1
    if _flaky_calls["n"] == 1:
        raise ConnectionError("transient failure")
    return f"published {total}"


@registry.orchestration("SumOfSquares")
async def sum_of_squares(ctx: dt.OrchestrationContext, n: int) -> str:
    squares = await ctx.join([ctx.schedule_activity("Square", i) for i in range(1, n + 1)])
    retry = dt.RetryPolicy(max_attempts=3, backoff=dt.Backoff.exponential(base=0.05))
    return await ctx.schedule_activity("Publish", sum(squares), retry=retry)


async def main(path: str) -> None:
    provider = await dt.SqliteProvider.open(path)
    async with provider, dt.open_runtime(provider, registry) as runtime:
        await runtime.client.start_orchestration("squares-1", "SumOfSquares", 10)
        state = await runtime.client.wait_for_orchestration("squares-1", timeout=10)
        print(state.status.value, state.output)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else tempfile.mktemp(suffix=".db"))
