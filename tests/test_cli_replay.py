"""``duroxide-trio instances export`` and ``duroxide-trio replay``: what a CI job replaying production
histories against a pull request sees."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import attrs
from fixtures import orchestrations as fx
from typer.testing import CliRunner

import duroxide_trio as dt

TESTS = Path(__file__).parent
FIXTURES_REGISTRY = "fixtures.orchestrations:registry"

CHANGED = textwrap.dedent(  # imported as a module named after the test (module caches are per process)
    """
    import duroxide_trio as dt

    registry = dt.Registry()

    @registry.orchestration("Activities")
    async def activities(ctx, n):
        return await ctx.schedule_activity("Triple", n)
    """
)


@attrs.frozen
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, cwd: Path = TESTS) -> Result:
    """Run the command in this process (fast); ``test_the_committed_fixtures_replay_from_the_command_line``
    runs the real executable."""
    from duroxide_trio.cli import app

    old = os.getcwd()
    os.chdir(cwd)
    try:
        out = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})  # no wrapped error boxes
    finally:
        os.chdir(old)
    return Result(out.exit_code, out.stdout, out.stderr)


async def _record(provider: dt.Provider) -> None:
    async with provider, dt.open_runtime(provider, fx.registry, dt.RuntimeOptions(poll_interval=0.2)) as rt:
        await rt.client.start_orchestration("activities-1", "Activities", 4)
        await rt.client.start_orchestration("timers-1", "Timers")
        for i in ("activities-1", "timers-1"):
            state = await rt.client.wait_for_orchestration(i, timeout=10)
            assert state.status is dt.Status.COMPLETED


def recorded_db(tmp_path: Path) -> str:
    db = str(tmp_path / "state.db")

    async def main() -> None:
        await _record(await dt.SqliteProvider.open(db))

    anyio.run(main, backend="trio")
    return db


def test_export_then_replay_against_unchanged_and_changed_code(tmp_path):
    db = recorded_db(tmp_path)
    out = tmp_path / "activities-1.json"
    exported = cli("instances", "export", "activities-1", "--db", db, "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "1 execution(s), 12 event(s)" in exported.stdout
    assert json.loads(out.read_text())["instance_id"] == "activities-1"

    same = cli("replay", "--registry", FIXTURES_REGISTRY, str(out))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "ok    activities-1 (Activities 1.0.0): deterministic" in same.stdout
    for args in (["--since", "2999-01-01"], ["--name", "Other"], ["--status", "Failed"]):
        filtered = cli("replay", "--registry", FIXTURES_REGISTRY, str(out), *args)
        assert filtered.returncode == 0 and "no histories matched" in filtered.stdout, args

    (tmp_path / "changed_a.py").write_text(CHANGED)
    changed = cli("replay", "--registry", "changed_a:registry", str(out), cwd=tmp_path)
    assert changed.returncode == 1
    assert "FAIL  activities-1 (Activities 1.0.0) execution 1: nondeterministic at event 2: history recorded " \
           "ActivityScheduled(name='Double', input='4'), the code did ActivityScheduled(name='Triple'" in changed.stdout
    assert "1 nondeterministic" in changed.stderr


def test_replay_a_database_with_filters(tmp_path):
    db = recorded_db(tmp_path)
    every = cli("replay", "--registry", FIXTURES_REGISTRY, "--db", db)
    assert every.returncode == 0 and every.stdout.count("ok    ") == 2
    named = cli("replay", "-r", FIXTURES_REGISTRY, "--db", db, "--name", "Timers", "--since", "1h")
    assert named.returncode == 0 and named.stdout.splitlines()[0].startswith("ok    timers-1 (Timers")
    assert "activities-1" not in named.stdout
    future = cli("replay", "-r", FIXTURES_REGISTRY, "--db", db, "--since", "2999-01-01")
    assert future.returncode == 0 and "no histories matched" in future.stdout
    as_json = cli("replay", "-r", FIXTURES_REGISTRY, "--db", db, "--json", "--instance", "timers-1")
    [line] = as_json.stdout.splitlines()
    assert json.loads(line)["outcome"] == "deterministic" and json.loads(line)["ok"] is True

    (tmp_path / "changed_b.py").write_text(CHANGED)
    changed = cli("replay", "-r", "changed_b:registry", "--db", db, "--quiet", cwd=tmp_path)
    assert changed.returncode == 1
    lines = changed.stdout.splitlines()
    assert any("activities-1" in ln and "nondeterministic at event 2" in ln for ln in lines)
    assert any("timers-1" in ln and "missing-handler" in ln and "'Timers' is not registered" in ln for ln in lines)


def test_histories_this_engine_cannot_read_are_reported_with_exit_1(tmp_path):
    db = recorded_db(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE history SET event_data = ? WHERE instance_id = 'timers-1' AND event_id = 2",
            (json.dumps({"type": "TimerCreatedV2", "event_id": 2, "fire_at_ms": 1}),),
        )
    replay = cli("replay", "-r", FIXTURES_REGISTRY, "--db", db)
    assert replay.returncode == 1
    assert "FAIL  timers-1" in replay.stdout and "unknown-event-kind" in replay.stdout
    assert "'TimerCreatedV2'" in replay.stdout and "ok    activities-1" in replay.stdout
    export = cli("instances", "export", "timers-1", "--db", db, "-o", str(tmp_path / "t.json"))
    assert export.returncode == 1 and "unknown event kind 'TimerCreatedV2'" in export.stderr


def test_the_committed_fixtures_replay_from_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "duroxide_trio.cli", "replay", "-r", FIXTURES_REGISTRY, "fixtures/histories"],
        capture_output=True, text=True, timeout=60, cwd=TESTS, env={**os.environ, "PYTHONPATH": str(TESTS.parent)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("ok    ") >= 20 and "FAIL" not in out.stdout


def test_usage_errors_exit_2_and_missing_things_exit_1(tmp_path):
    bad_registry = cli("replay", "-r", "no_such_module:registry", "fixtures/histories")
    assert bad_registry.returncode == 2 and "cannot import 'no_such_module'" in bad_registry.stderr
    not_a_registry = cli("replay", "-r", "fixtures.orchestrations:Order", "fixtures/histories")
    assert not_a_registry.returncode == 2 and "not a duroxide_trio.Registry" in not_a_registry.stderr
    missing_db = cli("replay", "-r", FIXTURES_REGISTRY, "--db", str(tmp_path / "nope.db"))
    assert missing_db.returncode == 2 and "the file does not exist" in missing_db.stderr
    assert not (tmp_path / "nope.db").exists()  # nothing is created
    db = recorded_db(tmp_path)
    missing = cli("instances", "export", "nope", "--db", db)
    assert missing.returncode == 1 and "not found" in missing.stderr
    (tmp_path / "garbage.json").write_text("{")
    garbage = cli("replay", "-r", FIXTURES_REGISTRY, str(tmp_path / "garbage.json"))
    assert garbage.returncode == 1 and "undecodable" in garbage.stdout


def test_export_and_replay_postgres(pg_url, pg_schema, tmp_path):
    from duroxide_trio.providers.postgres import PostgresProvider

    async def main() -> None:
        await _record(await PostgresProvider.connect(pg_url, schema=pg_schema, pool_max=2))

    anyio.run(main, backend="trio")
    replay = cli("replay", "-r", FIXTURES_REGISTRY, "--database-url", pg_url, "--schema", pg_schema)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert replay.stdout.count("ok    ") == 2
    out = tmp_path / "a.json"
    exported = cli("instances", "export", "activities-1", "--database-url", pg_url, "--schema", pg_schema,
                   "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert cli("replay", "-r", FIXTURES_REGISTRY, str(out)).returncode == 0
