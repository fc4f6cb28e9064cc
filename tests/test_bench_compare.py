"""``bench/compare.py`` (the `nox -s compare` command) end to end, without the peers or the network.

The peers are replaced by stub drivers written here that speak the real driver protocol through the
real ``bench/peers/_harness.py`` (closed loop, latency, verification); our side is a real, short
``duroxide-trio stress`` run. The real peers run only in ``nox -s compare``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "bench" / "compare.py"

#: A peer that answers every instance correctly after 5 ms (its "activities" run in-process); on
#: PostgreSQL it records which database it was given and checks that it exists.
STUB = '''
import asyncio, sys
import _harness

def main():
    args = _harness.parser("stub peer").parse_args()
    knobs = {}
    if args.provider == "postgres":
        import psycopg
        with psycopg.connect(args.database_url) as conn:
            knobs["database"] = conn.execute("select current_database()").fetchone()[0]
    else:
        open(args.sqlite_path, "x").close()
        knobs["sqlite_path"] = args.sqlite_path
    LIE = @LIE@

    async def run_one(seq):
        await asyncio.sleep(0.005)
        out = _harness.expected_output(seq, args.tasks)
        if LIE and seq % 2:
            out = dict(out, sum=out["sum"] + 1)
        return out

    result = asyncio.run(_harness.measure(
        run_one, lambda seq: _harness.expected_output(seq, args.tasks), duration=args.duration,
        max_concurrent=args.max_concurrent, wait_timeout=args.wait_timeout))
    _harness.emit({**result, "peer": "@NAME@", "version": "0", "provider": args.provider, "knobs": knobs})
    return 0

_harness.main_guard(main)
'''


def _stub(tmp_path: Path, name: str, *, lie: bool = False) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(STUB.replace("@NAME@", name).replace("@LIE@", str(lie)))
    return path


def _compare(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, str(COMPARE), "--peers", "", "--peers-python", sys.executable, "--duration", "0.5",
         "--json", str(out), "--logs", str(tmp_path / "logs"), *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def _load_compare() -> Any:
    spec = importlib.util.spec_from_file_location("bench_compare", COMPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(stdout: str, system: str) -> list[str]:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[1].startswith(system):
            return cells
    raise AssertionError(f"no row for {system!r} in:\n{stdout}")


def test_sqlite_table_with_a_correct_and_a_lying_peer(tmp_path: Path) -> None:
    proc, data = _compare(
        tmp_path, "--providers", "sqlite",
        "--peer", f"stub={_stub(tmp_path, 'stub')}", "--peer", f"liar={_stub(tmp_path, 'liar', lie=True)}",
    )
    by_key = {r["key"]: r for r in data["results"]}
    assert set(by_key) == {"duroxide-trio", "stub", "liar"}
    ours, stub, liar = by_key["duroxide-trio"], by_key["stub"], by_key["liar"]

    # Our side really ran: a stress run on SQLite, every instance completed and counted.
    assert ours["completed"] == ours["launched"] > 0 and ours["failed"] == 0, ours
    # (Only completions inside the 0.5 s window count towards orch/s: on a very busy machine there may be
    # none, so orch/s is not asserted positive.)
    assert 0 < ours["p50_ms"] <= ours["p95_ms"] and ours["orch_per_s"] * ours["load_s"] <= ours["completed"]
    # Each side got a SQLite file of its own.
    assert stub["knobs"]["sqlite_path"] != liar["knobs"]["sqlite_path"]

    # The correct peer: everything counted.
    assert stub["wrong"] == stub["failed"] == 0 and stub["completed"] == stub["launched"] > 0
    # The lying peer: its wrong outputs are counted as wrong, never as completed or in its throughput.
    assert liar["wrong"] == liar["launched"] // 2 > 0
    assert liar["completed"] == liar["launched"] - liar["wrong"]
    assert liar["orch_per_s"] == pytest.approx(liar["completed_in_load"] / liar["load_s"])
    assert proc.returncode == 1, "a side with wrong results must fail the comparison"

    # The table: one row per side, our ratio over each peer from the same figures.
    row = _row(proc.stdout, "stub")
    assert row[0] == "sqlite"
    assert row[2] == f"{stub['orch_per_s']:.1f}"
    assert stub["orch_per_s"] > 0, stub  # 5 ms per instance, 20 in flight: hundreds in the window
    assert row[7] == f"{ours['orch_per_s'] / stub['orch_per_s']:.1f}×"
    assert row[8] == f"{stub['p50_ms'] / ours['p50_ms']:.1f}×"
    assert _row(proc.stdout, "liar")[6] == f"0 / {liar['wrong']}"
    assert _row(proc.stdout, "duroxide-trio")[2] == f"{ours['orch_per_s']:.1f}"
    assert _row(proc.stdout, "duroxide-trio")[7] == "—"
    assert "20 in flight, 5 activities of 10 ms each, 2:2 dispatchers, 0.5 s per run" in proc.stdout


def test_postgres_each_side_gets_its_own_database_dropped_afterwards(tmp_path: Path, pg_url: str) -> None:
    prefix = f"dx_compare_t{uuid.uuid4().hex[:8]}_"
    proc, data = _compare(tmp_path, "--providers", "postgres", "--database-url", pg_url,
                          "--database-prefix", prefix, "--peer", f"stub={_stub(tmp_path, 'stub')}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_key = {r["key"]: r for r in data["results"]}
    assert by_key["stub"]["knobs"]["database"] == f"{prefix}stub"
    assert by_key["duroxide-trio"]["completed"] == by_key["duroxide-trio"]["launched"] > 0
    with psycopg.connect(pg_url) as conn:
        left = conn.execute(
            "select datname from pg_database where datname like %s", (prefix + "%",)
        ).fetchall()
    assert left == []


def test_table_reports_a_crashed_side_and_no_ratio_without_ours() -> None:
    compare = _load_compare()
    peer = {"key": "p", "peer": "P", "version": "1", "provider": "postgres", "orch_per_s": 10.0,
            "p50_ms": 500.0, "p95_ms": 900.0, "completed": 5, "launched": 5, "failed": 0, "wrong": 0}
    crashed = {"key": "q", "peer": "Q", "provider": "postgres", "error": "ImportError: no module"}
    text = compare.table([peer, crashed])
    assert _row(text, "P 1")[7] == "—"  # no ours row on this provider: no ratio
    assert "error: ImportError: no module" in _row(text, "Q")[2]


def test_several_rounds_show_medians_and_range() -> None:
    compare = _load_compare()

    def run(key: str, orch: float, p50: float) -> dict[str, Any]:
        return {"key": key, "peer": key, "version": "1", "provider": "sqlite", "orch_per_s": orch,
                "p50_ms": p50, "p95_ms": 2 * p50, "completed": 10, "launched": 10, "failed": 0, "wrong": 0}

    # Round 2 ran the peer first: the table still puts ours first.
    results = [run("duroxide-trio", 100.0, 100.0), run("p", 10.0, 900.0),
               run("p", 30.0, 700.0), run("duroxide-trio", 140.0, 80.0),
               run("duroxide-trio", 120.0, 90.0), run("p", 20.0, 800.0)]
    text = compare.table(results)
    lines = [ln for ln in text.splitlines() if ln.startswith("| sqlite")]
    assert lines[0].startswith("| sqlite | duroxide-trio")
    ours, peer = _row(text, "duroxide-trio"), _row(text, "p 1")
    assert ours[2] == "120.0 (100–140)" and ours[3] == "90 ms" and ours[5] == "30/30"
    assert peer[2] == "20.0 (10–30)" and peer[3] == "800 ms"
    assert peer[7] == "6.0×" and peer[8] == "8.9×"  # 120 / 20 and 800 / 90


def test_database_url_rewrite_keeps_credentials_and_query() -> None:
    compare = _load_compare()
    assert (compare._with_database("postgresql://u:p@h:5/test?sslmode=disable", "dx_compare_a")
            == "postgresql://u:p@h:5/dx_compare_a?sslmode=disable")
    assert compare._with_database("postgresql://h", "d") == "postgresql://h/d"
