-- duroxide-trio PostgreSQL schema, version 12: storing a start hands over the new instance's first turn
-- (ProviderCapabilities.start_fetches_turn). enqueue_start_fetch stores the start exactly as enqueue_start
-- does (the same serialising advisory lock, DX003 when the id is taken) and, in the same transaction, when
-- p_token is not empty, locks the new instance as fetch_orchestration_item would: nobody holds its lock (an
-- expired one counts as none), its start's version passes [p_lo, p_hi] (a start that asks for none passes),
-- every visible message of it tagged with p_token, attempt_count + 1. It returns that batch in the row shape
-- of ack_work_items_fetch's turn rows; with no row returned the start was left for any dispatcher ('o').

CREATE FUNCTION @schema@.enqueue_start_fetch(
    p_instance TEXT, p_item TEXT, p_now BIGINT, p_lock_ms BIGINT, p_token TEXT, p_lo BIGINT, p_hi BIGINT)
RETURNS TABLE (o_instance_id TEXT, o_name TEXT, o_version TEXT, o_execution_id BIGINT, o_has_instance BOOLEAN,
               o_messages TEXT[], o_attempt_count INTEGER, o_history TEXT[])
LANGUAGE plpgsql AS $fn$
DECLARE
    v_key BIGINT;
    v_msgs TEXT[];
    v_attempt INTEGER;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_instance, @lock_seed@ + 1));
    IF EXISTS (SELECT 1 FROM @schema@.instances i WHERE i.instance_id = p_instance)
       OR EXISTS (SELECT 1 FROM @schema@.orchestrator_queue q WHERE q.instance_id = p_instance AND q.is_start) THEN
        RAISE EXCEPTION 'instance % already exists', p_instance USING ERRCODE = 'DX003', DETAIL = p_instance;
    END IF;
    INSERT INTO @schema@.orchestrator_queue (instance_id, work_item, is_start, visible_at)
    VALUES (p_instance, p_item, true, p_now)
    RETURNING start_version_key INTO v_key;

    IF p_token <> ''
       AND (v_key IS NULL OR ((p_lo IS NULL OR v_key >= p_lo) AND (p_hi IS NULL OR v_key <= p_hi)))
       AND pg_try_advisory_xact_lock(hashtextextended(p_instance, @lock_seed@)) THEN
        INSERT INTO @schema@.instance_locks AS l (instance_id, lock_token, locked_until)
        VALUES (p_instance, p_token, GREATEST(p_now, @schema@.db_now_ms()) + p_lock_ms)
        ON CONFLICT (instance_id) DO UPDATE
            SET lock_token = EXCLUDED.lock_token, locked_until = EXCLUDED.locked_until
            WHERE l.locked_until <= p_now;
        IF FOUND THEN
            WITH tagged AS (
                UPDATE @schema@.orchestrator_queue q
                SET lock_token = p_token, attempt_count = q.attempt_count + 1
                WHERE q.instance_id = p_instance AND q.visible_at <= p_now
                RETURNING q.id, q.work_item, q.attempt_count)
            SELECT array_agg(t.work_item ORDER BY t.id), max(t.attempt_count) INTO v_msgs, v_attempt FROM tagged t;
            RETURN QUERY SELECT p_instance, NULL::TEXT, NULL::TEXT, NULL::BIGINT, false, v_msgs, v_attempt,
                                '{}'::TEXT[];
            RETURN;
        END IF;
    END IF;
    PERFORM pg_notify(@channel@, 'o');
END
$fn$;
