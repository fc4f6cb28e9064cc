"""``Replayer``: what a user sees when current code is replayed against recorded histories."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fixtures import orchestrations as fx

import duroxide_trio as dt
from duroxide_trio import history as h
from duroxide_trio.history import Status
from duroxide_trio.testing.replay import Replayer, load_histories, read_instance, write_export

HISTORIES = Path(__file__).parent / "fixtures" / "histories"


def recorded(scenario: str, instance_id: str):
    return next(i for i in load_histories(HISTORIES / f"{scenario}.json") if i.instance_id == instance_id)


def only(name: str, fn, version: str = "1.0.0") -> dt.Registry:
    reg = dt.Registry()
    reg.add_orchestration(fn, name, version=version)
    return reg


def test_unchanged_code_is_deterministic():
    report = Replayer(fx.registry).replay(recorded("Activities", "activities-1"))
    assert report.ok and report.outcome == "deterministic" and report.mismatch is None
    assert report.describe() == "activities-1 (Activities 1.0.0): deterministic"


def test_renamed_activity_is_reported_at_its_event():
    async def changed(ctx, n):
        first = await ctx.schedule_activity("Triple", n)
        return {"first": first}

    report = Replayer(only("Activities", changed)).replay(recorded("Activities", "activities-1"))
    assert report.outcome == "nondeterministic" and not report.ok
    m = report.mismatch
    assert m is not None and m.event_id == 2
    assert "ActivityScheduled(name='Double', input='4')" == m.recorded
    assert "ActivityScheduled(name='Triple', input='4')" == m.code
    assert "nondeterministic" in m.message
    assert "event 2: history recorded ActivityScheduled(name='Double'" in report.describe()


def test_changed_input_is_nondeterministic():
    async def changed(ctx, n):
        return await ctx.schedule_activity("Double", n + 1)

    m = Replayer(only("Activities", changed)).replay(recorded("Activities", "activities-1")).mismatch
    assert m is not None and m.event_id == 2 and "input='5'" in m.code


def test_code_that_finishes_early_says_so():
    async def changed(ctx, n):
        return "nothing to do"

    m = Replayer(only("Activities", changed)).replay(recorded("Activities", "activities-1")).mismatch
    assert m is not None and m.event_id == 2
    assert m.code.startswith("finish: OrchestrationCompleted(output='\"nothing to do\"')")


def test_extra_work_where_history_finished_is_caught():
    """The engine alone does not see code that schedules more at the end; the replayer does."""

    async def changed(ctx, n):
        out = await fx.activities(ctx, n)
        await ctx.schedule_activity("Double", 100)
        return out

    history = recorded("Activities", "activities-1")
    m = Replayer(only("Activities", changed)).replay(history).mismatch
    last = history.executions[0].events[-1]
    assert m is not None and m.event_id == last.event_id
    assert m.recorded.startswith("OrchestrationCompleted(output=")
    assert m.code == "ActivityScheduled(name='Double', input='100')"


def test_running_instance_must_not_decide_anything_new():
    async def changed(ctx):
        await ctx.schedule_activity("Double", 3)
        return await ctx.select(ctx.wait_for_event("NeverRaised"), ctx.schedule_timer(5))

    history = recorded("Running", "running-1")
    assert Replayer(fx.registry).replay(history).deterministic
    m = Replayer(only("Running", changed)).replay(history).mismatch
    assert m is not None and m.event_id == len(history.executions[0].events) + 1
    assert m.recorded == "end of history" and m.code.startswith("TimerCreated(")


def test_changed_output_is_reported_at_the_terminal_event():
    async def changed(ctx):
        await fx.timers(ctx)
        return "different"

    m = Replayer(only("Timers", changed)).replay(recorded("Timers", "timers-1")).mismatch
    assert m is not None and m.recorded == "OrchestrationCompleted(output='\"waited\"')"
    assert m.code == "finish: OrchestrationCompleted(output='\"different\"')"


def test_timer_durations_match_by_kind_like_the_engine():
    async def changed(ctx):
        await ctx.schedule_timer(1)
        await ctx.schedule_timer(2)
        await ctx.join([ctx.schedule_timer(3), ctx.schedule_timer(4)])
        return "waited"

    assert Replayer(only("Timers", changed)).replay(recorded("Timers", "timers-1")).deterministic


def test_every_execution_of_a_continued_instance_is_replayed():
    async def changed(ctx, state):
        total = state["total"] + await ctx.schedule_activity("Double", state["left"])
        if state["left"] > 2:
            return await ctx.continue_as_new({"left": state["left"] - 1, "total": total})
        return {"left": 0, "total": total}

    history = recorded("ContinueAsNew", "can-1")
    report = Replayer(only("ContinueAsNew", changed)).replay(history)
    assert report.outcome == "nondeterministic" and report.execution_id == 2
    assert report.mismatch is not None and report.mismatch.recorded.startswith("OrchestrationContinuedAsNew")


def test_missing_orchestration_and_missing_version():
    report = Replayer(dt.Registry()).replay(recorded("Activities", "activities-1"))
    assert report.outcome == "missing-handler" and "'Activities' is not registered" in report.detail

    async def v2(ctx):
        return "v2"

    report = Replayer(only("Versioned", v2, "2.0.0")).replay(recorded("Versions", "versioned-1"))
    assert report.outcome == "missing-handler"
    assert "no version 1.0.0" in report.detail and "registered: 2.0.0" in report.detail


def _edit(tmp_path: Path, scenario: str, change) -> Path:
    data = json.loads((HISTORIES / f"{scenario}.json").read_text())
    change(data["instances"][0]["executions"][0]["events"])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_unknown_event_kind_from_a_newer_engine_is_reported(tmp_path):
    path = _edit(tmp_path, "Running", lambda evs: evs.append(
        {"type": "SessionClaimedByAFutureEngine", "event_id": len(evs) + 1, "key": "k", "timestamp_ms": 1}
    ))
    [report] = Replayer(fx.registry).replay_file(path)
    assert report.outcome == "unknown-event-kind" and not report.ok
    assert "'SessionClaimedByAFutureEngine'" in report.detail and "newer engine" in report.detail


def test_undecodable_histories_are_reported_not_raised(tmp_path):
    path = _edit(tmp_path, "Running", lambda evs: evs[1].pop("name"))
    [report] = Replayer(fx.registry).replay_file(path)
    assert report.outcome == "undecodable" and "ActivityScheduled" in report.detail

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    [report] = Replayer(fx.registry).replay_file(garbage)
    assert report.outcome == "undecodable" and report.instance_id == str(garbage)


def test_corrupted_history_is_reported():
    events = recorded("Running", "running-1").executions[0].events
    report = Replayer(fx.registry).replay(events[1:], instance_id="x")
    assert report.outcome == "corrupt-history" and "not OrchestrationStarted" in report.detail


def test_an_ending_decided_by_the_runtime_only_needs_the_events_before_it():
    events = recorded("Running", "running-1").executions[0].events
    poisoned = [*events, h.Event(len(events) + 1, h.OrchestrationFailed(
        h.ErrorDetails("poison", "Orchestration", "poison: exceeded 10 attempts")), None, 1)]
    report = Replayer(fx.registry).replay(poisoned, instance_id="p")
    assert report.deterministic and "ended by the runtime (poison/Orchestration)" in report.detail

    async def changed(ctx):
        return await ctx.wait_for_event("Other")

    assert Replayer(only("Running", changed)).replay(poisoned).outcome == "nondeterministic"


# ------------------------------------------------------------------------------------------- providers
@pytest.mark.anyio
async def test_replay_from_a_provider_with_filters(tmp_path):
    db = tmp_path / "state.db"
    provider = await dt.SqliteProvider.open(db)
    async with provider, dt.open_runtime(provider, fx.registry, dt.RuntimeOptions(poll_interval=0.2)) as rt:
        await rt.client.start_orchestration("a-1", "Activities", 1)
        await rt.client.start_orchestration("t-1", "Timers")
        await rt.client.start_orchestration("r-1", "Running")
        for i in ("a-1", "t-1"):
            await rt.client.wait_for_orchestration(i, timeout=10)
        replayer = Replayer(fx.registry)
        assert (await replayer.replay_from_provider(provider, "a-1")).deterministic
        assert (await replayer.replay_from_provider(provider, "missing")).outcome == "empty"
        by_name = await replayer.replay_all(provider, name="Activities")
        assert [r.instance_id for r in by_name] == ["a-1"]
        completed = await replayer.replay_all(provider, status=Status.COMPLETED)
        assert sorted(r.instance_id for r in completed) == ["a-1", "t-1"]
        later = datetime.now(UTC) + timedelta(hours=1)
        assert await replayer.replay_all(provider, since=later) == []
        exported = await read_instance(provider, "a-1")
    # a newer engine wrote an event kind this one does not know
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE history SET event_data = ? WHERE instance_id = 'a-1' AND event_id = 2",
            (json.dumps({"type": "ActivityScheduled2", "event_id": 2, "name": "Double"}),),
        )
    provider = await dt.SqliteProvider.open(db)
    async with provider:
        report = await Replayer(fx.registry).replay_from_provider(provider, "a-1")
    assert report.outcome == "unknown-event-kind" and "'ActivityScheduled2'" in report.detail
    write_export(tmp_path / "a-1.json", exported)  # what was read before still replays from its file
    [from_file] = Replayer(fx.registry).replay_file(tmp_path / "a-1.json")
    assert from_file.deterministic and from_file.events_replayed == len(exported.executions[0].events)
