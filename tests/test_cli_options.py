"""The CLI's option handling, in process: the stress command's options to a validated request, and the one
provider choice every command shares (``cli/_provider.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from duroxide_trio.cli._provider import ProviderChoice, ProviderKind, choose_provider, masked
from duroxide_trio.cli._stress import stress_configs
from duroxide_trio.stress import PRESETS, SCENARIOS, SUITE_CONCURRENCY


def test_configs_from_scenario_preset_overrides_and_suite() -> None:
    [only] = stress_configs("timers")
    assert (only.scenario, only.duration, only.concurrency_label) == ("timers", 10.0, "2:2")
    light = stress_configs("fanout", preset="light", overrides={"duration": 2.0, "max_concurrent": None})
    assert [(c.duration, c.max_concurrent) for c in light] == [(2.0, PRESETS["light"]["max_concurrent"])]
    suite = stress_configs("all", suite=True, overrides={"orchestration_concurrency": 8})
    assert [(c.scenario, c.concurrency_label) for c in suite[: len(SUITE_CONCURRENCY)]] == [
        ("fanout", f"{o}:{w}") for o, w in SUITE_CONCURRENCY
    ]
    assert len(suite) == len(SCENARIOS) * len(SUITE_CONCURRENCY)


def test_unknown_scenario_and_preset_name_the_known_ones() -> None:
    with pytest.raises(typer.BadParameter, match="unknown scenario 'nope'; choose one of: fanout, .*, all"):
        stress_configs("nope")
    with pytest.raises(typer.BadParameter, match="unknown preset 'huge'; choose one of: light, standard"):
        stress_configs("fanout", preset="huge")


def test_provider_choice() -> None:
    url = "postgresql://stress:hunter2@127.0.0.1:1/app"
    pg = choose_provider(None, url)
    assert pg == ProviderChoice(ProviderKind.postgres, url)
    assert "hunter2" not in pg.shown and pg.postgres_url == url
    assert choose_provider(None, None) == ProviderChoice(ProviderKind.sqlite)
    assert choose_provider(ProviderKind.sqlite, "sqlite:///tmp/x.db", sqlite_file=True).url == "tmp/x.db"
    assert choose_provider(ProviderKind.sqlite, "sqlite:////tmp/x.db", sqlite_file=True).url == "/tmp/x.db"
    assert choose_provider(ProviderKind.sqlite, "x.db").url is None  # validate: SQLite takes no file
    assert choose_provider(ProviderKind.sqlite_memory, "x.db", sqlite_file=True).shown == "temporary file"
    with pytest.raises(typer.BadParameter, match=r"takes a file path or sqlite:///path, not mysql://u:\*\*\*@h/d"):
        choose_provider(ProviderKind.sqlite, "mysql://u:secret@h/d", sqlite_file=True)
    assert masked(f"cannot connect to {url}", url).count("hunter2") == 0


def test_postgres_without_a_url_is_a_usage_error(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "300"}
    for command in (["stress", "--provider", "postgres"], ["validate", "--provider", "postgres"]):
        proc = subprocess.run([sys.executable, "-m", "duroxide_trio.cli", *command], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "needs --database-url or the DATABASE_URL environment variable" in " ".join(proc.stderr.split())
