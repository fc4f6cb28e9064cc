"""The same runtime embedded in an asyncio application (anyio's asyncio backend).

    python examples/asyncio_host.py [state.db]
"""

import asyncio
import sys
import tempfile

import duroxide_trio as dt

registry = dt.Registry()


@registry.activity("Fetch")
async def fetch(ctx: dt.ActivityContext, url: str) -> int:
    await asyncio.sleep(0.01)  # asyncio-only libraries are fine inside activities on this backend
    return len(url)


@registry.orchestration("Crawl")
async def crawl(ctx: dt.OrchestrationContext, urls: list[str]) -> int:
    sizes = await ctx.join([ctx.schedule_activity("Fetch", u) for u in urls])
    return sum(sizes)


async def main(path: str) -> None:
    provider = await dt.SqliteProvider.open(path)
    async with provider, dt.open_runtime(provider, registry) as runtime:
        await runtime.client.start_orchestration("crawl-1", "Crawl", ["a.example", "bb.example"])
        state = await runtime.client.wait_for_orchestration("crawl-1", timeout=10)
        print(asyncio.get_running_loop().__class__.__name__, state.status.value, state.output)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mktemp(suffix=".db")))
