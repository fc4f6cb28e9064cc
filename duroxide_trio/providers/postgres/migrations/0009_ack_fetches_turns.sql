-- duroxide-trio PostgreSQL schema, version 9: the activity ack hands over the next turns
-- (ProviderCapabilities.ack_fetches_turns). ack_work_items_fetch acks as ack_work_items does and, in the
-- same transaction, locks up to array_length(p_turn_tokens) instances the committed completions were sent
-- to (distinct, in entry order), each as fetch_orchestration_item does (not locked by anyone, a visible
-- message, the version filter [p_lo, p_hi]; every visible message tagged, attempt_count + 1) under its
-- own token. The first row carries the ack results (o_acked), each further row one locked batch.
-- Instances not taken are announced ('o') as after a plain ack; when every one was taken nobody is woken.

CREATE FUNCTION @schema@.ack_work_items_fetch(
    p_now BIGINT, p_ids BIGINT[], p_tokens TEXT[], p_items TEXT[], p_targets TEXT[],
    p_lock_ms BIGINT, p_turn_tokens TEXT[], p_lo BIGINT, p_hi BIGINT)
RETURNS TABLE (
    o_acked BOOLEAN[], o_instance_id TEXT, o_name TEXT, o_version TEXT, o_execution_id BIGINT,
    o_has_instance BOOLEAN, o_messages TEXT[], o_attempt_count INTEGER, o_history TEXT[])
LANGUAGE plpgsql AS $fn$
DECLARE
    v_done BIGINT[];
    v_ok BOOLEAN[];
    v_inst TEXT;
    v_max INTEGER := COALESCE(array_length(p_turn_tokens, 1), 0);
    v_taken INTEGER := 0;
    v_left BOOLEAN := false;
    v_msgs TEXT[];
    v_attempt INTEGER;
    v_until BIGINT;
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
    SELECT array_agg(u.id = ANY (v_done) ORDER BY u.ord) INTO v_ok
    FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord);
    RETURN QUERY SELECT COALESCE(v_ok, '{}'), NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::BIGINT,
                        NULL::BOOLEAN, NULL::TEXT[], NULL::INTEGER, NULL::TEXT[];
    FOR v_inst IN
        SELECT u.target
        FROM unnest(p_ids, p_items, p_targets) WITH ORDINALITY AS u(id, item, target, ord)
        WHERE u.item IS NOT NULL AND u.id = ANY (v_done)
        GROUP BY u.target ORDER BY min(u.ord)
    LOOP
        IF v_taken >= v_max
           -- claimable exactly as in fetch_orchestration_item (capability filtering of migration 8)
           OR NOT EXISTS (
               SELECT 1 FROM @schema@.orchestrator_queue q
               WHERE q.instance_id = v_inst AND q.visible_at <= p_now
                 AND (
                     (EXISTS (SELECT 1 FROM @schema@.instances i
                              WHERE i.instance_id = q.instance_id
                                AND (((p_lo IS NULL OR i.version_key IS NULL OR i.version_key >= p_lo)
                                      AND (p_hi IS NULL OR i.version_key IS NULL OR i.version_key <= p_hi))
                                     OR EXISTS (SELECT 1 FROM @schema@.orchestrator_queue s
                                                WHERE s.instance_id = q.instance_id AND s.is_successor
                                                  AND s.visible_at <= p_now)))
                      AND NOT EXISTS (SELECT 1 FROM @schema@.orchestrator_queue s
                                      WHERE s.instance_id = q.instance_id AND s.is_successor
                                        AND s.visible_at <= p_now AND s.start_version_key IS NOT NULL
                                        AND ((p_lo IS NOT NULL AND s.start_version_key < p_lo)
                                             OR (p_hi IS NOT NULL AND s.start_version_key > p_hi))))
                     OR (q.is_start
                         AND (q.start_version_key IS NULL
                              OR ((p_lo IS NULL OR q.start_version_key >= p_lo)
                                  AND (p_hi IS NULL OR q.start_version_key <= p_hi)))
                         AND NOT EXISTS (SELECT 1 FROM @schema@.instances i WHERE i.instance_id = q.instance_id))))
           OR EXISTS (SELECT 1 FROM @schema@.instance_locks l
                      WHERE l.instance_id = v_inst AND l.locked_until > p_now)
           OR NOT pg_try_advisory_xact_lock(hashtextextended(v_inst, @lock_seed@))
        THEN
            v_left := true;
            CONTINUE;
        END IF;
        v_until := GREATEST(p_now, @schema@.db_now_ms()) + p_lock_ms;
        INSERT INTO @schema@.instance_locks AS l (instance_id, lock_token, locked_until)
        VALUES (v_inst, p_turn_tokens[v_taken + 1], v_until)
        ON CONFLICT (instance_id) DO UPDATE
            SET lock_token = EXCLUDED.lock_token, locked_until = EXCLUDED.locked_until
            WHERE l.locked_until <= p_now;
        IF NOT FOUND THEN  -- leased by someone who committed meanwhile
            v_left := true;
            CONTINUE;
        END IF;
        v_taken := v_taken + 1;
        WITH tagged AS (
            UPDATE @schema@.orchestrator_queue q
            SET lock_token = p_turn_tokens[v_taken], attempt_count = q.attempt_count + 1
            WHERE q.instance_id = v_inst AND q.visible_at <= p_now
            RETURNING q.id, q.work_item, q.attempt_count)
        SELECT array_agg(t.work_item ORDER BY t.id), max(t.attempt_count) INTO v_msgs, v_attempt FROM tagged t;
        IF v_msgs IS NULL THEN  -- its messages were consumed or deleted meanwhile
            DELETE FROM @schema@.instance_locks l
            WHERE l.instance_id = v_inst AND l.lock_token = p_turn_tokens[v_taken];
            v_taken := v_taken - 1;
            CONTINUE;
        END IF;
        RETURN QUERY
            SELECT NULL::BOOLEAN[], v_inst, i.name, i.version, i.current_execution_id, true, v_msgs, v_attempt,
                   ARRAY(SELECT h.event_data FROM @schema@.history h
                         WHERE h.instance_id = v_inst AND h.execution_id = i.current_execution_id
                         ORDER BY h.event_id)
            FROM @schema@.instances i WHERE i.instance_id = v_inst;
        IF NOT FOUND THEN
            RETURN QUERY SELECT NULL::BOOLEAN[], v_inst, NULL::TEXT, NULL::TEXT, NULL::BIGINT, false, v_msgs,
                                v_attempt, '{}'::TEXT[];
        END IF;
    END LOOP;
    IF v_left THEN
        PERFORM pg_notify(@channel@, 'o');
    END IF;
END
$fn$;
