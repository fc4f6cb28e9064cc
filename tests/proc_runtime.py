"""A runtime in its own process, for crash and multi-process tests.

usage: python proc_runtime.py sqlite PATH | postgres URL SCHEMA   [--log FILE] [--crash] [--die-after-eager]
Prints "ready" once the runtime runs. With --crash, the activity "Step" of attempt 1 prints
"in-activity <instance>" and blocks so the parent can SIGKILL the process mid-orchestration. With
--die-after-eager, the process dies (``os._exit``, no cleanup) right after the first turn's commit that
locked activities for it by eager dispatch, printing "eager <count>" first.
"""

from __future__ import annotations

import os
import sys

import anyio

import duroxide_trio as dt

# Few slots per process and activities that take a moment, so that several processes share the work.
OPTIONS = dt.RuntimeOptions(
    orchestrator_lock_timeout=1.0, worker_lock_timeout=1.0, poll_interval=0.2, activity_slots=4, orchestration_slots=4
)


def build_registry(log_path: str | None, crash: bool) -> dt.Registry:
    reg = dt.Registry()

    @reg.activity("Step")
    async def step(ctx: dt.ActivityContext, x: int) -> int:
        if crash and ctx.attempt == 1:
            print(f"in-activity {ctx.instance_id}", flush=True)
            await anyio.sleep(3600)
        await anyio.sleep(0.02)
        if log_path:
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{ctx.instance_id} {ctx.activity_id} {os.getpid()}\n".encode())
            finally:
                os.close(fd)
        return x * 10

    @reg.orchestration("Pipeline")
    async def pipeline(ctx: dt.OrchestrationContext, n: int) -> int:
        first = await ctx.schedule_activity("Step", n)
        rest = await ctx.join([ctx.schedule_activity("Step", n + i) for i in range(1, 4)])
        return first + sum(rest)

    return reg


class DieAfterEager:
    """Forwards to the provider; exits the process at once after an ack returned eager leases."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def __aenter__(self) -> DieAfterEager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.close()  # type: ignore[attr-defined]

    async def ack_orchestration_item(self, *args: object, **kwargs: object) -> object:
        leases = await self._inner.ack_orchestration_item(*args, **kwargs)  # type: ignore[attr-defined]
        if leases:
            print(f"eager {len(leases)}", flush=True)
            os._exit(9)  # a crash: the locks stay behind
        return leases


async def main() -> None:
    args = sys.argv[1:]
    log_path = args[args.index("--log") + 1] if "--log" in args else None
    crash = "--crash" in args
    if args[0] == "sqlite":
        provider = await dt.SqliteProvider.open(args[1])
    else:
        from duroxide_trio.providers.postgres import PostgresProvider

        provider = await PostgresProvider.connect(args[1], schema=args[2], pool_max=4)
    runner = DieAfterEager(provider) if "--die-after-eager" in args else provider
    async with provider, dt.open_runtime(runner, build_registry(log_path, crash), OPTIONS):  # type: ignore[arg-type]
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, backend=os.environ.get("DUROXIDE_BACKEND", "trio"))
