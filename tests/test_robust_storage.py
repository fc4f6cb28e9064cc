"""Storage edges: sessions on PostgreSQL, error classification by SQLSTATE, values out of range, hostile
schema names and bad credentials, passwords that never leak (provider errors), SQLite's group executor
under failures. Real SQLite files and a real PostgreSQL server; no internals patched."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import anyio
import pytest
from helpers import running

import duroxide_trio as dt
from duroxide_trio.history import (
    Event,
    OrchestrationStarted,
    StartOrchestration,
    TimerDue,
)
from duroxide_trio.providers.base import ExecutionMetadata, ProviderError, now_ms
from duroxide_trio.providers.postgres import PostgresProvider
from duroxide_trio.providers.sqlite import SqliteProvider

pytestmark = pytest.mark.anyio

INT64_MAX = 2**63 - 1


# ---------------------------------------------------------------------------------------------------------
# 1. activities with a session_id run on every provider


async def test_activity_with_a_session_id_runs(make_provider: Any) -> None:
    registry = dt.Registry()

    @registry.activity("Echo")
    async def echo(ctx: dt.ActivityContext, value: str) -> str:
        return f"echo:{value}"

    @registry.orchestration("WithSession")
    async def with_session(ctx: dt.OrchestrationContext, _: Any) -> list[str]:
        a = await ctx.schedule_activity("Echo", "a", session_id="s-1")
        b = await ctx.schedule_activity("Echo", "b")
        return [a, b]

    async with running(make_provider, registry) as (_, client):
        await client.start_orchestration("sess-1", "WithSession")
        state = await client.wait_for_orchestration("sess-1", timeout=15)
    assert state.status is dt.Status.COMPLETED, state.error
    assert state.output == ["echo:a", "echo:b"]


# ---------------------------------------------------------------------------------------------------------
# 3. error classification


async def _start_and_first_turn(provider: Any, instance: str, orchestrator_items: list[Any]) -> None:
    await provider.enqueue_start(StartOrchestration(instance, "Orch", None, "1.0"))
    item = await provider.fetch_orchestration_item(30)
    assert item is not None and item.instance_id == instance
    await provider.ack_orchestration_item(
        item.lock_token,
        1,
        [Event(1, OrchestrationStarted("Orch", "1.0", None), None, now_ms())],
        [],
        orchestrator_items,
        ExecutionMetadata("Orch", "1.0", None, "Running", None),
    )


@pytest.mark.parametrize("fire_at", [INT64_MAX + 1, 10**30])
async def test_timer_beyond_int64_is_a_permanent_error_naming_the_value(
    make_provider: Any, fire_at: int
) -> None:
    provider = await make_provider()
    async with provider:
        with pytest.raises(ProviderError) as caught:
            await _start_and_first_turn(provider, "t-far", [TimerDue("t-far", 1, 1, fire_at)])
        exc = caught.value
        assert not exc.retryable
        assert exc.kind == "invalid"
        assert str(fire_at) in str(exc) and "timer" in str(exc)
        # the provider is fine afterwards
        await provider.enqueue_start(StartOrchestration("t-next", "Orch", None, "1.0"))


async def test_timer_beyond_int64_fails_the_instance_not_a_retry_loop_at_enqueue(make_provider: Any) -> None:
    provider = await make_provider()
    async with provider:
        with pytest.raises(ProviderError) as caught:
            await provider.enqueue_for_orchestrator(TimerDue("x", 1, 1, 10**25))
        assert not caught.value.retryable and caught.value.kind == "invalid"
        assert str(10**25) in str(caught.value)


async def test_huge_instance_id_is_a_permanent_error_saying_it_is_too_large(
    pg_url: str, pg_schema: str
) -> None:
    provider = await PostgresProvider.connect(pg_url, schema=pg_schema, pool_max=2)
    async with provider:
        client = dt.Client(provider)
        with pytest.raises(ProviderError) as caught:
            await client.start_orchestration(os.urandom(5_000).hex(), "Orch")  # 10 KB, incompressible
        exc = caught.value
        assert not exc.retryable, exc
        assert exc.kind == "invalid"
        assert "too large" in str(exc) and "instance id" in str(exc)
        assert "connection problem" not in str(exc)


async def test_postgres_out_of_range_and_too_long_values_are_permanent(pg_url: str, pg_schema: str) -> None:
    """Data exceptions (22xxx) from the server itself: not retryable, say what was invalid."""
    provider = await PostgresProvider.connect(pg_url, schema=pg_schema, pool_max=2)
    async with provider:
        with pytest.raises(ProviderError) as caught:
            # a NUL byte cannot be stored in a TEXT column: 22021 / client-side DataError
            await provider.enqueue_start(StartOrchestration("nul\x00id", "Orch", None, "1.0"))
        assert not caught.value.retryable
        assert caught.value.kind == "invalid"


def test_sqlstate_classification_table() -> None:
    from duroxide_trio.providers.postgres._errors import classify_sqlstate

    retryable = {
        "08006": "connection", "08001": "connection", "40001": "contention", "40P01": "contention",
        "57P01": "connection", "57P03": "connection", "53300": "resources", "53100": "resources",
        "55P03": "contention",
    }  # fmt: skip
    permanent = {
        "22003": "invalid", "22001": "invalid", "54000": "invalid", "23505": "conflict",
        "23503": "conflict", "DX001": "lock", "DX007": "conflict", "42P01": "config",
    }  # fmt: skip
    for state, kind in retryable.items():
        assert classify_sqlstate(state) == (True, kind), state
    for state, kind in permanent.items():
        assert classify_sqlstate(state) == (False, kind), state


def test_provider_error_kind_and_contention_flag() -> None:
    assert ProviderError("op", "m", retryable=True, contention=True).contention
    assert ProviderError("op", "m", retryable=True, contention=True).kind == "contention"
    assert not ProviderError.transient("op", "m", kind="connection").contention
    assert ProviderError.permanent("op", "m").kind is None
    assert str(ProviderError("op", "msg")) == "op: msg"


def test_provider_error_kind_is_an_enum_that_decides_retryable() -> None:
    from duroxide_trio.errors import ProviderErrorKind

    # the stored/logged spellings did not change
    assert [k.value for k in ProviderErrorKind] == [
        "contention", "connection", "resources", "timeout", "bug",
        "lock", "not_found", "conflict", "invalid", "corrupt", "config", "closed",
    ]  # fmt: skip
    transient = {ProviderErrorKind.CONTENTION, ProviderErrorKind.CONNECTION, ProviderErrorKind.RESOURCES,
                 ProviderErrorKind.TIMEOUT, ProviderErrorKind.BUG}
    for kind in ProviderErrorKind:
        error = ProviderError("op", "m", kind=kind)
        assert error.retryable is (kind in transient), kind
        assert ProviderError("op", "m", kind=kind.value).kind is kind  # a third party's string spelling
    # an explicit ``retryable`` (the old constructor keyword and the classmethods) still wins
    assert ProviderError.transient("op", "m", kind="invalid").retryable
    assert not ProviderError("op", "m", retryable=False, kind=ProviderErrorKind.CONNECTION).retryable
    assert ProviderError("op", "m", retryable=True).retryable and ProviderError("op", "m").retryable is False
    with pytest.raises(ValueError, match="unknown ProviderError kind 'nonsense'"):
        ProviderError("op", "m", kind="nonsense")
    assert dt.InstanceNotFound("op", "x").kind is ProviderErrorKind.NOT_FOUND
    assert dt.InstanceAlreadyExists("x").kind is ProviderErrorKind.CONFLICT


def test_sqlite_contention_is_recognised_by_result_code_not_by_text() -> None:
    from duroxide_trio.providers.sqlite._errors import provider_error as _provider_error

    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert _provider_error("op", busy).contention
    worded = sqlite3.OperationalError("database is locked")  # no result code: not recognised by its words
    assert not _provider_error("op", worded).contention


def test_providers_declare_their_capabilities() -> None:
    from duroxide_trio.providers.base import NO_CAPABILITIES, ProviderCapabilities, capabilities_of
    from duroxide_trio.testing.faults import FaultyProvider

    assert SqliteProvider.capabilities == ProviderCapabilities(
        batch_work_items=True, process_leases=True, work_outlook=True, key_values=True, worker_routing=True,
        eager_dispatch=True, ack_fetches_turns=True, start_fetches_turn=True,
    )
    assert PostgresProvider.capabilities == ProviderCapabilities(
        batch_work_items=True, listener=True, process_leases=True, key_values=True, worker_routing=True,
        eager_dispatch=True, ack_fetches_turns=True, start_fetches_turn=True,
    )
    assert capabilities_of(object()) is NO_CAPABILITIES
    assert FaultyProvider(SqliteProvider, {}).capabilities == SqliteProvider.capabilities


# ---------------------------------------------------------------------------------------------------------
# 5. hostile schema names, bad credentials, unreachable servers


@pytest.mark.parametrize(
    "schema",
    ["x; drop table", 'a"b', "it's", "", "s" * 64, "é" * 32, "1abc", "pg_mine", "a b", "x\x00y"],
)
async def test_hostile_schema_names_are_refused_with_the_rule(pg_url: str, schema: str) -> None:
    with pytest.raises(ValueError) as caught:
        await PostgresProvider.connect(pg_url, schema=schema)
    text = str(caught.value)
    assert repr(schema) in text
    assert "schema name must be 1 to 63 bytes" in text


def _with(url: str, **parts: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    user = parts.get("user", u.username or "postgres")
    password = parts.get("password", u.password)
    host = parts.get("host", u.hostname or "127.0.0.1")
    port = parts.get("port", str(u.port or 5432))
    db = parts.get("db", u.path.lstrip("/") or "postgres")
    auth = f"{user}:{password}" if password else user
    return urlunsplit((u.scheme, f"{auth}@{host}:{port}", f"/{db}", u.query, ""))


@pytest.mark.parametrize(
    ("parts", "retryable", "named"),
    [
        ({"db": "no_such_database_x"}, False, "no_such_database_x"),
        ({"user": "no_such_role_x", "password": "S3cretPw_x"}, False, "no_such_role_x"),
        ({"port": "1"}, True, ":1/"),
    ],
)
async def test_bad_credentials_database_or_port_give_a_clear_error(
    pg_url: str, parts: dict[str, str], retryable: bool, named: str
) -> None:
    url = _with(pg_url, **parts)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await PostgresProvider.connect(url, schema="duroxide_never", connect_timeout=5)
    assert time.monotonic() - started < 30
    exc = caught.value
    text = str(exc)
    assert exc.retryable is retryable, text
    assert named in text
    assert "127.0.0.1" in text or "localhost" in text
    assert "S3cretPw_x" not in text
    assert "Traceback" not in text


async def test_a_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    """A TCP listener that accepts connections but never speaks (a hung server, a wrong service): the
    connect ends after ``connect_timeout`` with an error naming host:port, not after minutes."""
    import socket

    with socket.socket() as tarpit:
        tarpit.bind(("127.0.0.1", 0))
        tarpit.listen(8)
        port = tarpit.getsockname()[1]
        url = f"postgresql://u:Tarp1tPw@127.0.0.1:{port}/db"
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await PostgresProvider.connect(url, schema="duroxide", connect_timeout=1)
        elapsed = time.monotonic() - started
    text = str(caught.value)
    assert elapsed < 20, elapsed  # the bound is the connect timeout (1 s), far below the 130 s of libpq
    assert f"127.0.0.1:{port}/db" in text and "timeout" in text
    assert caught.value.retryable
    assert "Tarp1tPw" not in text


# ---------------------------------------------------------------------------------------------------------
# 2. passwords never leak from PostgresProvider.connect

MALFORMED = [
    ("postgresql://u:Le ak4@127.0.0.1:1/db", ["Le ak4", "ak4"]),
    ("postgresql://u:Le@k5@127.0.0.1:1/db", ["Le@k5", "k5@", "@k5"]),
    ("postgresql://u:Pw/sl4sh@127.0.0.1:1/db", ["Pw/sl4sh", "sl4sh"]),
    ("postgresql://u:Pw#h4sh@127.0.0.1:1/db", ["Pw#h4sh", "h4sh"]),
    ("postgresql://u:Pw?qu3ry@127.0.0.1:1/db", ["Pw?qu3ry", "qu3ry"]),
    ("postgresql://u:Sp ace/sl@sh#h?q@127.0.0.1:1/db", ["Sp ace", "ace/sl", "sl@sh", "sh#h"]),
    ("host=127.0.0.1 port=1 user=u password='Qu0ted pw' dbname=db", ["Qu0ted", "Qu0ted pw"]),
]


@pytest.mark.parametrize(("url", "secrets"), MALFORMED)
async def test_connect_error_never_shows_the_password(url: str, secrets: list[str]) -> None:
    with pytest.raises(ProviderError) as caught:
        await PostgresProvider.connect(url, schema="duroxide", connect_timeout=2)
    text = str(caught.value) + repr(caught.value)
    for secret in secrets:
        assert secret not in text, text
    assert "127.0.0.1:1/db" in text or "percent-encoded" in text, text


def test_redact_masks_every_form_of_a_known_password() -> None:
    from duroxide_trio._masking import mask_url, redact

    url = "postgresql://u:Le ak4@h/db"
    assert redact('unexpected spaces found in "Le ak4"', url) == 'unexpected spaces found in "***"'
    assert "Le ak4" not in mask_url(f"cannot connect to {url}: refused")
    assert "ak4" not in mask_url(f"cannot connect to {url}: refused")
    url = "postgresql://u:Le@k5@h/db"
    assert "k5" not in redact("failed to resolve host 'k5@h'", url)
    assert mask_url("postgresql://h:5432/db failed: refused") == "postgresql://h:5432/db failed: refused"
    assert mask_url("postgresql://u@h:5432/db as user@x") == "postgresql://u@h:5432/db as user@x"


# ---------------------------------------------------------------------------------------------------------
# 4. SQLite: every caller gets a result or a ProviderError, whatever happens in the batch


async def test_sqlite_file_that_is_not_a_database_is_a_permanent_error_naming_the_path(tmp_path: Any) -> None:
    path = tmp_path / "not-a-db.sqlite"
    path.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(ProviderError) as caught:
        await SqliteProvider.open(path)
    assert not caught.value.retryable
    assert str(path) in str(caught.value)


async def test_sqlite_close_while_operations_are_queued_answers_every_caller(tmp_path: Any) -> None:
    """close() while many operations are queued behind a running batch: each caller gets its result or
    a ProviderError ("provider is closed"), none hangs, none sees a raw sqlite3 error."""
    provider = await SqliteProvider.open(tmp_path / "closing.db")
    outcomes: list[Any] = []

    async def op(i: int) -> None:
        try:
            await provider.enqueue_start(StartOrchestration(f"q-{i}", "Orch", None, "1.0"))
            outcomes.append("ok")
        except BaseException as exc:  # noqa: BLE001 - collected and checked below
            outcomes.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(op, i)
            tg.start_soon(provider.close)
            for i in range(30, 40):
                tg.start_soon(op, i)
    assert len(outcomes) == 40
    errors = [o for o in outcomes if o != "ok"]
    assert errors, "close() ran after every operation: the test did not overlap them"
    for error in errors:
        assert isinstance(error, ProviderError), repr(error)
        assert error.kind == "closed" and not error.retryable, repr(error)


async def test_sqlite_altered_database_is_a_permanent_error_naming_the_file(tmp_path: Any) -> None:
    """A database whose tables were dropped behind the provider's back ("no such table"): permanent,
    names the file; the operations batched with it that do not touch that table still succeed."""
    path = tmp_path / "altered.db"
    provider = await SqliteProvider.open(path)
    await provider.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE worker_queue")
    provider = await SqliteProvider.open(path)
    async with provider:
        outcomes: dict[str, Any] = {}

        async def call(key: str, fn: Any) -> None:
            try:
                outcomes[key] = await fn()
            except BaseException as exc:  # noqa: BLE001 - collected and checked below
                outcomes[key] = exc

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(call, f"fetch-{i}", lambda: provider.fetch_work_items(5, 4))
                    tg.start_soon(call, f"start-{i}", lambda i=i: provider.enqueue_start(
                        StartOrchestration(f"a-{i}", "Orch", None, "1.0")))
        for key, value in outcomes.items():
            if key.startswith("start-"):
                assert value is None, (key, value)
            else:
                assert isinstance(value, ProviderError), (key, value)
                assert not value.retryable, value
                assert str(path) in str(value) and "worker_queue" in str(value)


async def test_sqlite_caller_under_continuous_load_gets_its_result_after_its_batch(tmp_path: Any) -> None:
    """A caller gets its result when its batch ends even while new operations keep arriving (the
    connection thread reports each batch as it ends, not once the queue is empty; an earlier executor
    kept the first caller waiting until the load stopped)."""
    provider = await SqliteProvider.open(tmp_path / "load.db")
    produced = 0
    producing = True
    returned_while_producing: bool | None = None

    async def op(i: int) -> None:
        await provider.enqueue_start(StartOrchestration(f"bg-{i}", "Orch", None, "1.0"))

    async def probe() -> None:
        nonlocal returned_while_producing
        await provider.enqueue_start(StartOrchestration("probe", "Orch", None, "1.0"))
        returned_while_producing = producing

    async with provider:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe)  # queued first: it is in the first batch
                await anyio.lowlevel.checkpoint()
                stop_at = anyio.current_time() + 15  # a bound for the old behaviour, not a timing assertion
                while returned_while_producing is None and anyio.current_time() < stop_at:
                    tg.start_soon(op, produced)
                    produced += 1
                    await anyio.lowlevel.checkpoint()
                producing = False
        info_count = (await provider.get_queue_depths()).orchestrator_queue
    assert returned_while_producing, "the first caller waited until the load stopped"
    assert info_count == produced + 1  # every operation ran


async def test_sqlite_locked_by_another_process_is_retryable_contention(tmp_path: Any) -> None:
    """Another process holds the write lock longer than the busy timeout: every batched write gets a
    retryable ProviderError of kind "contention" (never a raw sqlite3 error, never a hang), and the same
    operations succeed once the lock is released."""
    path = tmp_path / "busy.db"
    provider = await SqliteProvider.open(path, busy_timeout=0.2)
    other = sqlite3.connect(path, isolation_level=None)  # "another process" on the same file
    try:
        other.execute("BEGIN IMMEDIATE")
        outcomes: list[Any] = []

        async def write(i: int) -> None:
            try:
                await provider.enqueue_start(StartOrchestration(f"b-{i}", "Orch", None, "1.0"))
                outcomes.append("ok")
            except BaseException as exc:  # noqa: BLE001 - collected and checked below
                outcomes.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(write, i)
        assert len(outcomes) == 8
        for outcome in outcomes:
            assert isinstance(outcome, ProviderError), repr(outcome)
            assert outcome.retryable and outcome.kind == "contention" and outcome.contention, repr(outcome)
            assert "locked" in str(outcome)
        other.execute("ROLLBACK")
        await provider.enqueue_start(StartOrchestration("b-after", "Orch", None, "1.0"))
        assert await provider.get_queue_depths() is not None
    finally:
        other.close()
        await provider.close()


async def test_sqlite_read_only_file_fails_writes_permanently_and_reads_still_work(tmp_path: Any) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    path = tmp_path / "ro.db"
    provider = await SqliteProvider.open(path)
    await provider.enqueue_start(StartOrchestration("ro-1", "Orch", None, "1.0"))
    await provider.close()
    for p in tmp_path.iterdir():
        p.chmod(stat.S_IRUSR)
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        try:
            provider = await SqliteProvider.open(path)
        except ProviderError as exc:
            assert not exc.retryable and str(path) in str(exc)
            return
        outcomes: list[Any] = []

        async def write(i: int) -> None:
            try:
                await provider.enqueue_start(StartOrchestration(f"w-{i}", "Orch", None, "1.0"))
                outcomes.append("ok")
            except ProviderError as exc:
                outcomes.append(exc)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(write, i)
        await provider.close()
        assert len(outcomes) == 10
        assert all(isinstance(o, ProviderError) and not o.retryable for o in outcomes), outcomes
        assert all(str(path) in str(o) for o in outcomes)
    finally:
        tmp_path.chmod(stat.S_IRWXU)
        for p in tmp_path.iterdir():
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)


async def test_sqlite_batch_with_a_failing_operation_answers_every_caller(tmp_path: Any) -> None:
    """Many operations queued at once, some of which fail inside the shared batch (duplicate starts,
    a timer beyond int64, invalid lock tokens): each caller gets its own outcome, the others commit."""
    provider = await SqliteProvider.open(tmp_path / "batch.db")
    async with provider:
        await provider.enqueue_start(StartOrchestration("dup", "Orch", None, "1.0"))
        outcomes: dict[str, Any] = {}

        async def call(key: str, fn: Any) -> None:
            try:
                outcomes[key] = await fn()
            except BaseException as exc:  # noqa: BLE001 - collected and checked below
                outcomes[key] = exc

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(call, f"start-{i}", lambda i=i: provider.enqueue_start(
                        StartOrchestration(f"s-{i}", "Orch", None, "1.0")))
                    tg.start_soon(call, f"dup-{i}", lambda: provider.enqueue_start(
                        StartOrchestration("dup", "Orch", None, "1.0")))
                    tg.start_soon(call, f"far-{i}", lambda i=i: provider.enqueue_for_orchestrator(
                        TimerDue(f"s-{i}", 1, 1, 10**25)))
                    tg.start_soon(call, f"renew-{i}", lambda: provider.renew_work_item_lock("nope", 5))
        assert len(outcomes) == 40
        for key, value in outcomes.items():
            if key.startswith("start-"):
                assert value is None, (key, value)
            else:
                assert isinstance(value, ProviderError) and not value.retryable, (key, value)
                assert not isinstance(value, sqlite3.Error)
        assert isinstance(outcomes["dup-0"], dt.InstanceAlreadyExists)
        assert outcomes["far-0"].kind == "invalid" and str(10**25) in str(outcomes["far-0"])
        depths = await provider.get_queue_depths()
        assert depths.orchestrator_queue == 11  # "dup" + ten new starts


def _sqlite_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("duroxide-sqlite")]


async def test_sqlite_close_ends_the_connection_thread(tmp_path: Any) -> None:
    """Operations run on the provider's own connection thread; closing the provider ends it (no thread is
    left behind per provider, however many were opened and closed)."""
    for i in range(3):
        async with await SqliteProvider.open(tmp_path / f"t{i}.db") as provider:
            await provider.enqueue_start(StartOrchestration("t", "Orch", None, "1.0"))
            assert any(str(tmp_path) in name for name in _sqlite_threads())
    assert not [name for name in _sqlite_threads() if str(tmp_path) in name]


def test_sqlite_provider_never_closed_does_not_keep_the_interpreter_alive(tmp_path: Any) -> None:
    """A program that forgets to close its provider still exits: the connection thread ends once it has
    been idle (``IDLE_EXIT``), and the next operation would start a new one."""
    script = tmp_path / "forgets.py"
    script.write_text(textwrap.dedent(f"""
        import trio
        from duroxide_trio import SqliteProvider
        from duroxide_trio.providers.base import StartOrchestration

        async def main():
            provider = await SqliteProvider.open({str(tmp_path / "forgot.db")!r})
            await provider.enqueue_start(StartOrchestration("a", "Orch", None, "1.0"))
            await trio.sleep(0)  # never closed
            await provider.enqueue_start(StartOrchestration("b", "Orch", None, "1.0"))
            print("done", flush=True)

        trio.run(main)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr


async def test_sqlite_cancelled_callers_do_not_strand_the_others(tmp_path: Any) -> None:
    """Callers cancelled while their batch runs: the rest still get their results, and the provider
    keeps working afterwards."""
    provider = await SqliteProvider.open(tmp_path / "cancel.db")
    async with provider:
        done: list[str] = []

        async def start(i: int) -> None:
            await provider.enqueue_start(StartOrchestration(f"c-{i}", "Orch", None, "1.0"))
            done.append(f"c-{i}")

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as doomed:
                    async with anyio.create_task_group() as inner:
                        for i in range(5):
                            inner.start_soon(start, i)
                        await anyio.lowlevel.checkpoint()
                        doomed.cancel()
                for i in range(5, 30):
                    tg.start_soon(start, i)
        assert {f"c-{i}" for i in range(5, 30)} <= set(done)
        assert await provider.get_instance_info("nothing") is None
        await provider.enqueue_start(StartOrchestration("after", "Orch", None, "1.0"))


# ---------------------------------------------------------------------------------------------------------
# masking, as a property: whatever the password, pattern masking alone hides it in a message

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PASSWORD_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 @/#?:%!$&()+,;=~-_."


@settings(max_examples=400, deadline=None)
@given(
    password=st.text(alphabet=_PASSWORD_CHARS, min_size=4, max_size=24).filter(
        lambda p: p.strip() == p and any(c.isalpha() for c in p) and "  " not in p
    ),
    tail=st.sampled_from(["", ": connection refused", " (schema 'x') failed", "\nnext line"]),
)
def test_mask_url_hides_any_password_in_a_message(password: str, tail: str) -> None:
    from duroxide_trio._masking import mask_url, redact

    url = f"postgresql://user:{password}@db.example:5432/app"
    message = f"cannot connect to {url}{tail}"
    for masked in (redact(message, url), redact(f'bad "{password}" here', url)):
        assert password not in masked, masked
    # Pattern masking alone (a URL we were not given) cannot tell where a password holding both a
    # space and an '@' ends; every message built from the user's URL also gets the known-password pass.
    ambiguous = "@" in password and " " in password
    if not ambiguous and password not in f"cannot connect to postgresql://user:***@db.example:5432/app{tail}":
        assert password not in mask_url(message), mask_url(message)
    assert "db.example:5432/app" in mask_url(message)
