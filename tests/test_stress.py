"""The stress harness (``duroxide_trio.stress``): every scenario on SQLite, failure detection, fail-fast,
tracked results and JSON output."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

import duroxide_trio as dt
from duroxide_trio import stress
from duroxide_trio.stress import _report as report

SMOKE = dict(duration=1.0, max_concurrent=4, tasks_per_instance=3, activity_delay_ms=5, wait_timeout=30.0)


def assert_sane(result: stress.StressResult, config: stress.StressConfig) -> None:
    failures = [f"{f.kind}: {f.message}" for f in result.failures[:3]]
    assert result.success_rate == 100.0, failures
    assert result.passed
    assert result.completed > 0
    assert result.launched == result.completed
    assert result.failed == 0 and result.failed_other == 0
    lat = result.latency_ms
    assert 0 < lat.p50 <= lat.p95 <= lat.p99 <= lat.max
    assert lat.count == result.completed
    assert lat["p50"] == lat.p50
    assert min(lat.p50, lat.mean) > 0
    assert result.overall_throughput > 0
    assert result.activities_completed > 0
    assert result.load_duration_s == pytest.approx(config.duration, abs=0.3)
    assert result.duration_s >= result.load_duration_s
    assert result.peak_rss_mb > 10
    assert result.cpu_percent > 0
    assert result.timeline and sum(p.completed for p in result.timeline) == result.completed
    assert result.scenario == config.scenario and result.provider.startswith("sqlite")


@pytest.mark.anyio
async def test_fanout_on_sqlite(anyio_backend: str) -> None:
    config = stress.StressConfig(**SMOKE, scenario="fanout")
    seen: list[str] = []
    result = await stress.run(dt.SqliteFactory(), config, on_progress=lambda m: seen.append(m.phase))
    assert_sane(result, config)
    assert result.backend == anyio_backend
    assert result.orch_throughput > 0
    assert result.activity_throughput >= result.orch_throughput * 3 * 0.5
    assert "load" in seen and seen[-1] == "done"
    # JSON-ready, with the per-instance latencies rather than the inverse of the throughput.
    data = json.loads(json.dumps(result.as_dict()))
    assert data["latency_ms"]["p50"] == pytest.approx(result.latency_ms.p50, abs=0.01)
    assert data["config"]["scenario"] == "fanout"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize(
    "scenario,tasks",
    [
        ("large-payload", 2),
        ("timers", 3),
        ("sub-orchestrations", 3),
        ("continue-as-new", 3),
        ("events", 3),
        ("kv", 3),
        ("sessions", 4),
        ("mixed", 2),
    ],
)
async def test_scenario_on_sqlite(scenario: str, tasks: int, anyio_backend: str) -> None:
    config = stress.StressConfig(**(SMOKE | {"tasks_per_instance": tasks}), scenario=scenario)
    result = await stress.run(dt.SqliteFactory(), config)
    assert_sane(result, config)
    if scenario == "mixed":
        assert result.completed >= 8  # every part of the round robin ran at least once


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_events_on_asyncio(anyio_backend: str) -> None:
    config = stress.StressConfig(**SMOKE, scenario="events")
    assert_sane(await stress.run(dt.SqliteFactory(":memory:"), config), config)


def _wrong_registry(kind: str) -> dt.Registry:
    registry = dt.Registry()

    @registry.activity("StressProcessTask")
    async def wrong(ctx: dt.ActivityContext, item: list[int]) -> int:
        if kind == "raises":
            raise RuntimeError("deliberately broken activity")
        seed, i = item
        return seed * 1000 + i + 1  # off by one: every fanout output is wrong

    return registry


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("kind", ["wrong-value", "raises"])
async def test_wrong_outputs_are_failures(kind: str, anyio_backend: str) -> None:
    config = stress.StressConfig(**SMOKE, scenario="fanout")
    result = await stress.run(dt.SqliteFactory(), config, registry=_wrong_registry(kind))
    assert result.launched > 0
    assert result.completed == 0 and result.failed == result.launched
    assert result.success_rate == 0.0 and not result.passed
    assert result.latency_ms.count == 0
    if kind == "wrong-value":
        assert result.failed_other == result.failed
        assert {f.kind for f in result.failures} == {"wrong_output"}
        assert "expected" in result.failures[0].message
    else:
        assert result.failed_application == result.failed
        assert "deliberately broken activity" in result.failures[0].message
    assert result.unexpected_errors >= result.failed


@pytest.mark.anyio
async def test_sessions_scenario_fails_when_the_runtime_gives_sessions_no_affinity(
    anyio_backend: str, tmp_path
) -> None:
    """A provider without the worker-routing capability: session items run side by side, and every
    ``sessions`` instance is a wrong output saying so."""
    import chaos_support

    config = stress.StressConfig(**(SMOKE | {"tasks_per_instance": 4}), scenario="sessions")
    result = await stress.run(chaos_support.WithoutSessionsFactory(str(tmp_path / "ns.db")), config)
    assert result.launched > 0 and result.completed == 0 and not result.passed
    assert {f.kind for f in result.failures} == {"wrong_output"}
    assert all("session step" in f.message for f in result.failures), result.failures[:3]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_kv_scenario_fails_when_the_store_loses_or_repeats_writes(anyio_backend: str, tmp_path) -> None:
    """The ``kv`` scenario's check reads the store (``Client.get_values``), not only the output."""
    import chaos_support

    class LossyFactory:
        def description(self) -> str:
            return "lossy kv"

        async def create_provider(self):
            return await chaos_support.open_lossy_kv(str(tmp_path / "lossy.db"))

    config = stress.StressConfig(**(SMOKE | {"tasks_per_instance": 3}), scenario="kv")
    result = await stress.run(LossyFactory(), config)
    assert result.launched > 0 and not result.passed
    assert any("wrong key-value state in the store" in f.message for f in result.failures), result.failures[:3]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_timeouts_count_as_failed_other(anyio_backend: str) -> None:
    config = stress.StressConfig(
        duration=0.5, max_concurrent=3, tasks_per_instance=2, activity_delay_ms=600, wait_timeout=0.2
    )
    result = await stress.run(dt.SqliteFactory(), config)
    assert result.failed == result.launched > 0
    assert result.failed_other == result.failed
    assert {f.kind for f in result.failures} == {"timeout"}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_fail_fast_stops_and_writes_a_crash_report(anyio_backend: str, tmp_path) -> None:
    config = stress.StressConfig(**(SMOKE | {"duration": 5.0}), scenario="fanout")
    with anyio.fail_after(4):  # stops long before the 5 s of load
        with pytest.raises(stress.StressAborted) as info:
            await stress.run(dt.SqliteFactory(), config, registry=_wrong_registry("raises"), fail_fast=True)
    aborted = info.value
    assert "deliberately broken activity" in str(aborted)
    assert aborted.result.failed >= 1 and aborted.result.load_duration_s < 4
    path = report.write_crash_report(
        tmp_path,
        error=aborted.error,
        traceback_text=aborted.traceback,
        provider="postgres",
        database_url="postgresql://stress:hunter2@db.example.com:5432/app",
        config=config,
        errors=aborted.errors,
        result=aborted.result,
    )
    assert path.name.startswith("stress_crash_") and path.suffix == ".log"
    text = path.read_text()
    for expected in ("CRASH REPORT", "Python:", "duroxide-trio", "Provider:  postgres", "fanout, 5s",
                     "deliberately broken activity", "Error summary at crash", "Unexpected errors:"):  # fmt: skip
        assert expected in text, expected
    assert "postgresql://stress:***@db.example.com:5432/app" in text
    assert "hunter2" not in text


# ---------------------------------------------------------------------------------------------------------
# reporting


def _result(
    orch: float, p50: float, *, scenario: str = "fanout", completed: int = 100
) -> stress.StressResult:
    config = stress.StressConfig(scenario=scenario)
    return stress.StressResult(
        scenario=scenario, provider="postgres", config=config, launched=completed, completed=completed,
        failed=0, failed_infrastructure=0, failed_configuration=0, failed_application=0, failed_other=0,
        success_rate=100.0, orch_throughput=orch, activity_throughput=orch * 5, overall_throughput=orch,
        latency_ms=stress.LatencyStats(mean=p50, p50=p50, p95=p50 * 2, p99=p50 * 3, max=p50 * 4, count=completed),
        peak_rss_mb=40.0, cpu_percent=50.0, duration_s=10.2, load_duration_s=10.0, drain_duration_s=0.2,
        activities_completed=completed * 5, orchestration_turns=completed * 2, expected_errors=0,
        unexpected_errors=0, backend="trio", started_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def test_tracking_appends_entries_and_warns_on_regressions(tmp_path) -> None:
    url = "postgresql://stress:hunter2@db.example.com:5432/app"
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    path, warnings = report.append_tracking(
        tmp_path, [_result(100.0, 10.0), _result(50.0, 40.0, scenario="timers")],
        provider="postgres", database_url=url, commit="abc1234", branch="main", now=t0,
    )  # fmt: skip
    assert path.name == "stress-test-results-db.md" and warnings == []
    # Within the thresholds: 15 % slower, p50 +40 %.
    _, warnings = report.append_tracking(
        tmp_path, [_result(85.0, 14.0)], provider="postgres", database_url=url,
        commit="def5678", branch="main", now=t0 + timedelta(hours=1),
    )  # fmt: skip
    assert warnings == []
    # Compared with the previous entry of the same configuration (85 / 14), not the first one.
    _, warnings = report.append_tracking(
        tmp_path, [_result(60.0, 30.0), _result(50.0, 40.0, scenario="timers")], provider="postgres",
        database_url=url, commit="0badf00", branch="perf", now=t0 + timedelta(hours=2), cloud=True,
    )  # fmt: skip
    assert len(warnings) == 2
    assert "throughput dropped 29%" in warnings[0] and "85.00 -> 60.00" in warnings[0]
    assert "p50 latency rose 114%" in warnings[1] and "def5678" in warnings[1]
    text = path.read_text()
    assert text.count("## Run: ") == 3
    assert "## Run: 2026-01-01 02:00:00 UTC" in text
    assert "`0badf00` (branch: `perf`)" in text and "Cloud postgres" in text
    assert "| Provider | Config | Completed | Failed | Infra | Config | App | Success % | Orch/s |" in text
    assert "| postgres (fanout) | 2:2 | 100 |" in text
    assert "⚠️" in text and "first entry for this configuration" in text
    assert "postgresql://stress:***@db.example.com:5432/app" in text and "hunter2" not in text


def test_results_file_names_by_database_host() -> None:
    assert report.db_host("sqlite", None) == "sqlite"
    assert report.db_host("sqlite-memory", None) == "sqlite"
    assert report.db_host("postgres", "postgresql://u:p@localhost:5432/x") == "localhost"
    assert report.db_host("postgres", "postgresql://u:p@127.0.0.1/x") == "localhost"
    assert report.db_host("postgres", "postgresql:///x?host=/var/run/postgresql") == "localhost"
    assert (
        report.db_host("postgres", "postgresql://u:p@duroxide-pg.postgres.database.azure.com/x")
        == "duroxide-pg"
    )
    assert report.db_host("postgres", "postgresql://u:p@pg-box:5432/x") == "pg-box"


def test_json_output_has_every_run_and_no_password(tmp_path) -> None:
    out = tmp_path / "sub" / "stress.json"
    results = [_result(100.0, 10.0), _result(50.0, 40.0, scenario="timers")]
    report.write_json(
        out, results, provider="postgres", database_url="postgresql://stress:hunter2@db.example.com/app"
    )
    text = out.read_text()
    assert "hunter2" not in text
    doc = json.loads(text)
    assert doc["database_url"] == "postgresql://stress:***@db.example.com/app"
    assert doc["provider"] == "postgres" and doc["passed"] is True
    assert {"python", "duroxide-trio", "trio", "anyio", "sqlite"} <= set(doc["versions"])
    assert [r["config"]["scenario"] for r in doc["runs"]] == ["fanout", "timers"]
    run = doc["runs"][1]
    assert run["runtime_options"]["orchestration_concurrency"] == 2
    assert run["result"]["latency_ms"] == {"mean": 40.0, "p50": 40.0, "p95": 80.0, "p99": 120.0, "max": 160.0,
                                           "count": 100}  # fmt: skip
    for key in ("launched", "completed", "failed", "failed_infrastructure", "failed_configuration",
                "failed_application", "failed_other", "success_rate", "orch_throughput", "activity_throughput",
                "peak_rss_mb", "cpu_percent", "duration_s", "timeline", "failures"):  # fmt: skip
        assert key in run["result"], key


async def test_config_validation_and_presets(tmp_path: Path, anyio_backend: str) -> None:
    # The scenario name is checked where the catalogue is used: before any provider is opened.
    unknown = stress.StressConfig(scenario="nope")
    with pytest.raises(ValueError, match="unknown stress scenario 'nope'; choose one of: fanout"):
        stress.get_scenario("nope")
    with pytest.raises(ValueError, match="unknown stress scenario 'nope'"):
        await stress.run(dt.SqliteFactory(str(tmp_path / "never.db")), unknown)
    with pytest.raises(ValueError, match="unknown stress scenario 'nope'"):
        await stress.run_suite(dt.SqliteFactory(str(tmp_path / "never.db")), [stress.StressConfig(), unknown])
    assert not (tmp_path / "never.db").exists()
    with pytest.raises(ValueError, match="scenario must be a scenario name"):
        stress.StressConfig(scenario="")
    with pytest.raises(ValueError, match="max_concurrent"):
        stress.StressConfig(max_concurrent=0)
    assert stress.StressConfig().concurrency_label == "2:2"
    assert stress.StressConfig(**stress.PRESETS["high-concurrency"]).concurrency_label == "4:4"
    assert set(stress.SCENARIOS) == {
        "fanout", "sequential", "large-payload", "timers", "sub-orchestrations", "continue-as-new", "events", "kv",
        "sessions", "mixed",
    }  # fmt: skip
