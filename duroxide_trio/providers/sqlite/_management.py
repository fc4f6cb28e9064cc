"""Management (``ProviderAdmin``) of the SQLite provider: listing, metrics, deletion, pruning."""

from __future__ import annotations

import sqlite3
from typing import Any

from ...history import Status
from ..base import (
    COMPLETED,
    FAILED,
    RUNNING,
    TERMINAL_STATUSES,
    CannotDeleteSubOrchestration,
    DeleteResult,
    ExecutionInfo,
    InstanceFilter,
    InstanceNotFound,
    InstanceStillRunning,
    ProviderError,
    PruneOptions,
    PruneResult,
    QueueDepths,
    SystemMetrics,
    WorkOutlook,
)
from ._executor import SqliteBase


class ManagementJob(SqliteBase):
    """The ``ProviderAdmin`` operations and the work outlook."""

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
                running_instances=counts.get(RUNNING, 0) + counts.get(Status.CONTINUED_AS_NEW, 0),
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
            by_tag = {
                tag: count
                for tag, count in conn.execute(
                    "SELECT tag, COUNT(*) FROM worker_queue WHERE lock_token IS NULL OR locked_until <= ? "
                    "GROUP BY tag",
                    (now,),
                )
            }
            by_version = {
                version: count for version, count in conn.execute(_ORCHESTRATOR_BY_VERSION, {"now": now})
            }
            return QueueDepths(
                orchestrator_queue=orch,
                worker_queue=work,
                worker_by_tag=by_tag,
                orchestrator_by_version=by_version,
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
        if not force and row[0] not in TERMINAL_STATUSES - {Status.CONTINUED_AS_NEW}:
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


#: Instances with ready orchestration work (a visible message, no live lock) per the version their next
#: turn runs at: the recorded one, or the one a pending continue-as-new asks for; a new instance, the one
#: its first start asks for (NULL: none asked, the runtime's latest). Messages of an instance that neither
#: exists nor has a start (never fetched) are not counted.
_ORCHESTRATOR_BY_VERSION = """
SELECT v, COUNT(*) FROM (
    SELECT CASE
             WHEN i.instance_id IS NULL THEN
               (SELECT s.start_version FROM orchestrator_queue s WHERE s.instance_id = r.instance_id
                AND s.is_start = 1 AND s.visible_at <= :now ORDER BY s.id LIMIT 1)
             WHEN EXISTS (SELECT 1 FROM orchestrator_queue s WHERE s.instance_id = r.instance_id
                          AND s.is_successor = 1 AND s.visible_at <= :now) THEN
               (SELECT s.start_version FROM orchestrator_queue s WHERE s.instance_id = r.instance_id
                AND s.is_successor = 1 AND s.visible_at <= :now ORDER BY s.id LIMIT 1)
             ELSE i.version
           END AS v
    FROM (SELECT DISTINCT q.instance_id FROM orchestrator_queue q
          WHERE q.visible_at <= :now AND NOT EXISTS (SELECT 1 FROM instance_locks l
                WHERE l.instance_id = q.instance_id AND l.locked_until > :now)) r
    LEFT JOIN instances i ON i.instance_id = r.instance_id
    WHERE i.instance_id IS NOT NULL
       OR EXISTS (SELECT 1 FROM orchestrator_queue s WHERE s.instance_id = r.instance_id
                  AND s.is_start = 1 AND s.visible_at <= :now)
) GROUP BY v
"""
