"""The SQLite schema: numbered migrations recorded in ``_duroxide_migrations``, applied on open."""

from __future__ import annotations

import sqlite3

from ..base import (
    now_ms,
)

MIGRATIONS: list[str] = [
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
]

#: Migrations with an explicit version (the list above is numbered by position from 1). Versions 3-5 are
#: reserved for other features; a version is applied once, in version order, whatever the gaps.
NUMBERED_MIGRATIONS: dict[int, str] = {
    # 6: worker routing (activity tags and sessions): fetches filter by tag and look up a session's
    # oldest item and its owner; partial indexes keep both cheap.
    6: """
    CREATE INDEX wq_untagged ON worker_queue(visible_at, id) WHERE tag IS NULL;
    CREATE INDEX wq_tagged ON worker_queue(tag, visible_at, id) WHERE tag IS NOT NULL;
    CREATE INDEX wq_session ON worker_queue(session_id, id) WHERE session_id IS NOT NULL;
    CREATE INDEX sessions_worker ON sessions(worker_id, locked_until);
    """,
}


def all_migrations() -> list[tuple[int, str]]:
    """``(version, script)`` of every migration, in version order."""
    numbered = dict(enumerate(MIGRATIONS, start=1))
    clash = set(numbered) & set(NUMBERED_MIGRATIONS)
    if clash:
        raise RuntimeError(f"SQLite migration versions defined twice: {sorted(clash)}")
    numbered.update(NUMBERED_MIGRATIONS)
    return sorted(numbered.items())


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _duroxide_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM _duroxide_migrations")}
        for number, script in all_migrations():
            if number in done:
                continue
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO _duroxide_migrations(version, applied_at) VALUES (?, ?)", (number, now_ms()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
