"""Cross-process wake-ups (``ProviderCapabilities.listener``): one LISTEN connection mapping other
processes' NOTIFYs onto ``provider.notifier``."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
import anyio.abc
import psycopg
from psycopg import sql

from ._base import PgBase
from ._driver import AnyioConnection, connect, mask_url

logger = logging.getLogger("duroxide_trio.providers.postgres")


class ListenerJob(PgBase):
    """The LISTEN connection and the notification mapping."""

    def _remember(self, conn: AnyioConnection[Any]) -> None:
        """Note a pool connection's backend pid: NOTIFYs it sends are our own commits."""
        if len(self._own) > 4 * self._pool.max_size:
            self._own = {pid: c for pid, c in self._own.items() if not c.closed}
        self._own[conn.info.backend_pid] = conn

    async def run_listener(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the LISTEN connection and map notifications from other processes onto ``self.notifier``,
        until the provider closes or the caller's scope is cancelled.

        ``async with provider`` runs this in a task group it owns; an owner with its own task group may
        run it instead (``await tg.start(provider.run_listener)``). With ``tg.start`` it reports started
        once listening (or after the first failure: polling works meanwhile). If the connection drops it
        logs, backs off (0.1 s doubling to 5 s) and reconnects, then wakes every waiter once, since
        notifications may have been missed. Returns at once if a listener already runs."""
        if self._closed or self._listener_scopes:
            task_status.started()
            return
        started = False
        delay = 0.1
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        with anyio.CancelScope() as scope:
            self._listener_scopes.add(scope)
            try:
                while True:
                    conn: AnyioConnection[Any] | None = None
                    try:
                        conn = await connect(
                            self._listen_conninfo, connect_timeout=self._connect_timeout, autocommit=True
                        )
                        with anyio.fail_after(self._command_timeout):
                            await conn.execute(listen)
                        self._listener_pid = conn.info.backend_pid
                        if started:
                            logger.info("LISTEN connection to %s re-established", mask_url(self._url))
                            self.notifier.notify_all()  # notifications may have been missed meanwhile
                        else:
                            started = True
                            task_status.started()
                        delay = 0.1
                        async with contextlib.aclosing(conn.notifies()) as notifications:
                            async for notification in notifications:
                                self._on_notify(notification)
                    except Exception as ex:
                        message = self._scrub(str(ex)) or type(ex).__name__
                        logger.warning(
                            "LISTEN connection to %s (schema %r) failed: %s; reconnecting in %.1f s",
                            mask_url(self._url),
                            self._schema,
                            message,
                            delay,
                        )
                    finally:
                        self._listener_pid = None
                        if conn is not None:
                            with anyio.CancelScope(shield=True):
                                with contextlib.suppress(Exception):
                                    await conn.close()
                    if not started:
                        started = True
                        task_status.started()
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            finally:
                self._listener_scopes.discard(scope)

    def _on_notify(self, notification: psycopg.Notify) -> None:
        own = self._own.get(notification.pid)
        if own is not None and not own.closed:
            return  # our own commit: already notified in-process
        payload = notification.payload
        if not payload:
            return
        kind, rest = payload[0], payload[1:]
        if kind == "d":
            self.notifier.notify_instance(rest)
            return
        key = "orchestrator" if kind == "o" else "worker" if kind == "w" else None
        if key is None:
            return
        if not rest:
            self.notifier.notify(key)
            return
        now = self.clock.now_ms()
        for part in rest.split(","):
            try:
                at = int(part)
            except ValueError:
                continue
            if at <= now:
                self.notifier.notify(key)
            else:
                self.notifier.notify_at(key, at)
