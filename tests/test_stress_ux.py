"""What a person sees from ``duroxide-trio stress``: Ctrl-C, a narrow terminal, readable durations, per-run
figures."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import attrs
import pytest
from rich.console import Console

import duroxide_trio as dt
from duroxide_trio import stress
from duroxide_trio.stress import _report as report
from duroxide_trio.stress._result import format_duration, format_ms

RAW_FLOAT = re.compile(r"\d\.\d{4,}")


def _result(*, completed: int = 100, scenario: str = "large-payload", provider: str = "postgres") -> stress.StressResult:
    config = stress.StressConfig(scenario=scenario)
    lat = stress.LatencyStats(mean=80.0, p50=76.8, p95=163.8, p99=1263.1, max=1500.0, count=completed)
    return stress.StressResult(
        scenario=scenario, provider=provider, config=config, launched=max(completed, 1), completed=completed,
        failed=0 if completed else 1, failed_infrastructure=0, failed_configuration=0, failed_application=0,
        failed_other=0 if completed else 1, success_rate=100.0 if completed else 0.0, orch_throughput=232.23,
        activity_throughput=1167.63, overall_throughput=230.0,
        latency_ms=lat if completed else stress.LatencyStats(), peak_rss_mb=87.0, cpu_percent=50.0,
        duration_s=10.2, load_duration_s=10.0, drain_duration_s=0.2, activities_completed=completed * 5,
        orchestration_turns=completed * 2, expected_errors=0, unexpected_errors=0, backend="trio",
        started_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def test_durations_are_written_for_people() -> None:
    assert format_duration(0.09227751299986267) == "92 ms"
    assert [format_ms(v) for v in (0.42, 4.21, 76.8, 1500.0, 65_000.0)] == [
        "0.42 ms", "4.2 ms", "77 ms", "1.5 s", "1 min 5 s",
    ]  # fmt: skip
    assert format_ms(None) == "—"


def test_a_run_without_samples_shows_a_dash_not_zero() -> None:
    (row,) = report.comparison_rows([_result(completed=0)])
    p50, p95, p99 = row[10:13]
    assert (p50, p95, p99) == ("—", "—", "—")
    (row,) = report.comparison_rows([_result()])
    assert row[10:13] == ["77 ms", "164 ms", "1.3 s"]


@pytest.mark.parametrize("width", [80, 100])
def test_the_table_fits_a_narrow_terminal_with_readable_headers(width: int) -> None:
    console = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
    results = [_result(), _result(scenario="sub-orchestrations", provider="sqlite-memory")]
    console.print(report.comparison_table(results, title="Stress test results", width=console.width))
    text = console.export_text()
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width
    header = next(line for line in text.splitlines() if "Provider" in line)
    cells = [c.strip() for c in re.split(r"[┃│|]", header) if c.strip()]
    for essential in ("Provider", "Config", "Failed", "Success %", "Orch/s", "p50", "p99"):
        assert essential in cells, (essential, cells)
    assert set(cells) <= set(report.HEADERS)
    assert "postgres" in text and "(large-payload)" in text and "1.3 s" in text  # may wrap between words
    # A wide console still gets every column.
    wide = Console(width=260, record=True, file=open(os.devnull, "w"), color_system=None)
    wide.print(report.comparison_table(results, width=260))
    wide_text = wide.export_text()
    assert all(h in wide_text for h in report.HEADERS)
    # Cost columns without a figure in any row go first on a narrow terminal; one with figures stays.
    costly = [attrs.evolve(r, round_trips_per_orch=8.25) for r in results]
    narrow = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
    narrow.print(report.comparison_table(costly, width=width))
    narrow_text = narrow.export_text()
    assert "Calls/orch" in narrow_text and "8.2" in narrow_text and "Xact/orch" not in narrow_text


def test_timeouts_are_reported_in_readable_units() -> None:
    config = stress.StressConfig(
        duration=0.5, max_concurrent=2, tasks_per_instance=1, activity_delay_ms=400, wait_timeout=0.1
    )
    result = anyio.run(stress.run, dt.SqliteFactory(), config)
    assert result.failed > 0 and result.failures
    for failure in result.failures:
        assert failure.kind == "timeout"
        assert "100 ms" in failure.message and not RAW_FLOAT.search(failure.message), failure.message


def test_peak_rss_is_measured_per_run() -> None:
    """A run that holds 200 MB for a moment reports it; the next run does not inherit that peak."""
    from duroxide_trio.stress._scenarios import _value

    hog = dt.Registry()
    held = {"done": False}

    @hog.activity("StressProcessTask")
    async def hungry(ctx: dt.ActivityContext, item: list[int]) -> int:
        if not held["done"]:
            held["done"] = True
            block = b"\x01" * (200 * 1024 * 1024)  # touched pages: real RSS
            await anyio.sleep(0.8)  # the sampler reads RSS every 0.25 s
            del block
        return _value(item[0], item[1])

    config = stress.StressConfig(duration=1.0, max_concurrent=2, tasks_per_instance=2, activity_delay_ms=1)

    async def main() -> tuple[stress.StressResult, stress.StressResult]:
        first = await stress.run(dt.SqliteFactory(), config, registry=hog)
        second = await stress.run(dt.SqliteFactory(), config)
        return first, second

    first, second = anyio.run(main)
    assert first.passed and second.passed
    assert first.rss_growth_mb > 150, first
    assert second.peak_rss_mb < first.peak_rss_mb - 100
    assert second.rss_growth_mb < 100
    assert second.as_dict()["rss_start_mb"] == pytest.approx(second.rss_start_mb, abs=0.01)


def test_ctrl_c_stops_cleanly_with_the_partial_table(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DUROXIDE_PG_POOL_MAX")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "duroxide_trio", "stress", "--duration", "60", "--no-dashboard",
         "--json", "run.json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env | {"COLUMNS": "200"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        seen = []
        while True:  # the first progress line: the run is under load
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
            if line.startswith("[") and " load: " in line:
                break
        interrupted_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped_in = time.monotonic() - interrupted_at
    assert proc.returncode == 130, stdout + stderr
    assert stopped_in < 15
    everything = stdout + stderr
    assert "Traceback" not in everything and "ExceptionGroup" not in everything, everything
    assert "INTERRUPTED" in stdout and "Ctrl-C" in stdout
    row = next(line for line in stdout.splitlines() if "sqlite (fanout, interrupted)" in line)
    cells = [c.strip() for c in re.split(r"[│┃|]", row)[1:-1]]
    assert int(cells[2]) > 0  # completed instances before Ctrl-C are in the table
    import json

    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["interrupted"] is True and doc["runs"][0]["result"]["interrupted"] is True
    assert doc["runs"][0]["result"]["completed"] > 0
