"""The engine's regression fixtures: histories recorded by an earlier engine (``tests/fixtures/histories``,
written by ``tests/fixtures/generate.py`` from the frozen orchestrations in ``tests/fixtures/orchestrations.py``)
must replay on today's engine with the same decisions. A failure here means an upgrade would break
instances that are running in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.orchestrations import registry

from duroxide_trio.history import EVENT_KINDS
from duroxide_trio.testing.replay import Replayer, load_histories

HISTORIES = Path(__file__).parent / "fixtures" / "histories"
FILES = sorted(HISTORIES.glob("*.json"))


def test_fixtures_exist():
    assert len(FILES) >= 15, f"expected the recorded fixtures in {HISTORIES}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_fixture_replays_with_the_same_decisions(path: Path):
    instances = load_histories(path)
    assert instances
    for instance in instances:
        report = Replayer(registry).replay(instance)
        assert report.deterministic, report.describe()
        recorded = sum(len(ex.events) for ex in instance.executions)
        assert report.events_replayed == recorded
        assert report.executions_replayed == len(instance.executions)


def test_fixtures_cover_every_event_kind():
    """A new event kind needs a scenario (and a recorded fixture) before it ships."""
    seen = {
        event.type_name
        for path in FILES
        for instance in load_histories(path)
        for execution in instance.executions
        for event in execution.events
    }
    assert set(EVENT_KINDS) - seen == set()


def test_todays_engine_records_histories_that_replay(tmp_path):
    """The generator still runs, and what today's engine writes replays too (two quick scenarios)."""
    import anyio
    from fixtures import generate

    anyio.run(generate.main, ["Events", "Queues"], tmp_path, backend="trio")
    reports = Replayer(registry).replay_files([tmp_path])
    assert len(reports) == 2 and all(r.deterministic for r in reports), [r.describe() for r in reports]
