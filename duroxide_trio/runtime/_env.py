"""The services the dispatchers run with, handed to them by ``open_runtime`` (the workers never see the
``Runtime``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import anyio.abc
import attrs

from ..clock import Clock
from ..history import ActivityExecute
from ..providers.base import EagerLock, Notifier, Provider, WorkItemLease, as_provider_error
from ..registry import Registry
from ._asyncio_loop import AsyncioLoopThread
from ._leases import LeaseRenewer
from ._metrics import RuntimeMetrics
from ._stats import ProviderErrors, RuntimeStats
from ._watchdog import Watchdog
from .options import RuntimeOptions

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["FETCH_FAILED", "EagerSlots", "FetchFailed", "Fetcher", "StopSignal", "WorkerEnv"]

T = TypeVar("T")


class EagerSlots(Protocol):
    """Eager dispatch seen from a turn (``_activities.EagerActivities``): reserve activity slots before
    the commit, hand the leases it locked over after it."""

    def reserve(self, worker_items: Sequence[ActivityExecute]) -> EagerLock | None:
        """Take free slots for the activities this runtime would run; the request (``None``: none)."""
        ...

    async def hand_over(self, request: EagerLock, leases: Sequence[WorkItemLease]) -> None:
        """Run the locked ``leases`` in the reserved slots and give the others back."""
        ...


class StopSignal:
    """Set once when the ``open_runtime`` block is being left: dispatchers fetch no more work."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def __bool__(self) -> bool:
        return self._set

    def set(self) -> None:
        """Tell the dispatchers to stop fetching."""
        self._set = True


class SessionSignal:
    """Wakes the session renewer when an activity dispatcher fetched a session item (so a runtime that
    owns no session never wakes up for sessions, not even on virtual time)."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._pending = False

    def fetched(self) -> None:
        """A session item was fetched: this runtime may own a session now."""
        self._pending = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Return once a session item was fetched since the last ``wait``."""
        if not self._pending:
            self._event = anyio.Event()
            await self._event.wait()
        self._pending = False


@attrs.frozen(slots=True)
class WorkerEnv:
    """What a dispatcher needs: the store, the handlers, the options, time, wake-ups, metrics and
    counters, the lease renewer, the watchdog's notes, a client for activities, the asyncio loop thread
    and the task group of the runtime's services, the stop signal, and error reporting."""

    provider: Provider
    registry: Registry
    options: RuntimeOptions
    clock: Clock
    notifier: Notifier
    metrics: RuntimeMetrics
    stats: RuntimeStats
    errors: ProviderErrors
    leases: LeaseRenewer
    watchdog: Watchdog
    client: Client
    asyncio_loop: AsyncioLoopThread
    services: anyio.abc.TaskGroup
    stop: StopSignal
    #: This runtime's id as a session owner (one per ``open_runtime``).
    worker_id: str = ""
    #: Set when a session item was fetched (wakes ``run_session_renewer``).
    sessions: SessionSignal = attrs.field(factory=SessionSignal)

    @property
    def stopping(self) -> bool:
        """True once the runtime is stopping."""
        return bool(self.stop)


class FetchFailed:
    """What :meth:`Fetcher.fetch` returns when the fetch failed (and was waited out)."""

    __slots__ = ()


FETCH_FAILED = FetchFailed()


class Fetcher(Generic[T]):
    """One dispatcher's fetch from its queue (``"orchestrator"`` or ``"worker"``): the wake-up generation
    is taken first (so no notification is missed), the fetch is timed into the ``fetch.duration`` metric
    and counted in the stats, and a failure is reported and backed off (longer with each consecutive
    failure) before the dispatcher tries again."""

    __slots__ = ("_env", "_fetch", "_generation", "_operation", "_queue", "_role", "failures")

    def __init__(
        self, env: WorkerEnv, queue: str, operation: str, role: str, fetch: Callable[[], Awaitable[T]]
    ) -> None:
        self._env = env
        self._queue = queue
        self._operation = operation
        self._role = role
        self._fetch = fetch
        self._generation = 0
        self.failures = 0

    async def fetch(self) -> T | FetchFailed:
        """Fetch once: the provider's answer, or ``FETCH_FAILED`` after the error's backoff."""
        env = self._env
        self._generation = env.notifier.generation(self._queue)
        try:
            began = time.perf_counter()
            value = await self._fetch()
            env.metrics.fetch_duration.record(time.perf_counter() - began, {"queue": self._queue})
        except Exception as exc:  # noqa: BLE001 - a ProviderError, or a provider's bug: retried
            self.failures += 1
            await env.errors.backoff(self._role, as_provider_error(self._operation, exc), self.failures)
            return FETCH_FAILED
        self.failures = 0
        env.stats.count_fetch(self._queue)
        return value

    async def wait_for_work(self) -> None:
        """After an empty fetch: wait until the queue is notified (since that fetch) or the poll interval
        passes."""
        await self._env.notifier.wait(self._queue, self._generation, self._env.options.poll_interval)
