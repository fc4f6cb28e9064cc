"""Run the standard workload on duroxide-trio and on its peers against the same storage; print one table.

    python bench/compare.py --peers-python .nox/compare-peers/bin/python      # what `nox -s compare` runs
    python bench/compare.py --peers-python /tmp/peers/bin/python --duration 5 --providers postgres

Run it with the Python that has duroxide-trio installed (our side); ``--peers-python`` is an interpreter
whose environment has the peers (``bench/peers/requirements.txt``). Each side runs in its own process,
one after another, never two at once:

- ours: ``python -m duroxide_trio.cli stress --json FILE`` with the same settings;
- each peer: ``<peers-python> bench/peers/<driver>.py``, which prints one JSON line (see
  ``bench/peers/_harness.py``).

PostgreSQL: the server in ``--database-url`` / ``$DATABASE_URL``, or a throwaway cluster started from the
local binaries and removed afterwards. Every side gets a database of its own on that server
(``dx_compare_<side>``, see ``--database-prefix``), created before its run and dropped after it. SQLite: every side gets a new file
in a temporary directory.

The exit code is 1 if a side crashed, or had a failed or wrong instance (those never count as
completed), else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"

#: The peers compared by default: key -> (driver, providers it supports).
PEERS: dict[str, tuple[Path, tuple[str, ...]]] = {
    "duroxide": (PEERS_DIR / "duroxide_rust.py", ("postgres", "sqlite")),
    "dbos": (PEERS_DIR / "dbos_peer.py", ("postgres", "sqlite")),
}
OURS = "duroxide-trio"
PROVIDERS = ("postgres", "sqlite")
#: The workload options, passed unchanged to every side (the names of `duroxide-trio stress`).
WORKLOAD = ("duration", "max_concurrent", "tasks", "activity_delay_ms", "orch_concurrency",
            "worker_concurrency", "wait_timeout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per run (default 10)")
    p.add_argument("--max-concurrent", type=int, default=20, help="instances in flight (default 20)")
    p.add_argument("--tasks", type=int, default=5, help="activities per instance (default 5)")
    p.add_argument("--activity-delay-ms", type=int, default=10, help="activity sleep (default 10)")
    p.add_argument("--orch-concurrency", type=int, default=2, help="orchestration dispatchers (default 2)")
    p.add_argument("--worker-concurrency", type=int, default=2, help="activity dispatchers (default 2)")
    p.add_argument("--wait-timeout", type=float, default=60.0, help="seconds one instance may take")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every side this many times, interleaved; the table shows medians (default 1)")
    p.add_argument("--providers", default=",".join(PROVIDERS), help="comma list of postgres, sqlite")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)} ('' = none)")
    p.add_argument("--peer", action="append", default=[], metavar="KEY=DRIVER",
                   help="add a driver script (speaks bench/peers/_harness.py's JSON line; repeatable)")
    p.add_argument("--peers-python", default=os.environ.get("DX_COMPARE_PEERS_PYTHON"),
                   help="interpreter of the peers' environment (env DX_COMPARE_PEERS_PYTHON)")
    p.add_argument("--ours-python", default=sys.executable, help="interpreter with duroxide-trio")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                   help="PostgreSQL server to use (default $DATABASE_URL, else a throwaway cluster)")
    p.add_argument("--database-prefix", default="dx_compare_",
                   help="name prefix of the per-side databases (default dx_compare_: dx_compare_dbos, ...)")
    p.add_argument("--json", type=Path, help="also write every side's result here")
    p.add_argument("--logs", type=Path, help="directory for each side's stderr (default: a temp dir)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.providers = [x for x in args.providers.split(",") if x]
    for prov in args.providers:
        if prov not in PROVIDERS:
            p.error(f"unknown provider {prov!r}")
    drivers: dict[str, tuple[Path, tuple[str, ...]]] = {}
    for key in (x for x in args.peers.split(",") if x):
        if key not in PEERS:
            p.error(f"unknown peer {key!r}")
        drivers[key] = PEERS[key]
    for spec in args.peer:
        key, sep, path = spec.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9_]+", key):
            p.error(f"--peer wants KEY=DRIVER with KEY in [a-z0-9_], not {spec!r}")
        drivers[key] = (Path(path).resolve(), PROVIDERS)
    if drivers and not args.peers_python:
        p.error("--peers-python (or DX_COMPARE_PEERS_PYTHON) is needed to run the peers")
    args.drivers = drivers
    return args


def workload_flags(args: argparse.Namespace) -> list[str]:
    """The workload as command-line options, the same for every side."""
    flags: list[str] = []
    for name in WORKLOAD:
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return flags


# --------------------------------------------------------------------------------------------------------
# storage


@contextmanager
def postgres_server(url: str | None) -> Iterator[str]:
    """The server URL: ``url`` if given, else a throwaway cluster for the duration of the block."""
    if url:
        yield url
        return
    sys.path.insert(0, str(HERE.parent))  # run from a checkout: the package may not be installed editable
    from duroxide_trio.providers.postgres._localcluster import throwaway_cluster

    with throwaway_cluster() as cluster_url:
        print(f"started a throwaway PostgreSQL at {cluster_url}", file=sys.stderr, flush=True)
        yield cluster_url


def _with_database(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname`` (query string kept)."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{dbname}" + (sep + query if sep else "")


@contextmanager
def own_database(server_url: str, name: str) -> Iterator[str]:
    """Create database ``name`` on the server (dropping a leftover one first), yield its URL, drop it."""
    import psycopg

    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"database name {name!r}: use [a-z0-9_] only")

    def admin(sql: str) -> None:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server_url, name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------------------
# running one side


def run_ours(args: argparse.Namespace, provider: str, target: str, workdir: Path, log: Path) -> dict[str, Any]:
    """``duroxide-trio stress`` on ``target`` (a database URL or a SQLite file); its JSON, reshaped like a
    driver's line."""
    out = workdir / f"ours-{provider}.json"
    cmd = [args.ours_python, "-m", "duroxide_trio.cli", "stress", "--provider", provider,
           "--database-url", target, "--scenario", "fanout", "--no-dashboard", "--json", str(out),
           *workload_flags(args)]
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=err, stderr=subprocess.STDOUT, cwd=workdir)
    if not out.exists():
        return {"error": f"duroxide-trio stress exited {proc.returncode} without JSON (see {log})"}
    data = json.loads(out.read_text())
    res = data["runs"][0]["result"]
    lat = res["latency_ms"]
    return {
        "peer": OURS,
        "version": data["versions"].get("duroxide-trio", "?"),
        "provider": provider,
        "launched": res["launched"],
        "completed": res["completed"],
        "completed_in_load": round(res["orch_throughput"] * res["load_duration_s"]),
        "failed": res["failed"],
        "wrong": 0,  # the stress tool counts a wrong output as a failed instance
        "orch_per_s": res["orch_throughput"],
        "p50_ms": lat["p50"],
        "p95_ms": lat["p95"],
        "p99_ms": lat["p99"],
        "load_s": res["load_duration_s"],
        "drain_s": res["drain_duration_s"],
        "knobs": {k: data["runs"][0]["runtime_options"][k]
                  for k in ("orchestration_concurrency", "worker_concurrency", "poll_interval")},
        "failures": [f["message"] if isinstance(f, dict) and "message" in f else str(f)
                     for f in res.get("failures", [])[:5]],
    }


def run_driver(args: argparse.Namespace, key: str, driver: Path, provider: str, target: str,
               workdir: Path, log: Path) -> dict[str, Any]:
    """A peer's driver in the peers' environment; its last JSON line."""
    where = ["--database-url", target] if provider == "postgres" else ["--sqlite-path", target]
    cmd = [args.peers_python, str(driver), "--provider", provider, *where, *workload_flags(args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PEERS_DIR),
                                                                     os.environ.get("PYTHONPATH")]))}
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=workdir, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"peer": key, "error": f"driver exited {proc.returncode} without a result (see {log})"}
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.returncode != 0 and "error" not in result:
        result["error"] = f"driver exited {proc.returncode} (see {log})"
    return result


def run_all(args: argparse.Namespace, workdir: Path, logs: Path) -> list[dict[str, Any]]:
    """Every side on every provider, one at a time, ``args.rounds`` times; each round starts with the
    next side (round 2 of three sides runs B, C, A), so no side always runs first. Each run gets fresh
    storage."""
    results: list[dict[str, Any]] = []
    sides = [(OURS, None), *((key, drv) for key, (drv, _) in args.drivers.items())]

    def one(provider: str, rnd: int, key: str, driver: Path | None, target: str) -> None:
        label = OURS if driver is None else key
        print(f"{provider}, round {rnd + 1}/{args.rounds}: {label} ...", file=sys.stderr, flush=True)
        log = logs / f"{provider}-{key}-{rnd + 1}.log"
        if driver is None:
            res = run_ours(args, provider, target, workdir, log)
        else:
            res = run_driver(args, key, driver, provider, target, workdir, log)
        res.setdefault("peer", label)
        res.update(key=key, provider=provider, round=rnd + 1, log=str(log))
        results.append(res)
        if "error" in res:
            print(f"  {res['error']}", file=sys.stderr, flush=True)
        else:
            print(f"  {res['orch_per_s']:.1f} orch/s, p50 {res['p50_ms']:.0f} ms, "
                  f"{res['completed']}/{res['launched']} completed", file=sys.stderr, flush=True)

    for provider in args.providers:
        eligible = [(k, d) for k, d in sides if d is None or provider in args.drivers[k][1]]
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(postgres_server(args.database_url)) if provider == "postgres" else ""
            for rnd in range(args.rounds):
                shift = rnd % len(eligible)
                for key, driver in eligible[shift:] + eligible[:shift]:
                    name = "trio" if driver is None else key
                    if provider == "postgres":
                        with own_database(server, args.database_prefix + name) as url:
                            one(provider, rnd, key, driver, url)
                    else:
                        one(provider, rnd, key, driver, str(workdir / f"{name}-{rnd + 1}.sqlite"))
    return results


# --------------------------------------------------------------------------------------------------------
# the table


def _ms(v: float) -> str:
    return f"{v:.0f} ms"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per provider and side (ours first, then the peers in the order they ran first): over its
    rounds the median ``orch_per_s``, ``p50_ms`` and ``p95_ms``, the lowest and highest ``orch_per_s``,
    and the summed counts; ``error`` if any round crashed."""
    out: list[dict[str, Any]] = []
    for provider in dict.fromkeys(r["provider"] for r in results):
        rows = [r for r in results if r["provider"] == provider]
        keys = sorted(dict.fromkeys(r["key"] for r in rows), key=lambda k: k != OURS)
        for key in keys:
            runs = [r for r in rows if r["key"] == key]
            first = runs[0]
            entry: dict[str, Any] = {"provider": provider, "key": key, "peer": first.get("peer", key),
                                     "version": first.get("version", ""), "rounds": len(runs)}
            errors = [r["error"] for r in runs if "error" in r]
            if errors:
                entry["error"] = errors[0]
                out.append(entry)
                continue
            orch = [r["orch_per_s"] for r in runs]
            entry.update(
                orch_per_s=_median(orch), orch_min=min(orch), orch_max=max(orch),
                p50_ms=_median([r["p50_ms"] for r in runs]), p95_ms=_median([r["p95_ms"] for r in runs]),
                **{n: sum(r[n] for r in runs) for n in ("completed", "launched", "failed", "wrong")},
            )
            out.append(entry)
    return out


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per provider and side (see :func:`summarize`), with our ratio over each
    peer on that provider: ``ours × orch/s`` = our throughput / theirs; ``ours ÷ p50`` = their p50 / ours
    (how many times lower our median latency is). With several rounds the figures are medians, and
    orch/s shows the lowest–highest round in brackets."""
    header = ("| storage | system | orch/s | p50 | p95 | completed | failed / wrong | ours × orch/s "
              "| ours ÷ p50 |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    summary = summarize(results)
    for r in summary:
        provider = r["provider"]
        ours = next((o for o in summary if o["provider"] == provider and o["key"] == OURS
                     and "error" not in o), None)
        name = f"{r['peer']} {r['version']}".strip()
        if "error" in r:
            lines.append(f"| {provider} | {name} | error: {r['error']} | | | | | | |")
            continue
        if r["key"] == OURS or ours is None:
            ratio = lat = "—"
        else:
            ratio = f"{ours['orch_per_s'] / r['orch_per_s']:.1f}×" if r["orch_per_s"] else "∞"
            lat = f"{r['p50_ms'] / ours['p50_ms']:.1f}×" if ours["p50_ms"] else "—"
        orch = f"{r['orch_per_s']:.1f}"
        if r["rounds"] > 1:
            orch += f" ({r['orch_min']:.0f}–{r['orch_max']:.0f})"
        lines.append(
            f"| {provider} | {name} | {orch} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} "
            f"| {r['completed']}/{r['launched']} | {r['failed']} / {r['wrong']} | {ratio} | {lat} |"
        )
    return "\n".join(lines)


def describe(args: argparse.Namespace, load_before: float) -> str:
    """One line naming the workload and the machine (with its 1-minute load average before the runs:
    other work on the machine moves the figures), printed above the table."""
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores (load {load_before:.1f} before): "
        f"{args.max_concurrent} in flight, {args.tasks} activities of {args.activity_delay_ms} ms each, "
        f"{args.orch_concurrency}:{args.worker_concurrency} dispatchers, {args.duration:g} s per run"
        + (f", {args.rounds} rounds (medians)" if args.rounds > 1 else "")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dx-compare-") as tmp:
        workdir = Path(tmp)
        logs = args.logs or workdir
        logs.mkdir(parents=True, exist_ok=True)
        results = run_all(args, workdir, logs)
        print(describe(args, load_before))
        print()
        print(table(results))
        bad = [r for r in results if "error" in r or r.get("failed") or r.get("wrong")]
        for r in bad:
            msgs = r.get("failures") or []
            print(f"\n{r['provider']} {r.get('peer')} round {r['round']}: {r.get('error', '')} "
                  f"failed {r.get('failed')} "
                  f"wrong {r.get('wrong')} {'; '.join(msgs)}", file=sys.stderr)
            if not args.logs:  # the temporary directory goes away: show the log's tail
                log = Path(r["log"])
                if log.exists():
                    print("\n".join(log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
        if args.json:
            payload = {"workload": describe(args, load_before), "summary": summarize(results),
                       "results": results}
            args.json.write_text(json.dumps(payload, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
