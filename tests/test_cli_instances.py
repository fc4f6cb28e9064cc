"""``duroxide-trio instances``: what an operator sees for a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(__file__))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duroxide_trio.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_list_show_history_delete(tmp_path):
    db = str(tmp_path / "state.db")
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "hello.py"), db], check=True, timeout=60)
    assert cli("instances", "list", "--db", db).stdout.split() == ["hello-1"]
    shown = cli("instances", "show", "hello-1", "--db", db)
    assert shown.returncode == 0
    state = json.loads(shown.stdout)
    assert state["status"] == "Completed" and state["output"] == "Hello, Trio!"
    events = [json.loads(line)["type"] for line in cli("instances", "history", "hello-1", "--db", db).stdout.splitlines()]
    assert events[0] == "OrchestrationStarted" and events[-1] == "OrchestrationCompleted"
    assert cli("instances", "show", "missing", "--db", db).returncode == 1
    deleted = cli("instances", "delete", "hello-1", "--db", db)
    assert deleted.returncode == 0 and "deleted 1 instance" in deleted.stdout
    assert cli("instances", "list", "--db", db).stdout.strip() == ""


def test_bad_event_data_is_rejected_with_a_clear_message(tmp_path):
    out = cli("instances", "raise-event", "x", "go", "{not json", "--db", str(tmp_path / "s.db"))
    assert out.returncode != 0 and "DATA must be JSON" in out.stderr
