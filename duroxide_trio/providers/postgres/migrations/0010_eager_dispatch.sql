-- duroxide-trio PostgreSQL schema, version 10: eager dispatch (ProviderCapabilities.eager_dispatch).
--
-- A turn's ack may lock some of the activities it enqueues for the runtime that commits it, in the same
-- transaction and the same round trip, instead of leaving them for a later worker fetch: the 29-argument
-- ack_orchestration_item (and the 33-argument ack_turn) take p_worker_eager (one flag per worker item:
-- lock it), p_eager_lock_ms (the worker lock timeout) and p_eager_salt (the token salt, as in
-- fetch_work_items), and return the locked items' (instance, execution, activity, token). Which items to
-- flag (tag filter, no sessions, the free slots) is decided by the caller. The 'w' notification is sent
-- only when some inserted item was left unlocked. The 26-argument ack_orchestration_item and the
-- 30-argument ack_turn stay for older clients: they call the new forms with nothing to lock.

-- Commit one orchestration turn atomically, locking the flagged worker items for the caller.
CREATE FUNCTION @schema@.ack_orchestration_item(
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
LANGUAGE plpgsql AS $fn$
DECLARE
    v_inst TEXT;
    v_until BIGINT;
    v_exists BOOLEAN;
    v_wake BOOLEAN;
    v_later TEXT;
    v_ids BIGINT[] := '{}';
    v_eager_until BIGINT;
    v_e_inst TEXT[] := '{}';
    v_e_exec BIGINT[] := '{}';
    v_e_act BIGINT[] := '{}';
    v_e_tok TEXT[] := '{}';
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
            custom_status_version = i.custom_status_version + CASE WHEN p_custom_set THEN 1 ELSE 0 END;
        v_exists := true;
    ELSE
        UPDATE @schema@.instances i SET
            current_execution_id = GREATEST(i.current_execution_id, p_execution_id),
            updated_at = p_now,
            custom_status = CASE WHEN p_custom_set THEN p_custom ELSE i.custom_status END,
            custom_status_version = i.custom_status_version + CASE WHEN p_custom_set THEN 1 ELSE 0 END
        WHERE i.instance_id = v_inst;
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
        WITH ins AS (
            INSERT INTO @schema@.worker_queue (work_item, visible_at, attempt_count, instance_id, execution_id,
                                               activity_id, session_id, tag)
            SELECT u.item, p_now, 0, u.inst, u.exec, u.act, u.sess, u.tag
            FROM unnest(p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids,
                        p_worker_sessions, p_worker_tags) WITH ORDINALITY AS u(item, inst, exec, act, sess, tag, ord)
            ORDER BY u.ord
            RETURNING id)
        SELECT COALESCE(array_agg(ins.id), '{}') INTO v_ids FROM ins;
    END IF;

    -- After the inserts: an activity scheduled and cancelled in the same turn nets to nothing.
    IF cardinality(p_cancel_instances) > 0 THEN
        DELETE FROM @schema@.worker_queue w
        USING unnest(p_cancel_instances, p_cancel_executions, p_cancel_activity_ids) AS c(inst, exec, act)
        WHERE w.instance_id = c.inst AND w.execution_id = c.exec AND w.activity_id = c.act;
    END IF;

    -- Eager dispatch: lock the flagged items just inserted (and not cancelled) for the caller, as a
    -- worker fetch would (token '<id>.<salt>', the lease from the database's clock, attempt 1).
    IF p_eager_lock_ms > 0 AND true = ANY (p_worker_eager) THEN
        v_eager_until := GREATEST(p_now, @schema@.db_now_ms()) + p_eager_lock_ms;
        WITH e AS (
            SELECT u.inst, u.exec, u.act
            FROM unnest(p_worker_instances, p_worker_executions, p_worker_activity_ids, p_worker_eager)
                 AS u(inst, exec, act, eager)
            WHERE u.eager),
        locked AS (
            UPDATE @schema@.worker_queue w SET
                lock_token = w.id::TEXT || '.' || p_eager_salt,
                locked_until = v_eager_until,
                visible_at = v_eager_until,
                attempt_count = w.attempt_count + 1
            FROM e
            WHERE w.id = ANY (v_ids) AND w.instance_id = e.inst AND w.execution_id = e.exec
              AND w.activity_id = e.act AND w.lock_token IS NULL
            RETURNING w.instance_id, w.execution_id, w.activity_id, w.lock_token)
        SELECT COALESCE(array_agg(l.instance_id), '{}'), COALESCE(array_agg(l.execution_id), '{}'),
               COALESCE(array_agg(l.activity_id), '{}'), COALESCE(array_agg(l.lock_token), '{}')
        INTO v_e_inst, v_e_exec, v_e_act, v_e_tok FROM locked l;
    END IF;

    IF cardinality(p_orch_items) > 0 THEN
        INSERT INTO @schema@.orchestrator_queue (instance_id, work_item, is_start, visible_at)
        SELECT u.inst, u.item, u.is_start, u.visible
        FROM unnest(p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible)
             WITH ORDINALITY AS u(inst, item, is_start, visible, ord)
        ORDER BY u.ord;
    END IF;

    DELETE FROM @schema@.instance_locks l WHERE l.instance_id = v_inst;

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

    RETURN QUERY SELECT v_inst, v_wake, v_e_inst, v_e_exec, v_e_act, v_e_tok;
END
$fn$;

-- The older form: the same commit, nothing locked eagerly.
CREATE OR REPLACE FUNCTION @schema@.ack_orchestration_item(
    p_token TEXT, p_now BIGINT, p_execution_id BIGINT,
    p_event_ids BIGINT[], p_event_types TEXT[], p_event_data TEXT[],
    p_worker_items TEXT[], p_worker_instances TEXT[], p_worker_executions BIGINT[],
    p_worker_activity_ids BIGINT[], p_worker_sessions TEXT[], p_worker_tags TEXT[],
    p_orch_instances TEXT[], p_orch_items TEXT[], p_orch_is_start BOOLEAN[], p_orch_visible BIGINT[],
    p_cancel_instances TEXT[], p_cancel_executions BIGINT[], p_cancel_activity_ids BIGINT[],
    p_name TEXT, p_version TEXT, p_parent TEXT, p_status TEXT, p_output TEXT,
    p_custom_set BOOLEAN, p_custom TEXT)
RETURNS TABLE (o_instance_id TEXT, o_wake BOOLEAN)
LANGUAGE sql AS $fn$
    SELECT a.o_instance_id, a.o_wake
    FROM @schema@.ack_orchestration_item(
        p_token, p_now, p_execution_id, p_event_ids, p_event_types, p_event_data,
        p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids, p_worker_sessions,
        p_worker_tags, p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible,
        p_cancel_instances, p_cancel_executions, p_cancel_activity_ids,
        p_name, p_version, p_parent, p_status, p_output, p_custom_set, p_custom,
        '{}'::BOOLEAN[], 0::BIGINT, ''::TEXT) a
$fn$;

-- The turn's ack with its key-value writes (0005), with eager dispatch.
CREATE FUNCTION @schema@.ack_turn(
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
    FROM @schema@.ack_orchestration_item(
        p_token, p_now, p_execution_id, p_event_ids, p_event_types, p_event_data,
        p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids, p_worker_sessions,
        p_worker_tags, p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible,
        p_cancel_instances, p_cancel_executions, p_cancel_activity_ids,
        p_name, p_version, p_parent, p_status, p_output, p_custom_set, p_custom,
        p_worker_eager, p_eager_lock_ms, p_eager_salt) a;

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

    RETURN QUERY SELECT v_inst, v_wake, v_e_inst, v_e_exec, v_e_act, v_e_tok;
END
$fn$;

-- The older form: the same commit, nothing locked eagerly.
CREATE OR REPLACE FUNCTION @schema@.ack_turn(
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
LANGUAGE sql AS $fn$
    SELECT a.o_instance_id, a.o_wake
    FROM @schema@.ack_turn(
        p_token, p_now, p_execution_id, p_event_ids, p_event_types, p_event_data,
        p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids, p_worker_sessions,
        p_worker_tags, p_orch_instances, p_orch_items, p_orch_is_start, p_orch_visible,
        p_cancel_instances, p_cancel_executions, p_cancel_activity_ids,
        p_name, p_version, p_parent, p_status, p_output, p_custom_set, p_custom,
        p_kv_clear_all, p_kv_deleted, p_kv_keys, p_kv_values,
        '{}'::BOOLEAN[], 0::BIGINT, ''::TEXT) a
$fn$;
