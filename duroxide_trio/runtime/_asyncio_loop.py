"""Activities registered with ``loop="asyncio"`` run on an asyncio event loop while the runtime runs on
Trio, so asyncio-only libraries (``asyncio.open_connection``, aiohttp, asyncpg ...) work in them.

The loop lives in one dedicated thread per runtime, started on the first such activity and owned by the
runtime's task group (``anyio.to_thread`` runs ``loop.run_forever``; stopping the runtime stops the loop
and the thread returns). Each activity is submitted with ``asyncio.run_coroutine_threadsafe``; its
completion wakes the Trio task through the Trio token. Cancelling the Trio side (lost lock after the
cancellation grace, shutdown) cancels the asyncio task, so the activity sees ``asyncio.CancelledError``.

We chose a loop thread over trio-asyncio: trio-asyncio patches asyncio process-wide (every asyncio user
in the process became about 3x slower in our measurements) and depends on import order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

__all__ = ["AsyncioLoopThread"]


class AsyncioLoopThread:
    """One asyncio loop in one thread, for the lifetime of a runtime."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._started = False
        self._lock = anyio.Lock()

    async def _ensure(self, task_group: anyio.abc.TaskGroup) -> asyncio.AbstractEventLoop:
        async with self._lock:
            if not self._started:
                self._started = True
                task_group.start_soon(self._serve, name="asyncio-activity-loop")
            await anyio.to_thread.run_sync(self._ready.wait)
        assert self._loop is not None
        return self._loop

    async def _serve(self) -> None:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        await anyio.to_thread.run_sync(run)

    def stop(self) -> None:
        """Stop the loop (its pending tasks are cancelled and the thread returns); safe from any thread,
        a no-op if it never started."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)

    async def run(self, task_group: anyio.abc.TaskGroup, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop thread and wait for it here (cancellation reaches it)."""
        import trio
        import trio.lowlevel

        loop = await self._ensure(task_group)
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future[Any]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # pragma: no cover - the runtime is gone
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # schedules the cancellation of the asyncio task on its loop
            raise
        return future.result()
