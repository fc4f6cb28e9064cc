"""``duroxide-trio stress`` as a user runs it: a real subprocess, with and without a terminal."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duroxide_trio.stress._report import HEADERS

CLI = [sys.executable, "-c", "from duroxide_trio.cli import main; main()", "stress"]
HEADER = "| Provider | Config | Completed | Failed | Infra | Config | App | Success % |"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


def run_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DUROXIDE_PG_POOL_MAX")}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env | {"COLUMNS": "200"}
    )


def table_rows(stdout: str) -> list[list[str]]:
    """The comparison table's data rows, split into cells."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if len(cells) == len(HEADERS) and cells[0] and cells[0] != "Provider":
            rows.append(cells)
    return rows


def ms(cell: str) -> float:
    """A latency cell ("92 ms", "1.5 s") in milliseconds."""
    value, unit = cell.split()
    return float(value) * {"ms": 1.0, "s": 1000.0}[unit]


def test_default_run_prints_the_comparison_table(tmp_path: Path) -> None:
    proc = run_cli("--duration", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for column in ("Provider", "Config", "Completed", "Failed", "Infra", "App", "Success %", "Orch/s",
                   "Activity/s", "p50", "p95", "p99", "Peak RSS"):  # fmt: skip
        assert column in out, column
    rows = table_rows(out)
    assert len(rows) == 1, out
    provider, config, completed, failed, infra, conf, app, success, orch = rows[0][:9]
    assert provider == "sqlite (fanout)" and config == "2:2"
    assert int(completed) > 0 and (failed, infra, conf, app) == ("0", "0", "0", "0")
    assert success == "100.00" and float(orch) > 0
    p50, p95, p99 = (ms(c) for c in rows[0][10:13])
    assert 0 < p50 <= p95 <= p99
    assert "PASS" in out
    assert "run 1/1: fanout 2:2: PASS" in proc.stderr  # the plain progress lines go to stderr
    assert not list(tmp_path.iterdir())  # no files unless asked for


def test_json_and_tracking(tmp_path: Path) -> None:
    proc = run_cli(
        "--duration", "2", "--max-concurrent", "8", "--tasks", "3", "--json", "out/run.json", "--track",
        "--results-dir", "results", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["provider"] == "sqlite" and doc["passed"] is True and doc["backend"] == "trio"
    assert "duroxide-trio" in doc["versions"]
    (run,) = doc["runs"]
    assert run["config"] == {
        "max_concurrent": 8, "duration": 2.0, "tasks_per_instance": 3, "activity_delay_ms": 10,
        "orchestration_concurrency": 2, "worker_concurrency": 2, "wait_timeout": 60.0, "scenario": "fanout",
        "timer_backlog": 0, "deep_history": 0,
    }  # fmt: skip
    result = run["result"]
    assert result["success_rate"] == 100.0 and result["completed"] == result["launched"] > 0
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert result["timeline"] and result["activity_throughput"] > result["orch_throughput"] > 0
    tracked = (tmp_path / "results" / "stress-test-results-sqlite.md").read_text()
    assert "## Run: " in tracked and "- **Commit**: `" in tracked and HEADER in tracked
    assert "| sqlite (fanout) | 2:2 |" in tracked


def test_failures_give_a_non_zero_exit_and_fail_fast_writes_a_crash_log(tmp_path: Path) -> None:
    # Activities of 400 ms against a 0.2 s wait timeout: every instance times out.
    slow = ["--duration", "1", "--activity-delay-ms", "400", "--wait-timeout", "0.2", "--max-concurrent", "3"]
    proc = run_cli(*slow, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (row,) = table_rows(proc.stdout)
    assert row[2] == "0" and int(row[3]) > 0 and row[7] == "0.00"
    assert "FAIL" in proc.stdout
    assert not list(tmp_path.glob("stress_crash_*.log"))

    proc = run_cli(*slow, "--fail-fast", "--results-dir", "crashes", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (log,) = (tmp_path / "crashes").glob("stress_crash_*.log")
    text = log.read_text()
    assert "timeout" in text and "Provider:  sqlite" in text and "Error summary at crash" in text
    assert log.name in proc.stdout.replace("\n", "")


def test_postgres_url_password_is_never_printed(tmp_path: Path) -> None:
    # Port 1 refuses connections (or the provider is not installed): either way the run fails, masked.
    proc = run_cli(
        "--provider", "postgres", "--database-url", "postgresql://stress:hunter2@127.0.0.1:1/app",
        "--duration", "1", "--fail-fast", "--results-dir", ".", cwd=tmp_path, timeout=90,
    )  # fmt: skip
    assert proc.returncode != 0
    everything = proc.stdout + proc.stderr + "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert "hunter2" not in everything


def test_dashboard_in_a_terminal(tmp_path: Path) -> None:
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [*CLI, "--duration", "2"], cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in raw  # drawn with colours and cursor movement
    screen = _ANSI.sub("", raw)
    # The live view: header, roles table with status bars, latency line, error panel.
    for seen in ("duroxide-trio stress · run 1/1: fanout 2:2", "Provider", "sqlite", "Elapsed", "RUNNING",
                 "Throughput", "Launcher", "Orchestration dispatchers", "Activity dispatchers", "Ops/s", "█",
                 "latency per instance", "p50", "Errors · expected 0 · unexpected 0", "no errors"):  # fmt: skip
        assert seen in screen, seen
    # Replaced at the end by the summary panel with the verdict, then the comparison table.
    verdict = re.search(r"─ PASS ─.*?\n(.*?)╰", screen, re.S)
    assert verdict, screen[-3000:]
    summary = verdict.group(1)
    assert re.search(r"launched (\d+), completed \1, failed 0", summary), summary
    assert "Success     100.00%" in summary and "p50" in summary and "peak RSS" in summary
    assert "Stress test results" in screen[verdict.end() :]
    assert "PASS: every run reached 100 %" in screen[verdict.end() :]
    assert "FAIL" not in screen


def test_sequential_with_a_backlog_reports_cost_overhead_and_seeding(tmp_path: Path) -> None:
    proc = run_cli(
        "--scenario", "sequential", "--duration", "1", "--max-concurrent", "2", "--timer-backlog", "1000",
        "--deep-history", "2000", "--json", "r.json", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for column in ("Calls/orch", "Step ovh", "Seed"):
        assert column in proc.stdout, column
    lines = [[c.strip() for c in re.split(r"[│┃]", line)[1:-1]] for line in proc.stdout.splitlines()]
    header = next(cells for cells in lines if cells and cells[0] == "Provider")
    (row,) = [dict(zip(header, cells, strict=True)) for cells in lines
              if len(cells) == len(header) and cells[0].startswith("sqlite")]  # fmt: skip
    calls, xacts, wal, step, seeded = (row.get(c, "—") for c in ("Calls/orch", "Xact/orch", "WAL/orch", "Step ovh", "Seed"))
    assert float(calls) > 0 and (xacts, wal) == ("—", "—")  # no server statistics on SQLite (or left out)
    assert step != "—" and seeded != "—"
    result = json.loads((tmp_path / "r.json").read_text())["runs"][0]["result"]
    assert result["config"]["tasks_per_instance"] == 3  # sequential's default N
    assert result["seeded_timers"] == 1000 and result["seeded_history_rows"] >= 2000
    assert result["seed_s"] > 0 and result["round_trips_per_orch"] > 0
    assert result["step_overhead_ms"] is not None and result["overhead_ms"] is not None


def test_sequential_default_tasks_and_seeding_options() -> None:
    import typer

    from duroxide_trio.cli._stress import stress_configs, stress_request

    assert [c.tasks_per_instance for c in stress_configs("sequential")] == [3]
    assert [c.tasks_per_instance for c in stress_configs("sequential", overrides={"tasks_per_instance": 4})] == [4]
    by_name = {c.scenario: c.tasks_per_instance for c in stress_configs("all")}
    assert by_name["sequential"] == 3 and by_name["fanout"] == 5
    (config,) = stress_configs("fanout", overrides={"timer_backlog": 7, "deep_history": 9})
    assert (config.timer_backlog, config.deep_history) == (7, 9)
    common: dict = dict(
        provider=None, database_url=None, scenario="fanout", preset=None, suite=False, duration=None,
        max_concurrent=None, tasks=None, activity_delay_ms=None, orch_concurrency=None, worker_concurrency=None,
        wait_timeout=None, report_path=None, chaos=None, chaos_own_database=False,
    )  # fmt: skip
    from duroxide_trio.cli._provider import Backend

    with pytest.raises(typer.BadParameter, match="single-process"):
        stress_request(**common, processes=2, backend=Backend.trio, timer_backlog=10)
    request = stress_request(**common, processes=None, backend=Backend.trio, timer_backlog=10, deep_history=20)
    assert (request.configs[0].timer_backlog, request.configs[0].deep_history) == (10, 20)
