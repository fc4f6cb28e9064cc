-- duroxide-trio PostgreSQL schema, version 16: the turn a start hands over is the queue's next one.
--
-- Since migration 12 enqueue_start_fetch locked the new instance itself. A runtime whose client starts
-- instances while older ones wait in the orchestrator queue (overload: more instances in flight than
-- turn slots) then ran every new start ahead of the backlog: under sustained load the waiting instances
-- were served only when no start took the free slot (at 1000 in flight on the standard workload: p50
-- 2.1 s, p95 7.6 s, max 10 s). Now the start is stored as before (the same serialising advisory lock,
-- DX003 when the id is taken); then, when an unlocked message has been visible for more than 100 ms
-- (providers.base.START_OVERTAKE_LIMIT: the queue has a backlog), the same transaction makes exactly the
-- claim fetch_orchestration_item makes (the oldest claimable instance, with the version filter) and the
-- new start stays queued for any dispatcher ('o' is notified); otherwise it locks the new instance as
-- before (taking the head every time cost ~8 % at 20 in flight: turns that wait a few milliseconds for
-- their instance's other completions were fetched early and the start went through the queue). Same
-- signature and result shape; the fetch's own synchronous_commit = off is undone, so the start's commit
-- stays synchronous.

CREATE OR REPLACE FUNCTION @schema@.enqueue_start_fetch(
    p_instance TEXT, p_item TEXT, p_now BIGINT, p_lock_ms BIGINT, p_token TEXT, p_lo BIGINT, p_hi BIGINT)
RETURNS TABLE (o_instance_id TEXT, o_name TEXT, o_version TEXT, o_execution_id BIGINT, o_has_instance BOOLEAN,
               o_messages TEXT[], o_attempt_count INTEGER, o_history TEXT[])
LANGUAGE plpgsql AS $fn$
DECLARE
    v_key BIGINT;
    v_sync TEXT;
    v_row RECORD;
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

    IF p_token <> '' AND EXISTS (
        SELECT 1 FROM @schema@.orchestrator_queue q
        WHERE q.visible_at < p_now - 100 AND q.lock_token IS NULL
          AND NOT EXISTS (SELECT 1 FROM @schema@.instance_locks l
                          WHERE l.instance_id = q.instance_id AND l.locked_until > p_now OFFSET 0)) THEN
        v_sync := current_setting('synchronous_commit');
        IF p_lo IS NULL AND p_hi IS NULL THEN
            SELECT * INTO v_row FROM @schema@.fetch_orchestration_item(p_now, p_lock_ms, p_token);
        ELSE
            SELECT * INTO v_row FROM @schema@.fetch_orchestration_item(p_now, p_lock_ms, p_token, p_lo, p_hi);
        END IF;
        PERFORM set_config('synchronous_commit', v_sync, true);
        IF v_row.o_instance_id IS NOT NULL THEN
            IF v_row.o_instance_id <> p_instance THEN
                PERFORM pg_notify(@channel@, 'o');
            END IF;
            RETURN QUERY SELECT v_row.o_instance_id, v_row.o_name, v_row.o_version, v_row.o_execution_id,
                                v_row.o_has_instance, v_row.o_messages, v_row.o_attempt_count, v_row.o_history;
            RETURN;
        END IF;
    ELSIF p_token <> ''
       AND (v_key IS NULL OR ((p_lo IS NULL OR v_key >= p_lo) AND (p_hi IS NULL OR v_key <= p_hi)))
       AND pg_try_advisory_xact_lock(hashtextextended(p_instance, @lock_seed@)) THEN
        -- No backlog: the new instance's own first turn (migration 12's claim).
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
