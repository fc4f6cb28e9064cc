"""``duroxide-trio instances``: what an operator sees for a real database (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import duroxide_trio as dt

ROOT = os.path.dirname(os.path.dirname(__file__))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "duroxide_trio", *args], capture_output=True, text=True, timeout=60,
        env=base | (env or {}),
    )  # fmt: skip


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def make_state(path: Path) -> None:
    """hello-1 (Completed), parent-1 (Running, waiting on its child parent-1::child, which waits for an
    event), done-2 (Completed), on a real SQLite file."""
    registry = dt.Registry()
    ready = anyio.Event()

    @registry.activity("Ready")
    async def ready_activity(ctx: dt.ActivityContext, _: None) -> None:
        ready.set()

    @registry.activity("Greet")
    async def greet(ctx: dt.ActivityContext, name: str) -> str:
        return f"Hello, {name}!"

    @registry.orchestration("Hello")
    async def hello(ctx: dt.OrchestrationContext, name: str) -> str:
        return await ctx.schedule_activity("Greet", name)

    @registry.orchestration("Child")
    async def child(ctx: dt.OrchestrationContext, _: None) -> str:
        await ctx.schedule_activity("Ready")
        return await ctx.wait_for_event("go")

    @registry.orchestration("Parent")
    async def parent(ctx: dt.OrchestrationContext, _: None) -> str:
        return await ctx.schedule_sub_orchestration("Child", instance_id="parent-1::child")

    async def main() -> None:
        provider = await dt.SqliteProvider.open(path)
        async with provider, dt.open_runtime(provider, registry, dt.RuntimeOptions(shutdown_grace=0.5)) as rt:
            await rt.client.start_orchestration("hello-1", "Hello", "Trio")
            await rt.client.wait_for_orchestration("hello-1", timeout=20)
            await rt.client.start_orchestration("done-2", "Hello", "again")
            await rt.client.wait_for_orchestration("done-2", timeout=20)
            await rt.client.start_orchestration("parent-1", "Parent")
            await ready.wait()  # the child's first turn is committed: both are Running

    anyio.run(main)


@pytest.fixture(scope="module")
def state_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("instances") / "state.db"
    make_state(path)
    return path


def test_list_is_a_table_with_filters_and_json(state_db: Path) -> None:
    db = str(state_db)
    listed = cli("instances", "list", "--db", db)
    assert listed.returncode == 0, listed.stderr
    header = listed.stdout.splitlines()[0].split()
    assert header[:4] == ["Instance", "Name", "Version", "Status"] and "Created" in header
    lines = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert {"hello-1", "done-2", "parent-1", "parent-1::child"} <= set(lines)
    assert lines["hello-1"][1:4] == ["Hello", "1.0.0", "Completed"]
    assert lines["parent-1"][3] == "Running"

    for spelling in ("completed", "COMPLETED"):
        rows = json.loads(cli("instances", "list", "--status", spelling, "--json", "--db", db).stdout)
        assert sorted(r["instance_id"] for r in rows) == ["done-2", "hello-1"]
        assert all(r["status"] == "Completed" and r["created_at"] for r in rows)
    rows = json.loads(cli("instances", "list", "--name", "Child", "--json", "--db", db).stdout)
    assert [r["instance_id"] for r in rows] == ["parent-1::child"]
    assert len(json.loads(cli("instances", "list", "--limit", "1", "--json", "--db", db).stdout)) == 1

    bad = cli("instances", "list", "--status", "finished", "--db", db)
    assert bad.returncode == 1 and "running, completed, failed" in bad.stderr
    assert "dt.Status" not in bad.stderr
    no_traceback(bad)


def test_show_history_tree_and_metrics(state_db: Path) -> None:
    db = str(state_db)
    shown = cli("instances", "show", "hello-1", "--db", db)
    assert shown.returncode == 0
    assert "Completed" in shown.stdout and '"Hello, Trio!"' in shown.stdout and "Hello" in shown.stdout
    state = json.loads(cli("instances", "show", "hello-1", "--json", "--db", db).stdout)
    assert state["status"] == "Completed" and state["output"] == "Hello, Trio!" and state["executions"] == [1]

    readable = cli("instances", "history", "hello-1", "--db", db)
    assert readable.returncode == 0
    assert "OrchestrationStarted" in readable.stdout and "ActivityCompleted" in readable.stdout
    assert 'result="Hello, Trio!"' in readable.stdout
    events = json.loads(cli("instances", "history", "hello-1", "--json", "--db", db).stdout)
    assert events[0]["type"] == "OrchestrationStarted" and events[-1]["type"] == "OrchestrationCompleted"

    tree = cli("instances", "tree", "parent-1", "--json", "--db", db)
    assert json.loads(tree.stdout)["children"][0]["instance_id"] == "parent-1::child"
    drawn = cli("instances", "tree", "parent-1", "--db", db).stdout
    assert "parent-1" in drawn and "└── parent-1::child" in drawn

    metrics = json.loads(cli("instances", "metrics", "--json", "--db", db).stdout)
    assert metrics["system"]["total_instances"] == 4 and metrics["system"]["running_instances"] == 2
    assert "orchestrator_queue" in metrics["queues"]
    assert "Worker queue" in cli("instances", "metrics", "--db", db).stdout


def test_unknown_ids_and_impossible_actions_fail_clearly(state_db: Path) -> None:
    db = str(state_db)
    cases = [
        (("show", "nope"), "no instance 'nope'"),
        (("history", "nope"), "no instance 'nope'"),
        (("history", "hello-1", "--execution", "7"), "has no execution 7"),
        (("raise-event", "nope", "go"), "no instance 'nope'"),
        (("cancel", "nope"), "no instance 'nope'"),
        (("cancel", "hello-1"), "already Completed"),
        (("raise-event", "hello-1", "go", '"x"'), "already Completed"),
        (("enqueue", "nope", "inbox"), "no instance 'nope'"),
        (("delete", "parent-1"), "--force"),
        (("delete", "parent-1::child"), "sub-orchestration of 'parent-1'"),
        (("tree", "nope"), "no instance 'nope'"),
        (("prune", "nope", "--keep-last", "1"), "no instance 'nope'"),
        (("delete", "--completed-before", "yesterday"), "cannot read 'yesterday' as a time"),
    ]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:  # independent read-only commands: run side by side
        procs = list(pool.map(lambda args: cli("instances", *args, "--db", db), [a for a, _ in cases]))
    for (args, message), proc in zip(cases, procs, strict=True):
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "force=True" not in proc.stderr
        no_traceback(proc)
    bad = cli("instances", "raise-event", "x", "go", "{not json", "--db", db)
    assert bad.returncode != 0 and "DATA must be JSON" in bad.stderr


def test_signals_cancel_prune_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_state(path)
    db = str(path)
    ok = cli("instances", "raise-event", "parent-1::child", "go", '"now"', "--db", db)
    assert ok.returncode == 0 and "raised event 'go'" in ok.stdout
    assert cli("instances", "enqueue", "parent-1", "inbox", "{}", "--db", db).returncode == 0
    assert cli("instances", "cancel", "parent-1", "--reason", "ops", "--db", db).returncode == 0
    assert cli("instances", "prune", "--keep-last", "1", "--db", db).returncode == 0

    # Bulk: only finished roots; the running parent and its child stay.
    bulk = cli("instances", "delete", "--status", "completed", "--db", db)
    assert bulk.returncode == 0 and "deleted 2 instance(s)" in bulk.stdout, bulk.stdout + bulk.stderr
    forced = cli("instances", "delete", "parent-1", "--force", "--db", db)
    assert forced.returncode == 0 and "deleted 2 instance(s)" in forced.stdout
    empty = cli("instances", "list", "--db", db)
    assert empty.returncode == 0 and "no instances" in empty.stdout

    older = cli("instances", "delete", "--completed-before", "1d", "--db", db)
    assert older.returncode == 0 and "deleted 0 instance(s)" in older.stdout


def test_read_only_commands_never_create_a_database(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    for args in (("list",), ("show", "x"), ("metrics",), ("cancel", "x"), ("delete", "x", "--force")):
        proc = cli("instances", *args, "--db", str(typo))
        assert proc.returncode == 1 and "no SQLite database at" in proc.stderr and "typo.db" in proc.stderr
        no_traceback(proc)
    assert not typo.exists()

    junk = tmp_path / "notes.txt"
    junk.write_text("not a database, just some notes\n" * 50)
    proc = cli("instances", "list", "--db", str(junk))
    assert proc.returncode == 1 and "notes.txt" in proc.stderr and "not a database" in proc.stderr
    no_traceback(proc)
    assert junk.read_text().startswith("not a database")

    missing = cli("instances", "list")
    assert missing.returncode == 1 and "--db PATH" in missing.stderr


def test_postgres_schema_is_never_created(pg_url: str, pg_schema: str) -> None:
    import psycopg

    typo = pg_schema + "_typo"
    proc = cli("instances", "list", "--schema", typo, env={"DATABASE_URL": pg_url})
    assert proc.returncode == 1 and f"schema '{typo}' does not exist" in proc.stderr, proc.stderr
    no_traceback(proc)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (typo,)).fetchone() is None

    proc = cli("instances", "metrics", "--json", "--schema", pg_schema, "--database-url", pg_url)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["system"]["total_instances"] == 0


def test_version_and_module_entry_point() -> None:
    from importlib import metadata

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith(f"duroxide-trio {metadata.version('duroxide-trio')}")
    helped = cli("--help")
    assert helped.returncode == 0 and "instances" in helped.stdout and "stress" in helped.stdout


def test_metrics_show_waiting_orchestrations_by_version(tmp_path: Path) -> None:
    db = tmp_path / "waiting.db"

    async def main() -> None:
        async with await dt.SqliteProvider.open(db) as provider:  # no runtime: the starts wait
            client = dt.Client(provider)
            await client.start_orchestration("new-1", "Deploy", version="2.0.0")
            await client.start_orchestration("new-2", "Deploy", version="2.0.0")
            await client.start_orchestration("any", "Deploy")

    anyio.run(main)
    metrics = json.loads(cli("instances", "metrics", "--json", "--db", str(db)).stdout)
    assert metrics["queues"]["orchestrator_by_version"] == {"2.0.0": 2, "null": 1}
    shown = cli("instances", "metrics", "--db", str(db)).stdout
    rows = {line.rsplit(None, 1)[0].strip(): line.split()[-1] for line in shown.splitlines() if line.strip()}
    assert rows["instances at 2.0.0"] == "2" and rows["instances at the latest version"] == "1"
