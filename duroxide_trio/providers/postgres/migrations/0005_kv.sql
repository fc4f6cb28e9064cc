-- Durable key-value state per instance (ctx.set_value / clear_value / clear_values).
--
-- The table kv_store has existed since 0001 (reserved). This migration adds ack_turn: the turn's ack
-- (ack_orchestration_item, unchanged) followed, in the same transaction and the same round trip, by the
-- turn's net key-value writes, computed by the provider kernel (providers/_kernel.py, kv_rows): delete
-- every row of the instance (p_kv_clear_all), delete p_kv_deleted keys, upsert p_kv_keys/p_kv_values.
-- A lost or expired lock raises inside ack_orchestration_item, so nothing is written. Deleting an
-- instance already deletes its rows (delete_instances); pruning executions never touches them.

CREATE FUNCTION @schema@.ack_turn(
    p_token TEXT, p_now BIGINT, p_execution_id BIGINT,
    p_event_ids BIGINT[], p_event_types TEXT[], p_event_data TEXT[],
    p_worker_items TEXT[], p_worker_instances TEXT[], p_worker_executions BIGINT[],
    p_worker_activity_ids BIGINT[], p_worker_sessions TEXT[], p_worker_tags TEXT[],
    p_orch_instances TEXT[], p_orch_items TEXT[], p_orch_is_start BOOLEAN[], p_orch_visible BIGINT[],
    p_cancel_instances TEXT[], p_cancel_executions BIGINT[], p_cancel_activity_ids BIGINT[],
    p_name TEXT, p_version TEXT, p_parent TEXT, p_status TEXT, p_output TEXT,
    p_custom_set BOOLEAN, p_custom TEXT,
    p_kv_clear_all BOOLEAN, p_kv_deleted TEXT[], p_kv_keys TEXT[], p_kv_values TEXT[])
RETURNS TABLE (o_instance_id TEXT, o_wake BOOLEAN)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_inst TEXT;
    v_wake BOOLEAN;
BEGIN
    SELECT a.o_instance_id, a.o_wake INTO v_inst, v_wake
    FROM @schema@.ack_orchestration_item(
        p_token, p_now, p_execution_id, p_event_ids, p_event_types, p_event_data,
        p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids, p_worker_sessions,
        p_worker_tags, p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible,
        p_cancel_instances, p_cancel_executions, p_cancel_activity_ids,
        p_name, p_version, p_parent, p_status, p_output, p_custom_set, p_custom) a;

    IF (p_kv_clear_all OR cardinality(p_kv_deleted) > 0 OR cardinality(p_kv_keys) > 0)
       AND EXISTS (SELECT 1 FROM @schema@.instances i WHERE i.instance_id = v_inst) THEN
        IF p_kv_clear_all THEN
            DELETE FROM @schema@.kv_store k WHERE k.instance_id = v_inst;
        END IF;
        IF cardinality(p_kv_deleted) > 0 THEN
            DELETE FROM @schema@.kv_store k WHERE k.instance_id = v_inst AND k.key = ANY (p_kv_deleted);
        END IF;
        IF cardinality(p_kv_keys) > 0 THEN
            INSERT INTO @schema@.kv_store AS k (instance_id, key, value, last_updated_at_ms)
            SELECT v_inst, u.key, u.value, p_now FROM unnest(p_kv_keys, p_kv_values) AS u(key, value)
            ON CONFLICT (instance_id, key) DO UPDATE SET
                value = EXCLUDED.value, last_updated_at_ms = EXCLUDED.last_updated_at_ms;
        END IF;
    END IF;

    RETURN QUERY SELECT v_inst, v_wake;
END
$fn$;
