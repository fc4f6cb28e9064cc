"""A small anyio connection pool for ``AnyioConnection`` (psycopg_pool's async pool is asyncio-only).

    pool = Pool(url, max_size=10)
    async with pool.connection() as conn:
        await conn.execute(...)
    await pool.close()

- Connections are opened lazily, up to ``max_size`` (default: env ``DUROXIDE_PG_POOL_MAX``, else 10).
  A permit from an ``anyio.Semaphore(max_size)`` is held for as long as a connection is checked out, so
  at most ``max_size`` connections exist; waiters are served first come, first served.
- Waiting for a permit is bounded by ``acquire_timeout`` (``PoolTimeout``); opening a connection by
  ``connect_timeout`` (``psycopg.errors.ConnectionTimeout``). A failed connect is raised to the caller, not
  retried: the provider's retry policy decides.
- On return (even when the borrower was cancelled; the clean-up is shielded and bounded): a closed or
  broken connection is discarded; one not ``IDLE`` (left in a transaction, in error after a cancelled
  query) is rolled back, and discarded if that fails or the state is unknown.
- ``close()`` closes the idle connections, wakes the waiters with ``PoolClosed`` and makes later acquires
  fail the same way; connections still checked out are closed when they come back.
- No background task: nothing to own.

``PoolTimeout`` and ``PoolClosed`` subclass ``psycopg.OperationalError``, so code that classifies
connection-level failures as retryable (the provider, ``duroxide-pg-and-python.md`` §1.10) treats them
the same way without knowing about the pool (as ``psycopg_pool.PoolTimeout`` does).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import psycopg
from psycopg import pq

from ._driver import DEFAULT_CONNECT_TIMEOUT, AnyioConnection, connect, mask_url

__all__ = ["POOL_MAX_ENV", "Pool", "PoolClosed", "PoolTimeout"]

logger = logging.getLogger(__name__)

#: Environment variable giving the default ``max_size`` (same name as duroxide-pg).
POOL_MAX_ENV = "DUROXIDE_PG_POOL_MAX"
_DEFAULT_MAX_SIZE = 10
#: Upper bound for the shielded clean-up of a returned connection (rollback, close).
_RETURN_TIMEOUT = 5.0

_IDLE = pq.TransactionStatus.IDLE
_ROLLBACK_OK = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


class PoolTimeout(psycopg.OperationalError):
    """No connection became available within ``acquire_timeout``."""


class PoolClosed(psycopg.OperationalError):
    """The pool was closed."""


def _max_size_from_env() -> int:
    raw = os.environ.get(POOL_MAX_ENV, "").strip()
    if not raw:
        return _DEFAULT_MAX_SIZE
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{POOL_MAX_ENV} must be a positive integer, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"{POOL_MAX_ENV} must be a positive integer, not {raw!r}")
    return value


class Pool:
    """A bounded, lazily filled pool of ``AnyioConnection``; safe to share between many tasks."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int | None = None,
        acquire_timeout: float = 30.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        configure: Callable[[AnyioConnection[Any]], Awaitable[None]] | None = None,
        autocommit: bool = False,
    ) -> None:
        """``configure`` runs once on each new connection before first use (a failure there discards the
        connection and is raised to the borrower). ``autocommit`` is passed to ``connect``."""
        max_size = _max_size_from_env() if max_size is None else max_size
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        if not acquire_timeout > 0:
            raise ValueError(f"acquire_timeout must be positive, not {acquire_timeout}")
        self.conninfo = conninfo
        self.max_size = max_size
        self.acquire_timeout = acquire_timeout
        self.connect_timeout = connect_timeout
        self.configure = configure
        self.autocommit = autocommit
        self._permits = anyio.Semaphore(max_size)
        self._idle: deque[AnyioConnection[Any]] = deque()  # most recently returned on the right
        self._size = 0  # connections open or being opened = idle + checked out
        self._waiting = 0
        self._waiter_scopes: set[anyio.CancelScope] = set()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"size={self._size}/{self.max_size}"
        return f"<Pool {mask_url(self.conninfo)} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """``size``: open (or opening) connections; ``idle`` + ``in_use`` == ``size``; ``waiting``: tasks
        blocked waiting for a connection."""
        idle = len(self._idle)
        return {"size": self._size, "idle": idle, "in_use": self._size - idle, "waiting": self._waiting}

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AnyioConnection[Any]]:
        """Borrow a connection for the body of the ``async with``. Don't close it, don't keep it."""
        conn = await self.acquire()
        try:
            yield conn
        finally:
            await self.release(conn)

    async def acquire(self) -> AnyioConnection[Any]:
        """Borrow a connection; every ``acquire`` must be followed by one ``release`` (in a ``finally``).
        :meth:`connection` is the same pair as a context manager; this form is for the provider's hot
        path, where the generator-based context manager was a measurable share of each call."""
        await self._acquire_permit()
        try:
            return await self._checkout()
        except BaseException:
            self._permits.release()
            raise

    async def release(self, conn: AnyioConnection[Any]) -> None:
        """Give back a connection from :meth:`acquire` (cleaned up or discarded as described above)."""
        if not self._closed and not conn.closed and conn.pgconn.transaction_status == _IDLE:
            self._idle.append(conn)  # the common case: nothing to wait for, so nothing to shield
            self._permits.release()
            return
        await self._checkin(conn)  # releases the permit

    async def close(self) -> None:
        """Close idle connections now and refuse further acquires; idempotent."""
        self._closed = True
        for scope in self._waiter_scopes:
            scope.cancel()
        while self._idle:
            await self._discard(self._idle.pop())

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -----------------------------------------------------------------------------------------------

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(f"the connection pool for {mask_url(self.conninfo)} is closed")

    async def _acquire_permit(self) -> None:
        if self._closed:
            raise self._closed_error()
        try:
            self._permits.acquire_nowait()
            return
        except anyio.WouldBlock:
            pass
        self._waiting += 1
        try:
            with anyio.CancelScope() as closing:  # cancelled by close()
                self._waiter_scopes.add(closing)
                try:
                    with anyio.fail_after(self.acquire_timeout):
                        await self._permits.acquire()
                except TimeoutError:
                    raise PoolTimeout(
                        f"no connection available within {self.acquire_timeout:g} s: all {self.max_size} "
                        f"connections of the pool for {mask_url(self.conninfo)} are in use "
                        f"({self._waiting} tasks waiting); raise max_size ({POOL_MAX_ENV}) or "
                        "acquire_timeout, or hold connections for shorter"
                    ) from None
                finally:
                    self._waiter_scopes.discard(closing)
            if closing.cancelled_caught:
                raise self._closed_error()
        finally:
            self._waiting -= 1
        if self._closed:  # closed between getting the permit and running again
            self._permits.release()
            raise self._closed_error()

    async def _checkout(self) -> AnyioConnection[Any]:
        """With a permit held: reuse the warmest idle connection, or open a new one."""
        if self._idle:
            return self._idle.pop()
        self._size += 1
        try:
            conn = await connect(
                self.conninfo, connect_timeout=self.connect_timeout, autocommit=self.autocommit
            )
        except BaseException:
            self._size -= 1
            raise
        if self.configure is not None:
            try:
                await self.configure(conn)
            except BaseException:
                await self._discard(conn)
                raise
        return conn

    async def _checkin(self, conn: AnyioConnection[Any]) -> None:
        try:
            with anyio.CancelScope(shield=True):
                if await self._reusable(conn) and not self._closed:
                    self._idle.append(conn)
                else:
                    await self._discard(conn)
        finally:
            self._permits.release()

    async def _reusable(self, conn: AnyioConnection[Any]) -> bool:
        """Bring a returned connection back to IDLE if that is cheap and safe; False means discard it."""
        if conn.closed:
            return False
        status = conn.pgconn.transaction_status
        if status == _IDLE:
            return True
        if status not in _ROLLBACK_OK:  # ACTIVE (abandoned mid-result) or UNKNOWN
            logger.warning(
                "discarding a pooled connection returned in state %s", pq.TransactionStatus(status).name
            )
            return False
        try:
            with anyio.fail_after(_RETURN_TIMEOUT):
                await conn.rollback()
        except Exception as ex:
            logger.warning("discarding a pooled connection: rollback on return failed: %r", ex)
            return False
        return conn.pgconn.transaction_status == _IDLE

    async def _discard(self, conn: AnyioConnection[Any]) -> None:
        self._size -= 1
        with anyio.CancelScope(shield=True):
            try:
                await conn.close()
            except Exception as ex:  # closing a dead connection must not mask anything
                logger.debug("error closing a discarded connection: %r", ex)
