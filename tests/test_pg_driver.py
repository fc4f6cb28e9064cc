"""Contract tests for the psycopg anyio driver and pool, on both anyio backends.

Re-run on every psycopg upgrade: the driver relies on private psycopg API (see ``_driver.py``).
Apart from the server under test, only loopback addresses are ever contacted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import errors, pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from duroxide_trio.providers.postgres._driver import AnyioConnection, connect, mask_url
from duroxide_trio.providers.postgres._pool import POOL_MAX_ENV, Pool, PoolClosed, PoolTimeout

# Registers pg_url / pg_schema unless tests/conftest.py already loaded the plugin (then this is a no-op).
pytest_plugins = ["conftest_pg"]

pytestmark = pytest.mark.anyio

IDLE, INTRANS, INERROR = pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def opened(url: str, **kw: Any) -> AsyncIterator[AnyioConnection[Any]]:
    conn = await connect(url, **kw)
    try:
        yield conn
    finally:
        await conn.close()


async def fetch_one(conn: AnyioConnection[Any], query: Any, params: Any = None) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return row[0]


async def count_rows(url: str, table: sql.Composable) -> int:
    async with opened(url, autocommit=True) as other:
        return int(await fetch_one(other, sql.SQL("select count(*) from {}").format(table)))


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port that accepts TCP connections (kernel backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------------
# mask_url (no server needed)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:s3cret@db.example:5432/app", "postgresql://user:***@db.example:5432/app"),
        ("postgres://user:p@ss/w0rd@host/db", "postgres://user:***@host/db"),
        ("postgresql://user:pa/ss?x@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host/db", "postgresql://host/db"),
        (
            "postgresql://u:pw@h1:5432,h2:5433/db?sslmode=require",
            "postgresql://u:***@h1:5432,h2:5433/db?sslmode=require",
        ),
        (
            "postgresql://u@h/db?password=abc&sslmode=disable",
            "postgresql://u@h/db?password=***&sslmode=disable",
        ),
        ("postgresql://u@h/db?sslpassword=abc", "postgresql://u@h/db?sslpassword=***"),
        ("host=h password=s3cret user=u", "host=h password=*** user=u"),
        ("host=h password = 's3 cr\\'et' dbname=x", "host=h password = *** dbname=x"),
        ("host=h sslpassword=abc password=def", "host=h sslpassword=*** password=***"),
        ("host=h user=u", "host=h user=u"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url) and "abc" not in mask_url(url)


# ---------------------------------------------------------------------------------------------------------
# The connection


async def test_connect_and_query(pg_url: str) -> None:
    async with opened(pg_url) as conn:
        assert isinstance(conn, AnyioConnection)
        assert await fetch_one(conn, "select %s::int + 1", [41]) == 42
        cur = await conn.execute("select g, g * g from generate_series(1, 3) g")
        assert await cur.fetchall() == [(1, 1), (2, 4), (3, 9)]
        assert conn.info.transaction_status == INTRANS  # not autocommit: a transaction was opened
    assert conn.closed and not conn.broken


async def test_connect_resolves_hostnames_off_the_event_loop(pg_url: str) -> None:
    params = conninfo_to_dict(pg_url)
    if params.get("host") not in ("127.0.0.1", "localhost"):
        pytest.skip("the server is not on loopback; only loopback names are resolved by this test")
    # "localhost" may resolve to ::1 first, where nothing listens: the next address must then be tried.
    async with opened(make_conninfo(pg_url, host="localhost", hostaddr=None), autocommit=True) as conn:
        assert await fetch_one(conn, "select 1") == 1


async def test_autocommit_and_large_parameter(pg_url: str) -> None:
    big = "x" * (8 * 1024 * 1024)  # larger than the socket buffers: exercises the read-or-write wait
    async with opened(pg_url, autocommit=True) as conn:
        assert await fetch_one(conn, "select length(%s::text)", [big]) == len(big)
        assert conn.info.transaction_status == IDLE


async def test_transaction_commit_and_rollback(pg_url: str, pg_schema: str) -> None:
    table = sql.Identifier(pg_schema, "t")
    async with opened(pg_url) as conn:
        await conn.execute(sql.SQL("create table {} (v int)").format(table))
        await conn.commit()

        async with conn.transaction():
            await conn.execute(sql.SQL("insert into {} values (1)").format(table))
        assert await count_rows(pg_url, table) == 1

        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                await conn.execute(sql.SQL("insert into {} values (2)").format(table))
                raise ZeroDivisionError
        assert await count_rows(pg_url, table) == 1

        await conn.execute(sql.SQL("insert into {} values (3)").format(table))
        assert await count_rows(pg_url, table) == 1  # not committed yet
        await conn.rollback()
        await conn.execute(sql.SQL("insert into {} values (4)").format(table))
        await conn.commit()
        assert await fetch_one(conn, sql.SQL("select array_agg(v order by v) from {}").format(table)) == [
            1,
            4,
        ]


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
async def test_cancelling_a_query_stops_it_on_the_server(pg_url: str, autocommit: bool) -> None:
    async with opened(pg_url, autocommit=autocommit) as conn, opened(pg_url, autocommit=True) as observer:
        pid = conn.info.backend_pid
        started = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            await conn.execute("select pg_sleep(10)")
        elapsed = time.monotonic() - started
        assert scope.cancelled_caught
        assert elapsed < 3.0, f"cancellation took {elapsed:.2f} s"
        # The server is no longer running the query (psycopg drained the cancel's reply).
        state = await fetch_one(observer, "select state from pg_stat_activity where pid = %s", [pid])
        assert state != "active"
        assert not conn.closed
        assert conn.info.transaction_status == (IDLE if autocommit else INERROR)
        if not autocommit:
            await conn.rollback()
        assert await fetch_one(conn, "select 7") == 7


async def test_cancelled_connect_returns_promptly_and_leaks_nothing() -> None:
    with blackhole() as port:
        await _connect_expect_timeout(port, 0.2)  # warm-up: thread pool, imports
        before = open_fds()
        started = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            await connect(f"postgresql://u@127.0.0.1:{port}/db", connect_timeout=30)
        assert scope.cancelled_caught
        assert time.monotonic() - started < 2.0
        if before is not None:
            assert open_fds() == before, "the half-open libpq socket was not released"


async def _connect_expect_timeout(port: int, timeout: float) -> psycopg.OperationalError:
    with pytest.raises(errors.ConnectionTimeout) as info:
        await connect(f"postgresql://someone:s3cret@127.0.0.1:{port}/db", connect_timeout=timeout)
    return info.value


async def test_connect_timeout_against_a_blackhole() -> None:
    with blackhole() as port:
        started = time.monotonic()
        error = await _connect_expect_timeout(port, 0.5)
        elapsed = time.monotonic() - started
    assert isinstance(error, psycopg.OperationalError)
    assert 0.45 <= elapsed < 2.0, f"connect_timeout=0.5 took {elapsed:.2f} s"
    message = str(error)
    assert "0.5 s" in message and "connect_timeout" in message and str(port) in message
    assert "s3cret" not in message


async def test_connect_to_a_closed_port_fails_fast() -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        await connect(f"postgresql://u@127.0.0.1:{port}/db", connect_timeout=20)
    assert not isinstance(info.value, errors.ConnectionTimeout)
    assert time.monotonic() - started < 5.0


async def test_listen_notify(pg_url: str) -> None:
    channel = f"ch_{os.getpid()}_{time.monotonic_ns()}"
    async with opened(pg_url, autocommit=True) as listener, opened(pg_url, autocommit=True) as sender:
        await listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        for i in range(3):
            await sender.execute("select pg_notify(%s, %s)", [channel, str(i)])
        with anyio.fail_after(10):
            async with contextlib.aclosing(listener.notifies(timeout=5, stop_after=3)) as gen:
                received = [(n.channel, n.payload, n.pid) async for n in gen]
        assert received == [(channel, str(i), sender.info.backend_pid) for i in range(3)]

        # A timeout with nothing to receive ends the iteration (psycopg's private _WaitTimeout path).
        started = time.monotonic()
        async with contextlib.aclosing(listener.notifies(timeout=0.2)) as gen:
            assert [n async for n in gen] == []
        assert 0.15 <= time.monotonic() - started < 3.0

        # timeout=0 must still look at what already arrived, else polling would never see anything.
        await sender.execute("select pg_notify(%s, 'polled')", [channel])
        payloads: list[str] = []
        with anyio.fail_after(5):
            while not payloads:
                async with contextlib.aclosing(listener.notifies(timeout=0)) as gen:
                    payloads += [n.payload async for n in gen]
                await anyio.sleep(0.01)
        assert payloads == ["polled"]


async def test_cancelling_an_endless_notifies_loop_leaves_the_connection_usable(pg_url: str) -> None:
    channel = f"ch_{os.getpid()}_{time.monotonic_ns()}"
    got_one = anyio.Event()
    received: list[str] = []

    async with opened(pg_url, autocommit=True) as listener, opened(pg_url, autocommit=True) as sender:
        await listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))

        async def listen() -> None:
            async with contextlib.aclosing(listener.notifies()) as gen:
                async for n in gen:
                    received.append(n.payload)
                    got_one.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                await sender.execute("select pg_notify(%s, 'hello')", [channel])
                await got_one.wait()
                tg.cancel_scope.cancel()
        assert received == ["hello"]
        assert await fetch_one(listener, "select 1") == 1  # the lock was released, the socket is fine


async def test_close_wakes_a_task_waiting_on_the_socket(pg_url: str) -> None:
    conn = await connect(pg_url, autocommit=True)
    await conn.execute("listen nothing_ever_arrives")
    outcome: list[BaseException] = []
    waiting = anyio.Event()

    async def wait_forever() -> None:
        try:
            async with contextlib.aclosing(conn.notifies()) as gen:
                waiting.set()
                async for _ in gen:
                    pass
        except Exception as ex:
            outcome.append(ex)

    with anyio.fail_after(5):  # without notify_closing the waiter would sleep forever
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_forever)
            await waiting.wait()
            await anyio.wait_all_tasks_blocked()
            await conn.close()
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.OperationalError), outcome
    assert conn.closed


async def test_many_tasks_share_one_connection(pg_url: str) -> None:
    results: dict[int, int] = {}
    async with opened(pg_url, autocommit=True) as conn:

        async def work(i: int) -> None:
            results[i] = await fetch_one(conn, "select %s::int * 2 from pg_sleep(0.001)", [i])

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(work, i)
    assert results == {i: i * 2 for i in range(30)}


# ---------------------------------------------------------------------------------------------------------
# The pool


async def test_pool_never_exceeds_max_size(pg_url: str) -> None:
    release, three_held = anyio.Event(), anyio.Event()
    pids: set[int] = set()
    holding = 0
    max_holding = 0

    async with Pool(pg_url, max_size=3, acquire_timeout=20) as pool:

        async def borrow() -> None:
            nonlocal holding, max_holding
            async with pool.connection() as conn:
                holding += 1
                max_holding = max(max_holding, holding)
                if holding == 3:
                    three_held.set()
                pids.add(conn.info.backend_pid)
                await release.wait()
                assert await fetch_one(conn, "select 1") == 1
                holding -= 1

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(borrow)
                await three_held.wait()
                await anyio.wait_all_tasks_blocked()
                assert pool.stats() == {"size": 3, "idle": 0, "in_use": 3, "waiting": 7}
                release.set()
        assert max_holding == 3
        assert len(pids) == 3
        assert pool.stats() == {"size": 3, "idle": 3, "in_use": 0, "waiting": 0}


async def test_pool_timeout() -> None:
    """All connections busy (here: one connect stuck on a blackhole) -> PoolTimeout naming size, timeout
    and the masked URL."""
    with blackhole() as port:
        url = f"postgresql://someone:s3cret@127.0.0.1:{port}/db"
        async with Pool(url, max_size=1, acquire_timeout=0.3, connect_timeout=30) as pool:
            stuck = anyio.Event()

            async def occupy() -> None:
                stuck.set()
                async with pool.connection():
                    pytest.fail("the blackhole answered")

            async with anyio.create_task_group() as tg:
                tg.start_soon(occupy)
                await stuck.wait()
                await anyio.wait_all_tasks_blocked()
                assert pool.stats()["in_use"] == 1
                started = time.monotonic()
                with pytest.raises(PoolTimeout) as info:
                    async with pool.connection():
                        pass
                elapsed = time.monotonic() - started
                tg.cancel_scope.cancel()
            assert pool.stats() == {"size": 0, "idle": 0, "in_use": 0, "waiting": 0}
    assert 0.25 <= elapsed < 2.0
    assert isinstance(info.value, psycopg.OperationalError)
    message = str(info.value)
    assert "0.3 s" in message and "all 1 connections" in message
    assert mask_url(url) in message and "s3cret" not in message


async def test_pool_rolls_back_a_connection_returned_in_a_transaction(pg_url: str, pg_schema: str) -> None:
    table = sql.Identifier(pg_schema, "t")
    async with Pool(pg_url, max_size=1) as pool:
        async with pool.connection() as conn:
            await conn.execute(sql.SQL("create table {} (v int)").format(table))
            await conn.commit()
            await conn.execute(sql.SQL("insert into {} values (1)").format(table))
            pid = conn.info.backend_pid
            assert conn.info.transaction_status == INTRANS
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid  # the same connection, reused
            assert conn.info.transaction_status == IDLE
            assert await fetch_one(conn, sql.SQL("select count(*) from {}").format(table)) == 0
            with pytest.raises(errors.UndefinedTable):
                await conn.execute("select * from no_such_table")
            assert conn.info.transaction_status == INERROR
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert await fetch_one(conn, "select 5") == 5
        assert pool.stats()["size"] == 1


async def test_pool_after_a_cancelled_query_the_connection_is_reusable(pg_url: str) -> None:
    async with Pool(pg_url, max_size=1) as pool:
        with anyio.move_on_after(0.3) as scope:
            async with pool.connection() as conn:
                pid = conn.info.backend_pid
                await conn.execute("select pg_sleep(10)")
        assert scope.cancelled_caught
        assert pool.stats() == {"size": 1, "idle": 1, "in_use": 0, "waiting": 0}
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert conn.info.transaction_status == IDLE
            assert await fetch_one(conn, "select 3") == 3


async def test_pool_discards_a_broken_connection(pg_url: str) -> None:
    async with Pool(pg_url, max_size=2) as pool, opened(pg_url, autocommit=True) as admin:
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                pid = conn.info.backend_pid
                await admin.execute("select pg_terminate_backend(%s)", [pid])
                await conn.execute("select 1")
        assert conn.closed
        assert pool.stats() == {"size": 0, "idle": 0, "in_use": 0, "waiting": 0}
        async with pool.connection() as conn:
            assert conn.info.backend_pid != pid
            assert await fetch_one(conn, "select 1") == 1


async def test_pool_concurrent_use_from_many_tasks(pg_url: str) -> None:
    configured: list[int] = []

    async def configure(conn: AnyioConnection[Any]) -> None:
        configured.append(conn.info.backend_pid)
        await conn.execute("set application_name = 'duroxide-pool-test'")

    totals: dict[int, int] = {}
    async with Pool(pg_url, max_size=4, autocommit=True, configure=configure) as pool:

        async def work(task: int) -> None:
            total = 0
            for i in range(10):
                async with pool.connection() as conn:
                    total += await fetch_one(conn, "select %s::int", [task * 100 + i])
                    assert await fetch_one(conn, "select current_setting('application_name')") == (
                        "duroxide-pool-test"
                    )
            totals[task] = total

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for task in range(40):
                    tg.start_soon(work, task)
        assert totals == {t: sum(t * 100 + i for i in range(10)) for t in range(40)}
        stats = pool.stats()
        assert stats["in_use"] == 0 and stats["waiting"] == 0 and 1 <= stats["size"] <= 4
        assert len(configured) == stats["size"]  # configure ran once per connection opened


async def test_pool_cancelled_waiter_does_not_leak_a_permit(pg_url: str) -> None:
    async with Pool(pg_url, max_size=1, acquire_timeout=20) as pool:
        async with pool.connection():
            with anyio.move_on_after(0.1) as scope:
                async with pool.connection():
                    pytest.fail("got a second connection from a pool of one")
            assert scope.cancelled_caught
            assert pool.stats()["waiting"] == 0
        with anyio.fail_after(5):
            async with pool.connection() as conn:
                assert await fetch_one(conn, "select 1") == 1


async def test_pool_close(pg_url: str) -> None:
    pool = Pool(pg_url, max_size=1, acquire_timeout=20)
    waiter_error: list[BaseException] = []

    async def waiter() -> None:
        try:
            async with pool.connection():
                pass
        except PoolClosed as ex:
            waiter_error.append(ex)

    with anyio.fail_after(10):
        async with pool.connection() as held:
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                while pool.stats()["waiting"] < 1:
                    await anyio.wait_all_tasks_blocked()
                await pool.close()
            assert len(waiter_error) == 1  # woken by close(), not by a timeout
            assert not held.closed
        assert held.closed  # returned after close(): closed, not kept
    assert pool.stats() == {"size": 0, "idle": 0, "in_use": 0, "waiting": 0}
    with pytest.raises(PoolClosed, match="closed"):
        async with pool.connection():
            pass
    await pool.close()  # idempotent


async def test_pool_closes_idle_connections(pg_url: str) -> None:
    pool = Pool(pg_url, max_size=2)
    async with pool.connection() as conn:
        pass
    assert pool.stats()["idle"] == 1 and not conn.closed
    await pool.close()
    assert conn.closed and pool.stats()["size"] == 0


async def test_pool_connect_failure_frees_the_slot() -> None:
    async with Pool(f"postgresql://u@127.0.0.1:{closed_port()}/db", max_size=1, acquire_timeout=1) as pool:
        for _ in range(2):  # a leaked permit would make the second attempt a PoolTimeout
            with pytest.raises(psycopg.OperationalError) as info:
                async with pool.connection():
                    pass
            assert not isinstance(info.value, PoolTimeout)
        assert pool.stats() == {"size": 0, "idle": 0, "in_use": 0, "waiting": 0}


def test_pool_max_size_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOL_MAX_ENV, "3")
    assert Pool("postgresql://u@127.0.0.1/db").max_size == 3
    assert Pool("postgresql://u@127.0.0.1/db", max_size=5).max_size == 5
    monkeypatch.delenv(POOL_MAX_ENV)
    assert Pool("postgresql://u@127.0.0.1/db").max_size == 10
    monkeypatch.setenv(POOL_MAX_ENV, "lots")
    with pytest.raises(ValueError, match=POOL_MAX_ENV):
        Pool("postgresql://u@127.0.0.1/db")
