"""The measuring loop every peer driver shares; standard library only (it runs in the peers' own
environment, where duroxide-trio is not installed).

It measures the way ``duroxide-trio stress`` does (``duroxide_trio/stress/runner.py``):

- closed loop: ``max_concurrent`` instances in flight; a new one starts as soon as one finishes, until the
  load window (``duration`` seconds) ends; then the ones still running drain (bounded by
  ``wait_timeout``);
- latency of an instance = from just before its start request to the moment its completion was observed;
  p50/p95/p99 over every correct completion (load and drain), linearly interpolated like
  ``duroxide_trio.stress.result.percentile``;
- throughput = correct completions observed inside the load window / the load window's length;
- every output is compared with the expected one: a wrong output counts as ``wrong``, never as completed.

A driver supplies ``run_one(seq) -> output`` (start instance ``seq`` and wait for its output) and
``expected(seq)``; :func:`measure` returns the result dict and :func:`emit` prints it as the one JSON line
``bench/compare.py`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

#: Fields of the JSON line, besides ``knobs`` (free-form) and ``failures`` (the first few messages).
RESULT_FIELDS = (
    "peer", "version", "provider", "launched", "completed", "completed_in_load", "failed", "wrong",
    "orch_per_s", "p50_ms", "p95_ms", "p99_ms", "load_s", "drain_s",
)


def parser(description: str) -> argparse.ArgumentParser:
    """The options every driver takes (the same names as ``duroxide-trio stress``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--provider", choices=["postgres", "sqlite"], required=True)
    p.add_argument("--database-url", help="PostgreSQL URL (a database of this peer's own)")
    p.add_argument("--sqlite-path", help="SQLite file to create (must not exist)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--max-concurrent", type=int, default=20)
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--activity-delay-ms", type=int, default=10)
    p.add_argument("--orch-concurrency", type=int, default=2)
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument("--wait-timeout", type=float, default=60.0)
    return p


def activity_value(seed: int, i: int) -> int:
    """What activity ``i`` of instance ``seed`` returns (the same rule as the stress tool's fanout)."""
    return seed * 1000 + i


def expected_output(seed: int, tasks: int) -> dict[str, int]:
    """The output a correct fan-out instance returns."""
    return {"seed": seed, "count": tasks, "sum": sum(activity_value(seed, i) for i in range(tasks))}


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile of sorted values, linearly interpolated; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


async def measure(
    run_one: Callable[[int], Awaitable[Any]],
    expected: Callable[[int], Any],
    *,
    duration: float,
    max_concurrent: int,
    wait_timeout: float,
) -> dict[str, Any]:
    """Run the closed loop described in the module docstring; return the counts and figures."""
    latencies: list[float] = []
    failures: list[str] = []
    counts = {"launched": 0, "completed": 0, "completed_in_load": 0, "failed": 0, "wrong": 0}
    slots = asyncio.Semaphore(max_concurrent)
    tasks: set[asyncio.Task[None]] = set()

    async def instance(seq: int) -> None:
        started = time.monotonic()
        try:
            output = await asyncio.wait_for(run_one(seq), wait_timeout)
        except Exception as exc:  # noqa: BLE001 - a failed instance is counted, the run goes on
            counts["failed"] += 1
            if len(failures) < 5:
                failures.append(f"instance {seq}: {type(exc).__name__}: {exc}"[:300])
            return
        finally:
            slots.release()
        done = time.monotonic()
        if output != expected(seq):
            counts["wrong"] += 1
            if len(failures) < 5:
                failures.append(f"instance {seq}: wrong output {output!r:.200}")
            return
        counts["completed"] += 1
        latencies.append((done - started) * 1000.0)
        if done <= load_end:
            counts["completed_in_load"] += 1

    load_start = time.monotonic()
    load_end = load_start + duration
    seq = 0
    while True:
        remaining = load_end - time.monotonic()
        if remaining <= 0:
            break
        try:
            await asyncio.wait_for(slots.acquire(), remaining)
        except TimeoutError:
            break
        if time.monotonic() >= load_end:
            slots.release()
            break
        counts["launched"] += 1
        task = asyncio.create_task(instance(seq))  # owned by `tasks`, gathered below
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        seq += 1
        await asyncio.sleep(0)  # let the instance issue its start before the next one
    load_s = time.monotonic() - load_start
    if tasks:
        await asyncio.gather(*tasks)
    drain_s = time.monotonic() - load_start - load_s
    latencies.sort()
    return {
        **counts,
        "orch_per_s": counts["completed_in_load"] / load_s,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "load_s": load_s,
        "drain_s": drain_s,
        "failures": failures,
    }


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON line on stdout (the last line ``bench/compare.py`` reads)."""
    print(json.dumps(result, sort_keys=True), flush=True)


def main_guard(main: Callable[[], int]) -> None:
    """Run a driver's ``main``; on a crash print the traceback and a JSON line with the error."""
    try:
        code = main()
    except Exception as exc:  # noqa: BLE001 - reported to compare.py as a result line
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"[:500]})
        code = 1
    sys.exit(code)
