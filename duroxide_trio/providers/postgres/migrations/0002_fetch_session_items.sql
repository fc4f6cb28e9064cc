-- duroxide-trio PostgreSQL schema, version 2: work items that carry a session_id are fetched like any
-- other item. Version 1 skipped them (sessions are not routed yet), so an activity scheduled with
-- ``session_id=`` never ran on PostgreSQL while SQLite ran it. Same signature and result type as
-- version 1, so prepared statements on pooled connections stay valid.

CREATE OR REPLACE FUNCTION @schema@.fetch_work_items(p_now BIGINT, p_lock_ms BIGINT, p_max INTEGER, p_salt TEXT)
RETURNS TABLE (o_id BIGINT, o_token TEXT, o_item TEXT, o_attempt_count INTEGER, o_next_visible BIGINT)
LANGUAGE plpgsql AS $fn$
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
