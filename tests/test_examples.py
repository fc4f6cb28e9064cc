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
