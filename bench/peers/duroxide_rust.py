"""Driver for the Rust duroxide core through its PyPI binding (``duroxide``, 0.2.2 measured).

    python bench/peers/duroxide_rust.py --provider postgres --database-url postgresql://.../dx_compare_duroxide
    python bench/peers/duroxide_rust.py --provider sqlite --sqlite-path /tmp/x/duroxide.db

The workload is the stress tool's ``fanout`` scenario written against duroxide's API: orchestration
``Fanout`` is a generator that yields ``ctx.all_typed`` over ``tasks`` activities ``ProcessTask([seed, i])``;
each activity sleeps ``activity_delay_ms`` (``time.sleep``; duroxide runs Python activities as plain
functions from its Rust worker threads) and returns ``seed * 1000 + i``; the instance returns
``{"seed", "count", "sum"}``, checked by the harness.

Knobs, mapped one to one:

- ``--orch-concurrency`` → ``RuntimeOptions(orchestration_concurrency=...)`` (duroxide's orchestration
  dispatcher concurrency; ours is ``RuntimeOptions.orchestration_concurrency``);
- ``--worker-concurrency`` → ``RuntimeOptions(worker_concurrency=...)`` (duroxide's activity dispatcher
  concurrency: how many activities run at once in this runtime; ours has the same number of activity
  fetch loops, each of which may keep several activities running);
- everything else is duroxide's default (``dispatcher_poll_interval_ms=100``, lock timeouts).

Client side: ``Client.start_orchestration`` then ``Client.wait_for_orchestration`` — duroxide's own way
to wait for a result — one blocking call pair per instance in a thread of a pool sized
``max_concurrent`` (the binding's calls release the GIL). PostgreSQL: ``PostgresProvider.connect`` on
the database given (duroxide creates its tables in the ``public`` schema of that database); SQLite:
``SqliteProvider.open`` on a new file.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any

import _harness
import duroxide


def main() -> int:
    args = _harness.parser(__doc__.splitlines()[0]).parse_args()
    if args.provider == "postgres":
        provider: Any = duroxide.PostgresProvider.connect(args.database_url)
    else:
        provider = duroxide.SqliteProvider.open(args.sqlite_path)
    options = duroxide.RuntimeOptions(
        orchestration_concurrency=args.orch_concurrency, worker_concurrency=args.worker_concurrency
    )
    runtime = duroxide.Runtime(provider, options)
    delay = args.activity_delay_ms / 1000.0

    def process_task(ctx: Any, item: list[int]) -> int:
        if delay:
            time.sleep(delay)
        seed, i = item
        return _harness.activity_value(seed, i)

    def fanout(ctx: Any, input: dict[str, int]) -> Any:
        seed, n = input["seed"], input["tasks"]
        results = yield ctx.all_typed([ctx.schedule_activity("ProcessTask", [seed, i]) for i in range(n)])
        return {"seed": seed, "count": len(results), "sum": sum(results)}

    runtime.register_activity("ProcessTask", process_task)
    runtime.register_orchestration("Fanout", fanout)
    runtime.start()
    client = duroxide.Client(provider)
    run_id = f"{time.time_ns():x}"
    timeout_ms = int(args.wait_timeout * 1000)

    def start_and_wait(seq: int) -> Any:
        instance_id = f"cmp-{run_id}-{seq}"
        client.start_orchestration(instance_id, "Fanout", {"seed": seq, "tasks": args.tasks})
        state = client.wait_for_orchestration(instance_id, timeout_ms)
        if state.status != "Completed":
            raise RuntimeError(f"status {state.status}: {state.error}")
        return state.output

    pool = ThreadPoolExecutor(max_workers=args.max_concurrent, thread_name_prefix="cmp-client")

    async def run_one(seq: int) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, start_and_wait, seq)

    try:
        result = asyncio.run(
            _harness.measure(
                run_one,
                lambda seq: _harness.expected_output(seq, args.tasks),
                duration=args.duration,
                max_concurrent=args.max_concurrent,
                wait_timeout=args.wait_timeout + 5.0,  # the client call has its own timeout
            )
        )
    finally:
        pool.shutdown(wait=True)
        runtime.shutdown(5000)
    _harness.emit({
        **result,
        "peer": "Rust duroxide",
        "version": version("duroxide"),
        "provider": args.provider,
        "knobs": {
            "orchestration_concurrency": args.orch_concurrency,
            "worker_concurrency": args.worker_concurrency,
            "dispatcher_poll_interval_ms": 100,
        },
    })
    return 0


if __name__ == "__main__":
    _harness.main_guard(main)
