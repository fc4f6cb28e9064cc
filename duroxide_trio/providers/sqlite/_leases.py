"""Process liveness leases of the SQLite provider (``ProviderCapabilities.process_leases``, see
``runtime/liveness.py`` and migration 2): an OS file lock per process beside the database."""

from __future__ import annotations

import os
import sqlite3

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._kernel import (
    ms,
)
from ..base import (
    ProviderError,
)
from ._executor import SqliteBase


class LeasesJob(SqliteBase):
    """One lease per runtime process."""

    _lease_fd: int | None = None

    @property
    def process_id(self) -> str | None:
        """The process whose lease this provider holds (``None``: none registered)."""
        return self._process_id

    def _lease_dir(self) -> str:
        return self._path + ".processes"

    async def register_process(self, process_id: str) -> bool:
        """Take this process's liveness lease: an exclusive ``flock`` on
        ``<database>.processes/<process_id>.lock`` (released by the OS when the process dies) and a row
        in ``processes``. Locks fetched from now on carry ``process_id``. Returns False (no lease
        needed) in memory: no other process can share the database."""
        if not process_id.isalnum():
            raise ValueError(f"process id must be alphanumeric, got {process_id!r}")
        if self._path == ":memory:":
            return False
        if self._lease_fd is not None and self._process_id == process_id:  # a retry: the lock is ours
            await self.renew_process_lease(process_id, 3600.0)
            return True
        import fcntl

        def _lock() -> int:
            os.makedirs(self._lease_dir(), exist_ok=True)
            fd = os.open(os.path.join(self._lease_dir(), process_id + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            return fd

        try:
            self._lease_fd = await anyio.to_thread.run_sync(_lock)
        except OSError as exc:
            raise ProviderError.permanent("register_process", f"cannot take the process lease: {exc}") from None
        self._process_id = process_id
        await self.renew_process_lease(process_id, 3600.0)
        return True

    async def renew_process_lease(self, process_id: str, stale_after: float, grace: float = 1.0) -> list[str]:
        """Heartbeat this process's row and reclaim the locks of every process whose lease is gone (its
        file lock is free and its heartbeat is ``grace`` old, or no heartbeat for ``stale_after``)."""
        if self._path == ":memory:":
            return []
        import fcntl

        lease_dir = self._lease_dir()
        stale_ms, grace_ms = ms(stale_after), ms(grace)

        def _probe(other: str) -> tuple[bool, int | None]:
            """(dead, fd holding its lock file) — the fd is kept until the reclaim is done."""
            try:
                fd = os.open(os.path.join(lease_dir, other + ".lock"), os.O_RDWR)
            except FileNotFoundError:
                return True, None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False, None
            return True, fd

        def _renew(conn: sqlite3.Connection) -> list[str]:
            now = self.clock.now_ms()
            conn.execute(
                "INSERT INTO processes(process_id, started_at, heartbeat_at) VALUES (?, ?, ?) "
                "ON CONFLICT(process_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (process_id, now, now),
            )
            out: list[str] = []
            rows = conn.execute(
                "SELECT process_id, heartbeat_at FROM processes WHERE process_id <> ?", (process_id,)
            ).fetchall()
            for other, heartbeat in rows:
                dead, fd = heartbeat < now - stale_ms, None
                if not dead and heartbeat < now - grace_ms:
                    dead, fd = _probe(other)
                if dead:
                    conn.execute("DELETE FROM instance_locks WHERE lock_token LIKE ?", (other + ":%",))
                    conn.execute(
                        "UPDATE worker_queue SET lock_token = NULL, locked_until = NULL WHERE lock_token LIKE ?",
                        (other + ":%",),
                    )
                    conn.execute("DELETE FROM processes WHERE process_id = ?", (other,))
                    out.append(other)
                if fd is not None:
                    try:
                        os.unlink(os.path.join(lease_dir, other + ".lock"))
                    except OSError:
                        pass
                    os.close(fd)
            return out

        reclaimed = await self._run("renew_process_lease", _renew)
        if reclaimed:
            self.notifier.notify("orchestrator")
            self.notifier.notify("worker")
        return reclaimed

    async def unregister_process(self, process_id: str) -> None:
        """Give the lease back (clean shutdown): delete the row, remove and unlock the lock file."""
        fd, self._lease_fd = self._lease_fd, None
        self._process_id = None
        if fd is None:
            return
        with anyio.CancelScope(shield=True):
            if not self._closed:
                try:
                    await self._run(
                        "unregister_process",
                        lambda c: c.execute("DELETE FROM processes WHERE process_id = ?", (process_id,)),
                    )
                except ProviderError:
                    pass

            def _release() -> None:
                try:
                    os.unlink(os.path.join(self._lease_dir(), process_id + ".lock"))
                except OSError:
                    pass
                os.close(fd)

            await anyio.to_thread.run_sync(_release)
