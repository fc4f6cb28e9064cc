"""The turn decision is total: for any history, any batch of messages and any behaviour of the user's code,
``decide_turn`` returns a Commit or an Abandon and never raises; commits keep event ids dense."""

from __future__ import annotations

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_trio import history as h
from duroxide_trio.history import Status
from duroxide_trio.orchestration._decide import Abandon, Commit, TurnPolicy, decide_turn
from duroxide_trio.registry import Registry

names = st.sampled_from(["A", "B", "go", "q", ""])
payload = st.one_of(st.none(), st.sampled_from(['1', '"x"', "{not json", "[1,2]", "null"]))
ids = st.integers(min_value=-2, max_value=8)
details = st.builds(h.ErrorDetails, st.sampled_from(["application", "poison", "configuration"]), names, names)

kinds = st.one_of(
    st.builds(h.OrchestrationStarted, st.sampled_from(["Orch", "Missing"]), st.just("1.0.0"), payload),
    st.builds(h.ActivityScheduled, names, payload),
    st.builds(h.ActivityCompleted, payload),
    st.builds(h.ActivityFailedEvent, details),
    st.builds(h.TimerCreated, st.integers(0, 10**6)),
    st.builds(h.TimerFired, st.integers(0, 10**6)),
    st.builds(h.ExternalSubscribed, names),
    st.builds(h.ExternalEvent, names, payload),
    st.builds(h.OrchestrationCompleted, payload),
    st.builds(h.OrchestrationFailed, details),
    st.builds(h.OrchestrationCancelRequested, names),
    st.builds(h.CustomStatusUpdated, payload),
    st.builds(h.SubOrchestrationScheduled, names, names, payload),
)


@st.composite
def histories(draw: st.DrawFn) -> list[h.Event]:
    events = draw(st.lists(kinds, max_size=8))
    if events and draw(st.booleans()):
        events[0] = h.OrchestrationStarted("Orch", "1.0.0", draw(payload))
    return [h.Event(i + 1, k, draw(st.one_of(st.none(), ids)), 1000) for i, k in enumerate(events)]


messages = st.lists(
    st.one_of(
        st.builds(h.StartOrchestration, st.just("i"), st.sampled_from(["Orch", "Missing"]), payload,
                  parent_instance=st.one_of(st.none(), st.just("P")), parent_id=st.one_of(st.none(), ids)),
        st.builds(h.ActivityResult, st.just("i"), st.integers(1, 2), ids, payload),
        st.builds(h.ActivityError, st.just("i"), st.integers(1, 2), ids, details),
        st.builds(h.TimerDue, st.just("i"), st.integers(1, 2), ids, st.integers(0, 10)),
        st.builds(h.ExternalRaised, st.just("i"), names, payload),
        st.builds(h.CancelInstance, st.just("i"), names),
        st.builds(h.SubOrchResult, st.just("i"), st.integers(1, 2), ids, payload),
    ),
    max_size=6,
)

behaviours = st.lists(st.sampled_from(["activity", "timer", "event", "raise", "base", "spin", "return",
                                       "status", "join", "select", "sub"]), max_size=6)


def make_registry(steps: list[str]) -> Registry:
    reg = Registry()

    @reg.orchestration("Orch")
    async def orch(ctx, x=None):  # type: ignore[no-untyped-def]
        for step in steps:
            if step == "activity":
                await ctx.schedule_activity("A", x)
            elif step == "timer":
                await ctx.schedule_timer(0.01)
            elif step == "event":
                await ctx.wait_for_event("go")
            elif step == "raise":
                raise ValueError("user error")
            elif step == "base":
                raise KeyboardInterrupt
            elif step == "status":
                ctx.set_custom_status({"s": x})
            elif step == "join":
                await ctx.join([ctx.schedule_activity("A", 1), ctx.schedule_timer(0.01)])
            elif step == "select":
                await ctx.select(ctx.wait_for_event("go"), ctx.schedule_timer(1))
            elif step == "sub":
                await ctx.schedule_sub_orchestration("Orch", x)
            elif step == "return":
                return x
        return steps

    return reg


@attrs.frozen
class FakeBatch:
    instance_id: str
    orchestration_name: str
    version: str | None
    execution_id: int
    history: list[h.Event]
    messages: list[h.WorkItem]
    attempt_count: int
    history_error: str | None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), messages, behaviours, st.integers(1, 12), st.one_of(st.none(), st.just("garbled row")))
def test_decide_turn_never_raises(history, msgs, steps, attempt, error) -> None:
    reg = make_registry(steps)
    batch = FakeBatch("i", "Orch", None, 1, history, msgs, attempt, error)
    decision = decide_turn(batch, handlers=reg, codec=reg, policy=TurnPolicy(10, lambda a: 0.5), now_ms=5000)
    assert isinstance(decision, (Commit, Abandon))
    if isinstance(decision, Commit):
        delta = decision.result.history_delta
        if error is None:
            assert [e.event_id for e in delta] == list(range(len(history) + 1, len(history) + 1 + len(delta)))
        else:
            assert delta == []  # an unreadable history gets no event: its next id is unknown
        terminal = [e for e in delta if e.is_terminal()]
        assert len(terminal) <= 1
        if decision.result.status == Status.FAILED:
            assert decision.result.error is not None and decision.result.error.message


def test_a_start_at_a_version_outside_the_runtimes_range_is_given_back_uncounted() -> None:
    """A rolling deploy: the start of a 2.0.0 instance reaches a runtime that only replays 1.x (the fetch
    filters on the recorded version, which a start does not have yet). Even at its last attempt it is given
    back without counting an attempt — never poisoned by a runtime it was not meant for."""
    reg = Registry()

    @reg.orchestration("Deploy", version="1.0.0")
    async def deploy(ctx, x=None):  # type: ignore[no-untyped-def]
        return "old"

    start = h.StartOrchestration("i", "Deploy", None, version="2.0.0")
    only_v1 = TurnPolicy(3, lambda a: 0.5, lambda v: v is None or v.startswith("1."))
    batch = FakeBatch("i", "Deploy", None, 1, [], [start], 3, None)
    decision = decide_turn(batch, handlers=reg, codec=reg, policy=only_v1, now_ms=5000)
    assert isinstance(decision, Abandon) and not decision.count_attempt
    assert "supported_replay_versions" in decision.note
    # Without a range the same batch is the ordinary unregistered case: counted, then poison at the limit.
    plain = decide_turn(batch, handlers=reg, codec=reg, policy=TurnPolicy(3, lambda a: 0.5), now_ms=5000)
    assert isinstance(plain, Commit) and plain.result.error is not None
    assert plain.result.error.kind == "Unregistered"


def test_a_second_start_in_one_execution_is_a_corrupted_history() -> None:
    """A stored execution that starts twice (a second OrchestrationStarted after the first turn's events)
    fails the instance as a corrupted history instead of silently rerunning the code from the top; the
    first run's coroutine is closed, not left unawaited for the garbage collector."""
    import gc
    import warnings

    reg = make_registry(["activity", "return"])
    history = [
        h.Event(1, h.OrchestrationStarted("Orch", "1.0.0", "1"), None, 1000),
        h.Event(2, h.ActivityScheduled("A", "1"), None, 1000),
        h.Event(3, h.OrchestrationStarted("Orch", "1.0.0", "2"), None, 1000),
    ]
    batch = FakeBatch("i", "Orch", None, 1, history, [h.ActivityResult("i", 1, 2, "1")], 1, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decision = decide_turn(batch, handlers=reg, codec=reg, policy=TurnPolicy(10, lambda a: 0.5), now_ms=5000)
        gc.collect()
    assert isinstance(decision, Commit)
    assert decision.result.status == Status.FAILED and decision.result.error is not None
    assert (decision.result.error.category, decision.result.error.kind) == ("configuration", "CorruptedHistory")
    assert "second OrchestrationStarted at event 3" in decision.result.error.message
    assert not [w for w in caught if "never awaited" in str(w.message)]
