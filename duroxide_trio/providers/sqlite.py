"""SQLite provider: stdlib ``sqlite3`` in WAL mode, one thread hop per provider operation.

One connection per provider, owned by it and serialised with a capacity limiter of one; every operation
is one function run in a worker thread inside one transaction (``BEGIN IMMEDIATE`` for writes, so several
processes on one file serialise their writes and never double-process). File and in-memory modes.
Schema changes are numbered migrations recorded in ``_duroxide_migrations``.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..history import (
    ActivityExecute,
    Event,
    HistoryDecodeError,
    StartOrchestration,
    WorkItem,
    decode_event,
    encode_event,
    encode_work_item,
)
from ._kernel import (
    EncodedTurn,
    ProviderKernel,
    TurnCommitted,
    decode_activity,
    decode_batch,
    ms,
)
from .base import (
    COMPLETED,
    FAILED,
    RUNNING,
    TERMINAL_STATUSES,
    WALL_CLOCK,
    CannotDeleteSubOrchestration,
    Clock,
    DeleteResult,
    ExecutionInfo,
    ExecutionMetadata,
    InstanceAlreadyExists,
    InstanceFilter,
    InstanceInfo,
    InstanceNotFound,
    InstanceStillRunning,
    Notifier,
    OrchestrationItem,
    ProviderCapabilities,
    ProviderError,
    ProviderErrorKind,
    PruneOptions,
    PruneResult,
    QueueDepths,
    ScheduledActivity,
    SystemMetrics,
    WorkItemLease,
    WorkOutlook,
    now_ms,
)

__all__ = ["SqliteProvider", "SqliteFactory"]

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: the initial schema. Sessions, tags and KV have columns/tables reserved for later features.
    """
    CREATE TABLE instances (
        instance_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT,
        current_execution_id INTEGER NOT NULL DEFAULT 1,
        custom_status TEXT,
        custom_status_version INTEGER NOT NULL DEFAULT 0,
        parent_instance_id TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX instances_parent ON instances(parent_instance_id);
    CREATE TABLE executions (
        instance_id TEXT NOT NULL,
        execution_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        output TEXT,
        started_at INTEGER NOT NULL,
        completed_at INTEGER,
        pinned_version TEXT,
        PRIMARY KEY (instance_id, execution_id)
    );
    CREATE TABLE history (
        instance_id TEXT NOT NULL,
        execution_id INTEGER NOT NULL,
        event_id INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        event_data TEXT NOT NULL,
        PRIMARY KEY (instance_id, execution_id, event_id)
    );
    CREATE TABLE orchestrator_queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id TEXT NOT NULL,
        work_item TEXT NOT NULL,
        is_start INTEGER NOT NULL DEFAULT 0,
        visible_at INTEGER NOT NULL,
        lock_token TEXT,
        attempt_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX oq_visible ON orchestrator_queue(visible_at, id);
    CREATE INDEX oq_instance ON orchestrator_queue(instance_id);
    CREATE INDEX oq_token ON orchestrator_queue(lock_token);
    CREATE TABLE worker_queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        work_item TEXT NOT NULL,
        visible_at INTEGER NOT NULL,
        lock_token TEXT,
        locked_until INTEGER,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        instance_id TEXT,
        execution_id INTEGER,
        activity_id INTEGER,
        session_id TEXT,
        tag TEXT
    );
    CREATE INDEX wq_visible ON worker_queue(visible_at, id);
    CREATE INDEX wq_token ON worker_queue(lock_token);
    CREATE INDEX wq_activity ON worker_queue(instance_id, execution_id, activity_id);
    CREATE TABLE instance_locks (
        instance_id TEXT PRIMARY KEY,
        lock_token TEXT NOT NULL,
        locked_until INTEGER NOT NULL
    );
    CREATE INDEX il_token ON instance_locks(lock_token);
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        locked_until INTEGER NOT NULL,
        last_activity_at INTEGER NOT NULL
    );
    CREATE TABLE kv_store (
        instance_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT,
        last_updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (instance_id, key)
    );
    """,
    # 2: process liveness leases (runtime/liveness.py): one row per runtime process; the lease itself is
    # an OS file lock (flock) on <database>.processes/<process id>.lock that dies with its process.
    """
    CREATE TABLE processes (
        process_id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
    );
    """,
]


#: Primary SQLite result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``) and what they mean here.
_CONTENTION_CODES = {5: "SQLITE_BUSY", 6: "SQLITE_LOCKED"}
_STORE_CODES = {
    3: "SQLITE_PERM", 8: "SQLITE_READONLY", 10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT", 13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN", 15: "SQLITE_PROTOCOL", 22: "SQLITE_NOLFS", 23: "SQLITE_AUTH", 26: "SQLITE_NOTADB",
}  # fmt: skip
_INVALID_CODES = {18: "SQLITE_TOOBIG", 20: "SQLITE_MISMATCH", 25: "SQLITE_RANGE"}


def _provider_error(op: str, exc: BaseException, path: str = "") -> ProviderError:
    """Map anything raised while running an operation to a ProviderError (never a raw sqlite3 error):
    busy/locked is retryable contention, an interrupted statement or no memory is retryable, a damaged,
    unreadable, read-only or full database file is permanent and names the file, constraint violations
    and values SQLite cannot hold are permanent."""
    if isinstance(exc, ProviderError):
        return exc
    where = f"SQLite database {path!r}" if path else "SQLite database"
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        text = str(exc)
        lowered = text.lower()
        if primary in _CONTENTION_CODES:  # by result code only, never by the message text
            return ProviderError.transient(op, f"{where}: {text} ({name})", kind=ProviderErrorKind.CONTENTION)
        if primary == 9 or lowered == "interrupted":
            return ProviderError.transient(op, f"{where}: statement interrupted ({name})", kind=ProviderErrorKind.TIMEOUT)
        if primary == 7:
            return ProviderError.transient(op, f"{where}: out of memory ({name})", kind=ProviderErrorKind.RESOURCES)
        if primary in _STORE_CODES or "not a database" in lowered or "malformed" in lowered:
            return ProviderError.permanent(op, f"{where} cannot be used: {text} ({name})", kind=ProviderErrorKind.CORRUPT)
        if isinstance(exc, sqlite3.IntegrityError) or primary == 19:
            return ProviderError.permanent(op, f"constraint violated: {text}", kind=ProviderErrorKind.CONFLICT)
        if primary in _INVALID_CODES or isinstance(exc, sqlite3.DataError):
            return ProviderError.permanent(op, f"invalid value: {text} ({name})", kind=ProviderErrorKind.INVALID)
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in lowered:
            return ProviderError.permanent(op, "provider is closed", kind=ProviderErrorKind.CLOSED)
        # SQLITE_ERROR and the rest (e.g. "no such table": a database this provider did not create or
        # that was altered): retrying cannot help.
        return ProviderError.permanent(op, f"{where}: {text} ({name})", kind=ProviderErrorKind.CORRUPT)
    if isinstance(exc, OverflowError):
        return ProviderError.permanent(op, f"invalid value: {exc}", kind=ProviderErrorKind.INVALID)
    return ProviderError.permanent(op, f"{type(exc).__name__}: {exc}")


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


class SqliteProvider(ProviderKernel):
    """Durable state in one SQLite file (or in memory). Use ``await SqliteProvider.open(path)``."""

    #: Batch work items, process leases and the work outlook; no cross-process listener (SQLite has none).
    capabilities = ProviderCapabilities(batch_work_items=True, process_leases=True, work_outlook=True)

    def __init__(self, conn: sqlite3.Connection, path: str, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or WALL_CLOCK  # every time this provider reads or stores
        self._conn = conn
        self._path = path
        self._limiter = anyio.CapacityLimiter(1)
        self._queue: list[_Job] = []
        self._leading = False
        self._closed = False
        self.notifier = Notifier(self.clock)

    # lifecycle -------------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 10.0,
        create: bool = True,
        clock: Clock | None = None,
    ) -> SqliteProvider:
        """Open the database at ``path`` (``":memory:"`` for an in-memory one) and apply pending migrations.

        Args:
            path: the database file.
            busy_timeout: seconds a statement waits for another connection's write lock.
            create: create the file (and the schema) when it does not exist. With ``create=False`` a
                missing file, or a SQLite file that is not a duroxide-trio database, is an error and
                nothing is written to disk (what read-only tools such as ``duroxide-trio instances`` use).
            clock: the time of locks, visibility and timers (default: the wall clock; tests pass a
                ``VirtualClock``).

        Returns:
            The provider; use it as ``async with provider:`` or call :meth:`close`.

        Raises:
            ProviderError: (permanent, operation ``"open"``) the file does not exist (``create=False``),
                is not a SQLite database, is not a duroxide-trio database (``create=False``), or cannot
                be opened; the message names the path.
        """
        path = os.fspath(path)
        memory = path == ":memory:"
        if not create and not memory and not os.path.isfile(path):
            why = "it is a directory" if os.path.isdir(path) else "the file does not exist"
            raise ProviderError.permanent("open", f"no SQLite database at {path!r} ({why})")

        def _open() -> sqlite3.Connection | None:  # None: a SQLite file without our tables
            if create or memory:
                conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            else:  # mode=rw never creates the file
                uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
                conn = sqlite3.connect(
                    uri, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=True
                )
            try:
                if not create and not memory:
                    known = conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_duroxide_migrations'"
                    ).fetchone()
                    if known is None:
                        conn.close()
                        return None
                if not memory:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=OFF")
                conn.execute("PRAGMA cache_size=-65536")
                _migrate(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await anyio.to_thread.run_sync(_open)
        except sqlite3.Error as exc:
            raise ProviderError.permanent("open", f"cannot open SQLite database {path!r}: {exc}") from exc
        if conn is None:
            raise ProviderError.permanent(
                "open", f"{path!r} is a SQLite database but not a duroxide-trio one (it has no duroxide tables)"
            )
        return cls(conn, path, clock)

    @classmethod
    async def in_memory(cls, *, clock: Clock | None = None) -> SqliteProvider:
        """A fresh in-memory database (gone when the provider closes); same as ``open(":memory:")``."""
        return await cls.open(":memory:", clock=clock)

    @property
    def name(self) -> str:
        """``"sqlite"`` for a file, ``"sqlite-memory"`` in memory."""
        return "sqlite-memory" if self._path == ":memory:" else "sqlite"

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` in memory)."""
        return self._path

    def __repr__(self) -> str:
        return f"SqliteProvider({self._path!r})"

    async def close(self) -> None:
        """Close the connection (waits for a running operation); idempotent."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._conn.close, limiter=self._limiter)

    async def __aenter__(self) -> SqliteProvider:
        return self

    # plumbing --------------------------------------------------------------------------------------
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

    # orchestrator queue ----------------------------------------------------------------------------
    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0
    ) -> OrchestrationItem | None:
        token = self._new_token()
        lock_ms = ms(lock_timeout)
        next_visible: list[int] = []

        def _fetch(conn: sqlite3.Connection) -> OrchestrationItem | None:
            now = self.clock.now_ms()
            row = conn.execute(
                """
                SELECT q.instance_id FROM orchestrator_queue q
                WHERE q.visible_at <= ?
                  AND NOT EXISTS (SELECT 1 FROM instance_locks l
                                  WHERE l.instance_id = q.instance_id AND l.locked_until > ?)
                  AND (q.is_start = 1 OR EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id))
                ORDER BY q.id LIMIT 1
                """,
                (now, now),
            ).fetchone()
            if row is None:
                nxt = conn.execute(
                    "SELECT MIN(visible_at) FROM orchestrator_queue WHERE visible_at > ?", (now,)
                ).fetchone()[0]
                if nxt is not None:
                    next_visible.append(nxt)
                return None
            instance_id = row[0]
            conn.execute(
                "INSERT OR REPLACE INTO instance_locks(instance_id, lock_token, locked_until) VALUES (?, ?, ?)",
                (instance_id, token, now + lock_ms),
            )
            rows = conn.execute(
                """
                UPDATE orchestrator_queue SET lock_token = ?, attempt_count = attempt_count + 1
                WHERE instance_id = ? AND visible_at <= ?
                RETURNING id, work_item, attempt_count
                """,
                (token, instance_id, now),
            ).fetchall()
            rows.sort(key=lambda r: r[0])
            inst = conn.execute(
                "SELECT name, version, current_execution_id FROM instances WHERE instance_id = ?",
                (instance_id,),
            ).fetchone()
            name, version, execution_id = inst if inst is not None else ("", None, 1)
            history_texts = (
                [
                    t
                    for (t,) in conn.execute(
                        "SELECT event_data FROM history WHERE instance_id = ? AND execution_id = ? ORDER BY event_id",
                        (instance_id, execution_id),
                    )
                ]
                if inst is not None
                else []
            )
            return decode_batch(
                instance_id=instance_id,
                lock_token=token,
                attempt_count=max(r[2] for r in rows),
                message_texts=[r[1] for r in rows],
                has_instance=inst is not None,
                name=name,
                version=version,
                execution_id=execution_id,
                history_texts=history_texts,
            )

        # A cheap read first (same hop): an idle poll must not take the write lock.
        item = await self._run(
            "fetch_orchestration_item",
            _fetch,
            probe=lambda c: _has_orchestrator_work(c, self.clock.now_ms()),
            idle=_next_orchestrator_visible(next_visible, self.clock),
        )
        self._note_next(next_visible)
        return item

    def _note_next(self, next_visible: list[int]) -> None:
        if next_visible:
            self.notifier.notify_at("orchestrator", next_visible[0])

    async def _commit_turn(
        self,
        lock_token: str,
        execution_id: int,
        turn: EncodedTurn,
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivity],
    ) -> TurnCommitted:
        history_rows = list(zip(turn.event_ids, turn.event_types, turn.event_texts, strict=True))
        outcome: dict[str, Any] = {}

        def _ack(conn: sqlite3.Connection) -> None:
            now = self.clock.now_ms()
            lock = conn.execute(
                "SELECT instance_id, locked_until FROM instance_locks WHERE lock_token = ?", (lock_token,)
            ).fetchone()
            if lock is None:
                raise ProviderError.permanent(
                    "ack_orchestration_item", f"invalid lock token {lock_token!r} (lock lost or instance deleted)",
                    kind=ProviderErrorKind.LOCK_LOST,
                )
            instance_id, locked_until = lock
            if locked_until <= now:
                raise ProviderError.permanent("ack_orchestration_item", "instance lock expired", kind=ProviderErrorKind.LOCK_LOST)
            conn.execute("DELETE FROM orchestrator_queue WHERE lock_token = ?", (lock_token,))
            if metadata.orchestration_name is not None:
                conn.execute(
                    """
                    INSERT INTO instances(instance_id, name, version, current_execution_id, parent_instance_id,
                                          created_at, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(instance_id) DO UPDATE SET name = excluded.name, version = excluded.version
                    """,
                    (
                        instance_id,
                        metadata.orchestration_name,
                        metadata.orchestration_version,
                        execution_id,
                        metadata.parent_instance_id,
                        now,
                        now,
                    ),
                )
            exists = conn.execute("SELECT 1 FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if exists is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO executions(instance_id, execution_id, status, started_at) "
                    "VALUES (?, ?, ?, ?)",
                    (instance_id, execution_id, RUNNING, now),
                )
                conn.execute(
                    "UPDATE instances SET current_execution_id = MAX(current_execution_id, ?), updated_at = ? "
                    "WHERE instance_id = ?",
                    (execution_id, now, instance_id),
                )
            if history_rows:
                conn.executemany(
                    "INSERT INTO history(instance_id, execution_id, event_id, event_type, event_data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(instance_id, execution_id, *r) for r in history_rows],
                )
            if metadata.status is not None:
                terminal = metadata.status in TERMINAL_STATUSES
                conn.execute(
                    "UPDATE executions SET status = ?, output = ?, completed_at = ? "
                    "WHERE instance_id = ? AND execution_id = ?",
                    (metadata.status, metadata.output, now if terminal else None, instance_id, execution_id),
                )
            if turn.custom_status_changed:
                conn.execute(
                    "UPDATE instances SET custom_status = ?, custom_status_version = custom_status_version + 1 "
                    "WHERE instance_id = ?",
                    (turn.custom_status, instance_id),
                )
            if turn.workers:
                conn.executemany(
                    "INSERT INTO worker_queue(work_item, visible_at, attempt_count, instance_id, execution_id, "
                    "activity_id, session_id, tag) VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
                    [(w.text, now, w.instance, w.execution_id, w.activity_id, w.session_id, w.tag) for w in turn.workers],
                )
            for c in cancelled_activities:
                conn.execute(
                    "DELETE FROM worker_queue WHERE instance_id = ? AND execution_id = ? AND activity_id = ?",
                    (c.instance_id, c.execution_id, c.activity_id),
                )
            wake_now = False
            for o in turn.orchestrator:
                visible = o.visible(now)
                if visible > now:
                    outcome.setdefault("later", []).append(visible)
                else:
                    wake_now = True
                conn.execute(
                    "INSERT INTO orchestrator_queue(instance_id, work_item, is_start, visible_at) "
                    "VALUES (?, ?, ?, ?)",
                    (o.target, o.text, o.start, visible),
                )
            conn.execute("DELETE FROM instance_locks WHERE instance_id = ?", (instance_id,))
            if not wake_now:
                wake_now = (
                    conn.execute(
                        "SELECT 1 FROM orchestrator_queue WHERE instance_id = ? AND visible_at <= ? LIMIT 1",
                        (instance_id, now),
                    ).fetchone()
                    is not None
                )
            outcome["instance"] = instance_id
            outcome["wake"] = wake_now
            if metadata.status in (COMPLETED, FAILED):
                outcome["final"] = _instance_info(conn, instance_id)

        await self._run("ack_orchestration_item", _ack)
        return TurnCommitted(outcome["instance"], outcome["wake"], outcome.get("later", ()), outcome.get("final"))

    async def abandon_orchestration_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        visible: list[int] = []

        def _abandon(conn: sqlite3.Connection) -> None:
            now = self.clock.now_ms()
            lock = conn.execute("SELECT instance_id FROM instance_locks WHERE lock_token = ?", (lock_token,)).fetchone()
            if lock is None:
                raise ProviderError.permanent(
                    "abandon_orchestration_item", f"invalid lock token {lock_token!r}", kind=ProviderErrorKind.LOCK_LOST
                )
            conn.execute("DELETE FROM instance_locks WHERE lock_token = ?", (lock_token,))
            if ignore_attempt:
                conn.execute(
                    "UPDATE orchestrator_queue SET attempt_count = MAX(attempt_count - 1, 0) WHERE lock_token = ?",
                    (lock_token,),
                )
            if delay:
                at = now + ms(delay)
                conn.execute(
                    "UPDATE orchestrator_queue SET visible_at = ? WHERE lock_token = ? AND visible_at <= ?",
                    (at, lock_token, now),
                )
                visible.append(at)

        await self._run("abandon_orchestration_item", _abandon)
        if visible:
            self.notifier.notify_at("orchestrator", visible[0])
        else:
            self.notifier.notify("orchestrator")

    async def renew_orchestration_item_lock(self, lock_token: str, extend_for: float) -> None:
        def _renew(conn: sqlite3.Connection) -> None:
            now = self.clock.now_ms()
            cur = conn.execute(
                "UPDATE instance_locks SET locked_until = ? WHERE lock_token = ? AND locked_until > ?",
                (now + ms(extend_for), lock_token, now),
            )
            if cur.rowcount == 0:
                raise ProviderError.permanent(
                    "renew_orchestration_item_lock", "lock token invalid or lock already expired", kind=ProviderErrorKind.LOCK_LOST
                )

        await self._run("renew_orchestration_item_lock", _renew)

    async def _insert_orchestrator_message(self, target: str, text: str, start: bool, visible: int, now: int) -> None:
        def _enqueue(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO orchestrator_queue(instance_id, work_item, is_start, visible_at) VALUES (?, ?, ?, ?)",
                (target, text, start, visible),
            )

        await self._run("enqueue_for_orchestrator", _enqueue)

    async def enqueue_start(self, item: StartOrchestration) -> None:
        text = encode_work_item(item)

        def _start(conn: sqlite3.Connection) -> None:
            exists = conn.execute(
                "SELECT 1 FROM instances WHERE instance_id = ? "
                "UNION ALL SELECT 1 FROM orchestrator_queue WHERE instance_id = ? AND is_start = 1 LIMIT 1",
                (item.instance, item.instance),
            ).fetchone()
            if exists is not None:
                raise InstanceAlreadyExists(item.instance)
            conn.execute(
                "INSERT INTO orchestrator_queue(instance_id, work_item, is_start, visible_at) VALUES (?, ?, 1, ?)",
                (item.instance, text, self.clock.now_ms()),
            )

        await self._run("enqueue_start", _start)
        self.notifier.notify("orchestrator")

    # history ---------------------------------------------------------------------------------------
    async def read(self, instance_id: str) -> list[Event]:
        def _read(conn: sqlite3.Connection) -> list[Event]:
            row = conn.execute(
                "SELECT current_execution_id FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT MAX(execution_id) FROM history WHERE instance_id = ?", (instance_id,)
                ).fetchone()
                if row is None or row[0] is None:
                    return []
            return _read_history(conn, instance_id, row[0])

        return await self._run("read", _read, write=False)

    async def read_with_execution(self, instance_id: str, execution_id: int) -> list[Event]:
        return await self._run(
            "read_with_execution", lambda c: _read_history(c, instance_id, execution_id), write=False
        )

    async def append_with_execution(self, instance_id: str, execution_id: int, events: Sequence[Event]) -> None:
        rows = [(instance_id, execution_id, e.event_id, e.type_name, encode_event(e)) for e in events]

        def _append(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO history(instance_id, execution_id, event_id, event_type, event_data) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

        await self._run("append_with_execution", _append)

    # worker queue ----------------------------------------------------------------------------------
    async def enqueue_for_worker(self, item: ActivityExecute) -> None:
        text = encode_work_item(item)

        def _enqueue(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO worker_queue(work_item, visible_at, attempt_count, instance_id, execution_id, "
                "activity_id, session_id, tag) VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
                (text, self.clock.now_ms(), item.instance, item.execution_id, item.id, item.session_id, item.tag),
            )

        await self._run("enqueue_for_worker", _enqueue)
        self.notifier.notify("worker")

    async def fetch_work_items(
        self, lock_timeout: float, max_items: int, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        """Lock up to ``max_items`` visible work items in one round trip (each gets its own token)."""
        lock_ms = ms(lock_timeout)
        next_visible: list[int] = []
        bad: list[str] = []

        def _fetch(conn: sqlite3.Connection) -> list[WorkItemLease]:
            now = self.clock.now_ms()
            rows = conn.execute(
                "SELECT id, work_item, attempt_count FROM worker_queue "
                "WHERE visible_at <= ? AND (lock_token IS NULL OR locked_until <= ?) "
                "ORDER BY id LIMIT ?",
                (now, now, max(1, max_items)),
            ).fetchall()
            leases: list[WorkItemLease] = []
            for row_id, text, attempts in rows:
                try:
                    item = decode_activity(text)
                except HistoryDecodeError as exc:
                    # An undecodable row can never run: drop it rather than loop on it forever.
                    conn.execute("DELETE FROM worker_queue WHERE id = ?", (row_id,))
                    bad.append(str(exc))
                    continue
                token = self._new_token()
                conn.execute(
                    "UPDATE worker_queue SET lock_token = ?, locked_until = ?, attempt_count = attempt_count + 1 "
                    "WHERE id = ?",
                    (token, now + lock_ms, row_id),
                )
                leases.append(WorkItemLease(item=item, lock_token=token, attempt_count=attempts + 1))
            if not rows:
                nxt = conn.execute(
                    "SELECT MIN(visible_at) FROM worker_queue WHERE visible_at > ? AND lock_token IS NULL", (now,)
                ).fetchone()[0]
                if nxt is not None:
                    next_visible.append(nxt)
            return leases

        leases = await self._run("fetch_work_item", _fetch, probe=lambda c: _has_worker_work(c, self.clock.now_ms()), idle=_no_leases)
        if next_visible:
            self.notifier.notify_at("worker", next_visible[0])
        if bad:
            import logging

            logging.getLogger("duroxide_trio.providers.sqlite").error("dropped undecodable work items: %s", bad)
        return leases

    async def ack_work_items(
        self, entries: Sequence[tuple[str, WorkItem | None]]
    ) -> list[ProviderError | None]:
        """Ack several work items in one round trip; one result per entry (``None`` = acked)."""
        encoded = [(tok, c, encode_work_item(c) if c is not None else None) for tok, c in entries]

        def _ack(conn: sqlite3.Connection) -> list[ProviderError | None]:
            now = self.clock.now_ms()
            results: list[ProviderError | None] = []
            for token, completion, text in encoded:
                row = conn.execute(
                    "DELETE FROM worker_queue WHERE lock_token = ? AND locked_until > ? RETURNING id",
                    (token, now),
                ).fetchone()
                if row is None:
                    results.append(
                        ProviderError.permanent(
                            "ack_work_item",
                            "lock token invalid or expired (the activity was cancelled or its lock lost)",
                            kind=ProviderErrorKind.LOCK_LOST,
                        )
                    )
                    continue
                if completion is not None and text is not None:
                    conn.execute(
                        "INSERT INTO orchestrator_queue(instance_id, work_item, is_start, visible_at) "
                        "VALUES (?, ?, 0, ?)",
                        (completion.target_instance, text, now),
                    )
                results.append(None)
            return results

        results = await self._run("ack_work_item", _ack)
        if any(r is None and c is not None for r, (_, c) in zip(results, entries, strict=True)):
            self.notifier.notify("orchestrator")
        return results

    async def renew_work_item_lock(self, lock_token: str, extend_for: float) -> None:
        def _renew(conn: sqlite3.Connection) -> None:
            now = self.clock.now_ms()
            cur = conn.execute(
                "UPDATE worker_queue SET locked_until = ? WHERE lock_token = ? AND locked_until > ?",
                (now + ms(extend_for), lock_token, now),
            )
            if cur.rowcount == 0:
                raise ProviderError.permanent("renew_work_item_lock", "lock token invalid or expired", kind=ProviderErrorKind.LOCK_LOST)

        await self._run("renew_work_item_lock", _renew)

    async def abandon_work_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        at_holder: list[int] = []

        def _abandon(conn: sqlite3.Connection) -> None:
            at = self.clock.now_ms() + ms(delay or 0)
            at_holder.append(at)
            cur = conn.execute(
                """
                UPDATE worker_queue SET lock_token = NULL, locked_until = NULL, visible_at = ?,
                    attempt_count = CASE WHEN ? THEN MAX(attempt_count - 1, 0) ELSE attempt_count END
                WHERE lock_token = ?
                """,
                (at, 1 if ignore_attempt else 0, lock_token),
            )
            if cur.rowcount == 0:
                raise ProviderError.permanent(
                    "abandon_work_item", f"invalid lock token {lock_token!r}", kind=ProviderErrorKind.LOCK_LOST
                )

        await self._run("abandon_work_item", _abandon)
        if delay:
            self.notifier.notify_at("worker", at_holder[0])
        else:
            self.notifier.notify("worker")

    # status ----------------------------------------------------------------------------------------
    async def get_instance_info(self, instance_id: str) -> InstanceInfo | None:
        return await self._run("get_instance_info", lambda c: _instance_info(c, instance_id), write=False)

    async def instance_exists(self, instance_id: str) -> bool:
        """True if ``instance_id`` has an instance or a pending start."""

        def _exists(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "SELECT 1 FROM instances WHERE instance_id = ? "
                "UNION ALL SELECT 1 FROM orchestrator_queue WHERE instance_id = ? AND is_start = 1 LIMIT 1",
                (instance_id, instance_id),
            ).fetchone() is not None

        return bool(await self._run("instance_exists", _exists, write=False))

    async def get_custom_status(self, instance_id: str, last_seen_version: int) -> tuple[str | None, int] | None:
        def _get(conn: sqlite3.Connection) -> tuple[str | None, int] | None:
            row = conn.execute(
                "SELECT custom_status, custom_status_version FROM instances WHERE instance_id = ?",
                (instance_id,),
            ).fetchone()
            if row is None or row[1] <= last_seen_version:
                return None
            return row[0], row[1]

        return await self._run("get_custom_status", _get, write=False)

    # management ------------------------------------------------------------------------------------
    async def list_instances(self, status: str | None = None) -> list[str]:
        def _list(conn: sqlite3.Connection) -> list[str]:
            if status is None:
                rows = conn.execute("SELECT instance_id FROM instances ORDER BY created_at DESC, rowid DESC")
            else:
                rows = conn.execute(
                    "SELECT i.instance_id FROM instances i JOIN executions e "
                    "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id "
                    "WHERE e.status = ? ORDER BY i.created_at DESC, i.rowid DESC",
                    (status,),
                )
            return [r[0] for r in rows]

        return await self._run("list_instances", _list, write=False)

    async def list_executions(self, instance_id: str) -> list[int]:
        def _list(conn: sqlite3.Connection) -> list[int]:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT execution_id FROM executions WHERE instance_id = ? ORDER BY execution_id",
                    (instance_id,),
                )
            ]

        return await self._run("list_executions", _list, write=False)

    async def get_execution_info(self, instance_id: str, execution_id: int) -> ExecutionInfo | None:
        def _get(conn: sqlite3.Connection) -> ExecutionInfo | None:
            row = conn.execute(
                "SELECT status, output, started_at, completed_at FROM executions "
                "WHERE instance_id = ? AND execution_id = ?",
                (instance_id, execution_id),
            ).fetchone()
            if row is None:
                return None
            count = conn.execute(
                "SELECT COUNT(*) FROM history WHERE instance_id = ? AND execution_id = ?",
                (instance_id, execution_id),
            ).fetchone()[0]
            return ExecutionInfo(execution_id, row[0], row[1], row[2], row[3], count)

        return await self._run("get_execution_info", _get, write=False)

    async def get_system_metrics(self) -> SystemMetrics:
        def _get(conn: sqlite3.Connection) -> SystemMetrics:
            total_instances = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            total_executions = conn.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
            counts = dict(
                conn.execute(
                    "SELECT e.status, COUNT(*) FROM instances i JOIN executions e "
                    "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id GROUP BY e.status"
                ).fetchall()
            )
            total_events = conn.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            return SystemMetrics(
                total_instances=total_instances,
                total_executions=total_executions,
                running_instances=counts.get(RUNNING, 0) + counts.get("ContinuedAsNew", 0),
                completed_instances=counts.get(COMPLETED, 0),
                failed_instances=counts.get(FAILED, 0),
                total_events=total_events,
            )

        return await self._run("get_system_metrics", _get, write=False)

    async def get_queue_depths(self) -> QueueDepths:
        def _get(conn: sqlite3.Connection) -> QueueDepths:
            now = self.clock.now_ms()
            orch = conn.execute(
                "SELECT COUNT(*) FROM orchestrator_queue q WHERE NOT EXISTS (SELECT 1 FROM instance_locks l "
                "WHERE l.instance_id = q.instance_id AND l.locked_until > ?)",
                (now,),
            ).fetchone()[0]
            work = conn.execute(
                "SELECT COUNT(*) FROM worker_queue WHERE lock_token IS NULL OR locked_until <= ?", (now,)
            ).fetchone()[0]
            oldest_orch = conn.execute(
                "SELECT MIN(visible_at) FROM orchestrator_queue q WHERE visible_at <= ? AND NOT EXISTS ("
                "SELECT 1 FROM instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > ?)",
                (now, now),
            ).fetchone()[0]
            oldest_work = conn.execute(
                "SELECT MIN(visible_at) FROM worker_queue WHERE visible_at <= ? AND "
                "(lock_token IS NULL OR locked_until <= ?)",
                (now, now),
            ).fetchone()[0]
            return QueueDepths(
                orchestrator_queue=orch,
                worker_queue=work,
                oldest_orchestrator_age_ms=None if oldest_orch is None else max(now - oldest_orch, 0),
                oldest_worker_age_ms=None if oldest_work is None else max(now - oldest_work, 0),
            )

        return await self._run("get_queue_depths", _get, write=False)

    async def work_outlook(self) -> WorkOutlook:
        """What is ready, in progress and due next (see ``WorkOutlook``); one read."""

        def _get(conn: sqlite3.Connection) -> WorkOutlook:
            now = self.clock.now_ms()
            ready = conn.execute(
                """
                SELECT (SELECT COUNT(*) FROM orchestrator_queue q
                        WHERE q.visible_at <= :now
                          AND NOT EXISTS (SELECT 1 FROM instance_locks l
                                          WHERE l.instance_id = q.instance_id AND l.locked_until > :now)
                          AND (q.is_start = 1 OR EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id)))
                     + (SELECT COUNT(*) FROM worker_queue
                        WHERE visible_at <= :now AND (lock_token IS NULL OR locked_until <= :now)),
                       (SELECT COUNT(*) FROM instance_locks WHERE locked_until > :now)
                     + (SELECT COUNT(*) FROM worker_queue WHERE lock_token IS NOT NULL AND locked_until > :now),
                       (SELECT MIN(v) FROM (SELECT MIN(visible_at) AS v FROM orchestrator_queue WHERE visible_at > :now
                                            UNION ALL
                                            SELECT MIN(visible_at) FROM worker_queue WHERE visible_at > :now))
                """,
                {"now": now},
            ).fetchone()
            return WorkOutlook(ready[0], ready[1], ready[2])

        return await self._run("work_outlook", _get, write=False)

    async def list_children(self, instance_id: str) -> list[str]:
        return await self._run("list_children", lambda c: _children(c, instance_id), write=False)

    async def get_parent_id(self, instance_id: str) -> str | None:
        def _get(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT parent_instance_id FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                raise InstanceNotFound("get_parent_id", instance_id)
            return row[0]  # type: ignore[no-any-return]

        return await self._run("get_parent_id", _get, write=False)

    async def get_instance_tree(self, instance_id: str) -> list[str]:
        def _tree(conn: sqlite3.Connection) -> list[str]:
            if conn.execute("SELECT 1 FROM instances WHERE instance_id = ?", (instance_id,)).fetchone() is None:
                raise InstanceNotFound("get_instance_tree", instance_id)
            return _tree_of(conn, instance_id)

        return await self._run("get_instance_tree", _tree, write=False)

    async def delete_instance(self, instance_id: str, force: bool = False) -> DeleteResult:
        def _delete(conn: sqlite3.Connection) -> DeleteResult:
            row = conn.execute(
                "SELECT parent_instance_id FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                raise InstanceNotFound("delete_instance", instance_id)
            if row[0] is not None:
                raise CannotDeleteSubOrchestration("delete_instance", instance_id, row[0])
            return _delete_ids(conn, _tree_of(conn, instance_id), force, "delete_instance")

        result = await self._run("delete_instance", _delete)
        self.notifier.notify_instance(instance_id)
        return result

    async def _delete_many(self, ids: list[str], force: bool) -> DeleteResult:
        return await self._run(
            "delete_instances_atomic", lambda c: _delete_ids(c, ids, force, "delete_instances_atomic")
        )

    async def _delete_bulk(self, filter: InstanceFilter) -> DeleteResult:
        def _bulk(conn: sqlite3.Connection) -> DeleteResult:
            sql = (
                "SELECT i.instance_id FROM instances i JOIN executions e "
                "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id "
                "WHERE i.parent_instance_id IS NULL AND e.status IN ('Completed', 'Failed')"
            )
            params: list[Any] = []
            if filter.instance_ids is not None:
                sql += f" AND i.instance_id IN ({','.join('?' * len(filter.instance_ids))})"
                params.extend(filter.instance_ids)
            if filter.completed_before_ms is not None:
                sql += " AND e.completed_at < ?"
                params.append(filter.completed_before_ms)
            sql += " ORDER BY i.created_at, i.rowid LIMIT ?"
            params.append(filter.limit)
            roots = [r[0] for r in conn.execute(sql, params)]
            ids: list[str] = []
            for root in roots:
                ids.extend(_tree_of(conn, root))
            return _delete_ids(conn, ids, True, "delete_instance_bulk") if ids else DeleteResult()

        return await self._run("delete_instance_bulk", _bulk)

    async def prune_executions(self, instance_id: str, options: PruneOptions) -> PruneResult:
        def _prune(conn: sqlite3.Connection) -> PruneResult:
            if conn.execute("SELECT 1 FROM instances WHERE instance_id = ?", (instance_id,)).fetchone() is None:
                raise InstanceNotFound("prune_executions", instance_id)
            return _prune_one(conn, instance_id, options)

        return await self._run("prune_executions", _prune)

    async def _prune_bulk(self, filter: InstanceFilter, options: PruneOptions) -> PruneResult:
        def _bulk(conn: sqlite3.Connection) -> PruneResult:
            sql = "SELECT instance_id FROM instances"
            params: list[Any] = []
            if filter.instance_ids is not None:
                sql += f" WHERE instance_id IN ({','.join('?' * len(filter.instance_ids))})"
                params.extend(filter.instance_ids)
            sql += " ORDER BY created_at, rowid LIMIT ?"
            params.append(filter.limit)
            total = PruneResult()
            for (iid,) in conn.execute(sql, params).fetchall():
                r = _prune_one(conn, iid, options)
                total = PruneResult(
                    total.instances_processed + 1,
                    total.executions_deleted + r.executions_deleted,
                    total.events_deleted + r.events_deleted,
                )
            return total

        return await self._run("prune_executions_bulk", _bulk)

    # fault-injection hooks for the validation suite --------------------------------------------------
    # process liveness leases (optional capability, see runtime/liveness.py and migration 2) ------------
    _process_id: str | None = None
    _lease_fd: int | None = None

    @property
    def process_id(self) -> str | None:
        """The process whose lease this provider holds (``None``: none registered)."""
        return self._process_id

    def _new_token(self) -> str:
        """A fresh lock token; ``'<process>:<random>'`` once a process is registered."""
        token = uuid.uuid4().hex
        return f"{self._process_id}:{token}" if self._process_id else token

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

    async def _corrupt_instance_history(self, instance_id: str) -> None:
        await self._run(
            "corrupt",
            lambda c: c.execute("UPDATE history SET event_data = '{not json' WHERE instance_id = ?", (instance_id,)),
        )

    async def _max_attempt_count(self, instance_id: str) -> int:
        def _get(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT MAX(attempt_count) FROM orchestrator_queue WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            return int(row[0] or 0)

        return await self._run("max_attempt_count", _get, write=False)


# ---------------------------------------------------------------------------------------------------------
# helpers that run inside the worker thread


def _has_orchestrator_work(conn: sqlite3.Connection, now: int) -> bool:
    return (
        conn.execute(
            """
            SELECT 1 FROM orchestrator_queue q
            WHERE q.visible_at <= ?
              AND NOT EXISTS (SELECT 1 FROM instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > ?)
              AND (q.is_start = 1 OR EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id))
            LIMIT 1
            """,
            (now, now),
        ).fetchone()
        is not None
    )


def _next_orchestrator_visible(out: list[int], clock: Clock) -> Callable[[sqlite3.Connection], None]:
    def _next(conn: sqlite3.Connection) -> None:
        nxt = conn.execute(
            "SELECT MIN(visible_at) FROM orchestrator_queue WHERE visible_at > ?", (clock.now_ms(),)
        ).fetchone()[0]
        if nxt is not None:
            out.append(nxt)

    return _next


def _no_leases(conn: sqlite3.Connection) -> list[WorkItemLease]:
    return []


def _has_worker_work(conn: sqlite3.Connection, now: int) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM worker_queue WHERE visible_at <= ? AND (lock_token IS NULL OR locked_until <= ?) "
            "LIMIT 1",
            (now, now),
        ).fetchone()
        is not None
    )


def _read_history(conn: sqlite3.Connection, instance_id: str, execution_id: int) -> list[Event]:
    return [
        decode_event(t)
        for (t,) in conn.execute(
            "SELECT event_data FROM history WHERE instance_id = ? AND execution_id = ? ORDER BY event_id",
            (instance_id, execution_id),
        )
    ]


def _instance_info(conn: sqlite3.Connection, instance_id: str) -> InstanceInfo | None:
    row = conn.execute(
        """
        SELECT i.name, i.version, i.current_execution_id, COALESCE(e.status, 'Running'), e.output,
               i.custom_status, i.custom_status_version, i.created_at, i.updated_at, i.parent_instance_id
        FROM instances i LEFT JOIN executions e
          ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE i.instance_id = ?
        """,
        (instance_id,),
    ).fetchone()
    if row is None:
        return None
    return InstanceInfo(instance_id, *row)


def _children(conn: sqlite3.Connection, instance_id: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT instance_id FROM instances WHERE parent_instance_id = ? ORDER BY created_at, rowid",
            (instance_id,),
        )
    ]


def _tree_of(conn: sqlite3.Connection, root: str) -> list[str]:
    out = [root]
    i = 0
    while i < len(out):
        out.extend(_children(conn, out[i]))
        i += 1
    return out


def _delete_ids(conn: sqlite3.Connection, ids: list[str], force: bool, op: str) -> DeleteResult:
    wanted = set(ids)
    for iid in ids:
        row = conn.execute(
            "SELECT COALESCE(e.status, 'Running') FROM instances i LEFT JOIN executions e "
            "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id WHERE i.instance_id = ?",
            (iid,),
        ).fetchone()
        if row is None:
            raise InstanceNotFound(op, iid)
        if not force and row[0] not in TERMINAL_STATUSES - {"ContinuedAsNew"}:
            raise InstanceStillRunning(op, iid)
        orphans = [c for c in _children(conn, iid) if c not in wanted]
        if orphans:
            raise ProviderError.permanent(
                op, f"deleting {iid!r} would orphan its sub-orchestrations {orphans!r}; include them or delete the root"
            )
    executions = events = messages = 0
    for iid in ids:
        events += conn.execute("DELETE FROM history WHERE instance_id = ?", (iid,)).rowcount
        executions += conn.execute("DELETE FROM executions WHERE instance_id = ?", (iid,)).rowcount
        messages += conn.execute("DELETE FROM orchestrator_queue WHERE instance_id = ?", (iid,)).rowcount
        messages += conn.execute("DELETE FROM worker_queue WHERE instance_id = ?", (iid,)).rowcount
        conn.execute("DELETE FROM instance_locks WHERE instance_id = ?", (iid,))
        conn.execute("DELETE FROM kv_store WHERE instance_id = ?", (iid,))
        conn.execute("DELETE FROM instances WHERE instance_id = ?", (iid,))
    return DeleteResult(len(ids), executions, events, messages)


def _prune_one(conn: sqlite3.Connection, instance_id: str, options: PruneOptions) -> PruneResult:
    current = conn.execute(
        "SELECT current_execution_id FROM instances WHERE instance_id = ?", (instance_id,)
    ).fetchone()[0]
    rows = conn.execute(
        "SELECT execution_id, status, completed_at FROM executions WHERE instance_id = ? ORDER BY execution_id DESC",
        (instance_id,),
    ).fetchall()
    keep = max(1, options.keep_last or 1)
    victims = []
    for rank, (eid, status, completed_at) in enumerate(rows):
        if eid == current or status == RUNNING:
            continue
        if options.keep_last is not None and rank < keep:
            continue
        if options.completed_before_ms is not None and not (
            completed_at is not None and completed_at < options.completed_before_ms
        ):
            continue
        victims.append(eid)
    events = 0
    for eid in victims:
        events += conn.execute(
            "DELETE FROM history WHERE instance_id = ? AND execution_id = ?", (instance_id, eid)
        ).rowcount
        conn.execute("DELETE FROM executions WHERE instance_id = ? AND execution_id = ?", (instance_id, eid))
    return PruneResult(1, len(victims), events)


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _duroxide_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM _duroxide_migrations")}
        for number, script in enumerate(MIGRATIONS, start=1):
            if number in done:
                continue
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO _duroxide_migrations(version, applied_at) VALUES (?, ?)", (number, now_ms()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteFactory:
    """``ProviderFactory`` for SQLite: ``path=None`` makes a fresh file in a temp dir per provider,
    ``":memory:"`` an in-memory database, anything else that file."""

    def __init__(self, path: str | None = None, *, lock_timeout: float = 1.0) -> None:
        """Args: ``path`` (``None``: a fresh temporary file per provider; ``":memory:"``; or a file shared
        by every provider); ``lock_timeout``: the short lock timeout lock-expiry validation tests use."""
        self.path = path
        self.lock_timeout = lock_timeout
        self._tmpdirs: dict[int, str] = {}

    @property
    def description(self) -> str:
        """``"sqlite"`` or ``"sqlite-memory"`` (shown in stress results)."""
        if self.path == ":memory:":
            return "sqlite-memory"
        return "sqlite"

    async def create_provider(self) -> SqliteProvider:
        """Open a provider on a fresh temporary file (``path=None``), in memory, or on ``path``."""
        if self.path is None:
            import tempfile

            d = tempfile.mkdtemp(prefix="duroxide-sqlite-")
            provider = await SqliteProvider.open(os.path.join(d, "state.db"))
            self._tmpdirs[id(provider)] = d
            return provider
        return await SqliteProvider.open(self.path)

    async def cleanup(self, provider: SqliteProvider) -> None:
        """Close ``provider`` and remove its temporary directory, if this factory made one."""
        await provider.close()
        d = self._tmpdirs.pop(id(provider), None)
        if d is not None:
            import shutil

            shutil.rmtree(d, ignore_errors=True)

    async def corrupt_instance_history(self, provider: SqliteProvider, instance_id: str) -> None:
        """Validation hook: make the instance's stored history undecodable."""
        await provider._corrupt_instance_history(instance_id)

    async def get_max_attempt_count(self, provider: SqliteProvider, instance_id: str) -> int:
        """Validation hook: the highest attempt count among the instance's queued messages."""
        return await provider._max_attempt_count(instance_id)
