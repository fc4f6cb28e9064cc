"""An anyio driver for psycopg 3, so that ``psycopg.AsyncConnection`` runs under Trio *and* asyncio.

psycopg keeps its protocol logic in generators (``psycopg.generators``) that yield "wait until the socket
is readable/writable" and are resumed with the readiness. Only the code that *waits* is asyncio-specific.
``AnyioConnection`` replaces exactly that part (see ``reference/stack.md`` §0.2 and Appendix A):

- ``connect``: DNS in ``anyio.to_thread``; the connect generator driven with ``anyio.wait_readable`` /
  ``wait_writable``; ``connect_timeout`` enforced with ``anyio.fail_after`` (per address, like libpq).
- ``wait``: the same driver. When the calling scope is cancelled in the middle of a query, a server-side
  cancel is sent and the reply drained in a shielded scope (at most ``CANCEL_TIMEOUT`` seconds; after that
  the connection is closed), then the cancellation propagates. The connection is left in ``INERROR`` (or
  ``IDLE`` in autocommit mode), so whoever owns it must roll back: the pool does.
- ``cancel_safe``: libpq >= 17 non-blocking cancel driven by anyio (a worker thread on older libpq).
- ``lock`` is an ``anyio.Lock`` (psycopg's ``asyncio.Lock`` fails under Trio when contended).
- ``close`` calls ``anyio.notify_closing(fd)`` first, so a task waiting on the socket (for example in
  ``notifies()``) wakes up at once with ``OperationalError`` instead of sleeping forever.

Socket-level anyio errors (``ClosedResourceError``, ``BusyResourceError``) and ``OSError`` surface as
``psycopg.OperationalError``.

This module uses private psycopg API (``_connect_gen``, ``_cancel_gen``, ``_should_cancel``,
``psycopg._conninfo_attempts``, ``errors._WaitTimeout``); psycopg is pinned to ``<3.4`` for that reason and
``tests/test_pg_driver.py`` is the contract to re-run on every psycopg upgrade.

Rules for users: iterate ``conn.notifies()`` inside ``contextlib.aclosing(...)`` (the generator holds
``conn.lock`` while suspended), and give a listener its own connection.
"""

from __future__ import annotations

import logging
import math
import os
import select
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

import anyio
import anyio.lowlevel
import anyio.to_thread
import psycopg
from psycopg import errors as e
from psycopg import pq
from psycopg._conninfo_attempts import conninfo_attempts  # private: sync twin of psycopg's async resolver
from psycopg.abc import AdaptContext, ConnParam, PQGen, PQGenConn
from psycopg.adapt import AdaptersMap
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.cursor_async import AsyncCursor
from psycopg.pq.abc import PGconn
from psycopg.rows import AsyncRowFactory, Row, tuple_row
from psycopg.waiting import Ready, Wait

from ..._masking import mask_url

__all__ = [
    "CANCEL_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "AnyioConnection",
    "connect",
    "mask_url",
]

logger = logging.getLogger(__name__)

RV = TypeVar("RV")

#: Used when neither the caller nor the conninfo (nor ``PGCONNECT_TIMEOUT``) gives a positive timeout.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: How long a cancelled query may take to stop on the server before the connection is closed instead.
CANCEL_TIMEOUT = 5.0
#: Socket-already-writable steps served without going through the event loop before yielding to it, so a
#: large COPY or pipeline cannot starve the other tasks.
_MAX_BUSY_STEPS = 64

_ACTIVE = pq.TransactionStatus.ACTIVE
_R, _W = int(Wait.R), int(Wait.W)
_READY_R, _READY_W = int(Ready.R), int(Ready.W)


# ---------------------------------------------------------------------------------------------------------
# Passwords never appear in messages




# ---------------------------------------------------------------------------------------------------------
# Waiting on the socket


if hasattr(select, "poll"):
    _POLL_BAD = select.POLLERR | select.POLLHUP

    def _ready_now(fd: int, wait: int) -> int:
        """The readiness of ``fd`` right now (no waiting), as psycopg ``Ready`` flags."""
        poller = select.poll()
        poller.register(fd, (select.POLLIN if wait & _R else 0) | (select.POLLOUT if wait & _W else 0))
        ready = 0
        for _, events in poller.poll(0):
            if events & select.POLLNVAL:
                raise OSError(f"file descriptor {fd} is not open")
            if events & _POLL_BAD:
                return wait  # let libpq find out what happened
            if events & select.POLLIN:
                ready |= _READY_R
            if events & select.POLLOUT:
                ready |= _READY_W
        return ready

else:  # pragma: no cover - Windows

    def _ready_now(fd: int, wait: int) -> int:
        r, w, _ = select.select([fd] if wait & _R else [], [fd] if wait & _W else [], [], 0)
        return (_READY_R if r else 0) | (_READY_W if w else 0)


async def _wait_ready(fd: int, wait: int) -> int:
    """Wait until ``fd`` is ready as ``wait`` asks; return the psycopg ``Ready`` flags."""
    if wait == _R:
        await anyio.wait_readable(fd)
        return _READY_R
    if wait == _W:
        await anyio.wait_writable(fd)
        return _READY_W
    # Wait.RW (flushing a large request): whichever comes first. Reading matters too, because the server
    # may be blocked sending us something while we are blocked sending to it.
    ready = 0
    async with anyio.create_task_group() as tg:

        async def one(waiter: Callable[[int], Awaitable[None]], flag: int) -> None:
            nonlocal ready
            await waiter(fd)
            ready |= flag
            tg.cancel_scope.cancel()

        tg.start_soon(one, anyio.wait_readable, _READY_R)
        tg.start_soon(one, anyio.wait_writable, _READY_W)
    return ready


def _socket_error(ex: Exception) -> psycopg.OperationalError:
    if isinstance(ex, anyio.ClosedResourceError):
        return psycopg.OperationalError("the connection was closed while a task was waiting on it")
    if isinstance(ex, anyio.BusyResourceError):
        return psycopg.OperationalError("another task is already waiting on this connection's socket")
    return psycopg.OperationalError(f"connection socket closed: {ex}")


_SOCKET_ERRORS = (OSError, anyio.ClosedResourceError, anyio.BusyResourceError)


class _Driver(Generic[RV]):
    """Feeds socket readiness to one psycopg generator (one that keeps its file descriptor).

    It remembers what the generator is waiting for, so after ``run()`` was interrupted by a cancellation
    it can be run again to drain the server's reply to a cancel request.
    """

    def __init__(self, gen: PQGen[RV], fd: int) -> None:
        self._gen = gen
        self._fd = fd
        self._wait: int | None = None

    async def run(self) -> RV:
        gen, fd = self._gen, self._fd
        busy_steps = 0
        try:
            if self._wait is None:
                self._wait = next(gen)
            while True:
                wait = self._wait
                ready = 0
                if wait & _W and busy_steps < _MAX_BUSY_STEPS:
                    # A socket asked to write is nearly always writable: skip the event loop round trip.
                    ready = _ready_now(fd, wait)
                if ready:
                    busy_steps += 1
                else:
                    busy_steps = 0
                    ready = await _wait_ready(fd, wait)
                self._wait = gen.send(ready)
        except StopIteration as ex:
            return cast(RV, ex.value)
        except _SOCKET_ERRORS as ex:
            raise _socket_error(ex) from ex

    def finish_at_deadline(self) -> RV:
        """Called when a ``wait(timeout=...)`` deadline passed: like psycopg, let the generator process
        whatever already arrived (so ``timeout=0`` polls once), else raise ``_WaitTimeout``."""
        if self._wait is not None and (ready := _ready_now(self._fd, self._wait)):
            try:
                self._wait = self._gen.send(ready)
            except StopIteration as ex:
                return cast(RV, ex.value)
        raise e._WaitTimeout("wait timeout expired")  # private: psycopg's notifies() catches exactly this


async def _drive_conn(gen: PQGenConn[RV]) -> RV:
    """Run a connect or cancel-request generator; these yield ``(fd, wait)`` as the socket may change."""
    try:
        fd, wait = next(gen)
        while True:
            fd, wait = gen.send(await _wait_ready(fd, wait))
    except StopIteration as ex:
        return cast(RV, ex.value)
    except _SOCKET_ERRORS as ex:
        raise _socket_error(ex) from ex
    finally:
        gen.close()  # on timeout/cancel this releases the half-open libpq connection (and its socket) now


def _timeout_from(value: object) -> float:
    if value is None or value == "":
        value = os.environ.get("PGCONNECT_TIMEOUT") or DEFAULT_CONNECT_TIMEOUT
    try:
        timeout = float(cast(Any, value))
    except ValueError:
        raise psycopg.ProgrammingError(f"bad value for connect_timeout: {value!r}") from None
    # libpq reads 0 as "wait forever"; here every connect has a deadline.
    return timeout if timeout > 0 and math.isfinite(timeout) else DEFAULT_CONNECT_TIMEOUT


def _describe(attempt: dict[str, Any]) -> str:
    host, port, hostaddr = attempt.get("host"), attempt.get("port"), attempt.get("hostaddr")
    where = f"host={host!r}" + (f" ({hostaddr})" if hostaddr and hostaddr != host else "")
    return where + (f" port={port}" if port else "")


def _connect_error(failures: list[tuple[psycopg.Error, str]]) -> psycopg.Error:
    last = failures[-1][0]
    if len(failures) == 1:
        return last
    lines = [str(last), "Multiple connection attempts failed. All failures were:"]
    lines += [f"- {where}: {error}" for error, where in failures]
    return type(last)("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------
# The connection


class AnyioConnection(psycopg.AsyncConnection[Row]):
    """``psycopg.AsyncConnection`` that waits through anyio: works under Trio and asyncio alike."""

    def __init__(
        self,
        pgconn: PGconn,
        row_factory: AsyncRowFactory[Row] = cast(AsyncRowFactory[Row], tuple_row),
    ) -> None:
        super().__init__(pgconn, row_factory)
        # Task-owned under Trio; uncontended acquisition does not yield (every query waits on I/O anyway).
        self.lock = anyio.Lock(fast_acquire=True)  # type: ignore[assignment]

    @classmethod
    async def connect(
        cls,
        conninfo: str = "",
        *,
        autocommit: bool = False,
        prepare_threshold: int | None = 5,
        context: AdaptContext | None = None,
        row_factory: AsyncRowFactory[Row] | None = None,
        cursor_factory: type[AsyncCursor[Row]] | None = None,
        **kwargs: ConnParam,
    ) -> AnyioConnection[Row]:
        """Connect like ``psycopg.AsyncConnection.connect``, with these differences: ``connect_timeout``
        (seconds, float, from the conninfo, the keyword or ``PGCONNECT_TIMEOUT``) is applied to each
        address exactly, without psycopg's 2 s minimum, and when unset or <= 0 it is
        ``DEFAULT_CONNECT_TIMEOUT``. On timeout, ``psycopg.errors.ConnectionTimeout`` (an
        ``OperationalError``) names the address and the timeout."""
        params = conninfo_to_dict(conninfo, **kwargs)
        # Enforced here; not handed to libpq (which only reads it in blocking mode, and only as an int).
        timeout = _timeout_from(params.pop("connect_timeout", None))
        # getaddrinfo blocks: resolve in a worker thread (never abandoned; the resolver's own timeouts
        # bound it). IP addresses and unix socket paths are not resolved at all.
        attempts = await anyio.to_thread.run_sync(conninfo_attempts, params)
        failures: list[tuple[psycopg.Error, str]] = []
        conn: AnyioConnection[Row] | None = None
        for attempt in attempts:
            where = _describe(attempt)
            try:
                with anyio.fail_after(timeout):
                    conn = await _drive_conn(cls._connect_gen(make_conninfo("", **attempt)))  # private
            except TimeoutError:
                message = f"connection timeout expired: {where} did not answer within {timeout:g} s"
                failures.append((e.ConnectionTimeout(f"{message} (connect_timeout)"), where))
            except psycopg.Error as ex:
                failures.append((ex, where))
            else:
                break
        if conn is None:
            raise _connect_error(failures)

        try:
            conn.prepare_threshold = prepare_threshold
            if row_factory is not None:
                conn.row_factory = row_factory
            if cursor_factory is not None:
                conn.cursor_factory = cursor_factory
            if context is not None:
                conn._adapters = AdaptersMap(context.adapters)  # as psycopg's own connect() does
            if autocommit:
                await conn.set_autocommit(True)  # no round trip: the connection is idle
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        """Consume a psycopg generator (``interval`` is ignored: nothing needs periodic wake-ups here).

        Raises ``psycopg.errors._WaitTimeout`` after ``timeout`` seconds (only ``notifies()`` uses it).
        """
        driver = _Driver(gen, self.pgconn.socket)
        try:
            if timeout is None:
                return await driver.run()
            with anyio.move_on_after(timeout):
                return await driver.run()
            return driver.finish_at_deadline()
        except (anyio.get_cancelled_exc_class(), KeyboardInterrupt):
            if self.pgconn.transaction_status == _ACTIVE:
                await self._cancel_and_drain(driver)
            raise

    async def _cancel_and_drain(self, driver: _Driver[Any]) -> None:
        """The caller was cancelled mid-query: stop the query on the server and read its reply, so the
        connection stays usable; if that fails, close the connection (its state is unknown)."""
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(CANCEL_TIMEOUT):
                    await self.cancel_safe(timeout=CANCEL_TIMEOUT)
                    await driver.run()  # the reply: usually "canceling statement due to user request"
            except e.QueryCanceled:
                pass
            except BaseException as ex:
                logger.warning("query not stopped after a cancel request (%r): closing the connection", ex)
                self._finish()
                if not isinstance(ex, Exception):
                    raise

    async def cancel_safe(self, *, timeout: float = 30.0) -> None:
        """Ask the server to cancel the running query; ``CancellationTimeout`` after ``timeout`` s."""
        if not self._should_cancel():  # private
            return
        if not psycopg.capabilities.has_cancel_safe():  # libpq < 17: blocking cancel in a worker thread
            await anyio.to_thread.run_sync(self.cancel)
            return
        try:
            with anyio.fail_after(timeout or None):
                await _drive_conn(self._cancel_gen())  # private
        except TimeoutError:
            raise e.CancellationTimeout(f"cancellation timeout expired after {timeout:g} s") from None

    async def close(self) -> None:
        """Close the connection; a task waiting on its socket wakes up with ``OperationalError``."""
        if not self.closed:
            self._notify_closing()
        await super().close()

    def _notify_closing(self) -> None:
        try:
            fd = self.pgconn.socket
        except psycopg.OperationalError:  # no socket any more
            return
        anyio.notify_closing(fd)

    def _finish(self) -> None:
        """Drop the connection without a clean close: ``closed`` and ``broken`` become true."""
        self._notify_closing()
        self.pgconn.finish()


async def connect(
    conninfo: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    autocommit: bool = False,
    **kw: Any,
) -> AnyioConnection[Any]:
    """Open an ``AnyioConnection``. ``connect_timeout`` (seconds) bounds each address tried; exceeding it
    raises ``psycopg.errors.ConnectionTimeout``. Other keywords are those of
    ``psycopg.AsyncConnection.connect`` (``prepare_threshold``, ``row_factory``, conninfo parameters)."""
    if not connect_timeout > 0:
        raise ValueError(f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}")
    conn: AnyioConnection[Any] = await AnyioConnection.connect(
        conninfo, connect_timeout=str(connect_timeout), autocommit=autocommit, **kw
    )
    return conn
