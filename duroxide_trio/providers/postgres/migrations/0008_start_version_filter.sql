-- duroxide-trio PostgreSQL schema, version 8: capability filtering of starts. A start (or continue-as-new)
-- message records the version it asks for (orchestrator_queue.start_version, its key start_version_key,
-- NULL when it asks for none; is_successor marks a continue-as-new), set by a trigger from the message so
-- no writer changes. The filtered fetch (the 5-argument form) then never locks an instance whose turn
-- would run at a version outside [p_lo, p_hi]:
--   * an instance that exists runs at its recorded version (instances.version_key), or, when a
--     continue-as-new is pending, at the version that message asks for;
--   * a new instance runs at the version its start asks for;
--   * a message that asks for no version runs at the fetching runtime's latest registered version, which
--     the database cannot know: any runtime may take it (and the turn decision still gives a batch back
--     when the runtime cannot run it).

ALTER TABLE @schema@.orchestrator_queue
    ADD COLUMN start_version TEXT,
    ADD COLUMN start_version_key BIGINT,
    ADD COLUMN is_successor BOOLEAN NOT NULL DEFAULT false;

CREATE FUNCTION @schema@.set_start_version() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    v_item json := NEW.work_item::json;
BEGIN
    NEW.start_version := v_item ->> 'version';
    NEW.start_version_key := @schema@.version_key(NEW.start_version);
    NEW.is_successor := coalesce(v_item ->> 'type' = 'ContinueAsNew', false);
    RETURN NEW;
END
$fn$;

-- Only start messages pay for the trigger (the WHEN clause is evaluated without calling it).
CREATE TRIGGER orchestrator_queue_start_version BEFORE INSERT ON @schema@.orchestrator_queue
    FOR EACH ROW WHEN (NEW.is_start) EXECUTE FUNCTION @schema@.set_start_version();

UPDATE @schema@.orchestrator_queue
SET start_version = work_item::json ->> 'version',
    start_version_key = @schema@.version_key(work_item::json ->> 'version'),
    is_successor = coalesce(work_item::json ->> 'type' = 'ContinueAsNew', false)
WHERE is_start;

CREATE INDEX orchestrator_queue_successor ON @schema@.orchestrator_queue (instance_id) WHERE is_successor;

CREATE OR REPLACE FUNCTION @schema@.fetch_orchestration_item(
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
              -- capability filtering (in range: a NULL key, or inside [p_lo, p_hi] with NULL bounds open):
              AND (
                  -- an existing instance runs at its recorded version, or at the version a pending
                  -- continue-as-new asks for (none asked: the runtime's latest, so anyone's);
                  (EXISTS (SELECT 1 FROM @schema@.instances i
                           WHERE i.instance_id = q.instance_id
                             AND (((p_lo IS NULL OR i.version_key IS NULL OR i.version_key >= p_lo)
                                   AND (p_hi IS NULL OR i.version_key IS NULL OR i.version_key <= p_hi))
                                  OR EXISTS (SELECT 1 FROM @schema@.orchestrator_queue s
                                             WHERE s.instance_id = q.instance_id AND s.is_successor
                                               AND s.visible_at <= p_now OFFSET 0)) OFFSET 0)
                   AND NOT EXISTS (SELECT 1 FROM @schema@.orchestrator_queue s
                                   WHERE s.instance_id = q.instance_id AND s.is_successor AND s.visible_at <= p_now
                                     AND s.start_version_key IS NOT NULL
                                     AND ((p_lo IS NOT NULL AND s.start_version_key < p_lo)
                                          OR (p_hi IS NOT NULL AND s.start_version_key > p_hi)) OFFSET 0))
                  -- a new instance starts at the version its start message asks for (none asked: the
                  -- runtime's latest registered one, unknowable here, so anyone's).
                  OR (q.is_start
                      AND (q.start_version_key IS NULL
                           OR ((p_lo IS NULL OR q.start_version_key >= p_lo)
                               AND (p_hi IS NULL OR q.start_version_key <= p_hi)))
                      AND NOT EXISTS (SELECT 1 FROM @schema@.instances i WHERE i.instance_id = q.instance_id OFFSET 0)))
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
