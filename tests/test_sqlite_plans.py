"""The SQLite fetches walk an index in queue order and stop at the first claimable row: none sorts the
whole queue (with a correlated lock/version check per row) on every fetch, which made a fetch's cost grow
with the queue (at 1000 instances in flight the orchestration fetch took 40 % of the connection thread)."""

from __future__ import annotations

import sqlite3

import pytest

import duroxide_trio as dt
from duroxide_trio.providers.sqlite import _queues

pytestmark = pytest.mark.anyio


async def _plan(tmp_path, sql: str, params) -> list[str]:
    path = tmp_path / "plans.db"
    provider = await dt.SqliteProvider.open(str(path))
    await provider.close()
    conn = sqlite3.connect(path)
    try:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()


@pytest.mark.parametrize("claim", ["_CLAIM_NEXT", "_CLAIM_NEXT_IN_RANGE"])
async def test_the_orchestration_claim_walks_the_visibility_index_without_sorting(tmp_path, claim):
    steps = await _plan(tmp_path, getattr(_queues, claim), {"now": 1, "lo": 10**12, "hi": 2 * 10**12 - 1})
    assert not any("TEMP B-TREE" in s for s in steps), steps
    assert any("oq_visible" in s for s in steps), steps


@pytest.mark.parametrize("query", ["_CLAIMABLE_INSTANCE", "_CLAIMABLE_INSTANCE_IN_RANGE"])
async def test_the_handed_over_turn_checks_only_its_instance(tmp_path, query):
    params = {"inst": "inst", "now": 1, "lo": 1, "hi": 2}
    steps = await _plan(tmp_path, getattr(_queues, query), params)
    assert any("oq_instance" in s for s in steps), steps
    assert not any("TEMP B-TREE" in s or s.startswith("SCAN") for s in steps), steps


async def test_the_routed_activity_fetch_does_not_sort_the_queue(tmp_path):
    params = {"now": 1, "all": 0, "untagged": 1, "tags": "[]", "owner": "w", "room": 1, "max": 5}
    steps = await _plan(tmp_path, _queues._ROUTED_CANDIDATES, params)
    assert not any("TEMP B-TREE" in s for s in steps), steps
