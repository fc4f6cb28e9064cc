"""The connection and its group executor: every operation is one function run in a worker thread
inside one transaction; concurrent callers share one thread hop (group commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..._tokens import new_token
from .._kernel import ProviderKernel
from ..base import (
    WALL_CLOCK,
    Clock,
    Notifier,
    ProviderError,
    ProviderErrorKind,
)
from ._errors import provider_error as _provider_error

T = TypeVar("T")


class _Job:
    """One queued operation. ``finished`` once ``result`` or ``error`` is final; ``wake`` is set when the
    job finished or when its caller should take over as leader."""

    __slots__ = ("op", "fn", "write", "probe", "idle", "result", "error", "finished", "wake")

    def __init__(self, op: str, fn: Any, write: bool, probe: Any, idle: Any) -> None:
        self.op, self.fn, self.write, self.probe, self.idle = op, fn, write, probe, idle
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self.wake = anyio.Event()


class SqliteBase(ProviderKernel):
    """The connection, its executor and what every job of the provider uses (``_run``, ``_new_token``)."""

    _process_id: str | None = None  # set by the process-lease job (``_leases``)

    def __init__(self, conn: sqlite3.Connection, path: str, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or WALL_CLOCK  # every time this provider reads or stores
        self._conn = conn
        self._path = path
        self._limiter = anyio.CapacityLimiter(1)
        self._queue: list[_Job] = []
        self._leading = False
        self._closed = False
        self.notifier = Notifier(self.clock)

    async def _run(
        self,
        op: str,
        fn: Callable[[sqlite3.Connection], T],
        *,
        write: bool = True,
        probe: Callable[[sqlite3.Connection], bool] | None = None,
        idle: Callable[[sqlite3.Connection], T] | None = None,
    ) -> T:
        """Run ``fn`` inside one transaction on the provider's connection, in a worker thread.

        Operations are group-executed: the caller that finds no hop in flight becomes the leader and runs
        every operation queued at that moment in one thread hop (each still in its own savepoint), so
        under load many operations share one hop. A leader serves exactly one batch (the queue as it was
        when it took it: its own operation is in it), then hands leadership to the oldest waiting caller
        and returns, so no caller waits longer than the batch ahead of it plus its own. Every caller gets
        its result or a ``ProviderError`` (never a raw ``sqlite3`` error), even when the batch raises or
        a caller is cancelled. With ``probe``, a cheap autocommit read runs first; when it finds nothing,
        ``idle`` runs instead of the write transaction (idle polls never take the write lock)."""
        if self._closed:
            raise ProviderError.permanent(op, "provider is closed", kind=ProviderErrorKind.CLOSED)
        job = _Job(op, fn, write, probe, idle)
        self._queue.append(job)
        while not job.finished:
            if not self._leading:
                # Nobody runs a batch, so our job is still queued: lead one batch (it includes our job).
                await self._lead()
                continue
            job.wake = anyio.Event()
            try:
                await job.wake.wait()
            except BaseException:
                # Cancelled while waiting. A job still queued is withdrawn (it never runs); if we had
                # just been chosen to lead, pass that on, so the queue is never left without a leader.
                if job in self._queue:
                    self._queue.remove(job)
                self._promote_next()
                raise
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _promote_next(self) -> None:
        """With no batch running and callers queued, wake the oldest to lead the next batch."""
        if not self._leading and self._queue:
            self._queue[0].wake.set()

    async def _lead(self) -> None:
        self._leading = True
        batch, self._queue = self._queue, []
        try:
            # Shielded: the callers in the batch wait for their results, so the batch must finish.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._execute_safely, batch, limiter=self._limiter)
        finally:
            for job in batch:
                if not job.finished:  # only if the hop itself failed (it reports every job otherwise)
                    job.error = ProviderError.permanent(job.op, "the operation did not run (batch aborted)")
                    job.finished = True
                job.wake.set()
            self._leading = False
            self._promote_next()
        await anyio.lowlevel.checkpoint()

    def _execute_safely(self, batch: list[_Job]) -> None:
        """``_execute``, and whatever it raises becomes the error of every job it did not finish."""
        try:
            if self._closed:
                # close() ran while these jobs were queued: the connection is gone.
                raise ProviderError.permanent("sqlite", "provider is closed", kind=ProviderErrorKind.CLOSED)
            self._execute(batch)
        except BaseException as exc:  # noqa: BLE001 - reported to each caller of the batch
            self._rollback_quietly()
            for job in batch:
                if not job.finished:
                    job.result = None
                    error = _provider_error(job.op, exc, self._path)
                    if error is exc and error.operation != job.op:  # a shared error: name each op
                        error = ProviderError(
                            job.op, error.message, retryable=error.retryable, kind=error.kind
                        )
                    job.error = error
                    job.finished = True
        else:
            for job in batch:
                job.finished = True

    def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except (sqlite3.Error, ValueError):  # the transaction or the connection is gone already
            pass

    def _execute(self, batch: list[_Job]) -> None:
        """Run a batch. Several jobs share one transaction (group commit: one WAL commit for the batch),
        each inside its own savepoint so that a failing job rolls back alone; results are reported
        only once the commit succeeded. If the shared transaction itself fails (BEGIN, a savepoint,
        the commit), the jobs that did not fail on their own get that error."""
        if len(batch) == 1:
            self._execute_one(batch[0])
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            for job in batch:  # e.g. busy for longer than the busy timeout: let each job try alone
                self._execute_one(job)
                job.finished = True
            return
        own_failures: set[int] = set()
        for k, job in enumerate(batch):
            conn.execute("SAVEPOINT job")
            try:
                # Inside the batch's write transaction the idle probe would only repeat the query the
                # operation runs anyway (every operation handles "nothing to do" itself).
                job.result = job.fn(conn)
                conn.execute("RELEASE job")
            except Exception as exc:  # noqa: BLE001 - reported to this job's caller
                job.result = None
                job.error = _provider_error(job.op, exc, self._path)
                job.finished = True
                own_failures.add(k)
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback_quietly()
            for k, job in enumerate(batch):
                if k not in own_failures:
                    job.result = None
                    error = _provider_error(job.op, exc, self._path)
                    if error.retryable:
                        error = ProviderError(
                            job.op, f"commit failed: {error.message}", retryable=True, kind=error.kind
                        )
                    job.error = error
                    job.finished = True

    def _execute_one(self, job: _Job) -> None:
        conn = self._conn
        try:
            if job.probe is not None and not job.probe(conn):
                assert job.idle is not None
                job.result = job.idle(conn)
                return
            conn.execute("BEGIN IMMEDIATE" if job.write else "BEGIN")
            job.result = job.fn(conn)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - reported to the caller of this operation only
            self._rollback_quietly()
            job.result = None
            job.error = _provider_error(job.op, exc, self._path)
        finally:
            job.finished = True

    def _new_token(self) -> str:
        """A fresh lock token (``new_token``): ``'<process>:<token>'`` once a process is registered."""
        return new_token(self._process_id)
