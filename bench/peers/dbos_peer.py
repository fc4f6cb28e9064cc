"""Driver for DBOS Transact (PyPI ``dbos``, 3.4.x measured).

    python bench/peers/dbos_peer.py --provider postgres --database-url postgresql://.../dx_compare_dbos
    python bench/peers/dbos_peer.py --provider sqlite --sqlite-path /tmp/x/dbos.sqlite

The workload is the stress tool's ``fanout`` scenario written the way DBOS documents fan-out inside one
workflow: workflow ``cmp_fanout`` is an ``async def`` that gathers ``tasks`` async steps
``cmp_process_task(seed, i)`` with ``asyncio.gather``; each step ``await asyncio.sleep``\\s
``activity_delay_ms`` and returns ``seed * 1000 + i`` (DBOS checkpoints each step's output in its system
database); the workflow returns ``{"seed", "count", "sum"}``, checked by the harness.

Knobs: DBOS has no dispatchers. ``DBOS.start_workflow_async`` runs the workflow at once as a task on
this process's event loop and its steps run inline, so the number in flight (``--max-concurrent``) is the
only concurrency bound; ``--orch-concurrency`` and ``--worker-concurrency`` have no DBOS equivalent and
are recorded but not used. (A DBOS ``Queue`` with ``worker_concurrency`` would be the nearest thing to
an activity dispatcher, but it adds a polling hop per workflow and is not how DBOS runs steps of one
workflow.) Everything else is DBOS's default (system database pool of 20 connections, LISTEN/NOTIFY).

Client side: ``await handle.get_result()`` on the handle ``start_workflow_async`` returned. Storage:
PostgreSQL ``system_database_url`` = the database given (DBOS creates its ``dbos`` schema there, and the
database itself if missing); SQLite: ``sqlite:///<file>``.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

import _harness
from dbos import DBOS, DBOSConfig

_delay = 0.0


@DBOS.step()
async def cmp_process_task(seed: int, i: int) -> int:
    """One activity: sleep, then return the value the harness expects."""
    if _delay:
        await asyncio.sleep(_delay)
    return _harness.activity_value(seed, i)


@DBOS.workflow()
async def cmp_fanout(seed: int, tasks: int) -> dict[str, int]:
    """The fan-out instance: gather the steps, return their count and sum."""
    results = await asyncio.gather(*[cmp_process_task(seed, i) for i in range(tasks)])
    return {"seed": seed, "count": len(results), "sum": sum(results)}


def main() -> int:
    global _delay
    args = _harness.parser(__doc__.splitlines()[0]).parse_args()
    _delay = args.activity_delay_ms / 1000.0
    if args.provider == "postgres":
        url = args.database_url
    else:
        url = f"sqlite:///{args.sqlite_path}"
    config: DBOSConfig = {"name": "dx-compare", "system_database_url": url, "log_level": "WARNING"}

    async def run() -> dict[str, Any]:
        DBOS(config=config)
        DBOS.launch()
        try:

            async def run_one(seq: int) -> Any:
                handle = await DBOS.start_workflow_async(cmp_fanout, seq, args.tasks)
                return await handle.get_result()

            return await _harness.measure(
                run_one,
                lambda seq: _harness.expected_output(seq, args.tasks),
                duration=args.duration,
                max_concurrent=args.max_concurrent,
                wait_timeout=args.wait_timeout,
            )
        finally:
            DBOS.destroy()

    result = asyncio.run(run())
    _harness.emit({
        **result,
        "peer": "DBOS",
        "version": version("dbos"),
        "provider": args.provider,
        "knobs": {"dispatchers": "none (workflows run in-process as started)", "sys_db_pool_size": 20},
    })
    return 0


if __name__ == "__main__":
    _harness.main_guard(main)
