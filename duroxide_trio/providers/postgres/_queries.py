"""The SQL text of the PostgreSQL provider (one statement or function call per operation) and the
names it derives from the schema (NOTIFY channel, advisory-lock keys)."""

from __future__ import annotations

import hashlib
from typing import Literal


def hash64(text: str) -> int:
    """A stable signed 64-bit integer for ``text`` (advisory-lock keys, seeds)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)

def channel_name(schema: str) -> str:
    """The NOTIFY channel of ``schema`` (at most 63 bytes, PostgreSQL's identifier limit)."""
    name = f"duroxide:{schema}"
    if len(name.encode()) > 63:
        name = "duroxide:" + hashlib.blake2b(schema.encode(), digest_size=16).hexdigest()
    return name

class Queries:
    """Every statement the provider sends, built once for one (quoted) schema."""

    def __init__(self, s: str) -> None:
        self.fetch_orch = f"SELECT * FROM {s}.fetch_orchestration_item(%s, %s, %s)"
        self.fetch_orch_versions = f"SELECT * FROM {s}.fetch_orchestration_item(%s, %s, %s, %s, %s)"
        self.ack_orch = (
            f"SELECT * FROM {s}.commit_turn(%s, %s, %s, "
            "%b::bigint[], %b::text[], %b::text[], "
            "%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[], "
            "%b::text[], %b::text[], %b::boolean[], %b::bigint[], "
            "%b::text[], %b::bigint[], %b::bigint[], "
            "%s, %s, %s, %s, %s, %s, %s, "
            "%s, %b::text[], %b::text[], %b::text[], "
            "%b::boolean[], %s, %s)"
        )
        self.abandon_orch = f"SELECT {s}.abandon_orchestration_item(%s, %s, %s, %s)"
        self.renew_orch = (
            f"UPDATE {s}.instance_locks SET locked_until = %s WHERE lock_token = %s AND locked_until > %s"
        )
        self.enqueue_orch = f"SELECT {s}.enqueue_orchestrator(%s, %s, %s, %s, %s)"
        self.enqueue_start = f"SELECT {s}.enqueue_start(%s, %s, %s)"
        self.enqueue_start_fetch = f"SELECT * FROM {s}.enqueue_start_fetch(%s, %s, %s, %s, %s, %s, %s)"
        self.enqueue_worker = f"SELECT {s}.enqueue_worker(%s, %s, %s, %s, %s, %s, %s)"
        self.fetch_work = f"SELECT * FROM {s}.fetch_work_items(%s, %s, %s::integer, %s)"
        self.fetch_routed = (
            f"SELECT * FROM {s}.fetch_routed_work_items(%s, %s, %s::integer, %s, %s, %s, %b::text[], %s, %s, "
            "%s::integer)"
        )
        self.renew_sessions = f"SELECT {s}.renew_sessions(%s, %s, %s, %s)"
        self.ack_work = f"SELECT {s}.ack_work_items(%s, %b::bigint[], %b::text[], %b::text[], %b::text[])"
        self.ack_work_fetch = (
            f"SELECT * FROM {s}.ack_work_items_fetch(%s, %b::bigint[], %b::text[], %b::text[], %b::text[], "
            "%s, %b::text[], %s, %s)"
        )
        self.renew_work = (
            f"UPDATE {s}.worker_queue SET locked_until = %s, visible_at = %s "
            "WHERE id = %s AND lock_token = %s AND locked_until > %s"
        )
        self.abandon_work = f"SELECT {s}.abandon_work_item(%s, %s, %s, %s, %s)"
        self.drop_work = f"DELETE FROM {s}.worker_queue WHERE id = ANY(%b::bigint[])"
        self.read = (
            f"SELECT h.event_data FROM {s}.history h WHERE h.instance_id = %(id)s AND h.execution_id = "
            f"COALESCE((SELECT i.current_execution_id FROM {s}.instances i WHERE i.instance_id = %(id)s), "
            f"(SELECT max(x.execution_id) FROM {s}.history x WHERE x.instance_id = %(id)s)) "
            "ORDER BY h.event_id"
        )
        self.read_execution = f"SELECT event_data FROM {s}.history WHERE instance_id = %s AND execution_id = %s ORDER BY event_id"
        self.instance_exists = (
            f"SELECT 1 FROM {s}.instances WHERE instance_id = %s "
            f"UNION ALL SELECT 1 FROM {s}.orchestrator_queue WHERE instance_id = %s AND is_start LIMIT 1"
        )
        self.append = (
            f"INSERT INTO {s}.history (instance_id, execution_id, event_id, event_type, event_data) "
            "SELECT %s, %s, u.i, u.t, u.d FROM unnest(%b::bigint[], %b::text[], %b::text[]) AS u(i, t, d)"
        )
        self.instance_info = (
            "SELECT i.name, i.version, i.current_execution_id, COALESCE(e.status, 'Running'), e.output, "
            "i.custom_status, i.custom_status_version, i.created_at, i.updated_at, i.parent_instance_id "
            f"FROM {s}.instances i LEFT JOIN {s}.executions e "
            "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id "
            "WHERE i.instance_id = %s"
        )
        self.kv_values = f"SELECT key, value FROM {s}.kv_store WHERE instance_id = %s ORDER BY key"
        self.custom_status = (
            f"SELECT custom_status, custom_status_version FROM {s}.instances WHERE instance_id = %s"
        )
        self.list_instances = f"SELECT instance_id FROM {s}.instances ORDER BY created_at DESC, seq DESC"
        self.list_instances_by_status = (
            f"SELECT i.instance_id FROM {s}.instances i JOIN {s}.executions e "
            "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id "
            "WHERE e.status = %s ORDER BY i.created_at DESC, i.seq DESC"
        )
        self.list_executions = (
            f"SELECT execution_id FROM {s}.executions WHERE instance_id = %s ORDER BY execution_id"
        )
        self.execution_info = (
            "SELECT e.status, e.output, e.started_at, e.completed_at, "
            f"(SELECT count(*) FROM {s}.history h WHERE h.instance_id = e.instance_id "
            "AND h.execution_id = e.execution_id) "
            f"FROM {s}.executions e WHERE e.instance_id = %s AND e.execution_id = %s"
        )
        self.metrics = (
            f"SELECT (SELECT count(*) FROM {s}.instances), (SELECT count(*) FROM {s}.executions), "
            f"(SELECT count(*) FROM {s}.history), "
            "count(*) FILTER (WHERE e.status IN ('Running', 'ContinuedAsNew')), "
            "count(*) FILTER (WHERE e.status = 'Completed'), count(*) FILTER (WHERE e.status = 'Failed') "
            f"FROM {s}.instances i JOIN {s}.executions e "
            "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id"
        )
        self.queue_depths = (
            f"SELECT (SELECT count(*) FROM {s}.orchestrator_queue q WHERE NOT EXISTS ("
            f"SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > %(now)s)), "
            f"(SELECT count(*) FROM {s}.worker_queue WHERE lock_token IS NULL OR locked_until <= %(now)s), "
            f"(SELECT min(q.visible_at) FROM {s}.orchestrator_queue q WHERE q.visible_at <= %(now)s AND NOT EXISTS ("
            f"SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > %(now)s)), "
            f"(SELECT min(visible_at) FROM {s}.worker_queue WHERE visible_at <= %(now)s AND "
            "(lock_token IS NULL OR locked_until <= %(now)s))"
        )
        # Ready worker items per tag ('t') and instances with ready orchestration work per the version
        # their next turn runs at ('v'; the rule is the SQLite provider's _ORCHESTRATOR_BY_VERSION), in one
        # round trip.
        self.depths_by = (
            f"SELECT 't', tag, count(*) FROM {s}.worker_queue WHERE lock_token IS NULL OR locked_until <= %(now)s "
            "GROUP BY tag "
            "UNION ALL "
            "SELECT 'v', CASE WHEN i.instance_id IS NULL THEN st.start_version "
            "WHEN sc.found THEN sc.start_version ELSE i.version END, count(*) "
            f"FROM (SELECT DISTINCT q.instance_id FROM {s}.orchestrator_queue q WHERE q.visible_at <= %(now)s "
            f"AND NOT EXISTS (SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id "
            "AND l.locked_until > %(now)s)) r "
            f"LEFT JOIN {s}.instances i ON i.instance_id = r.instance_id "
            f"LEFT JOIN LATERAL (SELECT true AS found, x.start_version FROM {s}.orchestrator_queue x "
            "WHERE x.instance_id = r.instance_id AND x.is_successor AND x.visible_at <= %(now)s "
            "ORDER BY x.id LIMIT 1) sc ON true "
            f"LEFT JOIN LATERAL (SELECT true AS found, x.start_version FROM {s}.orchestrator_queue x "
            "WHERE x.instance_id = r.instance_id AND x.is_start AND x.visible_at <= %(now)s "
            "ORDER BY x.id LIMIT 1) st ON true "
            "WHERE i.instance_id IS NOT NULL OR st.found GROUP BY 2"
        )
        self.children = (
            f"SELECT instance_id FROM {s}.instances WHERE parent_instance_id = %s ORDER BY created_at, seq"
        )
        self.parent = f"SELECT parent_instance_id FROM {s}.instances WHERE instance_id = %s"
        self.tree = (
            f"SELECT {s}.instance_tree(%(id)s) WHERE EXISTS "
            f"(SELECT 1 FROM {s}.instances WHERE instance_id = %(id)s)"
        )
        self.delete_instance = f"SELECT * FROM {s}.delete_instance(%s, %s)"
        self.delete_instances = f"SELECT * FROM {s}.delete_instances(%b::text[], %s)"
        self.delete_bulk = f"SELECT * FROM {s}.delete_instance_bulk(%b::text[], %s::bigint, %s::integer)"
        self.prune = f"SELECT * FROM {s}.prune_executions(%s, %s::integer, %s::bigint)"
        self.prune_bulk = (
            f"SELECT * FROM {s}.prune_executions_bulk(%b::text[], %s::integer, %s::integer, %s::bigint)"
        )
        self.corrupt = f"UPDATE {s}.history SET event_data = '{{not json' WHERE instance_id = %s"
        self.max_attempt = f"SELECT max(attempt_count) FROM {s}.orchestrator_queue WHERE instance_id = %s"

Fetch = Literal["none", "one", "all", "rowcount"]
