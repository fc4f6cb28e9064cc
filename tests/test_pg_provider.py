"""PostgreSQL provider: migrations, the contract, one statement per operation, LISTEN/NOTIFY wake-ups
across providers (= processes), listener reconnects, terminated backends under load, password masking.

Runs on both anyio backends against ``pg_url`` (``DATABASE_URL`` or a throwaway cluster); every test
works in its own schema (``pg_schema``, or schemas it creates and drops itself).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from duroxide_trio.history import (
    ActivityExecute,
    ActivityResult,
    CustomStatusUpdated,
    Event,
    ExternalRaised,
    OrchestrationStarted,
    StartOrchestration,
    TimerDue,
)
from duroxide_trio.providers.base import (
    CannotDeleteSubOrchestration,
    ExecutionMetadata,
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    ProviderError,
    now_ms,
)
from duroxide_trio.providers.postgres import PostgresProvider, drop_schema
from duroxide_trio.providers.postgres._driver import AnyioConnection, connect
from duroxide_trio.providers.postgres._migrations import _load_migrations
from duroxide_trio.providers.postgres._pool import PoolTimeout

pytestmark = pytest.mark.anyio

ORCH = "Orch"


# ---------------------------------------------------------------------------------------------------------
# helpers


@contextlib.asynccontextmanager
async def running(url: str, schema: str, **kw: Any) -> AsyncIterator[PostgresProvider]:
    """A connected provider inside ``async with`` (so its LISTEN connection runs)."""
    provider = await PostgresProvider.connect(url, schema=schema, **kw)
    async with provider:
        yield provider


@contextlib.asynccontextmanager
async def admin(url: str) -> AsyncIterator[AnyioConnection[Any]]:
    conn = await connect(url, autocommit=True)
    try:
        yield conn
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


async def fetch_all(conn: AnyioConnection[Any], query: Any, params: Any = None) -> list[Any]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def terminate_backends(url: str, schema: str) -> int:
    """pg_terminate_backend every connection of the providers on ``schema`` (pools and listeners); they
    are recognisable by their application_name."""
    async with admin(url) as conn:
        rows = await fetch_all(
            conn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
            (f"duroxide-trio:{schema}%",),
        )
    return len(rows)


async def first_turn(provider: PostgresProvider, instance: str, **ack: Any) -> None:
    """Start ``instance`` and ack its first turn (creating the instance row)."""
    await provider.enqueue_start(StartOrchestration(instance, ORCH, "1", "1.0"))
    item = await provider.fetch_orchestration_item(30)
    assert item is not None and item.instance_id == instance
    await provider.ack_orchestration_item(
        item.lock_token,
        1,
        [Event(1, OrchestrationStarted(ORCH, "1.0", "1"), None, now_ms())],
        ack.get("worker_items", []),
        ack.get("orchestrator_items", []),
        ExecutionMetadata(ORCH, "1.0", ack.get("parent"), ack.get("status", "Running"), ack.get("output")),
    )


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.02)


def fresh_schema() -> str:
    return f"t_new_{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------------------------
# connect and migrations


async def test_connect_creates_and_migrates_a_fresh_schema(pg_url: str) -> None:
    schema = fresh_schema()
    try:
        provider = await PostgresProvider.connect(pg_url, schema=schema, pool_max=2)
        async with provider:
            assert provider.name == "postgres"
            assert provider.schema == schema
            assert schema in repr(provider)
            await provider.enqueue_start(StartOrchestration("a", ORCH, "1", "1.0"))
            item = await provider.fetch_orchestration_item(30)
            assert item is not None and item.instance_id == "a"
            await provider.enqueue_start(StartOrchestration("b", ORCH, "1", "1.0"))
        async with admin(pg_url) as conn:
            rows = await fetch_all(
                conn,
                sql.SQL("SELECT version FROM {}._duroxide_migrations ORDER BY version").format(
                    sql.Identifier(schema)
                ),
            )
        assert [r[0] for r in rows] == [v for v, _, _ in _load_migrations()]
        # A second connect finds the schema up to date and keeps its data.
        async with running(pg_url, schema, pool_max=1) as again:
            item = await again.fetch_orchestration_item(30)
            assert item is not None and item.instance_id == "b"  # "a" is still locked by the first
    finally:
        await drop_schema(pg_url, schema)


async def test_ten_concurrent_connects_migrate_exactly_once(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    schema = fresh_schema()
    providers: list[PostgresProvider] = []
    caplog.set_level(logging.INFO, logger="duroxide_trio.providers.postgres")
    try:

        async def one() -> None:
            providers.append(await PostgresProvider.connect(pg_url, schema=schema, pool_max=1))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
        assert len(providers) == 10
        migrations = _load_migrations()
        applied = [r for r in caplog.records if "applied migration" in r.getMessage()]
        assert len(applied) == len(migrations), [r.getMessage() for r in applied]
        async with admin(pg_url) as conn:
            rows = await fetch_all(
                conn, sql.SQL("SELECT version FROM {}._duroxide_migrations").format(sql.Identifier(schema))
            )
        assert sorted(r[0] for r in rows) == [v for v, _, _ in migrations]
        # All ten work on the same store.
        await providers[3].enqueue_start(StartOrchestration("shared", ORCH, None, "1.0"))
        item = await providers[7].fetch_orchestration_item(30)
        assert item is not None and item.instance_id == "shared"
    finally:
        for p in providers:
            await p.close()
        await drop_schema(pg_url, schema)


async def test_body_exception_of_async_with_propagates_unwrapped(pg_url: str, pg_schema: str) -> None:
    provider = await PostgresProvider.connect(pg_url, schema=pg_schema, pool_max=1)
    with pytest.raises(ValueError, match="boom"):
        async with provider:
            raise ValueError("boom")
    with pytest.raises(ProviderError, match="closed"):
        await provider.get_instance_info("x")


# ---------------------------------------------------------------------------------------------------------
# the contract


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "unprepared"])
async def test_turn_round_trip_and_work_items(pg_url: str, pg_schema: str, prepared: bool) -> None:
    async with running(pg_url, pg_schema, pool_max=3, prepared_statements=prepared) as p:
        await p.enqueue_start(StartOrchestration("i1", ORCH, "1", "1.0"))
        with pytest.raises(InstanceAlreadyExists):
            await p.enqueue_start(StartOrchestration("i1", ORCH, "2", "1.0"))
        # An event for an instance that does not exist yet stays queued (not fetched, not dropped).
        await p.enqueue_for_orchestrator(ExternalRaised("later", "Evt", '"x"'))

        item = await p.fetch_orchestration_item(30)
        assert item is not None and item.instance_id == "i1"
        assert (item.orchestration_name, item.version, item.execution_id, item.attempt_count) == (
            ORCH,
            "1.0",
            1,
            1,
        )
        assert await p.fetch_orchestration_item(30) is None  # "later" is not startable, i1 is locked

        fire_at = now_ms() + 400
        history = [
            Event(1, OrchestrationStarted(ORCH, "1.0", "1"), None, 1),
            Event(2, CustomStatusUpdated('"busy"'), None, 1),
        ]
        work = [ActivityExecute("i1", 1, 10 + k, "Act", str(k)) for k in range(3)]
        await p.ack_orchestration_item(
            item.lock_token,
            1,
            history,
            work,
            [TimerDue("i1", 1, 3, fire_at)],
            ExecutionMetadata(ORCH, "1.0", None, "Running", None),
        )
        assert await p.read("i1") == history
        info = await p.get_instance_info("i1")
        assert info is not None
        assert (info.name, info.status, info.custom_status, info.custom_status_version) == (
            ORCH,
            "Running",
            '"busy"',
            1,
        )
        assert await p.get_custom_status("i1", 0) == ('"busy"', 1)
        assert await p.get_custom_status("i1", 1) is None

        leases = await p.fetch_work_items(30, 10)
        assert [lease.item.id for lease in leases] == [10, 11, 12]
        assert all(lease.attempt_count == 1 for lease in leases)
        assert await p.fetch_work_items(30, 10) == []
        await p.renew_work_item_lock(leases[0].lock_token, 30)
        results = await p.ack_work_items(
            [
                (leases[0].lock_token, ActivityResult("i1", 1, 10, "0")),
                ("42.bogus", ActivityResult("i1", 1, 99, "x")),
                (leases[1].lock_token, None),  # cancelled activity: dropped, nothing enqueued
            ]
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], ProviderError) and not results[1].retryable
        await p.abandon_work_item(leases[2].lock_token, None)
        again = await p.fetch_work_item(30)
        assert again is not None and again.item.id == 12 and again.attempt_count == 2

        # The timer is not visible before it is due; the completion is.
        turn = await p.fetch_orchestration_item(30)
        assert turn is not None and [type(m).__name__ for m in turn.messages] == ["ActivityResult"]
        assert turn.history == history
        await p.ack_orchestration_item(turn.lock_token, 1, [], [], [], ExecutionMetadata())
        assert await p.fetch_orchestration_item(30) is None
        await anyio.sleep(max(0.0, (fire_at - now_ms()) / 1000) + 0.05)
        timer = await p.fetch_orchestration_item(30)
        assert timer is not None and [type(m).__name__ for m in timer.messages] == ["TimerDue"]
        await p.abandon_orchestration_item(timer.lock_token, None, ignore_attempt=True)
        depths = await p.get_queue_depths()
        assert depths.orchestrator_queue == 2  # the timer (unlocked again) and the event for "later"


async def test_admin_errors_are_typed(pg_url: str, pg_schema: str) -> None:
    async with running(pg_url, pg_schema, pool_max=2) as p:
        await first_turn(p, "root")
        await first_turn(p, "child", parent="root")
        with pytest.raises(InstanceNotFound):
            await p.delete_instance("nope")
        with pytest.raises(InstanceNotFound):
            await p.get_parent_id("nope")
        with pytest.raises(InstanceStillRunning):
            await p.delete_instance("root")
        with pytest.raises(CannotDeleteSubOrchestration):
            await p.delete_instance("child", force=True)
        err = await _raises(p.delete_instances_atomic(["root"], force=True))
        assert "orphan" in err.message and not err.retryable
        assert await p.get_instance_tree("root") == ["root", "child"]
        assert await p.list_children("root") == ["child"]
        assert await p.list_instances() == ["child", "root"]  # newest first
        result = await p.delete_instance("root", force=True)
        assert result.instances_deleted == 2
        assert await p.list_instances() == []
        for bad in (
            p.ack_orchestration_item("bogus", 1, [], [], [], ExecutionMetadata()),
            p.abandon_orchestration_item("bogus"),
            p.renew_orchestration_item_lock("bogus", 1),
            p.abandon_work_item("bogus"),
            p.renew_work_item_lock("7.bogus", 1),
            p.ack_work_item("bogus", None),
        ):
            err = await _raises(bad)
            assert not err.retryable, err


async def _raises(awaitable: Any) -> ProviderError:
    try:
        await awaitable
    except ProviderError as exc:
        return exc
    raise AssertionError("expected a ProviderError")


async def test_error_classification(pg_url: str, pg_schema: str) -> None:
    provider = await PostgresProvider.connect(pg_url, schema=pg_schema, pool_max=1)
    try:
        retryable = [
            pg_errors.DeadlockDetected("deadlock detected"),
            pg_errors.SerializationFailure("could not serialize"),
            pg_errors.FeatureNotSupported("cached plan must not change result type"),  # 0A000
            pg_errors.AdminShutdown("terminating connection due to administrator command"),
            pg_errors.TooManyConnections("too many clients"),
            pg_errors.QueryCanceled("canceling statement due to statement timeout"),
            psycopg.OperationalError("server closed the connection unexpectedly"),
            PoolTimeout("no connection available"),
        ]
        for ex in retryable:
            assert provider._error("op", ex).retryable, ex
        permanent = [pg_errors.UniqueViolation("duplicate key"), pg_errors.UndefinedTable("no such table")]
        for ex in permanent:
            assert not provider._error("op", ex).retryable, ex
    finally:
        await provider.close()


async def test_stale_prepared_statements_after_a_migration_are_replaced(pg_url: str, pg_schema: str) -> None:
    """A schema change made by another process (a migration under live workers) makes prepared statements
    fail with 0A000 "cached plan must not change result type": the connection is replaced, not reused."""
    async with running(pg_url, pg_schema, pool_max=1) as p:
        await first_turn(p, "m")
        for _ in range(3):
            assert len(await p.read("m")) == 1  # prepared on the (single) pooled connection
        async with admin(pg_url) as conn:
            await conn.execute(
                sql.SQL("ALTER TABLE {}.history ALTER COLUMN event_data TYPE varchar").format(
                    sql.Identifier(pg_schema)
                )
            )
        assert len(await p.read("m")) == 1

# The provider validation suite against PostgreSQL runs in tests/test_validation_postgres.py.


async def test_older_clients_ack_still_commits_after_the_eager_dispatch_migration(pg_url, pg_schema):
    """A process running the code before migration 10 calls the 30-argument ``ack_turn``: its turn still
    commits (history, activities for any fetch, the 'w' notification path), nothing is locked eagerly."""
    async with running(pg_url, pg_schema) as p:
        await p.enqueue_start(StartOrchestration("old-1", ORCH, "1", "1.0"))
        item = await p.fetch_orchestration_item(30)
        assert item is not None
        s = sql.Identifier(pg_schema).as_string(None)
        old_ack = (
            f"SELECT * FROM {s}.ack_turn(%s, %s, %s, "
            "%b::bigint[], %b::text[], %b::text[], "
            "%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[], "
            "%b::text[], %b::text[], %b::boolean[], %b::bigint[], "
            "%b::text[], %b::bigint[], %b::bigint[], "
            "%s, %s, %s, %s, %s, %s, %s, "
            "%s, %b::text[], %b::text[], %b::text[])"
        )
        from duroxide_trio.history import encode_event, encode_work_item

        started = Event(1, OrchestrationStarted(ORCH, "1.0", "1"), None, now_ms())
        work = ActivityExecute("old-1", 1, 2, "Act", '"x"')
        params = (
            item.lock_token, now_ms(), 1, [1], [started.type_name], [encode_event(started)],
            [encode_work_item(work)], ["old-1"], [1], [2], [None], [None],
            [], [], [], [], [], [], [],
            ORCH, "1.0", None, "Running", None, False, None,
            False, [], [], [],
        )  # fmt: skip
        async with admin(pg_url) as conn:
            rows = await fetch_all(conn, old_ack, params)
        assert rows == [("old-1", False)]
        assert await p.read("old-1") == [started]
        leases = await p.fetch_work_items(30, 10)
        assert [(lease.item.instance, lease.item.id, lease.attempt_count) for lease in leases] == [("old-1", 2, 1)]


async def _queue_index_bytes(url: str, schema: str) -> int:
    async with admin(url) as conn:
        rows = await fetch_all(
            conn,
            "SELECT pg_indexes_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'orchestrator_queue'",
            (schema,),
        )
    return int(rows[0][0])


async def test_vacuum_compacts_the_queues_a_burst_grew(pg_url: str, pg_schema: str) -> None:
    """A burst of messages leaves the queue indexes large after the rows are gone; vacuum(compact_queues=True)
    shrinks them, and the store works as before. The queue tables carry autovacuum settings of their own."""
    async with running(pg_url, pg_schema) as p:
        burst = 4000
        await first_turn(p, "burst", orchestrator_items=[TimerDue("burst", 1, 100 + k, now_ms()) for k in range(burst)])
        # (one fetch takes every visible message of the instance; its ack consumes them)
        turn = await p.fetch_orchestration_item(30)
        assert turn is not None and len(turn.messages) == burst
        await p.ack_orchestration_item(turn.lock_token, 1, [], [], [], ExecutionMetadata())
        grown = await _queue_index_bytes(pg_url, pg_schema)

        tables = await p.vacuum()  # plain: dead rows freed, pages kept
        assert {"orchestrator_queue", "worker_queue", "instance_locks", "history"} <= set(tables)
        assert await p.vacuum(compact_queues=True) == tables
        compacted = await _queue_index_bytes(pg_url, pg_schema)
        assert compacted * 4 < grown, (grown, compacted)

        await first_turn(p, "after")  # still a working store
        assert (await p.get_instance_info("after")) is not None
        assert len(await p.read("burst")) == 1

    async with admin(pg_url) as conn:
        rows = await fetch_all(
            conn,
            "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY (%s) ORDER BY c.relname",
            (pg_schema, ["instance_locks", "orchestrator_queue", "worker_queue"]),
        )
    assert [r[0] for r in rows] == ["instance_locks", "orchestrator_queue", "worker_queue"]
    for _, options in rows:
        assert "autovacuum_vacuum_threshold=5000" in options and "autovacuum_vacuum_scale_factor=0" in options
