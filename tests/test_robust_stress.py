"""Stress harness edges: a password in a (malformed) database URL never reaches the CLI's output, the
crash log or the ``--json`` file; a run ends within its duration plus the drain bound and reports the
instances it left unfinished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import duroxide_trio as dt
from duroxide_trio import stress

CLI = [sys.executable, "-c", "from duroxide_trio.cli import main; main()", "stress"]


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DUROXIDE_PG_POOL_MAX")}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env | {"COLUMNS": "200"}
    )


def everything_written(proc: subprocess.CompletedProcess[str], directory: Path) -> str:
    """stdout, stderr and every file the run left in ``directory`` (crash logs, JSON)."""
    parts = [proc.stdout, proc.stderr]
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
    return "\n".join(parts)


MALFORMED = [
    pytest.param("postgresql://u:Le ak4@127.0.0.1:1/db", ["Le ak4", "ak4"], id="space"),
    pytest.param("postgresql://u:Le@k5@127.0.0.1:1/db", ["Le@k5", "k5@"], id="at"),
    pytest.param("postgresql://u:Pa/ss9w@127.0.0.1:1/db", ["Pa/ss9w", "ss9w"], id="slash"),
    pytest.param("postgresql://u:Pa#ss8w@127.0.0.1:1/db", ["Pa#ss8w", "ss8w"], id="hash"),
    pytest.param("postgresql://u:Pa?ss7w@127.0.0.1:1/db", ["Pa?ss7w", "ss7w"], id="question"),
    pytest.param("postgresql://u:Sp ce/sl@sh#h?q@127.0.0.1:1/db", ["Sp ce", "sl@sh", "sh#h?q"], id="all"),
]


@pytest.mark.parametrize(("url", "secrets"), MALFORMED)
def test_stress_cli_never_prints_or_writes_the_password(tmp_path: Path, url: str, secrets: list[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli(
        "--provider", "postgres", "--database-url", url, "--duration", "1", "--no-dashboard",
        "--fail-fast", "--json", str(out / "result.json"), "--results-dir", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    text = everything_written(proc, out)
    assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr
    crash_logs = list(out.glob("stress_crash_*.log"))
    assert crash_logs, text
    doc = json.loads((out / "result.json").read_text())
    assert doc["aborted"] and "***" in doc["database_url"]
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked:\n{text}"
    assert "u:***@127.0.0.1:1/db" in text


def test_stress_cli_run_with_a_password_keeps_it_out_of_every_output(tmp_path: Path, pg_url: str) -> None:
    """A real run on PostgreSQL with a percent-encoded password (the server trusts local connections, so
    any password works): the password shows nowhere, in either of its forms."""
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(pg_url)
    netloc = f"{u.username or 'postgres'}:Zq%20x7%40Pw@{u.hostname}:{u.port or 5432}"
    url = urlunsplit((u.scheme, netloc, u.path, u.query, ""))
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli(
        "--provider", "postgres", "--database-url", url, "--duration", "1", "--tasks", "2",
        "--max-concurrent", "2", "--no-dashboard", "--json", str(out / "result.json"),
        "--results-dir", str(out), "--track",
        cwd=tmp_path,
    )  # fmt: skip
    text = everything_written(proc, out)
    assert proc.returncode == 0, text
    for secret in ("Zq%20x7%40Pw", "Zq x7@Pw", "x7%40Pw", "Zq%20x7"):
        assert secret not in text, f"{secret!r} leaked:\n{text}"
    doc = json.loads((out / "result.json").read_text())
    assert doc["runs"] and doc["runs"][0]["result"]["completed"] > 0
    assert ":***@" in doc["database_url"]


# ---------------------------------------------------------------------------------------------------------
# 6. a run ends within its duration plus the drain bound and reports what it left unfinished


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_run_stops_at_duration_and_reports_unfinished_instances(
    anyio_backend: str, tmp_path: Path
) -> None:
    # Activities far longer than an instance may take: nothing can finish.
    config = stress.StressConfig(
        duration=1.0, max_concurrent=3, tasks_per_instance=2, activity_delay_ms=20_000, wait_timeout=1.0
    )
    result = await stress.run(dt.SqliteFactory(str(tmp_path / "s.db")), config)
    assert result.launched >= 3
    assert result.completed == 0
    assert result.unfinished == result.launched == result.failed
    assert all(f.kind == "timeout" for f in result.failures)
    assert result.load_duration_s == pytest.approx(config.duration, abs=0.5)
    assert result.drain_bound_s == pytest.approx(config.wait_timeout + stress._runner.DRAIN_SLACK)
    assert result.drain_duration_s <= result.drain_bound_s
    assert result.duration_s <= config.duration + result.drain_bound_s + 1.0
    # nothing launched after the load phase
    assert sum(p.launched for p in result.timeline) == result.launched
    assert all(p.launched == 0 for p in result.timeline if p.second >= config.duration)
    assert not result.passed
    data = json.loads(json.dumps(result.as_dict()))
    assert data["unfinished"] == result.launched and data["passed"] is False
    from rich.console import Console

    from duroxide_trio.stress._dashboard import summary_panel

    console = Console(width=200, record=True)
    console.print(summary_panel(result, "sqlite", None))
    shown = console.export_text()
    assert f"{result.launched} instances had not finished" in shown and "FAIL" in shown


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_finished_run_reports_no_unfinished_instances(anyio_backend: str) -> None:
    config = stress.StressConfig(
        duration=1.0, max_concurrent=2, tasks_per_instance=2, activity_delay_ms=1, wait_timeout=20.0
    )
    result = await stress.run(dt.SqliteFactory(), config)
    assert result.passed, result.failures[:3]
    assert result.unfinished == 0
    assert result.drain_duration_s <= result.drain_bound_s
    assert result.shutdown_s >= 0
