-- duroxide-trio PostgreSQL schema, version 7: capability filtering (RuntimeOptions.
-- supported_replay_versions). instances.version_key is the recorded orchestration version as a sortable
-- integer (major * 10^12 + minor * 10^6 + patch, each part at most 999999; NULL for text that is not a
-- version), kept by a trigger so no writer changes; fetch_orchestration_item gains a 5-argument form that
-- skips instances whose key is outside [p_lo, p_hi] (still one round trip). The 3-argument form stays
-- for older clients.

CREATE FUNCTION @schema@.version_key(v TEXT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE WHEN v ~ '^[0-9]{1,18}(\.[0-9]{1,18}){0,2}$' THEN
        least(split_part(v, '.', 1)::numeric, 999999)::bigint * 1000000000000
        + least(coalesce(nullif(split_part(v, '.', 2), ''), '0')::numeric, 999999)::bigint * 1000000
        + least(coalesce(nullif(split_part(v, '.', 3), ''), '0')::numeric, 999999)::bigint
    END
$fn$;

ALTER TABLE @schema@.instances ADD COLUMN version_key BIGINT;
UPDATE @schema@.instances SET version_key = @schema@.version_key(version);

CREATE FUNCTION @schema@.set_version_key() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.version_key := @schema@.version_key(NEW.version);
    RETURN NEW;
END
$fn$;

CREATE TRIGGER instances_version_key BEFORE INSERT OR UPDATE OF version ON @schema@.instances
    FOR EACH ROW EXECUTE FUNCTION @schema@.set_version_key();

CREATE FUNCTION @schema@.fetch_orchestration_item(
    p_now BIGINT, p_lock_ms BIGINT, p_token TEXT, p_lo BIGINT, p_hi BIGINT)
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
              -- capability filtering: the instance's recorded version key inside [p_lo, p_hi]
              -- (NULL bounds are open; a NULL key is taken by anyone); a start of a new instance is
              -- taken by anyone, unless the instance exists with a version out of range.
              AND (EXISTS (SELECT 1 FROM @schema@.instances i
                           WHERE i.instance_id = q.instance_id
                             AND (p_lo IS NULL OR i.version_key IS NULL OR i.version_key >= p_lo)
                             AND (p_hi IS NULL OR i.version_key IS NULL OR i.version_key <= p_hi) OFFSET 0)
                   OR (q.is_start AND NOT EXISTS (
                           SELECT 1 FROM @schema@.instances i
                           WHERE i.instance_id = q.instance_id
                             AND NOT ((p_lo IS NULL OR i.version_key IS NULL OR i.version_key >= p_lo)
                                      AND (p_hi IS NULL OR i.version_key IS NULL OR i.version_key <= p_hi))
                           OFFSET 0)))
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
