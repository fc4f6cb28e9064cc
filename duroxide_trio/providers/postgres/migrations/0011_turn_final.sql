-- duroxide-trio PostgreSQL schema, version 11: the turn's commit hands back the final instance info.
--
-- A turn that ends its instance (Completed or Failed) is waited for: Client.wait_for_orchestration in this
-- process is woken by the commit and then had to read the instance again (get_instance_info, one more round
-- trip and transaction per orchestration). commit_turn takes the same 33 arguments as ack_turn (migration 10)
-- and returns its six columns followed by the instance's row as get_instance_info reads it, read in the same
-- transaction after the commit's writes; for a turn that does not end the instance, or whose instance row is
-- gone or already at a later execution, the extra columns are NULL. ack_turn keeps its form for older clients.

CREATE FUNCTION @schema@.commit_turn(
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
               o_eager_activities BIGINT[], o_eager_tokens TEXT[],
               o_name TEXT, o_version TEXT, o_execution_id BIGINT, o_status TEXT, o_output TEXT,
               o_custom_status TEXT, o_custom_status_version BIGINT, o_created_at BIGINT, o_updated_at BIGINT,
               o_parent TEXT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_inst TEXT;
    v_wake BOOLEAN;
    v_e_inst TEXT[];
    v_e_exec BIGINT[];
    v_e_act BIGINT[];
    v_e_tok TEXT[];
BEGIN
    SELECT a.o_instance_id, a.o_wake, a.o_eager_instances, a.o_eager_executions, a.o_eager_activities,
           a.o_eager_tokens
    INTO v_inst, v_wake, v_e_inst, v_e_exec, v_e_act, v_e_tok
    FROM @schema@.ack_turn(
        p_token, p_now, p_execution_id, p_event_ids, p_event_types, p_event_data,
        p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids, p_worker_sessions,
        p_worker_tags, p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible,
        p_cancel_instances, p_cancel_executions, p_cancel_activity_ids,
        p_name, p_version, p_parent, p_status, p_output, p_custom_set, p_custom,
        p_kv_clear_all, p_kv_deleted, p_kv_keys, p_kv_values,
        p_worker_eager, p_eager_lock_ms, p_eager_salt) a;

    IF p_status IN ('Completed', 'Failed') THEN
        RETURN QUERY
        SELECT v_inst, v_wake, v_e_inst, v_e_exec, v_e_act, v_e_tok,
               i.name, i.version, i.current_execution_id, e.status, e.output,
               i.custom_status, i.custom_status_version::BIGINT, i.created_at, i.updated_at, i.parent_instance_id
        FROM @schema@.instances i
        JOIN @schema@.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE i.instance_id = v_inst AND i.current_execution_id = p_execution_id;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT v_inst, v_wake, v_e_inst, v_e_exec, v_e_act, v_e_tok,
                        NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::TEXT,
                        NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT;
END
$fn$;
