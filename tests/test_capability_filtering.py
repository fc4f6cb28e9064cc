"""Capability filtering: a runtime only fetches instances whose recorded version it can replay."""

from __future__ import annotations

import anyio
import attrs
import pytest
from helpers import FAST, running

import duroxide_trio as dt

pytestmark = pytest.mark.anyio

OLD = attrs.evolve(FAST, supported_replay_versions=dt.VersionRange.major(1))
NEW = attrs.evolve(FAST, supported_replay_versions=dt.VersionRange.major(2))


def _registry(label: str, versions: dict[str, str]) -> dt.Registry:
    """Orchestration "Deploy" in ``versions`` (version -> what it returns); an activity between turns."""
    reg = dt.Registry()

    @reg.activity("Step")
    async def step(ctx: dt.ActivityContext, x: int) -> int:
        return x + 1

    for version, output in versions.items():
        async def deploy(ctx: dt.OrchestrationContext, n: int, output: str = output) -> str:
            for i in range(n):
                await ctx.schedule_activity("Step", i)
            if n == 0:
                await ctx.wait_for_event("go")
            return f"{output}:{ctx.version}"

        reg.add_orchestration(deploy, "Deploy", version=version)
    return reg


def test_version_range_validation_and_membership():
    r = dt.VersionRange.major(2)
    assert r.contains("2.0.0") and r.contains("2.99.1") and not r.contains("1.9.9") and not r.contains("3")
    assert dt.VersionRange.exactly("1.2").contains("1.2.0") and not dt.VersionRange.exactly("1.2").contains("1.2.1")
    assert dt.VersionRange.between(None, "1.5").contains("0.1") and not dt.VersionRange.between(None, "1.5").contains("1.5")
    assert dt.VersionRange.any().is_any and dt.VersionRange().contains("anything")
    with pytest.raises(ValueError, match="at_least"):
        dt.VersionRange("one")
    with pytest.raises(ValueError, match="empty"):
        dt.VersionRange("2.0.0", "1.0.0")
    with pytest.raises(ValueError, match="supported_replay_versions"):
        dt.RuntimeOptions(supported_replay_versions=">=1")  # type: ignore[arg-type]


async def test_new_code_never_replays_an_instance_recorded_at_a_version_it_does_not_support(make_provider):
    old = _registry("old", {"1.0.0": "old"})
    # The new deployment still has a 1.0.0 body, but its range says it must not replay 1.x instances.
    new = _registry("new", {"1.0.0": "wrongly-replayed", "2.0.0": "new"})
    async with running(make_provider, old, OLD) as (_, client):
        await client.start_orchestration("a", "Deploy", 0)
        await client.start_orchestration("probe-old", "Deploy", 1)
        assert (await client.wait_for_orchestration("probe-old", timeout=10)).output == "old:1.0.0"
        with anyio.fail_after(10):  # a's first turn (recording version 1.0.0) has committed: no event says so
            while (await client.get_instance_info("a")) is None:
                await anyio.sleep(0.02)
    async with running(make_provider, new, NEW) as (provider, client):
        await client.raise_event("a", "go")  # the oldest message in the queue: a runtime would take it first
        await client.start_orchestration("b", "Deploy", 3)
        assert (await client.wait_for_orchestration("b", timeout=10)).output == "new:2.0.0"
        state = await client.get_status("a")
        assert state.status is dt.Status.RUNNING and state.version == "1.0.0"
        depths = await client.get_queue_depths()
        assert depths.orchestrator_queue >= 1  # a's event waits, visible in the queue depth
    async with running(make_provider, old, OLD) as (_, client):
        state = await client.wait_for_orchestration("a", timeout=10)
        assert state.status is dt.Status.COMPLETED and state.output == "old:1.0.0"


async def test_old_and_new_code_side_by_side_during_a_rolling_deploy(make_provider):
    old = _registry("old", {"1.0.0": "old"})
    new = _registry("new", {"1.0.0": "wrongly-replayed", "2.0.0": "new"})
    async with running(make_provider, old, OLD) as (provider, old_client):
        ids = [f"v1-{i}" for i in range(6)]
        for iid in ids:
            await old_client.start_orchestration(iid, "Deploy", 4, version="1.0.0")
        async with dt.open_runtime(provider, new, NEW) as new_runtime:
            client = new_runtime.client
            v2 = [f"v2-{i}" for i in range(6)]
            for iid in v2:
                await client.start_orchestration(iid, "Deploy", 4, version="2.0.0")
            for iid in ids:
                state = await client.wait_for_orchestration(iid, timeout=20)
                assert (state.status, state.output) == (dt.Status.COMPLETED, "old:1.0.0"), iid
            for iid in v2:
                state = await client.wait_for_orchestration(iid, timeout=20)
                assert (state.status, state.output) == (dt.Status.COMPLETED, "new:2.0.0"), iid


HANDED_BACK = "outside this runtime's supported_replay_versions"


def _upgrading_registry(new_body: bool) -> dt.Registry:
    """"Upgrade" 1.0.0 continues as new to 2.0.0; only the new deployment (``new_body``) has 2.0.0."""
    reg = dt.Registry()

    @reg.orchestration("Upgrade", version="1.0.0")
    async def upgrade(ctx: dt.OrchestrationContext, n: int) -> str:
        return await ctx.continue_as_new(n, version="2.0.0")

    if new_body:
        @reg.orchestration("Upgrade", version="2.0.0")
        async def upgraded(ctx: dt.OrchestrationContext, n: int) -> str:
            return f"new:{ctx.version}"

    return reg


async def _wait_for_depths(client: dt.Client, expected: dict[str | None, int]) -> None:
    """Until ``orchestrator_by_version`` shows ``expected`` (a commit in another task; no event says so)."""
    with anyio.fail_after(10):
        while (await client.get_queue_depths()).orchestrator_by_version != expected:
            await anyio.sleep(0.02)


async def test_a_start_for_a_version_no_runtime_runs_waits_and_is_shown_by_version(make_provider, caplog):
    old = _registry("old", {"1.0.0": "old"})
    new = _registry("new", {"1.0.0": "wrongly-replayed", "2.0.0": "new"})
    caplog.set_level("INFO", logger="duroxide_trio")
    async with running(make_provider, old, OLD) as (provider, client):
        # Started by the new deployment's client (the old runtime's own client knows no 2.0.0).
        await dt.Client(provider).start_orchestration("b", "Deploy", 2, version="2.0.0")
        await client.start_orchestration("probe", "Deploy", 1, version="1.0.0")  # queued after b
        assert (await client.wait_for_orchestration("probe", timeout=10)).output == "old:1.0.0"
        assert (await client.get_status("b")).status is dt.Status.NOT_FOUND
        depths = await client.get_queue_depths()
        assert depths.orchestrator_by_version == {"2.0.0": 1}
        assert depths.worker_by_tag == {}  # next to the per-tag worker depths: nothing else waits
    # The old runtime never fetched b (it would have had to give it back).
    assert not [r for r in caplog.records if HANDED_BACK in r.getMessage()]
    async with running(make_provider, new, NEW) as (_, client):
        state = await client.wait_for_orchestration("b", timeout=10)
        assert (state.status, state.output) == (dt.Status.COMPLETED, "new:2.0.0")
        assert (await client.get_queue_depths()).orchestrator_by_version == {}


async def test_continue_as_new_to_a_new_version_is_taken_by_the_new_deployment(make_provider, caplog):
    old, new = _upgrading_registry(False), _upgrading_registry(True)
    caplog.set_level("INFO", logger="duroxide_trio")
    async with running(make_provider, old, OLD) as (provider, client):
        await client.start_orchestration("u", "Upgrade", 2, version="1.0.0")
        await _wait_for_depths(client, {"2.0.0": 1})  # the successor waits for a 2.x runtime
        assert not [r for r in caplog.records if HANDED_BACK in r.getMessage()]
        async with dt.open_runtime(provider, new, NEW):  # the rolling deploy: both run side by side
            state = await client.wait_for_orchestration("u", timeout=10)
            assert (state.status, state.output, state.execution_id) == (dt.Status.COMPLETED, "new:2.0.0", 2)
    assert not [r for r in caplog.records if HANDED_BACK in r.getMessage()]
