-- duroxide-trio PostgreSQL schema, version 4: harden the claims (found by the chaos
-- harness's review of duroxide's 2026 lessons): the instance lease is computed from the database's
-- clock at the moment of the claim, never from a caller's timestamp that may be stale, and the claim
-- loop is bounded (50 rounds of 16 candidates); the work-item lease (fetch_work_items of version 2) is
-- computed the same way. Advisory-lock keys stay scoped to the schema (@lock_seed@). Same signatures
-- and results as before, so prepared statements on pooled connections stay valid.

CREATE OR REPLACE FUNCTION @schema@.fetch_orchestration_item(p_now BIGINT, p_lock_ms BIGINT, p_token TEXT)
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
    v_until BIGINT;
    v_rounds INTEGER := 0;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    LOOP
        v_rounds := v_rounds + 1;
        EXIT WHEN v_rounds > 50;  -- bounded: give up (NULL) rather than scan forever under contention
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
            -- The lease runs from the moment of the claim by the database's clock: p_now may be stale
            -- (the caller waited for a connection), and a lease computed from it could be expired
            -- already when handed out (the expired-lock livelock).
            v_until := GREATEST(p_now, @schema@.db_now_ms()) + p_lock_ms;
            INSERT INTO @schema@.instance_locks AS l (instance_id, lock_token, locked_until)
            VALUES (v_inst, p_token, v_until)
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

-- Version 2's work-item fetch (session items included), with the lease from the database's clock.
CREATE OR REPLACE FUNCTION @schema@.fetch_work_items(p_now BIGINT, p_lock_ms BIGINT, p_max INTEGER, p_salt TEXT)
RETURNS TABLE (o_id BIGINT, o_token TEXT, o_item TEXT, o_attempt_count INTEGER, o_next_visible BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    -- From the database's clock at the claim (p_now may be stale: the caller waited for a connection).
    v_until BIGINT := GREATEST(p_now, @schema@.db_now_ms()) + p_lock_ms;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
        WITH c AS (
            SELECT w.id FROM @schema@.worker_queue w
            WHERE w.visible_at <= p_now
            ORDER BY w.visible_at, w.id
            LIMIT p_max
            FOR UPDATE SKIP LOCKED)
        UPDATE @schema@.worker_queue w SET
            lock_token = w.id::TEXT || '.' || p_salt,
            locked_until = v_until,
            visible_at = v_until,
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
