"""Users' ``mypy --strict`` sees duroxide-trio as a typed package: the built wheel carries ``py.typed`` and
a small program using the public API passes; a wrong call is reported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = '''
from datetime import timedelta

import trio

import duroxide_trio as dt

registry = dt.Registry()


@registry.activity("Double")
async def double(ctx: dt.ActivityContext, item: int) -> int:
    ctx.logger.info("attempt %d of %s for %s", ctx.attempt, ctx.activity_name, ctx.instance_id)
    return item * 2


@registry.activity()
def shout(ctx: dt.ActivityContext, text: str) -> str:
    return text.upper()


@registry.orchestration("FanOut", version="1.0.0")
async def fan_out(ctx: dt.OrchestrationContext, n: int) -> int:
    await ctx.schedule_timer(timedelta(milliseconds=1))
    results = await ctx.join([ctx.schedule_activity("Double", i) for i in range(n)])
    return sum(results)


async def main(path: str) -> int:
    provider = await dt.SqliteProvider.open(path)
    options = dt.RuntimeOptions(orchestration_concurrency=2, worker_concurrency=2, shutdown_grace=1.0)
    async with provider, dt.open_runtime(provider, registry, options):
        client = dt.Client(provider)
        await client.start_orchestration("order-1", "FanOut", 5)
        state: dt.OrchestrationState = await client.wait_for_orchestration("order-1", timeout=10)
        if state.status is dt.Status.COMPLETED:
            return int(state.output)
        return -1


if __name__ == "__main__":
    print(trio.run(main, "state.db"))
'''

WRONG_CODE = '''
import duroxide_trio as dt


async def main() -> None:
    provider = await dt.SqliteProvider.open(42)
    dt.Client(provider).start_orchestration(1, "X")
'''


def build_wheel(out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("duroxide_trio-*.whl")
    return wheel


def mypy(tmp: Path, site: Path, name: str, code: str) -> subprocess.CompletedProcess[str]:
    (tmp / name).write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"} | {"PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable", sys.executable,
         "--cache-dir", str(tmp / ".mypy_cache"), name],
        cwd=tmp, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip


def test_users_mypy_strict_sees_a_typed_package(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    wheel = build_wheel(tmp_path / "dist")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "duroxide_trio/py.typed" in names
        assert "duroxide_trio/providers/postgres/migrations/0001_initial.sql" in names
        z.extractall(site)
    work = tmp_path / "user"
    work.mkdir()

    good = mypy(work, site, "app.py", USER_CODE)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Success: no issues found" in good.stdout

    bad = mypy(work, site, "wrong.py", WRONG_CODE)
    assert bad.returncode == 1, bad.stdout
    assert 'Argument 1 to "open" of "SqliteProvider" has incompatible type "int"' in bad.stdout
    assert 'Argument 1 to "start_orchestration" of "Client" has incompatible type "int"' in bad.stdout
    assert "missing library stubs or py.typed" not in bad.stdout
