-- duroxide-trio PostgreSQL schema, version 15: one body for the turn's commit.
--
-- Migration 13 made commit_turn a function of its own, so the turn's commit logic lived twice in the
-- schema: in commit_turn and in ack_orchestration_item (migration 10), which older clients still reach
-- through ack_turn and the older ack forms. Both are now thin wrappers over commit_turn (same arguments,
-- same results: ack_orchestration_item writes no key-value changes, and neither returns the final-state
-- columns), so a change to the commit is made in one place. The older forms that call these two (the
-- ones without eager dispatch, migrations 5 and 10) follow automatically.

CREATE OR REPLACE FUNCTION @schema@.ack_turn(
    p_token TEXT, p_now BIGINT, p_execution_id BIGINT,
    p_event_ids BIGINT[], p_event_types TEXT[], p_event_data TEXT[],
    p_worker_items TEXT[], p_worker_instances TEXT[], p_worker_executions BIGINT[],
    p_worker_activity_ids BIGINT[], p_worker_sessions TEXT[], p_worker_tags TEXT[],
    p_orch_instances TEXT[], p_orch_items TEXT[], p_orch_is_start BOOLEAN[], p_orch_visible BIGINT[],
    p_cancel_instances TEXT[], p_cancel_executions BIGINT[], p_cancel_activity_ids BIGINT[],
    p_name TEXT, p_version TEXT, p_parent TEXT, p_status TEXT, p_output TEXT,
    p_custom_set BOOLEAN, p_custom TEXT,
    p_kv_clear_all BOOLEAN, p_kv_deleted TEXT[], p_kv_keys TEXT[], p_kv_values TEXT[],
    p_worker_eager BOOLEAN[], p_eager_lock_ms BIGINT, p_eager_salt TEXT)
RETURNS TABLE (o_instance_id TEXT, o_wake BOOLEAN, o_eager_instances TEXT[], o_eager_executions BIGINT[],
               o_eager_activities BIGINT[], o_eager_tokens TEXT[])
LANGUAGE sql AS $fn$
    SELECT c.o_instance_id, c.o_wake, c.o_eager_instances, c.o_eager_executions, c.o_eager_activities,
           c.o_eager_tokens
    FROM @schema@.commit_turn(
        p_token, p_now, p_execution_id, p_event_ids, p_event_types, p_event_data,
        p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids, p_worker_sessions,
        p_worker_tags, p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible,
        p_cancel_instances, p_cancel_executions, p_cancel_activity_ids,
        p_name, p_version, p_parent, p_status, p_output, p_custom_set, p_custom,
        p_kv_clear_all, p_kv_deleted, p_kv_keys, p_kv_values,
        p_worker_eager, p_eager_lock_ms, p_eager_salt) c
$fn$;

CREATE OR REPLACE FUNCTION @schema@.ack_orchestration_item(
    p_token TEXT, p_now BIGINT, p_execution_id BIGINT,
    p_event_ids BIGINT[], p_event_types TEXT[], p_event_data TEXT[],
    p_worker_items TEXT[], p_worker_instances TEXT[], p_worker_executions BIGINT[],
    p_worker_activity_ids BIGINT[], p_worker_sessions TEXT[], p_worker_tags TEXT[],
    p_orch_instances TEXT[], p_orch_items TEXT[], p_orch_is_start BOOLEAN[], p_orch_visible BIGINT[],
    p_cancel_instances TEXT[], p_cancel_executions BIGINT[], p_cancel_activity_ids BIGINT[],
    p_name TEXT, p_version TEXT, p_parent TEXT, p_status TEXT, p_output TEXT,
    p_custom_set BOOLEAN, p_custom TEXT,
    p_worker_eager BOOLEAN[], p_eager_lock_ms BIGINT, p_eager_salt TEXT)
RETURNS TABLE (o_instance_id TEXT, o_wake BOOLEAN, o_eager_instances TEXT[], o_eager_executions BIGINT[],
               o_eager_activities BIGINT[], o_eager_tokens TEXT[])
LANGUAGE sql AS $fn$
    SELECT c.o_instance_id, c.o_wake, c.o_eager_instances, c.o_eager_executions, c.o_eager_activities,
           c.o_eager_tokens
    FROM @schema@.commit_turn(
        p_token, p_now, p_execution_id, p_event_ids, p_event_types, p_event_data,
        p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids, p_worker_sessions,
        p_worker_tags, p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible,
        p_cancel_instances, p_cancel_executions, p_cancel_activity_ids,
        p_name, p_version, p_parent, p_status, p_output, p_custom_set, p_custom,
        false, '{}'::TEXT[], '{}'::TEXT[], '{}'::TEXT[],
        p_worker_eager, p_eager_lock_ms, p_eager_salt) c
$fn$;
