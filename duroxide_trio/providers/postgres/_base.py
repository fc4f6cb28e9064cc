"""The base class of the PostgreSQL provider's jobs."""

from __future__ import annotations

import contextlib
import select
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import psycopg
from psycopg import pq, sql

from ..._tokens import new_token
from .._kernel import ProviderKernel
from ..base import ProviderError
from ._driver import AnyioConnection
from ._pool import Pool
from ._queries import Queries

_IDLE = pq.TransactionStatus.IDLE


def connection_dead(conn: AnyioConnection[Any]) -> bool:
    """True if an idle pooled connection was closed by the server (terminated backend, restart): the
    server's goodbye is already waiting in the socket. Costs one non-blocking poll."""
    if conn.closed or conn.broken:
        return True
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(0):
                return False
        else:  # pragma: no cover - Windows
            readable, _, _ = select.select([fd], [], [], 0)
            if not readable:
                return False
        conn.pgconn.consume_input()
    except (OSError, psycopg.Error):
        return True
    while conn.pgconn.notifies() is not None:  # nothing listens on pool connections; drop strays
        pass
    return conn.pgconn.status != pq.ConnStatus.OK or conn.pgconn.transaction_status != _IDLE


class PgBase(ProviderKernel):
    """What every job of the PostgreSQL provider uses: the state ``PostgresProvider.__init__`` sets and the
    round trips of its connection handling (``provider.py``: ``_exec``, ``_one``, ``_all``), declared here
    so that each job module sees them, plus the lock tokens."""

    _process_id: str | None = None  # set by the process-lease job (``_leases``)

    if TYPE_CHECKING:
        _url: str
        _prepare: bool
        _schema: str
        _pool: Pool
        _q: Queries
        _channel: str
        _command_timeout: float
        _connect_timeout: float
        _listen_conninfo: str
        _secrets: list[str]
        _own: dict[int, AnyioConnection[Any]]
        _closed: bool
        _entered: int
        _exit_stack: contextlib.AsyncExitStack | None
        _listener_scopes: set[anyio.CancelScope]
        _listener_pid: int | None
        _exec: Callable[..., Awaitable[Any]]
        _one: Callable[..., Awaitable[Any]]
        _all: Callable[..., Awaitable[list[Any]]]
        _scrub: Callable[[str], str]
        _error: Callable[[str, psycopg.Error], ProviderError]

    def _quoted_schema(self) -> str:
        return sql.Identifier(self._schema).as_string(None)

    def _new_token(self) -> str:
        """A fresh lock token (``new_token``): ``'<process>:<token>'`` once a process is registered."""
        return new_token(self._process_id)
