-- duroxide-trio PostgreSQL schema, version 1: tables and the stored functions behind every hot provider
-- operation (one server round trip each).
--
-- Placeholders, substituted by the migration runner before execution (never edit an applied migration):
--   @schema@     the schema, as a quoted identifier
--   @channel@    the NOTIFY channel of this schema, as a string literal
--   @lock_seed@  a per-schema BIGINT seed for the advisory-lock keys of this schema
--
-- Conventions:
--   * Every point in time is epoch milliseconds (BIGINT) passed in by the caller (p_now); the database
--     clock is never used.
--   * Errors the provider maps to typed exceptions use custom SQLSTATEs:
--       DX001 invalid lock token, DX002 lock expired, DX003 instance already exists,
--       DX004 instance not found (DETAIL = instance id), DX005 instance still running (DETAIL = id),
--       DX006 cannot delete a sub-orchestration (DETAIL = id, HINT = parent id), DX007 would orphan children.
--   * Wake-ups: committing functions call pg_notify(@channel@, payload) with payloads
--       'o' / 'w'                  orchestrator / worker work is visible now
--       'o<ms>[,<ms>...]' / 'w<ms>' orchestrator / worker work becomes visible at these times
--       'd<instance id>'            the instance reached Completed or Failed
--   * Operations whose loss in a server crash is harmless (fetches: a lost lock simply never existed;
--     renewals; abandons) commit with synchronous_commit = off. Acks and enqueues stay synchronous.

-- ---------------------------------------------------------------------------------------------------------
-- Tables

CREATE TABLE @schema@.instances (
    instance_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT,
    current_execution_id BIGINT NOT NULL DEFAULT 1,
    custom_status TEXT,
    custom_status_version BIGINT NOT NULL DEFAULT 0,
    parent_instance_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX instances_parent ON @schema@.instances (parent_instance_id, created_at, seq)
    WHERE parent_instance_id IS NOT NULL;
CREATE INDEX instances_created ON @schema@.instances (created_at, seq);

CREATE TABLE @schema@.executions (
    instance_id TEXT NOT NULL,
    execution_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    output TEXT,
    started_at BIGINT NOT NULL,
    completed_at BIGINT,
    pinned_version TEXT,
    PRIMARY KEY (instance_id, execution_id)
);

CREATE TABLE @schema@.history (
    instance_id TEXT NOT NULL,
    execution_id BIGINT NOT NULL,
    event_id BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    event_data TEXT NOT NULL,
    PRIMARY KEY (instance_id, execution_id, event_id)
);

-- Orchestrator messages. A fetch tags an instance's visible messages with the lease token; only the
-- token and attempt_count change afterwards, so those updates can be HOT (fillfactor leaves room).
CREATE TABLE @schema@.orchestrator_queue (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id TEXT NOT NULL,
    work_item TEXT NOT NULL,
    is_start BOOLEAN NOT NULL DEFAULT false,
    visible_at BIGINT NOT NULL,
    lock_token TEXT,
    attempt_count INTEGER NOT NULL DEFAULT 0 CHECK (attempt_count >= 0)
) WITH (fillfactor = 80);
CREATE INDEX orchestrator_queue_visible ON @schema@.orchestrator_queue (visible_at, id);
CREATE INDEX orchestrator_queue_instance ON @schema@.orchestrator_queue (instance_id, id);

-- Worker messages. A locked row is invisible until its lock expires (visible_at = locked_until), so a
-- fetch never scans past in-flight work. Tokens are '<id>.<random>': acks and renewals find the row by
-- its primary key.
CREATE TABLE @schema@.worker_queue (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    work_item TEXT NOT NULL,
    visible_at BIGINT NOT NULL,
    lock_token TEXT,
    locked_until BIGINT,
    attempt_count INTEGER NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    instance_id TEXT,
    execution_id BIGINT,
    activity_id BIGINT,
    session_id TEXT,
    tag TEXT
);
CREATE INDEX worker_queue_visible ON @schema@.worker_queue (visible_at, id);
CREATE INDEX worker_queue_activity ON @schema@.worker_queue (instance_id, execution_id, activity_id);

-- Instance leases (peek-locks of the orchestrator queue, one per instance).
CREATE TABLE @schema@.instance_locks (
    instance_id TEXT PRIMARY KEY,
    lock_token TEXT NOT NULL UNIQUE,
    locked_until BIGINT NOT NULL
);

-- Reserved for sessions and the KV store (same shape as the SQLite provider).
CREATE TABLE @schema@.sessions (
    session_id TEXT PRIMARY KEY,
    worker_id TEXT NOT NULL,
    locked_until BIGINT NOT NULL,
    last_activity_at BIGINT NOT NULL
);
CREATE TABLE @schema@.kv_store (
    instance_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    last_updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (instance_id, key)
);

-- ---------------------------------------------------------------------------------------------------------
-- Orchestrator queue

-- Lock the instance of the oldest visible message (start messages, or instances that exist) whose
-- instance has no live lease, tag all its visible messages (attempt_count + 1) and return them with the
-- current execution's history. Instances another fetcher is claiming right now (advisory try-lock) or
-- that got a lease since the candidate scan are skipped, never waited for: NULL means "no eligible work".
-- With no work, the row carries o_next_visible (the earliest future visible_at) instead.
CREATE FUNCTION @schema@.fetch_orchestration_item(p_now BIGINT, p_lock_ms BIGINT, p_token TEXT)
RETURNS TABLE (
    o_instance_id TEXT, o_name TEXT, o_version TEXT, o_execution_id BIGINT, o_has_instance BOOLEAN,
    o_messages TEXT[], o_attempt_count INTEGER, o_history TEXT[], o_next_visible BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_tried TEXT[] := '{}';
    v_inst TEXT;
    v_any BOOLEAN;
    v_msgs TEXT[];
    v_attempt INTEGER;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    LOOP
        v_any := false;
        FOR v_inst IN
            SELECT q.instance_id FROM @schema@.orchestrator_queue q
            WHERE q.visible_at <= p_now
              AND q.instance_id <> ALL (v_tried)
              -- OFFSET 0 keeps both probes per-row primary-key lookups (never a hash of a whole table).
              AND NOT EXISTS (SELECT 1 FROM @schema@.instance_locks l
                              WHERE l.instance_id = q.instance_id AND l.locked_until > p_now OFFSET 0)
              AND (q.is_start OR EXISTS (SELECT 1 FROM @schema@.instances i
                                         WHERE i.instance_id = q.instance_id OFFSET 0))
            ORDER BY q.visible_at, q.id
            LIMIT 16
        LOOP
            v_any := true;
            CONTINUE WHEN v_inst = ANY (v_tried);
            v_tried := v_tried || v_inst;
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended(v_inst, @lock_seed@));
            INSERT INTO @schema@.instance_locks AS l (instance_id, lock_token, locked_until)
            VALUES (v_inst, p_token, p_now + p_lock_ms)
            ON CONFLICT (instance_id) DO UPDATE
                SET lock_token = EXCLUDED.lock_token, locked_until = EXCLUDED.locked_until
                WHERE l.locked_until <= p_now;
            CONTINUE WHEN NOT FOUND;  -- leased by someone who committed after our candidate scan
            WITH tagged AS (
                UPDATE @schema@.orchestrator_queue q
                SET lock_token = p_token, attempt_count = q.attempt_count + 1
                WHERE q.instance_id = v_inst AND q.visible_at <= p_now
                RETURNING q.id, q.work_item, q.attempt_count)
            SELECT array_agg(t.work_item ORDER BY t.id), max(t.attempt_count) INTO v_msgs, v_attempt FROM tagged t;
            IF v_msgs IS NULL THEN  -- its messages were consumed or deleted meanwhile
                DELETE FROM @schema@.instance_locks l WHERE l.instance_id = v_inst AND l.lock_token = p_token;
                CONTINUE;
            END IF;
            RETURN QUERY
                SELECT v_inst, i.name, i.version, i.current_execution_id, true, v_msgs, v_attempt,
                       ARRAY(SELECT h.event_data FROM @schema@.history h
                             WHERE h.instance_id = v_inst AND h.execution_id = i.current_execution_id
                             ORDER BY h.event_id),
                       NULL::BIGINT
                FROM @schema@.instances i WHERE i.instance_id = v_inst;
            IF NOT FOUND THEN
                RETURN QUERY SELECT v_inst, NULL::TEXT, NULL::TEXT, NULL::BIGINT, false, v_msgs, v_attempt,
                                    '{}'::TEXT[], NULL::BIGINT;
            END IF;
            RETURN;
        END LOOP;
        EXIT WHEN NOT v_any;
    END LOOP;
    RETURN QUERY SELECT NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BOOLEAN, NULL::TEXT[],
                        NULL::INTEGER, NULL::TEXT[],
                        (SELECT min(q.visible_at) FROM @schema@.orchestrator_queue q WHERE q.visible_at > p_now);
END
$fn$;

-- Commit one orchestration turn atomically. Arrays are parallel columns (one element per row).
CREATE FUNCTION @schema@.ack_orchestration_item(
    p_token TEXT, p_now BIGINT, p_execution_id BIGINT,
    p_event_ids BIGINT[], p_event_types TEXT[], p_event_data TEXT[],
    p_worker_items TEXT[], p_worker_instances TEXT[], p_worker_executions BIGINT[],
    p_worker_activity_ids BIGINT[], p_worker_sessions TEXT[], p_worker_tags TEXT[],
    p_orch_instances TEXT[], p_orch_items TEXT[], p_orch_is_start BOOLEAN[], p_orch_visible BIGINT[],
    p_cancel_instances TEXT[], p_cancel_executions BIGINT[], p_cancel_activity_ids BIGINT[],
    p_name TEXT, p_version TEXT, p_parent TEXT, p_status TEXT, p_output TEXT,
    p_custom_set BOOLEAN, p_custom TEXT)
RETURNS TABLE (o_instance_id TEXT, o_wake BOOLEAN)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_inst TEXT;
    v_until BIGINT;
    v_exists BOOLEAN;
    v_wake BOOLEAN;
    v_later TEXT;
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
        INSERT INTO @schema@.worker_queue (work_item, visible_at, attempt_count, instance_id, execution_id,
                                           activity_id, session_id, tag)
        SELECT u.item, p_now, 0, u.inst, u.exec, u.act, u.sess, u.tag
        FROM unnest(p_worker_items, p_worker_instances, p_worker_executions, p_worker_activity_ids,
                    p_worker_sessions, p_worker_tags) WITH ORDINALITY AS u(item, inst, exec, act, sess, tag, ord)
        ORDER BY u.ord;
    END IF;

    -- After the inserts: an activity scheduled and cancelled in the same turn nets to nothing.
    IF cardinality(p_cancel_instances) > 0 THEN
        DELETE FROM @schema@.worker_queue w
        USING unnest(p_cancel_instances, p_cancel_executions, p_cancel_activity_ids) AS c(inst, exec, act)
        WHERE w.instance_id = c.inst AND w.execution_id = c.exec AND w.activity_id = c.act;
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

    IF cardinality(p_worker_items) > 0 THEN
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

    RETURN QUERY SELECT v_inst, v_wake;
END
$fn$;

-- Release a lease without committing the turn. Returns the new visible_at when delayed, else NULL.
CREATE FUNCTION @schema@.abandon_orchestration_item(
    p_token TEXT, p_now BIGINT, p_delay_ms BIGINT, p_ignore_attempt BOOLEAN)
RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE
    v_inst TEXT;
    v_at BIGINT;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    DELETE FROM @schema@.instance_locks l WHERE l.lock_token = p_token RETURNING l.instance_id INTO v_inst;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid lock token %', p_token USING ERRCODE = 'DX001';
    END IF;
    IF p_delay_ms > 0 THEN
        v_at := p_now + p_delay_ms;
    END IF;
    IF p_ignore_attempt OR v_at IS NOT NULL THEN
        UPDATE @schema@.orchestrator_queue q SET
            attempt_count = CASE WHEN p_ignore_attempt THEN GREATEST(q.attempt_count - 1, 0) ELSE q.attempt_count END,
            visible_at = CASE WHEN v_at IS NOT NULL AND q.visible_at <= p_now THEN v_at ELSE q.visible_at END
        WHERE q.instance_id = v_inst AND q.lock_token = p_token;
    END IF;
    PERFORM pg_notify(@channel@, 'o' || COALESCE(v_at::TEXT, ''));
    RETURN v_at;
END
$fn$;

CREATE FUNCTION @schema@.enqueue_orchestrator(
    p_instance TEXT, p_item TEXT, p_is_start BOOLEAN, p_visible BIGINT, p_now BIGINT)
RETURNS VOID
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO @schema@.orchestrator_queue (instance_id, work_item, is_start, visible_at)
    VALUES (p_instance, p_item, p_is_start, p_visible);
    PERFORM pg_notify(@channel@, CASE WHEN p_visible > p_now THEN 'o' || p_visible ELSE 'o' END);
END
$fn$;

-- Enqueue a client start; DX003 when the instance exists or has a pending start. Concurrent starts of
-- one id are serialised by an advisory lock, so exactly one of them wins.
CREATE FUNCTION @schema@.enqueue_start(p_instance TEXT, p_item TEXT, p_now BIGINT)
RETURNS VOID
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_instance, @lock_seed@ + 1));
    IF EXISTS (SELECT 1 FROM @schema@.instances i WHERE i.instance_id = p_instance)
       OR EXISTS (SELECT 1 FROM @schema@.orchestrator_queue q WHERE q.instance_id = p_instance AND q.is_start) THEN
        RAISE EXCEPTION 'instance % already exists', p_instance USING ERRCODE = 'DX003', DETAIL = p_instance;
    END IF;
    INSERT INTO @schema@.orchestrator_queue (instance_id, work_item, is_start, visible_at)
    VALUES (p_instance, p_item, true, p_now);
    PERFORM pg_notify(@channel@, 'o');
END
$fn$;

-- ---------------------------------------------------------------------------------------------------------
-- Worker queue

CREATE FUNCTION @schema@.enqueue_worker(
    p_item TEXT, p_instance TEXT, p_execution_id BIGINT, p_activity_id BIGINT, p_session TEXT, p_tag TEXT,
    p_now BIGINT)
RETURNS VOID
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO @schema@.worker_queue (work_item, visible_at, attempt_count, instance_id, execution_id,
                                       activity_id, session_id, tag)
    VALUES (p_item, p_now, 0, p_instance, p_execution_id, p_activity_id, p_session, p_tag);
    PERFORM pg_notify(@channel@, 'w');
END
$fn$;

-- Lock up to p_max visible work items (FOR UPDATE SKIP LOCKED), each with its own token
-- '<id>.<p_salt>'. With none, one row with o_id NULL carries the earliest future visible_at.
CREATE FUNCTION @schema@.fetch_work_items(p_now BIGINT, p_lock_ms BIGINT, p_max INTEGER, p_salt TEXT)
RETURNS TABLE (o_id BIGINT, o_token TEXT, o_item TEXT, o_attempt_count INTEGER, o_next_visible BIGINT)
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
        WITH c AS (
            SELECT w.id FROM @schema@.worker_queue w
            WHERE w.visible_at <= p_now AND w.session_id IS NULL
            ORDER BY w.visible_at, w.id
            LIMIT p_max
            FOR UPDATE SKIP LOCKED)
        UPDATE @schema@.worker_queue w SET
            lock_token = w.id::TEXT || '.' || p_salt,
            locked_until = p_now + p_lock_ms,
            visible_at = p_now + p_lock_ms,
            attempt_count = w.attempt_count + 1
        FROM c WHERE w.id = c.id
        RETURNING w.id, w.lock_token, w.work_item, w.attempt_count, NULL::BIGINT;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::INTEGER,
            (SELECT min(w.visible_at) FROM @schema@.worker_queue w
             WHERE w.visible_at > p_now AND w.lock_token IS NULL);
    END IF;
END
$fn$;

-- Ack several work items: delete each row whose token matches and whose lock is live, and enqueue its
-- completion (NULL = none) for the orchestrator. Returns one boolean per entry (true = acked).
CREATE FUNCTION @schema@.ack_work_items(
    p_now BIGINT, p_ids BIGINT[], p_tokens TEXT[], p_items TEXT[], p_targets TEXT[])
RETURNS BOOLEAN[]
LANGUAGE plpgsql AS $fn$
DECLARE
    v_done BIGINT[];
    v_ok BOOLEAN[];
    v_enqueued BIGINT;
BEGIN
    WITH deleted AS (
        DELETE FROM @schema@.worker_queue w
        USING unnest(p_ids, p_tokens) AS i(id, token)
        WHERE w.id = i.id AND w.lock_token = i.token AND w.locked_until > p_now
        RETURNING w.id)
    SELECT array_agg(d.id) INTO v_done FROM deleted d;
    v_done := COALESCE(v_done, '{}');
    INSERT INTO @schema@.orchestrator_queue (instance_id, work_item, is_start, visible_at)
    SELECT u.target, u.item, false, p_now
    FROM unnest(p_ids, p_items, p_targets) WITH ORDINALITY AS u(id, item, target, ord)
    WHERE u.item IS NOT NULL AND u.id = ANY (v_done)
    ORDER BY u.ord;
    GET DIAGNOSTICS v_enqueued = ROW_COUNT;
    IF v_enqueued > 0 THEN
        PERFORM pg_notify(@channel@, 'o');
    END IF;
    SELECT array_agg(u.id = ANY (v_done) ORDER BY u.ord) INTO v_ok
    FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord);
    RETURN COALESCE(v_ok, '{}');
END
$fn$;

CREATE FUNCTION @schema@.abandon_work_item(
    p_id BIGINT, p_token TEXT, p_now BIGINT, p_delay_ms BIGINT, p_ignore_attempt BOOLEAN)
RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE
    v_at BIGINT := p_now + GREATEST(p_delay_ms, 0);
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE @schema@.worker_queue w SET
        lock_token = NULL, locked_until = NULL, visible_at = v_at,
        attempt_count = CASE WHEN p_ignore_attempt THEN GREATEST(w.attempt_count - 1, 0) ELSE w.attempt_count END
    WHERE w.id = p_id AND w.lock_token = p_token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid lock token %', p_token USING ERRCODE = 'DX001';
    END IF;
    PERFORM pg_notify(@channel@, CASE WHEN v_at > p_now THEN 'w' || v_at ELSE 'w' END);
    RETURN v_at;
END
$fn$;

-- ---------------------------------------------------------------------------------------------------------
-- Management

-- The instance and its descendants, breadth first (children in creation order).
CREATE FUNCTION @schema@.instance_tree(p_root TEXT)
RETURNS TEXT[]
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_out TEXT[] := ARRAY[p_root];
    v_i INTEGER := 1;
BEGIN
    WHILE v_i <= cardinality(v_out) LOOP
        v_out := v_out || ARRAY(SELECT c.instance_id FROM @schema@.instances c
                                WHERE c.parent_instance_id = v_out[v_i] ORDER BY c.created_at, c.seq);
        v_i := v_i + 1;
    END LOOP;
    RETURN v_out;
END
$fn$;

-- Delete instances all-or-nothing: DX004 unknown, DX005 not terminal (unless p_force), DX007 when a child
-- of a listed instance is not listed. Leases go first, so an in-flight ack cannot recreate anything.
CREATE FUNCTION @schema@.delete_instances(p_ids TEXT[], p_force BOOLEAN)
RETURNS TABLE (o_instances BIGINT, o_executions BIGINT, o_events BIGINT, o_messages BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_id TEXT;
    v_status TEXT;
    v_orphans TEXT[];
    v_events BIGINT;
    v_executions BIGINT;
    v_messages BIGINT;
    v_n BIGINT;
BEGIN
    DELETE FROM @schema@.instance_locks l WHERE l.instance_id = ANY (p_ids);
    FOREACH v_id IN ARRAY p_ids LOOP
        SELECT COALESCE(e.status, 'Running') INTO v_status
        FROM @schema@.instances i
        LEFT JOIN @schema@.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE i.instance_id = v_id
        FOR UPDATE OF i;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'instance % not found', v_id USING ERRCODE = 'DX004', DETAIL = v_id;
        END IF;
        IF NOT p_force AND v_status NOT IN ('Completed', 'Failed') THEN
            RAISE EXCEPTION 'instance % is still running', v_id USING ERRCODE = 'DX005', DETAIL = v_id;
        END IF;
        SELECT array_agg(c.instance_id ORDER BY c.created_at, c.seq) INTO v_orphans
        FROM @schema@.instances c WHERE c.parent_instance_id = v_id AND c.instance_id <> ALL (p_ids);
        IF v_orphans IS NOT NULL THEN
            RAISE EXCEPTION 'deleting % would orphan its sub-orchestrations %; include them or delete the root',
                quote_literal(v_id), v_orphans::TEXT USING ERRCODE = 'DX007', DETAIL = v_id;
        END IF;
    END LOOP;
    DELETE FROM @schema@.history h WHERE h.instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_events = ROW_COUNT;
    DELETE FROM @schema@.executions e WHERE e.instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_executions = ROW_COUNT;
    DELETE FROM @schema@.orchestrator_queue q WHERE q.instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_messages = ROW_COUNT;
    DELETE FROM @schema@.worker_queue w WHERE w.instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_messages := v_messages + v_n;
    DELETE FROM @schema@.kv_store k WHERE k.instance_id = ANY (p_ids);
    DELETE FROM @schema@.instances i WHERE i.instance_id = ANY (p_ids);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN QUERY SELECT v_n, v_executions, v_events, v_messages;
END
$fn$;

-- Delete a root instance and all its descendants: DX004 unknown, DX006 for a sub-orchestration.
CREATE FUNCTION @schema@.delete_instance(p_id TEXT, p_force BOOLEAN)
RETURNS TABLE (o_instances BIGINT, o_executions BIGINT, o_events BIGINT, o_messages BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_parent TEXT;
BEGIN
    SELECT i.parent_instance_id INTO v_parent FROM @schema@.instances i WHERE i.instance_id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance % not found', p_id USING ERRCODE = 'DX004', DETAIL = p_id;
    END IF;
    IF v_parent IS NOT NULL THEN
        RAISE EXCEPTION 'instance % is a sub-orchestration of %', p_id, v_parent
            USING ERRCODE = 'DX006', DETAIL = p_id, HINT = v_parent;
    END IF;
    RETURN QUERY SELECT * FROM @schema@.delete_instances(@schema@.instance_tree(p_id), p_force);
END
$fn$;

-- Delete terminal (Completed/Failed) root instances with their trees, oldest first, up to p_limit roots.
CREATE FUNCTION @schema@.delete_instance_bulk(p_ids TEXT[], p_completed_before BIGINT, p_limit INTEGER)
RETURNS TABLE (o_instances BIGINT, o_executions BIGINT, o_events BIGINT, o_messages BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_root TEXT;
    v_all TEXT[] := '{}';
BEGIN
    FOR v_root IN
        SELECT i.instance_id FROM @schema@.instances i
        JOIN @schema@.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
        WHERE i.parent_instance_id IS NULL AND e.status IN ('Completed', 'Failed')
          AND (p_ids IS NULL OR i.instance_id = ANY (p_ids))
          AND (p_completed_before IS NULL OR e.completed_at < p_completed_before)
        ORDER BY i.created_at, i.seq
        LIMIT p_limit
    LOOP
        v_all := v_all || @schema@.instance_tree(v_root);
    END LOOP;
    IF cardinality(v_all) = 0 THEN
        RETURN QUERY SELECT 0::BIGINT, 0::BIGINT, 0::BIGINT, 0::BIGINT;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM @schema@.delete_instances(v_all, true);
END
$fn$;

-- Delete old executions of one instance: never the current one, never a Running one. keep_last NULL
-- means "no count limit"; 0 and 1 both keep only the newest.
CREATE FUNCTION @schema@.prune_one(p_id TEXT, p_keep_last INTEGER, p_completed_before BIGINT)
RETURNS TABLE (o_executions BIGINT, o_events BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_current BIGINT;
    v_victims BIGINT[];
    v_events BIGINT;
BEGIN
    SELECT i.current_execution_id INTO v_current FROM @schema@.instances i WHERE i.instance_id = p_id;
    SELECT COALESCE(array_agg(r.execution_id), '{}') INTO v_victims
    FROM (SELECT e.execution_id, e.status, e.completed_at,
                 row_number() OVER (ORDER BY e.execution_id DESC) - 1 AS rank
          FROM @schema@.executions e WHERE e.instance_id = p_id) r
    WHERE r.execution_id <> v_current AND r.status <> 'Running'
      AND NOT (p_keep_last IS NOT NULL AND r.rank < GREATEST(1, COALESCE(NULLIF(p_keep_last, 0), 1)))
      AND (p_completed_before IS NULL OR (r.completed_at IS NOT NULL AND r.completed_at < p_completed_before));
    DELETE FROM @schema@.history h WHERE h.instance_id = p_id AND h.execution_id = ANY (v_victims);
    GET DIAGNOSTICS v_events = ROW_COUNT;
    DELETE FROM @schema@.executions e WHERE e.instance_id = p_id AND e.execution_id = ANY (v_victims);
    RETURN QUERY SELECT cardinality(v_victims)::BIGINT, v_events;
END
$fn$;

CREATE FUNCTION @schema@.prune_executions(p_id TEXT, p_keep_last INTEGER, p_completed_before BIGINT)
RETURNS TABLE (o_instances BIGINT, o_executions BIGINT, o_events BIGINT)
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @schema@.instances i WHERE i.instance_id = p_id) THEN
        RAISE EXCEPTION 'instance % not found', p_id USING ERRCODE = 'DX004', DETAIL = p_id;
    END IF;
    RETURN QUERY SELECT 1::BIGINT, p.o_executions, p.o_events
                 FROM @schema@.prune_one(p_id, p_keep_last, p_completed_before) p;
END
$fn$;

-- Prune several instances (Running ones included: their old executions are prunable), oldest first.
CREATE FUNCTION @schema@.prune_executions_bulk(
    p_ids TEXT[], p_limit INTEGER, p_keep_last INTEGER, p_completed_before BIGINT)
RETURNS TABLE (o_instances BIGINT, o_executions BIGINT, o_events BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_id TEXT;
    v_instances BIGINT := 0;
    v_executions BIGINT := 0;
    v_events BIGINT := 0;
    v_e BIGINT;
    v_h BIGINT;
BEGIN
    FOR v_id IN
        SELECT i.instance_id FROM @schema@.instances i
        WHERE p_ids IS NULL OR i.instance_id = ANY (p_ids)
        ORDER BY i.created_at, i.seq
        LIMIT p_limit
    LOOP
        SELECT p.o_executions, p.o_events INTO v_e, v_h
        FROM @schema@.prune_one(v_id, p_keep_last, p_completed_before) p;
        v_instances := v_instances + 1;
        v_executions := v_executions + v_e;
        v_events := v_events + v_h;
    END LOOP;
    RETURN QUERY SELECT v_instances, v_executions, v_events;
END
$fn$;
