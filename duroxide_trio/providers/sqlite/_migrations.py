"""The SQLite schema: numbered migrations recorded in ``_duroxide_migrations``, applied on open."""

from __future__ import annotations

import sqlite3

from ..base import (
    now_ms,
)


#: ``<expr>`` of the SQL that computes ``providers.base.version_key`` from the text in ``v``: CAST to
#: INTEGER takes the longest integer prefix, so ``"1.2.3.."`` gives 1, its rest after the first dot 2, ...
def _version_key_sql(v: str) -> str:
    s = f"({v} || '..')"
    r1 = f"substr({s}, instr({s}, '.') + 1)"
    r2 = f"substr({r1}, instr({r1}, '.') + 1)"
    return (
        f"CASE WHEN {v} IS NULL OR {v} = '' OR {v} GLOB '*[^0-9.]*' THEN NULL ELSE "
        f"min(CAST({s} AS INTEGER), 999999) * 1000000000000 + min(CAST({r1} AS INTEGER), 999999) * 1000000 "
        f"+ min(CAST({r2} AS INTEGER), 999999) END"
    )


#: Numbered migrations (numbers are shared with other features and may leave gaps). A ``str`` is split on
#: ``;``; a tuple holds whole statements (triggers contain ``;``).
MIGRATIONS: dict[int, str | tuple[str, ...]] = dict(enumerate([
    # 1: the initial schema. Sessions, tags and KV have columns/tables reserved for later features.
    """
    CREATE TABLE instances (
        instance_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT,
        current_execution_id INTEGER NOT NULL DEFAULT 1,
        custom_status TEXT,
        custom_status_version INTEGER NOT NULL DEFAULT 0,
        parent_instance_id TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX instances_parent ON instances(parent_instance_id);
    CREATE TABLE executions (
        instance_id TEXT NOT NULL,
        execution_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        output TEXT,
        started_at INTEGER NOT NULL,
        completed_at INTEGER,
        pinned_version TEXT,
        PRIMARY KEY (instance_id, execution_id)
    );
    CREATE TABLE history (
        instance_id TEXT NOT NULL,
        execution_id INTEGER NOT NULL,
        event_id INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        event_data TEXT NOT NULL,
        PRIMARY KEY (instance_id, execution_id, event_id)
    );
    CREATE TABLE orchestrator_queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id TEXT NOT NULL,
        work_item TEXT NOT NULL,
        is_start INTEGER NOT NULL DEFAULT 0,
        visible_at INTEGER NOT NULL,
        lock_token TEXT,
        attempt_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX oq_visible ON orchestrator_queue(visible_at, id);
    CREATE INDEX oq_instance ON orchestrator_queue(instance_id);
    CREATE INDEX oq_token ON orchestrator_queue(lock_token);
    CREATE TABLE worker_queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        work_item TEXT NOT NULL,
        visible_at INTEGER NOT NULL,
        lock_token TEXT,
        locked_until INTEGER,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        instance_id TEXT,
        execution_id INTEGER,
        activity_id INTEGER,
        session_id TEXT,
        tag TEXT
    );
    CREATE INDEX wq_visible ON worker_queue(visible_at, id);
    CREATE INDEX wq_token ON worker_queue(lock_token);
    CREATE INDEX wq_activity ON worker_queue(instance_id, execution_id, activity_id);
    CREATE TABLE instance_locks (
        instance_id TEXT PRIMARY KEY,
        lock_token TEXT NOT NULL,
        locked_until INTEGER NOT NULL
    );
    CREATE INDEX il_token ON instance_locks(lock_token);
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        locked_until INTEGER NOT NULL,
        last_activity_at INTEGER NOT NULL
    );
    CREATE TABLE kv_store (
        instance_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT,
        last_updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (instance_id, key)
    );
    """,
    # 2: process liveness leases (runtime/_liveness.py): one row per runtime process; the lease itself is
    # an OS file lock (flock) on <database>.processes/<process id>.lock that dies with its process.
    """
    CREATE TABLE processes (
        process_id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
    );
    """,
], start=1))

# 7: capability filtering (RuntimeOptions.supported_replay_versions): the recorded orchestration version
# as a sortable integer key, kept up to date by triggers, so the fetch filters in SQL (one hop).
MIGRATIONS[7] = (
    "ALTER TABLE instances ADD COLUMN version_key INTEGER",
    f"UPDATE instances SET version_key = {_version_key_sql('version')}",
    "CREATE TRIGGER instances_version_key_insert AFTER INSERT ON instances BEGIN "
    f"UPDATE instances SET version_key = {_version_key_sql('NEW.version')} WHERE instance_id = NEW.instance_id; "
    "END",
    "CREATE TRIGGER instances_version_key_update AFTER UPDATE OF version ON instances BEGIN "
    f"UPDATE instances SET version_key = {_version_key_sql('NEW.version')} WHERE instance_id = NEW.instance_id; "
    "END",
)

# 8: capability filtering of starts: a start (or continue-as-new) message records the version it asks
# for (``start_version``, its key ``start_version_key``; NULL: none asked) and whether it is a
# continue-as-new (``is_successor``), set by a trigger from the message, so the filtered fetch never takes
# an instance whose turn would run outside the runtime's range (see ``_queues._CLAIMABLE_IN_RANGE``).
_START_VERSION = "json_extract(NEW.work_item, '$.version')"
_STORED_VERSION = "json_extract(work_item, '$.version')"
MIGRATIONS[8] = (
    "ALTER TABLE orchestrator_queue ADD COLUMN start_version TEXT",
    "ALTER TABLE orchestrator_queue ADD COLUMN start_version_key INTEGER",
    "ALTER TABLE orchestrator_queue ADD COLUMN is_successor INTEGER NOT NULL DEFAULT 0",
    f"UPDATE orchestrator_queue SET start_version = {_STORED_VERSION}, "
    f"start_version_key = {_version_key_sql(_STORED_VERSION)}, "
    "is_successor = coalesce(json_extract(work_item, '$.type') = 'ContinueAsNew', 0) "
    "WHERE is_start = 1 AND json_valid(work_item)",
    "CREATE TRIGGER oq_start_version AFTER INSERT ON orchestrator_queue "
    "WHEN NEW.is_start = 1 AND json_valid(NEW.work_item) BEGIN "
    f"UPDATE orchestrator_queue SET start_version = {_START_VERSION}, "
    f"start_version_key = {_version_key_sql(_START_VERSION)}, "
    "is_successor = coalesce(json_extract(NEW.work_item, '$.type') = 'ContinueAsNew', 0) "
    "WHERE id = NEW.id; END",
    "CREATE INDEX oq_successor ON orchestrator_queue(instance_id) WHERE is_successor = 1",
)

# 6: worker routing (activity tags and sessions): fetches filter by tag and look up a session's oldest
# item and its owner; partial indexes keep both cheap. (3-5 are unused: KV needed no SQLite change.)
MIGRATIONS[6] = """
    CREATE INDEX wq_untagged ON worker_queue(visible_at, id) WHERE tag IS NULL;
    CREATE INDEX wq_tagged ON worker_queue(tag, visible_at, id) WHERE tag IS NOT NULL;
    CREATE INDEX wq_session ON worker_queue(session_id, id) WHERE session_id IS NOT NULL;
    CREATE INDEX sessions_worker ON sessions(worker_id, locked_until);
    """


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _duroxide_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM _duroxide_migrations")}
        for number, script in sorted(MIGRATIONS.items()):
            if number in done:
                continue
            statements = script.split(";") if isinstance(script, str) else script
            for statement in statements:
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO _duroxide_migrations(version, applied_at) VALUES (?, ?)", (number, now_ms()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
