"""Every example runs as a user would run it, and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))


def run_example(name: str, tmp_path) -> str:
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), str(tmp_path / "state.db")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_hello(tmp_path):
    assert "Completed Hello, Trio!" in run_example("hello.py", tmp_path)


def test_fan_out_fan_in(tmp_path):
    assert "Completed published 385" in run_example("fan_out_fan_in.py", tmp_path)


def test_human_approval(tmp_path):
    out = run_example("human_approval.py", tmp_path)
    assert "expense-1 Completed approved by manager" in out
    assert "expense-2 Completed escalated: no answer in time" in out


def test_asyncio_host(tmp_path):
    out = run_example("asyncio_host.py", tmp_path)
    assert "Completed 19" in out and "EventLoop" in out


@pytest.mark.parametrize("name", ["hello.py"])
def test_example_resumes_on_existing_database(name, tmp_path):
    run_example(name, tmp_path)
    # second run on the same file: the instance exists already, the start is refused loudly
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), str(tmp_path / "state.db")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0 and "already exists" in out.stderr


def test_order_workflow(tmp_path):
    out = run_example("order_workflow.py", tmp_path)
    assert "o-1 Completed cancelled: not shipped within 0:00:00.200000" in out
    assert "refunded pay-o-1" in out and "released rsv-o-1" in out


def test_order_workflow_tests_pass():
    """examples/test_order_workflow.py, run the way its README section says."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join("examples", "test_order_workflow.py")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "12 passed" in out.stdout


def test_prometheus_metrics_example_serves_real_values():
    """The example runs 20 fan-outs of 5 activities and serves OpenTelemetry metrics over loopback; a scrape
    shows the counts that run produced."""
    import re
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "prometheus_metrics.py"), str(port), "--stay"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once every instance completed
        assert "ran 20 orchestrations" in line, proc.stderr.read() if proc.poll() is not None else line
        text = ""
        for _ in range(50):
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if "duroxide_queue_depth" in text:
                break
            time.sleep(0.2)  # another process's gauge: no event to wait on; it samples every 0.2 s
        def value(pattern: str) -> float:
            m = re.search(pattern + r" ([0-9.e+]+)", text)
            assert m, f"{pattern} not in scrape:\n{text[:3000]}"
            return float(m.group(1))
        assert value(r'duroxide_turns_total\{[^}]*outcome="completed"[^}]*\}') == 20
        assert value(r'duroxide_activities_total\{[^}]*outcome="completed"[^}]*\}') == 100
        assert value(r'duroxide_activity_duration_seconds_count\{[^}]*outcome="completed"[^}]*\}') == 100
        assert value(r'duroxide_fetch_duration_seconds_count\{[^}]*queue="worker"[^}]*\}') >= 1
        assert value(r'duroxide_queue_depth\{[^}]*queue="worker"[^}]*\}') == 0
    finally:
        proc.kill()
        proc.wait(10)
