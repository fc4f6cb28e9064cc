-- duroxide-trio PostgreSQL schema, version 6: worker routing (activity tags and sessions).
--
-- fetch_routed_work_items is fetch_work_items with a filter: an item's tag must be accepted (p_all_tags,
-- untagged with p_untagged, or one of p_tags); an item with a session_id is taken only if it is its
-- session's oldest item (so a session runs one item at a time, in scheduling order) and the session is
-- unowned, expired or owned by p_owner; a new session only while p_owner owns fewer than p_max_sessions.
-- Taking a session item claims (or renews) its session for p_owner. One round trip, like version 1.

CREATE INDEX worker_queue_untagged ON @schema@.worker_queue (visible_at, id) WHERE tag IS NULL;
CREATE INDEX worker_queue_tagged ON @schema@.worker_queue (tag, visible_at, id) WHERE tag IS NOT NULL;
CREATE INDEX worker_queue_session ON @schema@.worker_queue (session_id, id) WHERE session_id IS NOT NULL;
CREATE INDEX sessions_worker ON @schema@.sessions (worker_id, locked_until);

CREATE FUNCTION @schema@.fetch_routed_work_items(
    p_now BIGINT, p_lock_ms BIGINT, p_max INTEGER, p_salt TEXT,
    p_untagged BOOLEAN, p_all_tags BOOLEAN, p_tags TEXT[],
    p_owner TEXT, p_session_lock_ms BIGINT, p_max_sessions INTEGER)
RETURNS TABLE (o_id BIGINT, o_token TEXT, o_item TEXT, o_attempt_count INTEGER, o_next_visible BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_owned INTEGER;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT count(*) INTO v_owned FROM @schema@.sessions s WHERE s.worker_id = p_owner AND s.locked_until > p_now;
    RETURN QUERY
        WITH c AS (
            SELECT w.id, w.session_id FROM @schema@.worker_queue w
            WHERE w.visible_at <= p_now
              AND (p_all_tags OR (w.tag IS NULL AND p_untagged) OR w.tag = ANY(p_tags))
              AND (w.session_id IS NULL OR (
                    NOT EXISTS (SELECT 1 FROM @schema@.worker_queue o
                                WHERE o.session_id = w.session_id AND o.id < w.id)
                    AND NOT EXISTS (SELECT 1 FROM @schema@.sessions s
                                    WHERE s.session_id = w.session_id AND s.locked_until > p_now
                                      AND s.worker_id <> p_owner)
                    AND (v_owned < p_max_sessions
                         OR EXISTS (SELECT 1 FROM @schema@.sessions s
                                    WHERE s.session_id = w.session_id AND s.worker_id = p_owner
                                      AND s.locked_until > p_now))))
            ORDER BY w.visible_at, w.id
            LIMIT p_max
            FOR UPDATE OF w SKIP LOCKED),
        flagged AS (
            SELECT c.id, c.session_id,
                   (c.session_id IS NOT NULL AND NOT EXISTS (
                        SELECT 1 FROM @schema@.sessions s
                        WHERE s.session_id = c.session_id AND s.worker_id = p_owner
                          AND s.locked_until > p_now)) AS is_new
            FROM c),
        picked AS (
            SELECT f.id, f.session_id FROM (
                SELECT f.*, sum(CASE WHEN f.is_new THEN 1 ELSE 0 END) OVER (ORDER BY f.id) AS new_rank
                FROM flagged f) f
            WHERE NOT f.is_new OR f.new_rank <= p_max_sessions - v_owned),
        claimed AS (
            INSERT INTO @schema@.sessions AS s (session_id, worker_id, locked_until, last_activity_at)
            SELECT DISTINCT p.session_id, p_owner, p_now + p_session_lock_ms, p_now
            FROM picked p WHERE p.session_id IS NOT NULL
            ON CONFLICT (session_id) DO UPDATE SET
                worker_id = excluded.worker_id, locked_until = excluded.locked_until,
                last_activity_at = excluded.last_activity_at
            RETURNING s.session_id)
        UPDATE @schema@.worker_queue w SET
            lock_token = w.id::TEXT || '.' || p_salt,
            locked_until = p_now + p_lock_ms,
            visible_at = p_now + p_lock_ms,
            attempt_count = w.attempt_count + 1
        FROM picked WHERE w.id = picked.id
        RETURNING w.id, w.lock_token, w.work_item, w.attempt_count, NULL::BIGINT;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::INTEGER,
            (SELECT min(w.visible_at) FROM @schema@.worker_queue w
             WHERE w.visible_at > p_now AND w.lock_token IS NULL
               AND (p_all_tags OR (w.tag IS NULL AND p_untagged) OR w.tag = ANY(p_tags)));
    END IF;
END
$fn$;

-- Extend p_owner's sessions that are busy (an item locked now) or were active after p_idle_before;
-- release the others. Returns how many sessions p_owner still owns.
CREATE FUNCTION @schema@.renew_sessions(p_owner TEXT, p_now BIGINT, p_until BIGINT, p_idle_before BIGINT)
RETURNS INTEGER
LANGUAGE plpgsql AS $fn$
DECLARE
    v_count INTEGER;
BEGIN
    UPDATE @schema@.sessions s SET last_activity_at = p_now
    WHERE s.worker_id = p_owner AND EXISTS (
        SELECT 1 FROM @schema@.worker_queue w
        WHERE w.session_id = s.session_id AND w.lock_token IS NOT NULL AND w.locked_until > p_now);
    DELETE FROM @schema@.sessions s WHERE s.worker_id = p_owner AND s.last_activity_at <= p_idle_before;
    UPDATE @schema@.sessions s SET locked_until = p_until WHERE s.worker_id = p_owner;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$fn$;
