"""``duroxide-trio validate`` as a user runs it: a subprocess, its output, exit code and JSON file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from duroxide_trio.testing.validation import CATEGORIES


def _command() -> list[str]:
    script = Path(sys.executable).with_name("duroxide-trio")
    if script.exists():
        return [str(script)]
    found = shutil.which("duroxide-trio")
    if found:
        return [found]
    return [sys.executable, "-c", "from duroxide_trio.cli import main; main()"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), "validate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_validate_sqlite_whole_suite_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = _run("--provider", "sqlite", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["failed"] == 0
    assert set(data["categories"]) == set(CATEGORIES)
    total = sum(len(tests) for tests in CATEGORIES.values())
    assert data["passed"] + data["skipped"] == total
    assert data["passed"] >= total - 2  # only the long-poll-only tests may be skipped
    for name, category in data["categories"].items():
        assert category["failed"] == 0 and category["failures"] == []
        assert category["passed"] + category["skipped"] == len(CATEGORIES[name])
        assert f"PASS {name}" in proc.stdout
    assert f"Total: {data['passed']} passed, 0 failed, {data['skipped']} skipped" in proc.stdout


def test_validate_one_category(tmp_path: Path) -> None:
    out = tmp_path / "atomicity.json"
    proc = _run(
        "--provider", "sqlite-memory", "--category", "atomicity", "--json", str(out), "--backend", "asyncio"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert list(data["categories"]) == ["atomicity"]
    assert (data["passed"], data["failed"], data["skipped"]) == (len(CATEGORIES["atomicity"]), 0, 0)
    assert data["categories"]["atomicity"]["failures"] == []
    assert "PASS atomicity" in proc.stdout
    assert "error_handling" not in proc.stdout


def test_validate_unknown_category_is_a_usage_error() -> None:
    proc = _run("--provider", "sqlite", "--category", "no_such_category")
    assert proc.returncode == 2
    assert "no_such_category" in proc.stderr


def test_validate_unreachable_postgres_fails_once_with_masked_url() -> None:
    url = "postgresql://someone:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    proc = _run("--provider", "postgres", "--database-url", url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    assert "someone:***@127.0.0.1:1" in proc.stdout
    assert "Cannot create a postgres provider" in proc.stderr
    assert "FAIL" not in proc.stdout  # one clear error, not a failure per test


def test_validate_postgres_needs_a_url() -> None:
    proc = _run("--provider", "postgres", env={"DATABASE_URL": ""})
    assert proc.returncode == 2
    assert "DATABASE_URL" in proc.stderr


def test_validate_failure_exits_1_and_lists_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In process: the command's run-and-report step with a deliberately broken provider."""
    import typer
    from test_validation_catches_bugs import ListIgnoresStatus, WrapperFactory

    from duroxide_trio.cli._provider import Backend
    from duroxide_trio.cli._validate import run_and_report

    out = tmp_path / "broken.json"
    with pytest.raises(typer.Exit) as exit_info:
        run_and_report(WrapperFactory(ListIgnoresStatus), "sqlite", category=["management"], json_path=out,
                       backend=Backend.trio, verbose=False)  # fmt: skip
    output = capsys.readouterr().out
    assert exit_info.value.exit_code == 1, output
    assert "FAIL management" in output
    assert "FAIL management/test_list_instances_by_status" in output
    data = json.loads(out.read_text())
    assert data["failed"] >= 1
    assert data["categories"]["management"]["failures"] == ["test_list_instances_by_status"]


def test_validate_list_describes_every_test() -> None:
    proc = _run("--list")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name, tests in CATEGORIES.items():
        assert f"{name} ({len(tests)})" in lines
        for test in tests:
            first = " ".join((test.__doc__ or "").split("\n\n")[0].split())
            assert first, f"{name}/{test.__name__} has no docstring"
            assert f"  {test.__name__}  {first}" in lines
    assert sum(len(t) for t in CATEGORIES.values()) >= 220


def test_validate_prints_why_a_test_was_skipped() -> None:
    # An in-memory SQLite store cannot be opened twice: the reopen tests are skipped, with the reason.
    proc = _run("--provider", "sqlite-memory", "--category", "poison_accounting")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "SKIP poison_accounting/test_orch_count_survives_reopen: the store cannot be opened a second time"
        in proc.stdout
    )
    assert "PASS poison_accounting" in proc.stdout and "2 skipped" in proc.stdout
