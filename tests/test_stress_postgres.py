"""The stress harness on PostgreSQL (needs the ``pg_url`` fixture of ``conftest_pg``; skips without a
server). Each run gets its own schema from ``PostgresFactory``, dropped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from duroxide_trio import stress

SMOKE = dict(duration=2.0, max_concurrent=10, tasks_per_instance=3, activity_delay_ms=5, wait_timeout=60.0)


def _factory(url: str):  # imported lazily: the PostgreSQL provider is optional
    from duroxide_trio.providers.postgres import PostgresFactory

    return PostgresFactory(url, schema=None, pool_max=None)


def _assert_passed(result: stress.StressResult) -> None:
    assert result.success_rate == 100.0, [f"{f.kind}: {f.message}" for f in result.failures[:3]]
    assert result.completed > 0 and result.failed == 0 and result.failed_infrastructure == 0
    lat = result.latency_ms
    assert 0 < lat.p50 <= lat.p95 <= lat.p99 <= lat.max
    assert result.orch_throughput > 1.0  # the seeds' minimum, even on a remote server


@pytest.mark.anyio
async def test_fanout_on_postgres(pg_url: str, anyio_backend: str) -> None:
    result = await stress.run(_factory(pg_url), stress.StressConfig(**SMOKE, scenario="fanout"))
    _assert_passed(result)
    assert result.provider.startswith("postgres")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_mixed_on_postgres(pg_url: str, anyio_backend: str) -> None:
    config = stress.StressConfig(**(SMOKE | {"tasks_per_instance": 2, "duration": 3.0}), scenario="mixed")
    _assert_passed(await stress.run(_factory(pg_url), config))


def test_cli_on_postgres_masks_the_url(pg_url: str, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "DATABASE_URL": pg_url,
        "COLUMNS": "200",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from duroxide_trio.cli import main; main()", "stress", "--provider", "postgres",
         "--duration", "2", "--pool-max", "5", "--json", "run.json", "--track", "--results-dir", "."],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "postgres (fanout)" in proc.stdout and "PASS" in proc.stdout
    (tracked,) = tmp_path.glob("stress-test-results-*.md")
    written = proc.stdout + proc.stderr + (tmp_path / "run.json").read_text() + tracked.read_text()
    from urllib.parse import urlsplit

    password = urlsplit(pg_url).password
    if password:
        assert password not in written
