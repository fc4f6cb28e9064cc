"""One task renews every lock this runtime holds (instead of a renewal task per turn or activity)."""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from ..providers.base import ProviderError

log = logging.getLogger("duroxide_trio.runtime.leases")


class Lease:
    """A lock held while work is in progress. ``lost`` is called once if renewal fails permanently."""

    __slots__ = ("renew", "interval", "on_lost", "active", "due")

    def __init__(
        self, renew: Callable[[], Awaitable[None]], interval: float, on_lost: Callable[[ProviderError], None]
    ) -> None:
        self.renew = renew
        self.interval = interval
        self.on_lost = on_lost
        self.active = True
        self.due = time.monotonic() + interval


class LeaseRenewer:
    """Owned by the runtime's task group; ``run`` ends when the runtime stops and nothing is held."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Lease]] = []
        self._counter = itertools.count()
        self._wake = anyio.Event()
        self._stopping = False

    def hold(
        self, renew: Callable[[], Awaitable[None]], interval: float, on_lost: Callable[[ProviderError], None]
    ) -> Lease:
        lease = Lease(renew, interval, on_lost)
        first = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (lease.due, next(self._counter), lease))
        if first is None or lease.due < first:
            self._wake.set()
        return lease

    @staticmethod
    def release(lease: Lease) -> None:
        lease.active = False

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            while self._heap and not self._heap[0][2].active:
                heapq.heappop(self._heap)
            if not self._heap:
                if self._stopping:
                    return
                timeout = 3600.0
            else:
                timeout = self._heap[0][0] - time.monotonic()
            if timeout > 0:
                self._wake = anyio.Event()
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
                continue
            _, _, lease = heapq.heappop(self._heap)
            try:
                await lease.renew()
            except ProviderError as exc:
                if exc.retryable:
                    lease.due = time.monotonic() + min(lease.interval, 1.0)
                    heapq.heappush(self._heap, (lease.due, next(self._counter), lease))
                    continue
                if lease.active:
                    lease.active = False
                    lease.on_lost(exc)
                continue
            if lease.active:
                lease.due = time.monotonic() + lease.interval
                heapq.heappush(self._heap, (lease.due, next(self._counter), lease))
