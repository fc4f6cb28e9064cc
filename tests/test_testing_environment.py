"""``duroxide_trio.testing.TestEnvironment``: what a user writing tests for orchestrations relies on."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
import trio
import trio.testing

import duroxide_trio as dt
from duroxide_trio.testing import TestEnvironment

START = datetime(2030, 1, 1, tzinfo=UTC)
# Such a test takes about 0.1 s here; the bound only has to tell virtual time from an hour, on a loaded CI.
REAL_TIME_BOUND = 5.0

registry = dt.Registry()


@registry.activity("Charge")
async def charge(ctx: dt.ActivityContext, amount: int) -> str:
    return f"charged {amount}"


@registry.activity("Ping")
async def ping(ctx: dt.ActivityContext) -> str:  # takes no input
    return "pong"


@registry.activity("Label")
def label(ctx: dt.ActivityContext, text: str) -> str:  # sync: runs in a thread
    return text.upper()


@registry.activity("OnAsyncio", loop="asyncio")
async def on_asyncio(ctx: dt.ActivityContext, x: int) -> str:
    import asyncio

    await asyncio.sleep(0)  # asyncio-only code, even when the runtime runs on Trio
    return f"asyncio {x}"


@registry.orchestration("AsyncioActivity")
async def asyncio_activity(ctx: dt.OrchestrationContext, x: int) -> str:
    return await ctx.schedule_activity("OnAsyncio", x)


@registry.orchestration("Race")
async def race(ctx: dt.OrchestrationContext, amount: int) -> list[str]:
    receipt = await ctx.schedule_activity("Charge", amount)
    index, _ = await ctx.select(ctx.wait_for_event("Shipped"), ctx.schedule_timer(timedelta(hours=1)))
    return [receipt, "shipped" if index == 0 else "timeout", ctx.now().isoformat()]


@registry.orchestration("Steps")
async def steps(ctx: dt.OrchestrationContext) -> list[str]:
    seen = []
    for delay in (10, 60, 3600):
        await ctx.schedule_timer(delay)
        seen.append(ctx.now().isoformat())
        ctx.set_custom_status(len(seen))
    return seen


@registry.orchestration("WaitForever")
async def wait_forever(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.wait_for_event("Never")


@registry.orchestration("Labels")
async def labels(ctx: dt.OrchestrationContext, texts: list[str]) -> list[str]:
    return await ctx.join([ctx.schedule_activity("Label", t) for t in texts])


@registry.orchestration("PingTwice")
async def ping_twice(ctx: dt.OrchestrationContext) -> list[str]:
    return [await ctx.schedule_activity("Ping"), await ctx.schedule_activity("Ping")]


@registry.orchestration("Missing")
async def missing(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_activity("NotInRegistry", 1)


@pytest.mark.anyio
async def test_an_hour_timer_and_a_day_timeout_take_no_real_time():
    began = time.monotonic()
    async with TestEnvironment(registry, start=START) as env:
        await env.client.start_orchestration("o-1", "Race", 5)
        state = await env.client.wait_for_orchestration("o-1", timeout=timedelta(hours=24))
        assert state.status is dt.Status.COMPLETED
        assert state.output == ["charged 5", "timeout", (START + timedelta(hours=1)).isoformat()]
        assert env.now() == START + timedelta(hours=1)
    assert time.monotonic() - began < REAL_TIME_BOUND


@pytest.mark.anyio
async def test_an_event_raised_before_waiting_wins_the_race():
    async with TestEnvironment(registry, start=START) as env:
        await env.client.start_orchestration("o-1", "Race", 5)
        await env.client.raise_event("o-1", "Shipped", {"tracking": "T"})
        state = await env.client.wait_for_orchestration("o-1", timeout=timedelta(hours=24))
        assert state.output[:2] == ["charged 5", "shipped"]
        assert env.now() == START  # nothing had to wait


@pytest.mark.anyio
async def test_timeouts_are_virtual_too():
    began = time.monotonic()
    async with TestEnvironment(registry, start=START) as env:
        await env.client.start_orchestration("w-1", "WaitForever")
        with pytest.raises(TimeoutError, match="did not finish within 1 day"):
            await env.client.wait_for_orchestration("w-1", timeout=timedelta(days=1))
        assert env.now() == START + timedelta(days=1)
    assert time.monotonic() - began < REAL_TIME_BOUND


@pytest.mark.anyio
async def test_time_stands_still_until_the_test_moves_it():
    async with TestEnvironment(registry, start=START) as env:
        await env.client.start_orchestration("s-1", "Steps")
        await env.advance(0)  # let the runtime do what it can now
        assert (await env.client.get_status("s-1")).status is dt.Status.RUNNING
        assert env.now() == START
        await env.advance(timedelta(minutes=30))  # fires the 10 s and the 60 s timers, in order
        state = await env.client.get_status("s-1")
        assert state.custom_status == 2 and env.now() == START + timedelta(minutes=30)
        await env.sleep(timedelta(hours=2))
        state = await env.client.get_status("s-1")
        assert state.status is dt.Status.COMPLETED
        assert state.output == [
            (START + timedelta(seconds=10)).isoformat(),
            (START + timedelta(seconds=70)).isoformat(),
            (START + timedelta(seconds=3670)).isoformat(),
        ]
        assert env.now() == START + timedelta(hours=2, minutes=30)


@pytest.mark.anyio
async def test_mocks_replace_activities_and_calls_are_recorded():
    async with TestEnvironment(registry) as env:
        seen = []

        async def fake_charge(ctx, amount):
            seen.append((ctx.instance_id, amount))
            return f"fake {amount}"

        env.mock_activity("Charge", fake_charge)
        await env.client.start_orchestration("o-1", "Race", 7)
        await env.client.raise_event("o-1", "Shipped")
        state = await env.client.wait_for_orchestration("o-1", timeout=60)
        assert state.output[0] == "fake 7" and seen == [("o-1", 7)]
        [call] = env.calls("Charge")
        assert (call.instance_id, call.input, call.result, call.attempt, call.mocked) == ("o-1", 7, "fake 7", 1, True)

        env.mock_activity("Charge", raises=RuntimeError("card declined"))
        state = await env.run("Race", 8, instance_id="o-2")
        assert state.status is dt.Status.FAILED and "card declined" in state.error.message
        assert isinstance(env.calls("Charge")[-1].error, RuntimeError)

        env.mock_activity("NotInRegistry", returns=42)
        assert (await env.run("Missing", instance_id="m-1")).output == 42


@pytest.mark.anyio
async def test_a_registry_of_fakes_layered_over_the_real_one():
    fakes = dt.Registry()

    @fakes.activity("Label")
    def fake_label(ctx, text: str) -> str:
        return f"<{text}>"

    async with TestEnvironment(registry, overrides=fakes) as env:
        state = await env.run("Labels", ["a", "b"], instance_id="l-1")
        assert state.output == ["<a>", "<b>"]
        assert sorted(c.input for c in env.calls("Label")) == ["a", "b"]  # they ran concurrently
        assert not env.calls("Label")[0].mocked  # a layer is the code under test, not a mock


@pytest.mark.anyio
async def test_real_sync_activities_run_and_are_recorded():
    async with TestEnvironment(registry) as env:
        assert (await env.run("Labels", ["x"])).output == ["X"]
        assert env.calls("Label")[0].result == "X"
        assert (await env.run("PingTwice")).output == ["pong", "pong"]
        assert [(c.input, c.result) for c in env.calls("Ping")] == [(None, "pong"), (None, "pong")]
        env.mock_activity("Ping", returns="mocked")
        assert (await env.run("PingTwice")).output == ["mocked", "mocked"]
        assert (await env.run("AsyncioActivity", 3)).output == "asyncio 3"  # loop="asyncio" is kept


@pytest.mark.anyio
async def test_work_that_never_settles_is_reported():
    blocked = anyio.Event()

    async def stuck(ctx, amount):
        await blocked.wait()

    async with TestEnvironment(registry, settle_timeout=0.2) as env:
        env.mock_activity("Charge", stuck)
        await env.client.start_orchestration("o-1", "Race", 1)
        with pytest.raises(TimeoutError, match="did not settle.*1 in progress"):
            await env.advance(timedelta(hours=2))
        blocked.set()


@pytest.mark.anyio
async def test_a_failed_assertion_inside_reaches_the_test_as_itself():
    with pytest.raises(AssertionError, match="the test's own"):
        async with TestEnvironment(registry):
            raise AssertionError("the test's own")


@pytest.mark.anyio
async def test_wall_clock_mode():
    async with TestEnvironment(registry, virtual_time=False) as env:
        with pytest.raises(RuntimeError, match="virtual_time=True"):
            await env.advance(1)
        await env.client.start_orchestration("o-1", "Race", 1)
        await env.client.raise_event("o-1", "Shipped")
        assert (await env.client.wait_for_orchestration("o-1", timeout=10)).output[1] == "shipped"


def test_under_trio_mock_clock_with_autojump():
    async def main():
        async with TestEnvironment(registry, start=START) as env:
            await env.client.start_orchestration("o-1", "Race", 5)
            state = await env.client.wait_for_orchestration("o-1", timeout=timedelta(hours=24))
            return state.output, env.now()

    began = time.monotonic()
    output, now = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert output[1] == "timeout" and now == START + timedelta(hours=1)
    assert time.monotonic() - began < REAL_TIME_BOUND


# ------------------------------------------------------------------------------------------- pytest plugin
USER_CONFTEST = textwrap.dedent(
    """
    import pytest
    import duroxide_trio as dt
    from datetime import timedelta

    registry = dt.Registry()

    @registry.orchestration("Nap")
    async def nap(ctx):
        await ctx.schedule_timer(timedelta(hours=3))
        return "rested"

    @pytest.fixture
    def duroxide_registry():
        return registry
    """
)

ANYIO_TESTS = textwrap.dedent(
    """
    import pytest

    @pytest.fixture(params=["trio", "asyncio"])
    def anyio_backend(request):
        return request.param

    @pytest.mark.anyio
    async def test_nap(duroxide_env):
        state = await duroxide_env.run("Nap")
        assert state.output == "rested"
    """
)

PYTEST_TRIO_TESTS = textwrap.dedent(
    """
    import pytest
    import trio

    @pytest.mark.trio
    async def test_nap(duroxide_env):
        assert (await duroxide_env.run("Nap")).output == "rested"

    @pytest.mark.trio
    async def test_nap_with_autojump_clock(duroxide_env, autojump_clock):
        await trio.sleep(3600)  # trio's own virtual time
        assert (await duroxide_env.run("Nap")).output == "rested"
    """
)


@pytest.fixture(scope="module")
def user_suite(tmp_path_factory):
    """One pytest run (a subprocess, like a user's) over three user test directories: anyio-plugin tests,
    pytest-trio tests (with its autojump clock), and tests that forgot to define ``duroxide_registry``."""
    root = tmp_path_factory.mktemp("user_suite")
    (root / "pytest.ini").write_text("[pytest]\n")
    for name, conftest, tests in (
        ("with_anyio", USER_CONFTEST, ANYIO_TESTS),
        ("with_pytest_trio", USER_CONFTEST, PYTEST_TRIO_TESTS),
        ("without_registry", "", ANYIO_TESTS),
    ):
        (root / name).mkdir()
        (root / name / "conftest.py").write_text(conftest)
        (root / name / f"test_{name}.py").write_text(tests)
    plugins = ["-p", "trio"] if importlib.util.find_spec("pytest_trio") else ["-p", "no:trio"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugins, "-rA", "--rootdir", str(root),
         "-c", str(root / "pytest.ini"), str(root)],
        capture_output=True, text=True, timeout=120, cwd=root,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))},
    )
    return out.stdout + out.stderr


def _outcomes(output: str, directory: str) -> list[str]:
    return [line.split()[0] for line in output.splitlines()
            if line.startswith(("PASSED", "FAILED", "ERROR")) and f"{directory}/" in line]


def test_duroxide_env_fixture_with_the_anyio_plugin(user_suite):
    assert _outcomes(user_suite, "with_anyio") == ["PASSED", "PASSED"], user_suite  # trio and asyncio


@pytest.mark.skipif(importlib.util.find_spec("pytest_trio") is None, reason="pytest-trio is not installed")
def test_duroxide_env_fixture_with_pytest_trio(user_suite):
    assert _outcomes(user_suite, "with_pytest_trio") == ["PASSED", "PASSED"], user_suite


def test_duroxide_env_without_a_registry_says_what_to_do(user_suite):
    assert set(_outcomes(user_suite, "without_registry")) == {"ERROR"}, user_suite
    assert "define a fixture named 'duroxide_registry'" in user_suite
