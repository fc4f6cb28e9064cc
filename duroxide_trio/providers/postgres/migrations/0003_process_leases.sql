-- duroxide-trio PostgreSQL schema, version 3: process liveness leases (fast recovery of a dead
-- process's locks) — an optional provider capability used by duroxide_trio.runtime.liveness.
--
-- Each runtime process registers a row here and holds a *session-level* advisory lock (key lock_key) on
-- a connection of its own for as long as it lives. The lock dies with that connection, so a SIGKILLed
-- process's lease is gone at once; a stopped (SIGSTOP) process keeps its connection but stops its
-- heartbeat. Lock tokens carry their process id ('<process>:<random>' for instance locks,
-- '<row id>.<process>:<random>' for work items), so survivors can release exactly the dead process's
-- locks. Heartbeats use the database's clock only, so the staleness test is immune to clock skew
-- between the machines of the processes.
--
-- Placeholders as in 0001 (@schema@, @channel@, @lock_seed@).

CREATE TABLE @schema@.processes (
    process_id TEXT PRIMARY KEY,
    lock_key BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

CREATE FUNCTION @schema@.db_now_ms() RETURNS BIGINT
LANGUAGE sql VOLATILE AS $fn$
    SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
$fn$;

-- Heartbeat p_self (re-registering it if survivors had reclaimed it, e.g. after a stall), then reclaim
-- every other process whose lease is gone: its advisory lock is free (its session ended), or its
-- heartbeat is older than p_stale_ms. A process whose lock is free is only reclaimed once its heartbeat
-- is at least p_grace_ms old (and the server has been up for 2 s), so a process that is reconnecting
-- after a database restart is not reclaimed before it takes its lock again. Returns the reclaimed ids.
CREATE FUNCTION @schema@.renew_process_lease(
    p_self TEXT, p_lock_key BIGINT, p_now BIGINT, p_stale_ms BIGINT, p_grace_ms BIGINT)
RETURNS TEXT[]
LANGUAGE plpgsql AS $fn$
DECLARE
    v_now BIGINT := @schema@.db_now_ms();
    -- After a server restart every lease connection is gone at once: live processes get 2 s to
    -- reconnect and take their lock again before anyone counts their heartbeat as missing.
    v_since BIGINT := (extract(epoch FROM pg_postmaster_start_time()) * 1000)::BIGINT + 2000;
    v_beat BIGINT;
    v_row RECORD;
    v_out TEXT[] := '{}';
    v_locks INTEGER := 0;
    v_items INTEGER := 0;
    v_n INTEGER;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO @schema@.processes AS p (process_id, lock_key, started_at, heartbeat_at)
    VALUES (p_self, p_lock_key, v_now, v_now)
    ON CONFLICT (process_id) DO UPDATE SET heartbeat_at = v_now;
    FOR v_row IN
        SELECT p.process_id, p.lock_key, p.heartbeat_at FROM @schema@.processes p
        WHERE p.process_id <> p_self
        ORDER BY p.heartbeat_at
        LIMIT 64
        FOR UPDATE SKIP LOCKED
    LOOP
        v_beat := GREATEST(v_row.heartbeat_at, v_since);
        IF v_beat < v_now - p_stale_ms
           OR (v_beat < v_now - p_grace_ms AND pg_try_advisory_xact_lock(v_row.lock_key)) THEN
            DELETE FROM @schema@.instance_locks l
            WHERE l.lock_token LIKE v_row.process_id || ':%';
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_locks := v_locks + v_n;
            UPDATE @schema@.worker_queue w
            SET lock_token = NULL, locked_until = NULL, visible_at = p_now
            WHERE w.lock_token LIKE '%.' || v_row.process_id || ':%';
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_items := v_items + v_n;
            DELETE FROM @schema@.processes p WHERE p.process_id = v_row.process_id;
            v_out := v_out || v_row.process_id;
        END IF;
    END LOOP;
    IF v_locks > 0 THEN
        PERFORM pg_notify(@channel@, 'o');
    END IF;
    IF v_items > 0 THEN
        PERFORM pg_notify(@channel@, 'w');
    END IF;
    RETURN v_out;
END
$fn$;
