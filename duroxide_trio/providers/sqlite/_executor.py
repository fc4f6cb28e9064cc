"""The connection and its group executor: every operation is one function run in the provider's
connection thread inside one transaction; the operations queued together share one transaction (group
commit), and the thread takes the next batch as soon as one ends."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import sniffio

try:
    import trio.lowlevel
except ImportError:  # pragma: no cover - trio is a dependency; asyncio-only installs still work
    trio = None  # type: ignore[assignment]

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


#: The connection thread ends after this many seconds without a job (a later job starts a new one), so a
#: provider that is never closed keeps no thread alive and does not hold up the interpreter's exit.
IDLE_EXIT = 1.0


def _loop_caller() -> Callable[[Callable[[], None]], object]:
    """The running event loop's thread-safe "call this soon" (trio's token, asyncio's loop)."""
    if sniffio.current_async_library() == "trio":
        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon_threadsafe


class _Job:
    """One queued operation. ``finished`` once ``result`` or ``error`` is final; ``wake`` is set (on the
    caller's event loop, through ``call_soon``) when it finished."""

    __slots__ = ("op", "fn", "write", "probe", "idle", "result", "error", "finished", "wake", "call_soon")

    def __init__(self, op: str, fn: Any, write: bool, probe: Any, idle: Any) -> None:
        self.op, self.fn, self.write, self.probe, self.idle = op, fn, write, probe, idle
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self.wake = anyio.Event()
        self.call_soon = _loop_caller()


def _wake_all(batch: list[_Job]) -> None:
    for job in batch:
        job.wake.set()


class SqliteBase(ProviderKernel):
    """The connection, its executor and what every job of the provider uses (``_run``, ``_new_token``)."""

    _process_id: str | None = None  # set by the process-lease job (``_leases``)

    def __init__(self, conn: sqlite3.Connection, path: str, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or WALL_CLOCK  # every time this provider reads or stores
        self._conn = conn
        self._path = path
        self._lock = threading.Lock()
        self._has_jobs = threading.Condition(self._lock)
        self._queue: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
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
        """Run ``fn`` inside one transaction on the provider's connection, in its connection thread.

        Operations are group-executed: the connection thread takes every operation queued at that
        moment and runs them in one transaction (each in its own savepoint), reports their results to
        their callers' event loops and takes the next batch at once, so the next batch runs while the
        event loop is still handling the last one's results. Every caller gets its result or a
        ``ProviderError`` (never a raw ``sqlite3`` error), even when the batch raises. A caller cancelled
        while its operation is still queued withdraws it (it never runs); once taken, it runs and its
        result is dropped. With ``probe``, a cheap autocommit read runs first when the operation is
        alone in its batch; when it finds nothing, ``idle`` runs instead of the write transaction (idle
        polls never take the write lock)."""
        job = _Job(op, fn, write, probe, idle)
        with self._lock:
            if self._closed:
                raise ProviderError.permanent(op, "provider is closed", kind=ProviderErrorKind.CLOSED)
            self._queue.append(job)
            if self._thread is None:
                if not self._start_thread():
                    self._queue.remove(job)
                    raise ProviderError.transient(op, "cannot start the SQLite connection thread (out of threads?)")
            elif len(self._queue) == 1:
                self._has_jobs.notify()
        try:
            await job.wake.wait()
        except BaseException:
            with self._lock:
                if job in self._queue:
                    self._queue.remove(job)
            raise
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _serve(self) -> None:
        """The connection thread: run the queued operations batch by batch until the queue stays empty
        for ``IDLE_EXIT`` seconds or the provider stops."""
        try:
            while True:
                with self._lock:
                    if not self._queue and not self._stopping:
                        self._has_jobs.wait(IDLE_EXIT)
                    if not self._queue:
                        return
                    batch, self._queue = self._queue, []
                self._execute_safely(batch)  # every job of the batch is finished afterwards
                self._report(batch)
        finally:
            with self._lock:
                self._thread = None
                stranded: list[_Job] = []
                if self._queue and not self._stopping and not self._start_thread():
                    stranded, self._queue = self._queue, []  # only if this thread failed: start a new one
            for job in stranded:
                job.error = ProviderError.transient(job.op, "the SQLite connection thread stopped")
                job.finished = True
            self._report(stranded)

    def _start_thread(self) -> bool:
        """Start the connection thread (with ``self._lock`` held); ``False`` if no thread can be started."""
        thread = threading.Thread(target=self._serve, name=f"duroxide-sqlite {self._path}")
        try:
            thread.start()
        except RuntimeError:
            return False
        self._thread = thread
        return True

    @staticmethod
    def _report(batch: list[_Job]) -> None:
        """Wake the batch's callers, one callback per event loop they wait on."""
        loops: dict[Any, list[_Job]] = {}
        for job in batch:
            loops.setdefault(job.call_soon, []).append(job)
        for call_soon, jobs in loops.items():
            try:
                call_soon(functools.partial(_wake_all, jobs))
            except RuntimeError:  # that event loop has ended: nobody waits for these jobs any more
                pass

    async def _stop_thread(self) -> None:
        """Let the connection thread finish what is queued (refused: the provider is closed) and end."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._has_jobs.notify()
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)

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
