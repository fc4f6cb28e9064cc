"""Management (``ProviderAdmin``) of the PostgreSQL provider: listing, metrics, deletion, pruning, vacuum."""

from __future__ import annotations

from psycopg import sql

from ..base import (
    DeleteResult,
    ExecutionInfo,
    InstanceFilter,
    InstanceNotFound,
    PruneOptions,
    PruneResult,
    QueueDepths,
    SystemMetrics,
)
from ._base import PgBase


class ManagementJob(PgBase):
    """The ``ProviderAdmin`` operations."""

    async def list_instances(self, status: str | None = None) -> list[str]:
        if status is None:
            rows = await self._all("list_instances", self._q.list_instances, None, idempotent=True)
        else:
            rows = await self._all(
                "list_instances", self._q.list_instances_by_status, (status,), idempotent=True
            )
        return [r[0] for r in rows]

    async def list_executions(self, instance_id: str) -> list[int]:
        rows = await self._all("list_executions", self._q.list_executions, (instance_id,), idempotent=True)
        return [int(r[0]) for r in rows]

    async def get_execution_info(self, instance_id: str, execution_id: int) -> ExecutionInfo | None:
        row = await self._one(
            "get_execution_info", self._q.execution_info, (instance_id, execution_id), idempotent=True
        )
        if row is None:
            return None
        status, output, started_at, completed_at, count = row
        return ExecutionInfo(execution_id, status, output, started_at, completed_at, int(count))

    async def get_system_metrics(self) -> SystemMetrics:
        row = await self._one("get_system_metrics", self._q.metrics, None, idempotent=True)
        instances, executions, events, running, completed, failed = (int(v) for v in row)
        return SystemMetrics(
            total_instances=instances,
            total_executions=executions,
            running_instances=running,
            completed_instances=completed,
            failed_instances=failed,
            total_events=events,
        )

    async def get_queue_depths(self) -> QueueDepths:
        now = self.clock.now_ms()
        row = await self._one("get_queue_depths", self._q.queue_depths, {"now": now}, idempotent=True)
        by = await self._all("get_queue_depths", self._q.depths_by, {"now": now}, idempotent=True)
        return QueueDepths(
            worker_by_tag={key: int(count) for what, key, count in by if what == "t"},
            orchestrator_by_version={key: int(count) for what, key, count in by if what == "v"},
            orchestrator_queue=int(row[0]),
            worker_queue=int(row[1]),
            oldest_orchestrator_age_ms=None if row[2] is None else max(now - int(row[2]), 0),
            oldest_worker_age_ms=None if row[3] is None else max(now - int(row[3]), 0),
        )

    async def list_children(self, instance_id: str) -> list[str]:
        rows = await self._all("list_children", self._q.children, (instance_id,), idempotent=True)
        return [r[0] for r in rows]

    async def get_parent_id(self, instance_id: str) -> str | None:
        row = await self._one("get_parent_id", self._q.parent, (instance_id,), idempotent=True)
        if row is None:
            raise InstanceNotFound("get_parent_id", instance_id)
        parent: str | None = row[0]
        return parent

    async def get_instance_tree(self, instance_id: str) -> list[str]:
        row = await self._one("get_instance_tree", self._q.tree, {"id": instance_id}, idempotent=True)
        if row is None:
            raise InstanceNotFound("get_instance_tree", instance_id)
        return list(row[0])

    async def delete_instance(self, instance_id: str, force: bool = False) -> DeleteResult:
        row = await self._one("delete_instance", self._q.delete_instance, (instance_id, force))
        self.notifier.notify_instance(instance_id)
        return DeleteResult(*(int(v) for v in row))

    async def _delete_many(self, ids: list[str], force: bool) -> DeleteResult:
        row = await self._one("delete_instances_atomic", self._q.delete_instances, (ids, force))
        return DeleteResult(*(int(v) for v in row))

    async def _delete_bulk(self, filter: InstanceFilter) -> DeleteResult:
        row = await self._one(
            "delete_instance_bulk",
            self._q.delete_bulk,
            (filter.instance_ids, filter.completed_before_ms, filter.limit),
        )
        return DeleteResult(*(int(v) for v in row))

    async def prune_executions(self, instance_id: str, options: PruneOptions) -> PruneResult:
        row = await self._one(
            "prune_executions", self._q.prune, (instance_id, options.keep_last, options.completed_before_ms)
        )
        return PruneResult(*(int(v) for v in row))

    async def _prune_bulk(self, filter: InstanceFilter, options: PruneOptions) -> PruneResult:
        row = await self._one(
            "prune_executions_bulk",
            self._q.prune_bulk,
            (filter.instance_ids, filter.limit, options.keep_last, options.completed_before_ms),
        )
        return PruneResult(*(int(v) for v in row))

    #: The tables every message and lock passes through: small when live, grown by bursts.
    QUEUE_TABLES = ("orchestrator_queue", "worker_queue", "instance_locks")

    async def vacuum(self, *, compact_queues: bool = False) -> list[str]:
        """``VACUUM (ANALYZE)`` every table of the schema (PostgreSQL-only maintenance; returns the tables).

        Autovacuum does this on its own (migration 14 makes it visit the queue tables after every few
        thousand dead rows); call it after a burst you want cleaned up now. ``compact_queues`` rebuilds
        the queue tables and their indexes (``VACUUM FULL``) instead: plain vacuum frees dead rows but not
        the pages a burst added, and a burst of a million messages left ~95 MB of queue indexes that slowed
        every fetch and commit by a quarter (2026-12-03, ``duroxide-trio stress --deep-history``). ``VACUUM
        FULL`` locks each queue table for its duration, which is short while the queue is nearly empty,
        but runtimes wait for it: run it in a quiet moment."""
        s = self._quoted_schema()
        rows = await self._all(
            "vacuum", "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (self._schema,),
            idempotent=True,
        )
        tables = [str(r[0]) for r in rows]
        for table in tables:
            full = compact_queues and table in self.QUEUE_TABLES
            statement = f"VACUUM ({'FULL, ' if full else ''}ANALYZE) {s}.{sql.Identifier(table).as_string(None)}"
            await self._exec("vacuum", statement, None, "none", idempotent=True)
        return tables
