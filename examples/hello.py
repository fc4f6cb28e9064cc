"""Hello, durable world: one orchestration calling one activity, on a SQLite file.

    python examples/hello.py [state.db]
"""

import sys
import tempfile

import trio

import duroxide_trio as dt

registry = dt.Registry()


@registry.activity("Greet")
async def greet(ctx: dt.ActivityContext, name: str) -> str:
    return f"Hello, {name}!"


@registry.orchestration("HelloWorld")
async def hello_world(ctx: dt.OrchestrationContext, name: str) -> str:
    ctx.logger.info("greeting %s", name)  # silent while replaying
    return await ctx.schedule_activity("Greet", name)


async def main(path: str) -> None:
    provider = await dt.SqliteProvider.open(path)
    async with provider, dt.open_runtime(provider, registry) as runtime:
        await runtime.client.start_orchestration("hello-1", "HelloWorld", "Trio")
        state = await runtime.client.wait_for_orchestration("hello-1", timeout=10)
        print(state.status.value, state.output)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else tempfile.mktemp(suffix=".db"))
