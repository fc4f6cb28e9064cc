-- duroxide-trio PostgreSQL schema, version 13: the turn's commit in one function.
--
-- commit_turn (migration 11) called ack_turn (10), which called ack_orchestration_item (10): three PL/pgSQL
-- frames and 33 arguments passed down twice, about 0.16 ms of a 1 ms commit spent in the wrappers
-- (track_functions self time). It is now one function with the same arguments and the same result; the
-- older functions stay for older clients. What it does differently, and why:
--
-- * Activities locked for the caller (eager dispatch) are inserted already locked (token '<id>.<salt>',
--   visible_at = locked_until = the lease end, attempt 1), with the id drawn from the table's identity
--   sequence first, instead of inserted and then updated: one write per row instead of two, no dead tuple.
--   An activity scheduled and cancelled in the same turn still nets to nothing and is not handed back.
-- * A turn of an instance that exists with the same name and version updates the row directly; only a new
--   instance or a changed name/version takes the insert-or-update (with the orphan guard), so the common
--   turn does not try a speculative insert or fire the version-key trigger.
-- * The final state (o_name ... o_parent) comes from the instance row the commit wrote (RETURNING) and the
--   status and output it stored, instead of being read back with a join.

CREATE OR REPLACE FUNCTION @schema@.commit_turn(
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
    v_until BIGINT;
    v_exists BOOLEAN := false;
    v_wake BOOLEAN;
    v_later TEXT;
    v_eager BOOLEAN;
    v_eager_until BIGINT;
    v_e_inst TEXT[] := '{}';
    v_e_exec BIGINT[] := '{}';
    v_e_act BIGINT[] := '{}';
    v_e_tok TEXT[] := '{}';
    v_name TEXT;
    v_version TEXT;
    v_cur_exec BIGINT;
    v_custom TEXT;
    v_custom_version BIGINT;
    v_created BIGINT;
    v_updated BIGINT;
    v_parent TEXT;
BEGIN
    SELECT l.instance_id, l.locked_until INTO v_inst, v_until
    FROM @schema@.instance_locks l WHERE l.lock_token = p_token FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid lock token % (lock lost or instance deleted)', p_token USING ERRCODE = 'DX001';
    END IF;
    IF v_until <= p_now THEN
        RAISE EXCEPTION 'instance lock expired' USING ERRCODE = 'DX002';
    END IF;

    DELETE FROM @schema@.orchestrator_queue q WHERE q.instance_id = v_inst AND q.lock_token = p_token;

    IF p_name IS NOT NULL THEN
        -- The common turn: the instance exists under this name and version.
        UPDATE @schema@.instances i SET
            current_execution_id = GREATEST(i.current_execution_id, p_execution_id),
            updated_at = p_now,
            custom_status = CASE WHEN p_custom_set THEN p_custom ELSE i.custom_status END,
            custom_status_version = i.custom_status_version + CASE WHEN p_custom_set THEN 1 ELSE 0 END
        WHERE i.instance_id = v_inst AND i.name = p_name AND i.version IS NOT DISTINCT FROM p_version
        RETURNING i.name, i.version, i.current_execution_id, i.custom_status, i.custom_status_version,
                  i.created_at, i.updated_at, i.parent_instance_id
        INTO v_name, v_version, v_cur_exec, v_custom, v_custom_version, v_created, v_updated, v_parent;
        v_exists := FOUND;
        IF NOT v_exists THEN
            IF p_parent IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM @schema@.instances i WHERE i.instance_id = v_inst) THEN
                -- Creating a child: serialise with a concurrent delete of its parent (orphan guard).
                PERFORM 1 FROM @schema@.instances i WHERE i.instance_id = p_parent FOR KEY SHARE;
            END IF;
            INSERT INTO @schema@.instances AS i (instance_id, name, version, current_execution_id, custom_status,
                                                 custom_status_version, parent_instance_id, created_at, updated_at)
            VALUES (v_inst, p_name, p_version, p_execution_id, CASE WHEN p_custom_set THEN p_custom END,
                    CASE WHEN p_custom_set THEN 1 ELSE 0 END, p_parent, p_now, p_now)
            ON CONFLICT (instance_id) DO UPDATE SET
                name = EXCLUDED.name,
                version = EXCLUDED.version,
                current_execution_id = GREATEST(i.current_execution_id, EXCLUDED.current_execution_id),
                updated_at = p_now,
                custom_status = CASE WHEN p_custom_set THEN p_custom ELSE i.custom_status END,
                custom_status_version = i.custom_status_version + CASE WHEN p_custom_set THEN 1 ELSE 0 END
            RETURNING i.name, i.version, i.current_execution_id, i.custom_status, i.custom_status_version,
                      i.created_at, i.updated_at, i.parent_instance_id
            INTO v_name, v_version, v_cur_exec, v_custom, v_custom_version, v_created, v_updated, v_parent;
            v_exists := true;
        END IF;
    ELSE
        UPDATE @schema@.instances i SET
            current_execution_id = GREATEST(i.current_execution_id, p_execution_id),
            updated_at = p_now,
            custom_status = CASE WHEN p_custom_set THEN p_custom ELSE i.custom_status END,
            custom_status_version = i.custom_status_version + CASE WHEN p_custom_set THEN 1 ELSE 0 END
        WHERE i.instance_id = v_inst
        RETURNING i.name, i.version, i.current_execution_id, i.custom_status, i.custom_status_version,
                  i.created_at, i.updated_at, i.parent_instance_id
        INTO v_name, v_version, v_cur_exec, v_custom, v_custom_version, v_created, v_updated, v_parent;
        v_exists := FOUND;
    END IF;

    IF v_exists THEN
        INSERT INTO @schema@.executions AS e (instance_id, execution_id, status, output, started_at, completed_at)
        VALUES (v_inst, p_execution_id, COALESCE(p_status, 'Running'),
                CASE WHEN p_status IS NOT NULL THEN p_output END, p_now,
                CASE WHEN p_status IN ('Completed', 'Failed', 'ContinuedAsNew') THEN p_now END)
        ON CONFLICT (instance_id, execution_id) DO UPDATE SET
            status = EXCLUDED.status, output = EXCLUDED.output, completed_at = EXCLUDED.completed_at
            WHERE p_status IS NOT NULL;
    END IF;

    INSERT INTO @schema@.history (instance_id, execution_id, event_id, event_type, event_data)
    SELECT v_inst, p_execution_id, u.event_id, u.event_type, u.event_data
    FROM unnest(p_event_ids, p_event_types, p_event_data) AS u(event_id, event_type, event_data);

    IF cardinality(p_worker_items) > 0 THEN
        -- Eager dispatch: the flagged items are inserted locked for the caller, as a worker fetch would
        -- lock them (token '<id>.<salt>', the lease from the database's clock, attempt 1).
        v_eager := p_eager_lock_ms > 0 AND true = ANY (p_worker_eager);
        IF v_eager THEN
            v_eager_until := GREATEST(p_now, @schema@.db_now_ms()) + p_eager_lock_ms;
        END IF;
        WITH src AS (
            SELECT nextval(@worker_seq@) AS id, s.*
            FROM (SELECT u.item, u.inst, u.exec, u.act, u.sess, u.tag, v_eager AND COALESCE(u.eager, false) AS eager
                  FROM unnest(p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids,
                              p_worker_sessions, p_worker_tags, p_worker_eager)
                       WITH ORDINALITY AS u(item, inst, exec, act, sess, tag, eager, ord)
                  WHERE u.item IS NOT NULL
                  ORDER BY u.ord) s),
        ins AS (
            INSERT INTO @schema@.worker_queue (id, work_item, visible_at, lock_token, locked_until, attempt_count,
                                               instance_id, execution_id, activity_id, session_id, tag)
            OVERRIDING SYSTEM VALUE
            SELECT src.id, src.item,
                   CASE WHEN src.eager THEN v_eager_until ELSE p_now END,
                   CASE WHEN src.eager THEN src.id::TEXT || '.' || p_eager_salt END,
                   CASE WHEN src.eager THEN v_eager_until END,
                   CASE WHEN src.eager THEN 1 ELSE 0 END,
                   src.inst, src.exec, src.act, src.sess, src.tag
            FROM src ORDER BY src.id
            RETURNING instance_id, execution_id, activity_id, lock_token)
        SELECT COALESCE(array_agg(ins.instance_id) FILTER (WHERE ins.lock_token IS NOT NULL), '{}'),
               COALESCE(array_agg(ins.execution_id) FILTER (WHERE ins.lock_token IS NOT NULL), '{}'),
               COALESCE(array_agg(ins.activity_id) FILTER (WHERE ins.lock_token IS NOT NULL), '{}'),
               COALESCE(array_agg(ins.lock_token) FILTER (WHERE ins.lock_token IS NOT NULL), '{}')
        INTO v_e_inst, v_e_exec, v_e_act, v_e_tok FROM ins;
    END IF;

    -- After the inserts: an activity scheduled and cancelled in the same turn nets to nothing.
    IF cardinality(p_cancel_instances) > 0 THEN
        DELETE FROM @schema@.worker_queue w
        USING unnest(p_cancel_instances, p_cancel_executions, p_cancel_activity_ids) AS c(inst, exec, act)
        WHERE w.instance_id = c.inst AND w.execution_id = c.exec AND w.activity_id = c.act;
        IF cardinality(v_e_tok) > 0 THEN  -- and is not handed back to the caller
            SELECT COALESCE(array_agg(e.inst), '{}'), COALESCE(array_agg(e.exec), '{}'),
                   COALESCE(array_agg(e.act), '{}'), COALESCE(array_agg(e.tok), '{}')
            INTO v_e_inst, v_e_exec, v_e_act, v_e_tok
            FROM unnest(v_e_inst, v_e_exec, v_e_act, v_e_tok) AS e(inst, exec, act, tok)
            WHERE NOT EXISTS (
                SELECT 1 FROM unnest(p_cancel_instances, p_cancel_executions, p_cancel_activity_ids) AS c(inst, exec, act)
                WHERE c.inst = e.inst AND c.exec = e.exec AND c.act = e.act);
        END IF;
    END IF;

    IF cardinality(p_orch_items) > 0 THEN
        INSERT INTO @schema@.orchestrator_queue (instance_id, work_item, is_start, visible_at)
        SELECT u.inst, u.item, u.is_start, u.visible
        FROM unnest(p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible)
             WITH ORDINALITY AS u(inst, item, is_start, visible, ord)
        ORDER BY u.ord;
    END IF;

    DELETE FROM @schema@.instance_locks l WHERE l.instance_id = v_inst;

    -- The turn's key-value writes (migration 5), for an instance that exists.
    IF v_exists AND (p_kv_clear_all OR cardinality(p_kv_deleted) > 0 OR cardinality(p_kv_keys) > 0) THEN
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

    v_wake := EXISTS (SELECT 1 FROM unnest(p_orch_visible) AS v(at) WHERE v.at <= p_now)
              OR EXISTS (SELECT 1 FROM @schema@.orchestrator_queue q
                         WHERE q.instance_id = v_inst AND q.visible_at <= p_now);

    IF cardinality(p_worker_items) > cardinality(v_e_tok) THEN  -- work left for other runtimes
        PERFORM pg_notify(@channel@, 'w');
    END IF;
    IF v_wake THEN
        PERFORM pg_notify(@channel@, 'o');
    END IF;
    SELECT string_agg(t.at::TEXT, ',' ORDER BY t.at) INTO v_later
    FROM (SELECT DISTINCT v.at FROM unnest(p_orch_visible) AS v(at) WHERE v.at > p_now) t;
    IF v_later IS NOT NULL THEN
        IF octet_length(v_later) > 7000 THEN
            v_later := (SELECT min(v.at)::TEXT FROM unnest(p_orch_visible) AS v(at) WHERE v.at > p_now);
        END IF;
        PERFORM pg_notify(@channel@, 'o' || v_later);
    END IF;
    IF p_status IN ('Completed', 'Failed') AND octet_length(v_inst) < 7000 THEN
        PERFORM pg_notify(@channel@, 'd' || v_inst);
    END IF;

    IF p_status IN ('Completed', 'Failed') AND v_exists AND v_cur_exec = p_execution_id THEN
        RETURN QUERY SELECT v_inst, v_wake, v_e_inst, v_e_exec, v_e_act, v_e_tok,
                            v_name, v_version, v_cur_exec, p_status, p_output,
                            v_custom, v_custom_version, v_created, v_updated, v_parent;
        RETURN;
    END IF;
    RETURN QUERY SELECT v_inst, v_wake, v_e_inst, v_e_exec, v_e_act, v_e_tok,
                        NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::TEXT,
                        NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT;
END
$fn$;
