"""A runtime in its own process that owns a session, for the session-move crash test.

usage: python proc_session.py sqlite PATH | postgres URL SCHEMA
Prints "ready" once the runtime runs. The activity "SessionStep" prints "in-session <n>" and blocks on
its first delivery of item 0, so the parent can SIGKILL the process while it owns the session.
"""

from __future__ import annotations

import os
import sys

import anyio
from routing_support import OPTIONS, session_registry

import duroxide_trio as dt


async def main() -> None:
    args = sys.argv[1:]
    if args[0] == "sqlite":
        provider = await dt.SqliteProvider.open(args[1])
    else:
        from duroxide_trio.providers.postgres import PostgresProvider

        provider = await PostgresProvider.connect(args[1], schema=args[2], pool_max=4)

    async def on_start(n: int) -> None:
        print(f"in-session {n}", flush=True)
        await anyio.sleep_forever()

    async with provider, dt.open_runtime(provider, session_registry("child", [], on_start), OPTIONS):
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, backend=os.environ.get("DUROXIDE_BACKEND", "trio"))
