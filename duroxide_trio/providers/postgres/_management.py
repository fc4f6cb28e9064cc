"""Management (``ProviderAdmin``) of the PostgreSQL provider: listing, metrics, deletion, pruning."""

from __future__ import annotations

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
