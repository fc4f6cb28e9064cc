"""The watchdog: notices when the event loop is blocked and names what blocks it.

Orchestration turns and async activities run on the event loop thread; code that never yields (a
``while True: pass`` in an orchestration, ``time.sleep`` in an ``async def`` activity) freezes every
instance of the runtime and cannot be pre-empted. A heartbeat task on the loop stamps the time every
``tick``; a monitor running in a worker thread (owned by the runtime's task group through
``anyio.to_thread``) sees the stamp go stale and, from the loop thread's stack, names the orchestration
turn or activity that is running and for how long. Activities that blocked the loop are remembered so
that losing their lock (the renewal could not run) or ending as poison says why.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["Watchdog"]

log = logging.getLogger("duroxide_trio.runtime.watchdog")

_MAX_REMEMBERED = 1024
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Watchdog:
    """Owned by the runtime; ``run`` lives in the runtime's task group until ``stop``."""

    def __init__(self, worker_lock_timeout: float, threshold: float) -> None:
        self._worker_lock_timeout = worker_lock_timeout
        self.threshold = threshold
        self.tick = min(0.1, threshold / 4)
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._loop_thread: int | None = None
        self._blocked: OrderedDict[tuple[str, int, int], float] = OrderedDict()
        self.stalls: list[str] = []  # what was reported (newest last, bounded)

    # ------------------------------------------------------------------ used by the dispatchers
    def blocked_note(self, key: tuple[str, int, int]) -> str:
        """Why an activity may have lost its lock: it blocked the event loop (or ``""``)."""
        seconds = self._blocked.get(key)
        if seconds is None:
            return ""
        return (
            f"its code blocked the event loop for {seconds:.1f}s (worker_lock_timeout is "
            f"{self._worker_lock_timeout:g}s), so its lock could not be renewed: do not call "
            "blocking code in an async def activity — use a plain def activity (it runs in a thread) or "
            "anyio.to_thread.run_sync"
        )

    def stop(self) -> None:
        """Make :meth:`run` return (the monitor thread stops within one tick); safe from any thread."""
        self._stop.set()

    # ------------------------------------------------------------------ tasks
    async def run(self) -> None:
        """Heartbeat on the loop, monitor in a thread; returns after ``stop``."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat)
            await anyio.to_thread.run_sync(self._monitor)
            tg.cancel_scope.cancel()

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await anyio.sleep(self.tick)

    def _monitor(self) -> None:  # runs in a worker thread
        since: float | None = None  # when the current stall was first seen
        next_report = 0.0
        culprit = ""
        key: tuple[str, int, int] | None = None
        while not self._stop.wait(self.tick):
            stale = time.monotonic() - self._beat
            if stale < self.threshold:
                if since is not None:
                    total = time.monotonic() - since + self.threshold
                    if key is not None:
                        self._remember(key, total)
                    log.warning("event loop was blocked for about %.1fs by %s; it runs again", total, culprit)
                    since, key, culprit = None, None, ""
                continue
            if since is None:
                since, next_report = time.monotonic(), 0.0
                culprit, key = self._culprit()
                culprit = culprit or "code that never yields"
            if time.monotonic() >= next_report:
                if key is not None:
                    self._remember(key, stale)
                message = f"event loop blocked for {stale:.1f}s by {culprit}"
                log.warning(
                    "%s; every instance of this runtime waits until it yields (orchestrations must not loop "
                    "without awaiting; async activities must not call blocking code)", message,
                )
                self.stalls.append(message)
                del self.stalls[:-100]
                next_report = time.monotonic() + max(self.threshold, 5.0)

    def _remember(self, key: tuple[str, int, int], seconds: float) -> None:
        self._blocked[key] = max(seconds, self._blocked.get(key, 0.0))
        self._blocked.move_to_end(key)
        while len(self._blocked) > _MAX_REMEMBERED:
            self._blocked.popitem(last=False)

    def _culprit(self) -> tuple[str, tuple[str, int, int] | None]:
        """Name the turn or activity on the loop thread's stack."""
        if self._loop_thread is None:
            return "", None
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        where = ""
        while frame is not None:
            code = frame.f_code
            if not where and not code.co_filename.startswith(_PACKAGE_DIR):
                where = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
            local: dict[str, Any] = frame.f_locals
            if code.co_name == "decide_turn" and code.co_filename.startswith(_PACKAGE_DIR):
                batch = local.get("batch")
                return (
                    f"the turn of instance {getattr(batch, 'instance_id', '?')!r} (orchestration "
                    f"{getattr(batch, 'orchestration_name', '?')!r}) at {where or 'unknown'}",
                    None,
                )
            if code.co_name == "_invoke" and code.co_filename.startswith(_PACKAGE_DIR):
                item = local.get("item")
                if item is not None:
                    key = (item.instance, item.execution_id, item.id)
                    return (
                        f"activity {item.name!r} (id {item.id} of instance {item.instance!r}) at "
                        f"{where or 'unknown'}",
                        key,
                    )
            frame = frame.f_back
        return (f"code at {where}" if where else ""), None

