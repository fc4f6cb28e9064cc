"""One task renews every lock this runtime holds (instead of a renewal task per turn or activity).

Due renewals run concurrently, each bounded by a timeout, so one slow renewal never delays the others;
whatever a renewal or an ``on_lost`` callback raises is contained here.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable

import anyio

from ..clock import WALL_CLOCK, Clock
from ..providers.base import ProviderError

log = logging.getLogger("duroxide_trio.runtime.leases")


#: Released leases in the heap before it may be rebuilt without them.
_COMPACT_AT = 256


async def _released_renew() -> None:
    """What a released lease renews: nothing (it is never called; the lease is inactive)."""


def _released_on_lost(exc: BaseException) -> None:
    """What a released lease reports: nothing."""


class Lease:
    """A lock held while work is in progress. ``on_lost`` is called once if renewal fails permanently."""

    __slots__ = ("renew", "interval", "on_lost", "active", "due")

    def __init__(
        self,
        renew: Callable[[], Awaitable[None]],
        interval: float,
        on_lost: Callable[[BaseException], None],
        now: float,
    ) -> None:
        self.renew = renew
        self.interval = interval
        self.on_lost = on_lost
        self.active = True
        self.due = now + interval


class LeaseRenewer:
    """Owned by the runtime's task group; ``run`` ends when the runtime stops and nothing is held."""

    def __init__(self, clock: Clock = WALL_CLOCK) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Lease]] = []
        self._counter = itertools.count()
        self._wake = anyio.Event()
        self._stopping = False
        self._released = 0  # released leases still in the heap (an upper bound)

    def hold(
        self, renew: Callable[[], Awaitable[None]], interval: float, on_lost: Callable[[BaseException], None]
    ) -> Lease:
        """Renew a lock every ``interval`` seconds until :meth:`release`.

        Args:
            renew: Renews the lock once; a permanent ``ProviderError`` means it is lost, other errors
                and timeouts are retried within a second.
            interval: Seconds between renewals.
            on_lost: Called once with the error when the lock is lost.

        Returns:
            The lease to pass to :meth:`release`.
        """
        lease = Lease(renew, interval, on_lost, self._clock.monotonic())
        first = self._heap[0][0] if self._heap else None
        self._push(lease)
        if first is None or lease.due < first:
            self._wake.set()
        return lease

    def release(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (the work is done); ``on_lost`` is not called any more.

        What the lease refers to (its callbacks and, through them, the turn's or the activity's state)
        is let go at once: the entry itself leaves the heap only when it reaches the top, up to a renewal
        interval later, and at hundreds of activities a second those would otherwise keep every finished
        activity's context alive for that long (and make each full garbage collection walk them). When
        released entries are most of the heap, it is rebuilt without them."""
        if not lease.active:
            return
        lease.active = False
        lease.renew = _released_renew
        lease.on_lost = _released_on_lost
        self._released += 1
        if self._released > _COMPACT_AT and self._released * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].active]
            heapq.heapify(self._heap)
            self._released = 0

    def stop(self) -> None:
        """Let :meth:`run` return once no lease is held."""
        self._stopping = True
        self._wake.set()

    def _push(self, lease: Lease) -> None:
        heapq.heappush(self._heap, (lease.due, next(self._counter), lease))

    async def run(self) -> None:
        """Renew due leases, each concurrently and bounded by a timeout, until :meth:`stop` and no lease
        is held."""
        async with anyio.create_task_group() as renewals:
            while True:
                while self._heap and not self._heap[0][2].active:
                    heapq.heappop(self._heap)
                    self._released = max(0, self._released - 1)
                if not self._heap:
                    if self._stopping:
                        break
                    timeout = 3600.0
                else:
                    timeout = self._heap[0][0] - self._clock.monotonic()
                if timeout > 0:
                    self._wake = anyio.Event()
                    with self._clock.move_on_after(timeout):
                        await self._wake.wait()
                    continue
                now = self._clock.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, lease = heapq.heappop(self._heap)
                    if not lease.active:
                        self._released = max(0, self._released - 1)
                    else:
                        lease.due = float("inf")  # not due again until this renewal ends
                        renewals.start_soon(self._renew, lease)

    async def _renew(self, lease: Lease) -> None:
        lost: BaseException | None = None
        retry = False
        with anyio.move_on_after(max(lease.interval, 1.0)) as scope:
            try:
                await lease.renew()
            except ProviderError as exc:
                if exc.retryable:
                    retry = True
                else:
                    lost = exc
            except Exception as exc:  # noqa: BLE001 - a provider bug: keep trying, say so
                log.warning("lock renewal raised %s: %s; retrying", type(exc).__name__, exc)
                retry = True
        if scope.cancelled_caught:
            log.warning("lock renewal took longer than %.1fs; retrying", max(lease.interval, 1.0))
            retry = True
        if not lease.active:
            return
        if lost is not None:
            lease.active = False
            try:
                lease.on_lost(lost)
            except Exception:  # noqa: BLE001
                log.exception("lock-lost callback raised; ignored")
            return
        lease.due = self._clock.monotonic() + (min(lease.interval / 4, 1.0) if retry else lease.interval)
        self._push(lease)
        self._wake.set()
