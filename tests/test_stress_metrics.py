"""Cost per orchestration (provider calls, PostgreSQL transactions and WAL), the ``sequential`` scenario's
per-step overhead, and seeding a timer backlog or a deep history before a run. Structural checks only:
no timing is asserted."""

from __future__ import annotations

import json
import math
import time

import pytest

import duroxide_trio as dt
from duroxide_trio import stress
from duroxide_trio.providers.base import Provider, capabilities_of
from duroxide_trio.stress._counting import CountingProvider
from duroxide_trio.stress._seed import PARK_S, TIMERS_PER_DEEP, seed

SMOKE = dict(duration=1.0, max_concurrent=4, tasks_per_instance=3, activity_delay_ms=5, wait_timeout=60.0)


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest):
    if request.param == "sqlite":
        return dt.SqliteFactory()
    from duroxide_trio.providers.postgres import PostgresFactory

    return PostgresFactory(request.getfixturevalue("pg_url"), schema=None, pool_max=None)


def _finite_positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


@pytest.mark.anyio
async def test_cost_per_orchestration(factory, anyio_backend: str) -> None:
    result = await stress.run(factory, stress.StressConfig(**SMOKE, scenario="fanout"))
    assert result.passed, [f.message for f in result.failures[:3]]
    calls = result.provider_calls_by_op
    assert result.provider_calls == sum(calls.values()) > 0
    # Every instance is started with exactly one call (stored only, or stored with its first turn handed
    # over to the runtime), and each of its turns is acknowledged once.
    assert calls.get("enqueue_start", 0) + calls["enqueue_start_and_fetch"] == result.launched
    assert calls["enqueue_start_and_fetch"] > 0  # both providers hand the first turn over
    assert calls["ack_orchestration_item"] >= 2 * result.completed
    assert calls["fetch_orchestration_item"] >= 1
    assert _finite_positive(result.round_trips_per_orch)
    assert result.round_trips_per_orch == pytest.approx(result.provider_calls / result.completed)
    assert set(result.provider_call_ms) == set(calls)
    assert all(math.isfinite(v) and v >= 0 for v in result.provider_call_ms.values())
    data = json.loads(json.dumps(result.as_dict()))
    for key in ("provider_calls", "provider_calls_by_op", "round_trips_per_orch", "pg_transactions",
                "transactions_per_orch", "pg_wal_bytes", "wal_bytes_per_orch"):  # fmt: skip
        assert key in data, key
    if result.provider.startswith("postgres"):
        assert result.pg_transactions is not None and result.pg_transactions > 0
        assert result.pg_wal_bytes is not None and result.pg_wal_bytes > 0
        assert _finite_positive(result.transactions_per_orch)
        assert _finite_positive(result.wal_bytes_per_orch)
        assert result.wal_bytes_per_orch == pytest.approx(result.pg_wal_bytes / result.completed)
    else:
        assert result.pg_transactions is None and result.pg_wal_bytes is None
        assert result.transactions_per_orch is None and result.wal_bytes_per_orch is None


@pytest.mark.anyio
async def test_counting_provider_counts_what_goes_through(anyio_backend: str, tmp_path) -> None:
    inner = await dt.SqliteProvider.open(tmp_path / "c.db")
    counting = CountingProvider(inner)
    try:
        assert isinstance(counting, Provider)
        assert counting.name == inner.name and counting.notifier is inner.notifier
        client = dt.Client(counting)
        await client.start_orchestration("i-1", "Anything", 1)
        await client.get_status("i-1")
        assert counting.calls["enqueue_start"] == 1
        assert counting.total >= 2
        before = counting.total
        await client.get_system_metrics()  # through as_admin: counted into the same totals
        assert counting.total == before + 1
        counting.pause()
        await client.get_status("i-1")
        assert counting.total == before + 1
        counting.resume()
        counting.reset()
        assert counting.total == 0 and not counting.calls
        await client.get_status("i-1")
        assert counting.total >= 1 and set(counting.mean_ms()) == set(counting.calls)
    finally:
        await inner.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_sequential_reports_the_per_step_overhead(anyio_backend: str) -> None:
    n = 2
    config = stress.StressConfig(**(SMOKE | {"tasks_per_instance": n}), scenario="sequential")
    result = await stress.run(dt.SqliteFactory(), config)
    assert result.passed, [f.message for f in result.failures[:3]]
    # One after another: N + 1 turns per instance (a fan-out would take 2).
    assert result.orchestration_turns >= (n + 1) * result.completed
    assert result.activities_completed >= n * result.completed
    assert result.overhead_ms == pytest.approx(result.latency_ms.p50 - n * config.activity_delay_ms)
    assert result.step_overhead_ms == pytest.approx(result.overhead_ms / (n + 1))
    data = result.as_dict()
    assert data["step_overhead_ms"] == pytest.approx(result.step_overhead_ms, abs=0.001)
    fanout = await stress.run(dt.SqliteFactory(), config.evolve(scenario="fanout"))
    assert fanout.overhead_ms is None and fanout.step_overhead_ms is None


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_sequential_checks_every_output(anyio_backend: str) -> None:
    registry = dt.Registry()

    @registry.activity("StressProcessTask")
    async def wrong(ctx: dt.ActivityContext, item: list[int]) -> int:
        return item[0] * 1000 + item[1] + 1

    result = await stress.run(dt.SqliteFactory(), stress.StressConfig(**SMOKE, scenario="sequential"), registry=registry)
    assert result.launched > 0 and result.completed == 0
    assert {f.kind for f in result.failures} == {"wrong_output"}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_seeding_stores_the_backlog_and_the_history(factory, anyio_backend: str) -> None:
    provider = await factory.create_provider()
    try:
        timers, rows = 2500, 4100
        seeded = await seed(provider, timer_backlog=timers, deep_history=rows)
        assert seeded.pending_timers == timers
        assert seeded.history_rows >= rows
        assert seeded.seconds > 0
        client = dt.Client(provider)
        depths = await client.get_queue_depths()
        assert depths.orchestrator_queue == timers  # all still pending, none due
        parked = await client.list_instances("Running")
        assert len(parked) == math.ceil(timers / 1000)
        for instance_id in parked:
            events = await client.get_history(instance_id)
            assert sum(e.type_name == "TimerCreated" for e in events) in (1000, timers % 1000)
            assert not any(e.type_name == "TimerFired" for e in events)
        if capabilities_of(provider).work_outlook:  # none due before PARK_S from now
            outlook = await provider.work_outlook()
            assert outlook.ready == 0
            assert outlook.next_visible_ms is not None
            assert outlook.next_visible_ms > (time.time() + PARK_S - 3600) * 1000
        deep = await client.list_instances("Completed")
        assert len(deep) == math.ceil(rows / (2 * TIMERS_PER_DEEP + 2))
        for instance_id in deep:
            assert len(await client.get_history(instance_id)) == 2 * TIMERS_PER_DEEP + 2
        metrics = await client.get_system_metrics()
        assert metrics.total_events == seeded.history_rows >= rows + timers
    finally:
        await factory.cleanup(provider)
        await provider.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_run_with_a_backlog_reports_its_seeding_apart(factory, anyio_backend: str) -> None:
    config = stress.StressConfig(**SMOKE, scenario="fanout", timer_backlog=1200, deep_history=2100)
    result = await stress.run(factory, config)
    assert result.passed, [f.message for f in result.failures[:3]]
    assert result.seeded_timers == 1200
    assert result.seeded_history_rows >= 2100 + 1200
    assert result.seed_s > 0
    # The seeding runtime's calls are not in the window: every start counted is one of the run's.
    starts = result.provider_calls_by_op
    assert starts.get("enqueue_start", 0) + starts.get("enqueue_start_and_fetch", 0) == result.launched
    assert "1200 timers pending" in config.describe() and "2100 history rows" in config.describe()
