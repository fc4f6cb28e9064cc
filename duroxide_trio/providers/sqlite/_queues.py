"""The orchestrator and worker queues of the SQLite provider (fetch, ack, renew, abandon, enqueue)."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ...history import (
    ActivityExecute,
    HistoryDecodeError,
    StartOrchestration,
    WorkItem,
    encode_work_item,
)
from .._kernel import (
    TurnCommitted,
    TurnToCommit,
    acked_targets,
    decode_activity,
    decode_batch,
    ms,
)
from ..base import (
    COMPLETED,
    FAILED,
    RUNNING,
    TERMINAL_STATUSES,
    AckedWithTurns,
    Clock,
    InstanceAlreadyExists,
    OrchestrationItem,
    ProviderError,
    ProviderErrorKind,
    TurnRequest,
    VersionRange,
    WorkerRouting,
    WorkItemLease,
)
from ._executor import SqliteBase
from ._history import instance_info

_log = logging.getLogger("duroxide_trio.providers.sqlite")


class QueuesJob(SqliteBase):
    """The two peek-lock queues."""

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0, *, versions: VersionRange | None = None
    ) -> OrchestrationItem | None:
        token = self._new_token()
        lock_ms = ms(lock_timeout)
        next_visible: list[int] = []
        lo, hi = versions.key_bounds() if versions is not None else (None, None)

        def _fetch(conn: sqlite3.Connection) -> OrchestrationItem | None:
            now = self.clock.now_ms()
            row = conn.execute(
                _CLAIM_NEXT if lo is None and hi is None else _CLAIM_NEXT_IN_RANGE,
                {"now": now, "lo": lo, "hi": hi},
            ).fetchone()
            if row is None:
                nxt = conn.execute(
                    "SELECT MIN(visible_at) FROM orchestrator_queue WHERE visible_at > ?", (now,)
                ).fetchone()[0]
                if nxt is not None:
                    next_visible.append(nxt)
                return None
            return self._claim(conn, row[0], token, now, lock_ms)

        # A cheap read first (same hop): an idle poll must not take the write lock.
        item = await self._run(
            "fetch_orchestration_item",
            _fetch,
            probe=lambda c: _has_orchestrator_work(c, self.clock.now_ms(), lo, hi),
            idle=_next_orchestrator_visible(next_visible, self.clock),
        )
        self._note_next(next_visible)
        return item

    def _claim(
        self, conn: sqlite3.Connection, instance_id: str, token: str, now: int, lock_ms: int
    ) -> OrchestrationItem:
        """Lock a claimable ``instance_id`` under ``token`` and tag every visible message of it: the batch
        ``fetch_orchestration_item`` returns."""
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

    def _note_next(self, next_visible: list[int]) -> None:
        if next_visible:
            self.notifier.notify_at("orchestrator", next_visible[0])

    async def _commit_turn(self, commit: TurnToCommit) -> TurnCommitted:
        lock_token, execution_id, turn = commit.lock_token, commit.execution_id, commit.turn
        metadata, cancelled_activities = commit.metadata, commit.cancelled_activities
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
            kv = turn.kv
            if kv.changed and exists is not None:
                if kv.clear_all:
                    conn.execute("DELETE FROM kv_store WHERE instance_id = ?", (instance_id,))
                if kv.deleted:
                    conn.executemany(
                        "DELETE FROM kv_store WHERE instance_id = ? AND key = ?", [(instance_id, k) for k in kv.deleted]
                    )
                if kv.keys:
                    conn.executemany(
                        "INSERT INTO kv_store(instance_id, key, value, last_updated_at_ms) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(instance_id, key) DO UPDATE SET value = excluded.value, "
                        "last_updated_at_ms = excluded.last_updated_at_ms",
                        [(instance_id, k, v, now) for k, v in zip(kv.keys, kv.values, strict=True)],
                    )
            if turn.workers:
                # Eager dispatch: the picked items are inserted already locked for the caller (attempt 1).
                suffix = commit.eager_suffix()
                locks: dict[int, str] = {k: self._new_token() + suffix for k in commit.eager}
                until = now + commit.eager_lock_ms
                conn.executemany(
                    "INSERT INTO worker_queue(work_item, visible_at, attempt_count, instance_id, execution_id, "
                    "activity_id, session_id, tag, lock_token, locked_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (w.text, now, 1 if k in locks else 0, w.instance, w.execution_id, w.activity_id, w.session_id,
                         w.tag, locks.get(k), until if k in locks else None)
                        for k, w in enumerate(turn.workers)
                    ],
                )
                outcome["eager"] = list(locks.items())
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
                outcome["final"] = instance_info(conn, instance_id)

        await self._run("ack_orchestration_item", _ack)
        return TurnCommitted(
            outcome["instance"], outcome["wake"], outcome.get("later", ()), outcome.get("final"), outcome.get("eager", ())
        )

    async def release_eager(self, claim: str) -> int:
        """Give back what an eager ack locked under ``claim`` (its answer was lost), attempts uncounted."""
        if not claim:
            return 0

        def _release(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE worker_queue SET lock_token = NULL, locked_until = NULL, visible_at = ?, "
                "attempt_count = MAX(attempt_count - 1, 0) WHERE lock_token LIKE ?",
                (self.clock.now_ms(), "%~" + claim),
            )
            return int(cur.rowcount)

        released = await self._run("release_eager", _release)
        if released:
            self.notifier.notify("worker")
        return released

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

    def _insert_start(self, conn: sqlite3.Connection, item: StartOrchestration, text: str, now: int) -> None:
        exists = conn.execute(
            "SELECT 1 FROM instances WHERE instance_id = ? "
            "UNION ALL SELECT 1 FROM orchestrator_queue WHERE instance_id = ? AND is_start = 1 LIMIT 1",
            (item.instance, item.instance),
        ).fetchone()
        if exists is not None:
            raise InstanceAlreadyExists(item.instance)
        conn.execute(
            "INSERT INTO orchestrator_queue(instance_id, work_item, is_start, visible_at) VALUES (?, ?, 1, ?)",
            (item.instance, text, now),
        )

    async def enqueue_start(self, item: StartOrchestration) -> None:
        text = encode_work_item(item)
        await self._run("enqueue_start", lambda conn: self._insert_start(conn, item, text, self.clock.now_ms()))
        self.notifier.notify("orchestrator")

    async def enqueue_start_and_fetch(self, item: StartOrchestration, turn: TurnRequest) -> OrchestrationItem | None:
        """``enqueue_start`` and, in the same transaction, lock for the caller the batch a fetch would
        take next: the oldest claimable instance, the new one when nothing older waits (see
        ``StartFetchesTurn``)."""
        text = encode_work_item(item)
        lock_ms = ms(turn.lock_timeout)
        versions = turn.versions
        lo, hi = versions.key_bounds() if versions is not None else (None, None)
        head = _CLAIM_NEXT if lo is None and hi is None else _CLAIM_NEXT_IN_RANGE

        def _start(conn: sqlite3.Connection) -> OrchestrationItem | None:
            now = self.clock.now_ms()
            self._insert_start(conn, item, text, now)
            if turn.max_items < 1:
                return None
            row = conn.execute(head, {"now": now, "lo": lo, "hi": hi}).fetchone()
            if row is None:
                return None
            return self._claim(conn, row[0], self._new_token(), now, lock_ms)

        batch = await self._run("enqueue_start", _start)
        if batch is None or batch.instance_id != item.instance:  # the start waits for a dispatcher
            self.notifier.notify("orchestrator")
        return batch

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

    def _lock_row(
        self, conn: sqlite3.Connection, row_id: int, text: str, attempts: int, until: int, bad: list[str]
    ) -> WorkItemLease | None:
        """Lock one fetched worker row until ``until`` and lease it; an undecodable row can never run, so
        it is dropped (reported in ``bad``) rather than fetched forever."""
        try:
            item = decode_activity(text)
        except HistoryDecodeError as exc:
            conn.execute("DELETE FROM worker_queue WHERE id = ?", (row_id,))
            bad.append(str(exc))
            return None
        token = self._new_token()
        conn.execute(
            "UPDATE worker_queue SET lock_token = ?, locked_until = ?, attempt_count = attempt_count + 1 WHERE id = ?",
            (token, until, row_id),
        )
        return WorkItemLease(item=item, lock_token=token, attempt_count=attempts + 1)

    def _after_fetch(self, next_visible: list[int], bad: list[str]) -> None:
        """After a worker fetch: arm the wake-up for the next visible item, log dropped rows."""
        if next_visible:
            self.notifier.notify_at("worker", next_visible[0])
        if bad:
            _log.error("dropped undecodable work items: %s", bad)

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
                lease = self._lock_row(conn, row_id, text, attempts, now + lock_ms, bad)
                if lease is not None:
                    leases.append(lease)
            if not rows:
                nxt = conn.execute(
                    "SELECT MIN(visible_at) FROM worker_queue WHERE visible_at > ? AND lock_token IS NULL", (now,)
                ).fetchone()[0]
                if nxt is not None:
                    next_visible.append(nxt)
            return leases

        leases = await self._run("fetch_work_item", _fetch, probe=lambda c: _has_worker_work(c, self.clock.now_ms()), idle=_no_leases)
        self._after_fetch(next_visible, bad)
        return leases

    async def fetch_routed_work_items(
        self, lock_timeout: float, max_items: int, routing: WorkerRouting, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        """``fetch_work_items`` of what ``routing`` accepts (tags in the query; session items one at a time
        per session, in order, claimed for ``routing.owner``), in one round trip."""
        lock_ms = ms(lock_timeout)
        session_ms = ms(routing.session_lock_timeout)
        untagged, all_tags, tags = routing.tag_params()
        tags_json = json.dumps(tags)
        owner = routing.owner
        next_visible: list[int] = []
        bad: list[str] = []

        def _fetch(conn: sqlite3.Connection) -> list[WorkItemLease]:
            now = self.clock.now_ms()
            owned = conn.execute(
                "SELECT COUNT(*) FROM sessions WHERE worker_id = ? AND locked_until > ?", (owner, now)
            ).fetchone()[0]
            params = {"now": now, "untagged": untagged, "all": all_tags, "tags": tags_json, "owner": owner,
                      "room": owned < routing.max_sessions, "max": max(1, max_items)}
            rows = conn.execute(_ROUTED_CANDIDATES, params).fetchall()
            leases: list[WorkItemLease] = []
            claimed = 0
            for row_id, text, attempts, session_id, mine in rows:
                if session_id is not None and not mine:
                    if owned + claimed >= routing.max_sessions:
                        continue  # this runtime owns as many sessions as it may
                    claimed += 1
                lease = self._lock_row(conn, row_id, text, attempts, now + lock_ms, bad)
                if lease is None:
                    continue
                if session_id is not None:
                    conn.execute(
                        "INSERT INTO sessions(session_id, worker_id, locked_until, last_activity_at) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT(session_id) DO UPDATE SET worker_id = excluded.worker_id, "
                        "locked_until = excluded.locked_until, last_activity_at = excluded.last_activity_at",
                        (session_id, owner, now + session_ms, now),
                    )
                leases.append(lease)
            if not rows:
                nxt = conn.execute(
                    "SELECT MIN(w.visible_at) FROM worker_queue w WHERE w.visible_at > :now AND w.lock_token IS NULL "
                    f"AND {_TAG_MATCH}",
                    params,
                ).fetchone()[0]
                if nxt is not None:
                    next_visible.append(nxt)
            return leases

        def _probe(conn: sqlite3.Connection) -> bool:
            now = self.clock.now_ms()
            params = {"now": now, "untagged": untagged, "all": all_tags, "tags": tags_json}
            return conn.execute(_ROUTED_PROBE, params).fetchone() is not None

        leases = await self._run("fetch_work_item", _fetch, probe=_probe, idle=_no_leases)
        self._after_fetch(next_visible, bad)
        return leases

    async def renew_sessions(self, owner: str, lock_timeout: float, idle_timeout: float) -> int:
        """Extend ``owner``'s busy or recently active sessions, release its idle ones; how many it owns."""

        def _renew(conn: sqlite3.Connection) -> int:
            now = self.clock.now_ms()
            params = {"owner": owner, "now": now, "until": now + ms(lock_timeout), "idle": now - ms(idle_timeout)}
            conn.execute(
                "UPDATE sessions SET last_activity_at = :now WHERE worker_id = :owner AND EXISTS ("
                "SELECT 1 FROM worker_queue w WHERE w.session_id = sessions.session_id "
                "AND w.lock_token IS NOT NULL AND w.locked_until > :now)",
                params,
            )
            conn.execute(
                "DELETE FROM sessions WHERE worker_id = :owner AND last_activity_at <= :idle", params
            )
            cur = conn.execute("UPDATE sessions SET locked_until = :until WHERE worker_id = :owner", params)
            return int(cur.rowcount)

        return await self._run("renew_sessions", _renew)

    def _ack_rows(
        self, conn: sqlite3.Connection, encoded: list[tuple[str, WorkItem | None, str | None]], now: int
    ) -> list[ProviderError | None]:
        """Delete each live-locked row of ``encoded`` and enqueue its completion; one result per entry.

        Two statements for the whole list (one DELETE for every token, one INSERT of every completion, in
        the entries' order) rather than two per entry."""
        rows = conn.execute(
            "DELETE FROM worker_queue WHERE lock_token IN (SELECT value FROM json_each(?)) AND locked_until > ? "
            "RETURNING lock_token",
            (json.dumps([token for token, _, _ in encoded]), now),
        ).fetchall()
        deleted = {token for (token,) in rows}
        results: list[ProviderError | None] = []
        completions: list[tuple[str, str, int]] = []
        for token, completion, text in encoded:
            if token not in deleted:  # not live-locked (or a second entry for the same token)
                results.append(
                    ProviderError.permanent(
                        "ack_work_item",
                        "lock token invalid or expired (the activity was cancelled or its lock lost)",
                        kind=ProviderErrorKind.LOCK_LOST,
                    )
                )
                continue
            deleted.discard(token)
            if completion is not None and text is not None:
                completions.append((completion.target_instance, text, now))
            results.append(None)
        if completions:
            conn.executemany(
                "INSERT INTO orchestrator_queue(instance_id, work_item, is_start, visible_at) VALUES (?, ?, 0, ?)",
                completions,
            )
        return results

    async def ack_work_items(
        self, entries: Sequence[tuple[str, WorkItem | None]]
    ) -> list[ProviderError | None]:
        """Ack several work items in one round trip; one result per entry (``None`` = acked)."""
        encoded = [(tok, c, encode_work_item(c) if c is not None else None) for tok, c in entries]

        def _ack(conn: sqlite3.Connection) -> list[ProviderError | None]:
            return self._ack_rows(conn, encoded, self.clock.now_ms())

        results = await self._run("ack_work_item", _ack)
        if any(r is None and c is not None for r, (_, c) in zip(results, entries, strict=True)):
            self.notifier.notify("orchestrator")
        return results

    async def ack_work_items_and_fetch(
        self, entries: Sequence[tuple[str, WorkItem | None]], turns: TurnRequest
    ) -> AckedWithTurns:
        """``ack_work_items`` and, in the same transaction, lock up to ``turns.max_items`` next turns of
        the instances the committed completions were sent to (see ``AckFetchesTurns``)."""
        encoded = [(tok, c, encode_work_item(c) if c is not None else None) for tok, c in entries]
        lock_ms = ms(turns.lock_timeout)
        versions = turns.versions
        lo, hi = versions.key_bounds() if versions is not None else (None, None)
        claimable = _CLAIMABLE_INSTANCE if lo is None and hi is None else _CLAIMABLE_INSTANCE_IN_RANGE
        left: list[str] = []

        def _ack(conn: sqlite3.Connection) -> AckedWithTurns:
            now = self.clock.now_ms()
            results = self._ack_rows(conn, encoded, now)
            items: list[OrchestrationItem] = []
            for instance_id in acked_targets(entries, results):
                if len(items) < turns.max_items and conn.execute(
                    claimable, {"inst": instance_id, "now": now, "lo": lo, "hi": hi}
                ).fetchone() is not None:
                    items.append(self._claim(conn, instance_id, self._new_token(), now, lock_ms))
                else:
                    left.append(instance_id)
            return AckedWithTurns(results, items)

        acked = await self._run("ack_work_item", _ack)
        if left:  # completions of instances not handed back: their dispatchers fetch them
            self.notifier.notify("orchestrator")
        return acked

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


def _in_range(key: str) -> str:
    """SQL: version key ``key`` is inside [:lo, :hi] (NULL bounds: open; a NULL key: any runtime may)."""
    return f"({key} IS NULL OR ((:lo IS NULL OR {key} >= :lo) AND (:hi IS NULL OR {key} <= :hi)))"


_READY = """
    q.visible_at <= :now
    AND NOT EXISTS (SELECT 1 FROM instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > :now)
"""
_SUCCESSOR = "s.instance_id = q.instance_id AND s.is_successor = 1 AND s.visible_at <= :now"

#: A visible message of an unlocked instance that exists or that the message starts (no filtering).
_CLAIMABLE = f"""{_READY}
    AND (q.is_start = 1 OR EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id))
"""

#: The same, for a runtime that replays only versions in [:lo, :hi]: an instance that exists runs at its
#: recorded version, or, when a continue-as-new is pending, at the version that message asks for; a new
#: instance at the version its start asks for. A message that asks for no version runs at the fetching
#: runtime's latest registered version, which SQL cannot know: any runtime may take it (the turn decision
#: still gives a batch back that the runtime cannot run).
_CLAIMABLE_IN_RANGE = f"""{_READY}
    AND ((EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id
                  AND ({_in_range("i.version_key")}
                       OR EXISTS (SELECT 1 FROM orchestrator_queue s WHERE {_SUCCESSOR})))
          AND NOT EXISTS (SELECT 1 FROM orchestrator_queue s WHERE {_SUCCESSOR}
                          AND NOT {_in_range("s.start_version_key")}))
         OR (q.is_start = 1 AND {_in_range("q.start_version_key")}
             AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id)))
"""


def _claimable(lo: int | None, hi: int | None) -> str:
    return _CLAIMABLE if lo is None and hi is None else _CLAIMABLE_IN_RANGE


# The instance of the oldest claimable message. In (visible_at, id) order, as on PostgreSQL: the scan walks
# oq_visible and stops at the first claimable row; ordering by id alone sorted every visible row (each with
# its lock and version checks) on every fetch, a cost that grew with the queue.
_CLAIM_NEXT = f"SELECT q.instance_id FROM orchestrator_queue q WHERE {_CLAIMABLE} ORDER BY q.visible_at, q.id LIMIT 1"
_CLAIM_NEXT_IN_RANGE = (
    f"SELECT q.instance_id FROM orchestrator_queue q WHERE {_CLAIMABLE_IN_RANGE} ORDER BY q.visible_at, q.id LIMIT 1"
)


# Whether one instance is claimable now (the handed-over turn of an activity ack): its own messages
# through oq_instance, never a walk of the queue.
_CLAIMABLE_INSTANCE = f"SELECT 1 FROM orchestrator_queue q WHERE q.instance_id = :inst AND {_CLAIMABLE} LIMIT 1"
_CLAIMABLE_INSTANCE_IN_RANGE = (
    f"SELECT 1 FROM orchestrator_queue q WHERE q.instance_id = :inst AND {_CLAIMABLE_IN_RANGE} LIMIT 1"
)


def _has_orchestrator_work(conn: sqlite3.Connection, now: int, lo: int | None, hi: int | None) -> bool:
    return (
        conn.execute(
            f"SELECT 1 FROM orchestrator_queue q WHERE {_claimable(lo, hi)} LIMIT 1",
            {"now": now, "lo": lo, "hi": hi},
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


#: An item's tag is accepted by the fetch's filter (:all, :untagged, :tags as a JSON array).
_TAG_MATCH = (
    "(:all OR (w.tag IS NULL AND :untagged) OR w.tag IN (SELECT value FROM json_each(:tags)))"
)

# Ready items the filter accepts; a session item only if it is its session's oldest item (so one runs at
# a time, in scheduling order) and its session is unowned, expired, or ours (``mine``), and a new session
# only while this owner has room (:room).
_ROUTED_CANDIDATES = f"""
SELECT w.id, w.work_item, w.attempt_count, w.session_id,
       EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = w.session_id AND s.worker_id = :owner
               AND s.locked_until > :now) AS mine
FROM worker_queue w
WHERE w.visible_at <= :now AND (w.lock_token IS NULL OR w.locked_until <= :now) AND {_TAG_MATCH}
  AND (w.session_id IS NULL OR (
        NOT EXISTS (SELECT 1 FROM worker_queue o WHERE o.session_id = w.session_id AND o.id < w.id)
        AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = w.session_id AND s.locked_until > :now
                        AND s.worker_id <> :owner)
        AND (:room OR EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = w.session_id
                              AND s.worker_id = :owner AND s.locked_until > :now))))
ORDER BY w.id LIMIT :max
"""

_ROUTED_PROBE = f"""
SELECT 1 FROM worker_queue w
WHERE w.visible_at <= :now AND (w.lock_token IS NULL OR w.locked_until <= :now) AND {_TAG_MATCH}
LIMIT 1
"""
