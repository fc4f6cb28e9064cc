"""Instructions per orchestration, counted by valgrind's callgrind.

Wall-clock throughput on a shared VM moves by ±30 % within an hour, and this project's machine has no
hardware counters (``perf stat -e instructions`` is "not supported"), so a small speed-up cannot be told
from the noise with ``duroxide-trio stress``. Callgrind counts the instructions the process executes,
whatever else the machine is doing: run this before and after a change, on the same interpreter.

    python bench/instructions.py                      # 200 fan-out orchestrations, 20 in flight, sqlite-memory
    python bench/instructions.py --orchestrations 400 --provider sqlite --tasks 5 --in-flight 20
    python bench/instructions.py --json out.json

It re-runs itself under ``valgrind --tool=callgrind --dump-before=getppid``. The workload (the stress
tool's own ``fanout`` or ``sequential`` scenario, with its output check: ``--tasks`` activities that
sleep ``--activity-delay-ms``, fanned out and joined, or one after another) calls ``os.getppid()`` right before the measured instances start and right after the last
one completed; callgrind writes its counters at each call, so start-up, the warm-up instances and the
shutdown are left out. Everything the process runs in between counts: the event loop, the SQLite
connection thread, the client's starts and waits. Batching depends on timing, and under callgrind the
process runs ~50x slower than natively, so the figure is a cost to compare between two versions of the
code, not a prediction of CPU time; repeated runs agree within about 1 %.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orchestrations", type=int, default=200, help="measured instances (default 200)")
    p.add_argument("--warmup", type=int, default=40, help="instances run before measuring (default 40)")
    p.add_argument("--in-flight", type=int, default=20, help="instances in flight (default 20)")
    p.add_argument("--tasks", type=int, default=5, help="activities per instance (default 5)")
    p.add_argument("--activity-delay-ms", type=int, default=10, help="activity sleep (default 10)")
    p.add_argument("--provider", choices=("sqlite-memory", "sqlite"), default="sqlite-memory")
    p.add_argument("--scenario", choices=("fanout", "sequential"), default="fanout",
                   help="the stress scenario to run (default fanout)")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # the run under valgrind
    return p


async def _workload(args: argparse.Namespace, sqlite_path: str) -> None:
    import anyio

    import duroxide_trio as dt
    from duroxide_trio.stress import StressConfig, get_scenario

    # The stress tool's own scenario (its activity, orchestration and output check), so this counts
    # exactly what `duroxide-trio stress --scenario ...` runs.
    config = StressConfig(max_concurrent=args.in_flight, tasks_per_instance=args.tasks,
                          activity_delay_ms=args.activity_delay_ms, scenario=args.scenario)
    scenario = get_scenario(args.scenario)
    registry = dt.Registry()
    scenario.register(registry, config)
    if args.provider == "sqlite":
        provider = await dt.SqliteProvider.open(sqlite_path)
    else:
        provider = await dt.SqliteProvider.in_memory()
    options = dt.RuntimeOptions(orchestration_concurrency=config.orchestration_concurrency,
                                worker_concurrency=config.worker_concurrency)
    async with provider, dt.open_runtime(provider, registry, options) as runtime:
        client = runtime.client
        slots = anyio.Semaphore(args.in_flight)

        async def one(seq: int) -> None:
            try:
                launch = scenario.plan(seq, config)
                instance_id = f"bench-{seq}"
                await client.start_orchestration(instance_id, launch.orchestration, launch.input)
                state = await client.wait_for_orchestration(instance_id, timeout=600)
                reason = launch.check(state.output, state) if state.status is dt.Status.COMPLETED else (
                    f"{state.status}: {state.error}")
                if reason is not None:
                    raise SystemExit(f"{instance_id}: {reason}")
            finally:
                slots.release()

        async def batch(first: int, count: int) -> None:
            async with anyio.create_task_group() as tg:
                for seq in range(first, first + count):
                    await slots.acquire()
                    tg.start_soon(one, seq)

        await batch(0, args.warmup)
        os.getppid()  # callgrind dumps its counters here: what follows is measured
        await batch(args.warmup, args.orchestrations)
        os.getppid()  # ... and here


def _inner(args: argparse.Namespace) -> None:
    import anyio

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(_workload, args, os.path.join(tmp, "bench.db"), backend="trio")


def _totals(path: Path) -> int:
    match = re.search(r"^totals:\s*(\d+)", path.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no totals in {path}")
    return int(match.group(1))


def main() -> None:
    args = _parser().parse_args()
    if args.inner:
        _inner(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={out}",
               sys.executable, __file__, "--inner", *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"the run under valgrind failed (exit code {proc.returncode})")
        dumps = sorted(Path(tmp).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        if len(dumps) != 2:
            raise SystemExit(f"expected 2 counter dumps (the two markers), got {len(dumps)}: something else "
                             "called getppid()")
        measured = _totals(dumps[1])
    per = measured / args.orchestrations
    result = {"scenario": args.scenario, "orchestrations": args.orchestrations, "in_flight": args.in_flight, "tasks": args.tasks,
              "activity_delay_ms": args.activity_delay_ms, "provider": args.provider,
              "instructions": measured, "instructions_per_orchestration": round(per)}
    print(f"{per / 1e6:.2f} M instructions per orchestration ({measured:,} for {args.orchestrations}, "
          f"{args.scenario}, {args.in_flight} in flight, {args.tasks} activities of {args.activity_delay_ms} ms, "
          f"{args.provider})")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
