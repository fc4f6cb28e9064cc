"""``duroxide-trio stress --report``: a self-contained HTML file whose charts render in a real browser
(headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import duroxide_trio as dt
from duroxide_trio import stress

IN_CI = bool(os.environ.get("CI"))


def _need(what: str, present: bool) -> None:
    if present:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true (the report test must run)", pytrace=False)
    pytest.skip(f"REPORT CHARTS NOT CHECKED: {what} is not installed (CI=true makes this a failure)")


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    _need("chromium (apt-get install chromium)", path is not None)
    assert path is not None
    return path


def plotly_installed() -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        _need("plotly (pip install 'duroxide-trio[report]')", False)


def rendered_dom(report: Path, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran, from headless Chromium with no network access needed."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
         "--dump-dom", report.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def external_resources(html: str) -> list[str]:
    """Scripts, stylesheets and images the page would fetch (script bodies are not parsed as markup)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Finder(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            for name, value in attrs:
                if name in ("src", "href") and value and not value.startswith(("#", "data:")):
                    found.append(f"<{tag} {name}={value}>")

    Finder().feed(html)
    return found


def charts(dom: str) -> dict[str, str]:
    """Each chart's rendered markup, by its div id (``chart-1``, ...)."""
    parts = re.split(r'<div id="(chart-\d+)"', dom)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def assert_drawn(markup: str, *, lines: bool = True) -> None:
    """Plotly drew the figure as SVG: bars with a shape, and (``lines``) line traces with a path."""
    assert 'class="main-svg"' in markup
    if lines:
        assert "trace scatter" in markup and re.search(r'class="js-line"[^>]* d="M', markup), "no line"
    assert "trace bars" in markup
    assert re.search(r'<g class="point"><path d="M[\d.,]+V[\d.]+H', markup), "no bar drawn"


def test_cli_report_of_a_suite_renders_in_a_browser(tmp_path: Path) -> None:
    plotly_installed()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DUROXIDE_PG_POOL_MAX")}
    proc = subprocess.run(
        [sys.executable, "-m", "duroxide_trio", "stress", "--suite", "--duration", "1", "--max-concurrent", "4",
         "--tasks", "2", "--report", "out/report.html", "--json", "out/run.json", "--track",
         "--results-dir", "results"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env | {"COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = tmp_path / "out" / "report.html"
    assert f"HTML report written to out{os.sep}report.html" in proc.stdout
    html = report.read_text()
    assert external_resources(html) == []  # self-contained: nothing to fetch to view it
    assert len(html) > 1_000_000  # plotly.js is inlined
    tracked = (tmp_path / "results" / "stress-test-results-sqlite.md").read_text()
    assert "- **Report**: [report.html](../out/report.html)" in tracked

    # The runner's per-second series are in the JSON too.
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    point = doc["runs"][0]["result"]["timeline"][0]
    assert {"completed", "in_flight", "p50_ms", "p95_ms", "p99_ms"} <= set(point)

    drawn = charts(rendered_dom(report, tmp_path))
    assert sorted(drawn) == ["chart-1", "chart-2", "chart-3", "chart-4"]  # side by side + one per run
    assert "Throughput (orch/s, load phase)" in drawn["chart-1"]
    assert_drawn(drawn["chart-1"], lines=False)
    for run in ("chart-2", "chart-3", "chart-4"):
        assert_drawn(drawn[run])
        for legend in ("completed/s", "p50", "p95", "p99", "in flight"):
            assert f">{legend}</text>" in drawn[run], (run, legend)


def test_failures_are_marked_in_the_report(tmp_path: Path) -> None:
    plotly_installed()
    from duroxide_trio.stress import _html_report as html_report

    slow = stress.StressConfig(duration=1.0, max_concurrent=2, tasks_per_instance=1, activity_delay_ms=300,
                               wait_timeout=0.1)  # fmt: skip
    result = anyio.run(stress.run, dt.SqliteFactory(), slow)
    assert result.failed > 0
    report = html_report.write_report(tmp_path / "failures.html", [result], provider="sqlite")
    (chart,) = charts(rendered_dom(report, tmp_path)).values()
    assert 'class="main-svg"' in chart
    assert ">failed/s</text>" in chart
    # A red band over each second with failures (plotly shapes), and the failures listed under the charts.
    assert re.search(r'class="shapelayer".*?<path[^>]*fill: rgb\(214, 39, 40\)', chart, re.S)
    assert "timeout" in report.read_text() and "Failures" in report.read_text()
