"""Replay-engine unit tests: histories in, actions and events out. No I/O, no event loop."""

from __future__ import annotations

import json
import logging

import attrs
import pytest

import duroxide_trio as dt
from duroxide_trio import history as h
from duroxide_trio.history import Status
from duroxide_trio.orchestration._replay import TurnResult, plan_turn, run_turn
from duroxide_trio.registry import Registry


@attrs.frozen
class Fn:
    fn: object
    name: str = "Orch"
    version: str = "1.0.0"

    def start(self, ctx, input_text):
        return self.fn(ctx, None if input_text is None else __import__("json").loads(input_text))


CODEC = Registry()


class Instance:
    """Drives turns of one instance the way the runtime does, keeping the history in memory."""

    def __init__(self, fn, input=None, *, name="Orch"):
        self.handler = Fn(fn, name)
        self.history: list[h.Event] = []
        self.execution_id = 1
        self.now = 1_000_000
        self.last: TurnResult | None = None
        self.turn([h.StartOrchestration("i", name, None if input is None else __import__("json").dumps(input))])

    def turn(self, messages, handler=None) -> TurnResult:
        self.now += 1000
        plan = plan_turn(self.execution_id, self.history, messages)
        result = run_turn(instance_id="i", plan=plan, handler=handler or self.handler, codec=CODEC, now_ms=self.now)
        self.history.extend(result.history_delta)
        self.last = result
        return result

    def types(self) -> list[str]:
        return [e.type_name for e in self.history]

    def event(self, type_name: str, n: int = 0) -> h.Event:
        return [e for e in self.history if e.type_name == type_name][n]

    def complete(self, event_id: int, value) -> TurnResult:
        return self.turn([h.ActivityResult("i", 1, event_id, __import__("json").dumps(value))])


def test_first_turn_schedules_activities_and_records_started():
    async def orch(ctx, n):
        return sum(await ctx.join([ctx.schedule_activity("A", i) for i in range(n)]))

    inst = Instance(orch, 3)
    r = inst.last
    assert inst.types() == ["OrchestrationStarted"] + ["ActivityScheduled"] * 3
    assert [w.name for w in r.worker_items] == ["A", "A", "A"]
    assert [w.id for w in r.worker_items] == [2, 3, 4]
    assert r.status == Status.RUNNING


def test_completions_in_any_order_join_in_argument_order():
    async def orch(ctx, _):
        return await ctx.join([ctx.schedule_activity("A", i) for i in range(3)])

    inst = Instance(orch)
    inst.complete(4, "c")
    inst.complete(2, "a")
    r = inst.complete(3, "b")
    assert r.status == Status.COMPLETED and r.output == '["a","b","c"]'


def test_select_resolves_in_history_order_not_argument_order():
    async def orch(ctx, _):
        a = ctx.schedule_activity("A")
        b = ctx.schedule_activity("B")
        await ctx.schedule_timer(1)
        index, value = await ctx.select(a, b)
        return [index, value]

    inst = Instance(orch)  # A=2, B=3, timer=4
    r = inst.turn(
        [
            h.ActivityResult("i", 1, 3, '"b"'),  # B completes first in history
            h.ActivityResult("i", 1, 2, '"a"'),
            h.TimerDue("i", 1, 4, 0),
        ]
    )
    assert r.output == '[1,"b"]'


def test_select_loser_activity_cancel_is_recorded_and_lock_stolen():
    async def orch(ctx, _):
        index, _ = await ctx.select(ctx.schedule_activity("Slow"), ctx.schedule_timer(5))
        await ctx.wait_for_event("hold")
        return index

    inst = Instance(orch)  # Slow=2, timer=3
    r = inst.turn([h.TimerDue("i", 1, 3, 0)])
    cancel = inst.event("ActivityCancelRequested")
    assert cancel.source_event_id == 2 and cancel.kind.reason == "dropped_future"
    assert r.cancelled_activities == [("i", 1, 2)]
    # Replaying the same history is deterministic and does not cancel again.
    r2 = inst.turn([h.ActivityResult("i", 1, 2, '"late"')])
    assert r2.cancelled_activities == [] and r2.status is None


def test_event_raised_before_subscription_is_buffered():
    async def orch(ctx, _):
        await ctx.schedule_timer(1)
        return await ctx.wait_for_event("go")

    inst = Instance(orch)
    inst.turn([h.ExternalRaised("i", "go", '"early"')])
    r = inst.turn([h.TimerDue("i", 1, 2, 0)])
    assert r.output == '"early"'


def test_queue_messages_carried_forward_on_continue_as_new():
    async def orch(ctx, n):
        await ctx.schedule_timer(1)
        return await ctx.continue_as_new(n + 1)

    inst = Instance(orch, 0)
    r = inst.turn([h.QueueMessage("i", "q", "1"), h.TimerDue("i", 1, 2, 0), h.QueueMessage("i", "q", "2")])
    assert r.status == Status.CONTINUED_AS_NEW
    can = [m for m in r.orchestrator_items if isinstance(m, h.ContinueAsNew)][0]
    assert can.execution_id == 2 and can.input == "1"
    assert can.carry_forward == [("q", "1"), ("q", "2")]


def test_continue_as_new_starts_new_execution_with_empty_history():
    async def orch(ctx, n):
        if n == 0:
            return await ctx.continue_as_new(1)
        return ctx.execution_id

    inst = Instance(orch, 0)
    can = [m for m in inst.last.orchestrator_items if isinstance(m, h.ContinueAsNew)][0]
    plan = plan_turn(1, inst.history, [can])
    assert plan.action == "run" and plan.history == [] and plan.execution_id == 2
    r = run_turn(instance_id="i", plan=plan, handler=inst.handler, codec=CODEC, now_ms=5)
    assert r.execution_id == 2 and r.output == "2"
    assert r.history_delta[0].event_id == 1


def test_terminal_instance_discards_late_messages():
    async def orch(ctx, _):
        return 1

    inst = Instance(orch)
    assert inst.last.status == Status.COMPLETED
    plan = plan_turn(1, inst.history, [h.ExternalRaised("i", "x", None)])
    assert plan.action == "discard"


def test_now_and_uuid_are_deterministic_across_replays():
    seen: list = []

    async def orch(ctx, _):
        seen.append((ctx.now(), ctx.new_uuid(), ctx.is_replaying))
        await ctx.schedule_timer(1)
        seen.append((ctx.now(), ctx.new_uuid(), ctx.is_replaying))
        await ctx.wait_for_event("e")

    inst = Instance(orch)
    turn1 = list(seen)
    seen.clear()
    inst.turn([h.TimerDue("i", 1, 2, 0)])
    turn2 = list(seen)
    seen.clear()
    inst.turn([h.ExternalRaised("i", "other", None)])  # replays both steps
    turn3 = list(seen)
    (t1, u1, r1), = turn1
    assert r1 is False
    assert turn2 == [(t1, u1, True), (turn2[1][0], turn2[1][1], False)]
    t2, u2 = turn2[1][:2]
    assert t1 < t2 and u1 != u2
    assert turn3 == [(t1, u1, True), (t2, u2, True)]


def test_logger_is_silent_while_replaying(caplog):
    async def orch(ctx, _):
        ctx.logger.info("step one")
        await ctx.schedule_timer(1)
        ctx.logger.info("step two")
        await ctx.wait_for_event("e")

    caplog.set_level(logging.INFO, logger="duroxide_trio.orchestration")
    inst = Instance(orch)
    inst.turn([h.TimerDue("i", 1, 2, 0)])
    inst.turn([h.ExternalRaised("i", "x", None)])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("step one" in m for m in messages) == 1
    assert sum("step two" in m for m in messages) == 1


def test_sub_orchestration_ids_and_parent_link():
    async def orch(ctx, _):
        a = ctx.schedule_sub_orchestration("Child", 1)
        b = ctx.schedule_sub_orchestration("Child", 2, instance_id="mine")
        return await ctx.join([a, b])

    inst = Instance(orch)
    starts = inst.last.orchestrator_items
    assert [(s.instance, s.parent_instance, s.parent_id, s.parent_execution_id) for s in starts] == [
        ("i::sub::2", "i", 2, 1),
        ("mine", "i", 3, 1),
    ]
    inst.turn([h.SubOrchResult("i", 1, 2, "10")])
    r = inst.turn([h.SubOrchError("i", 1, 3, h.ErrorDetails("application", "OrchestrationFailed", "nope"))])
    assert r.status == Status.FAILED and "nope" in r.error.message


def test_child_system_error_fails_parent():
    async def orch(ctx, _):
        try:
            await ctx.schedule_sub_orchestration("Child")
        except dt.SubOrchestrationFailed:
            return "caught"

    inst = Instance(orch)
    r = inst.turn([h.SubOrchError("i", 1, 2, h.ErrorDetails("configuration", "Nondeterminism", "nondeterministic: x"))])
    assert r.status == Status.FAILED and r.error.category == "configuration"


def test_child_completion_notifies_parent():
    async def child(ctx, x):
        return x * 2

    plan = plan_turn(1, [], [h.StartOrchestration("c", "Child", "4", None, "p", 7, 3)])
    r = run_turn(instance_id="c", plan=plan, handler=Fn(child, "Child"), codec=CODEC, now_ms=1)
    assert r.orchestrator_items == [h.SubOrchResult("p", 3, 7, "8")]


def test_cancel_request_fails_instance_and_cancels_outstanding_work():
    async def orch(ctx, _):
        await ctx.join([ctx.schedule_activity("A"), ctx.schedule_sub_orchestration("C", instance_id="kid")])

    inst = Instance(orch)
    r = inst.turn([h.CancelInstance("i", "stop")])
    assert r.status == Status.FAILED and r.error.message == "canceled: stop"
    assert r.cancelled_activities == [("i", 1, 2)]
    assert h.CancelInstance("kid", "parent canceled") in r.orchestrator_items


def test_activity_retry_uses_durable_timers():
    async def orch(ctx, _):
        return await ctx.schedule_activity("Flaky", retry=dt.RetryPolicy(3, dt.Backoff.fixed(2.0)))

    inst = Instance(orch)
    fail = h.ErrorDetails("application", "ActivityFailed", "boom")
    inst.turn([h.ActivityError("i", 1, 2, fail)])
    timer = inst.event("TimerCreated")
    assert timer.kind.fire_at_ms == inst.now + 2000
    inst.turn([h.TimerDue("i", 1, timer.event_id, timer.kind.fire_at_ms)])
    assert inst.types().count("ActivityScheduled") == 2
    r = inst.complete(inst.event("ActivityScheduled", 1).event_id, "ok")
    assert r.output == '"ok"'


def test_awaiting_a_foreign_awaitable_names_it():
    class Foreign:
        def __await__(self):
            yield "some-trap"

        def __repr__(self):
            return "<Foreign thing>"

    async def orch(ctx, _):
        await Foreign()

    inst = Instance(orch)
    assert inst.last.status == Status.FAILED
    assert "'some-trap'" in inst.last.error.message and "not a durable future" in inst.last.error.message


# -------------------------------------------------------------------------------- nondeterminism rules


def _changed(inst: Instance, new_fn, messages) -> TurnResult:
    return inst.turn(messages, handler=Fn(new_fn))


def assert_nondeterministic(r: TurnResult, *fragments: str) -> None:
    assert r.status == Status.FAILED
    assert r.error.category == "configuration" and r.error.kind == "Nondeterminism"
    assert r.error.message.startswith("nondeterministic:")
    for f in fragments:
        assert f in r.error.message, r.error.message


async def _wait_after(ctx, fut):
    await fut
    await ctx.wait_for_event("never")


def test_rule_history_event_but_code_schedules_nothing():
    async def old(ctx, _):
        await ctx.schedule_activity("A")
        await ctx.wait_for_event("e")

    async def new(ctx, _):
        await ctx.wait_for_event("e")

    inst = Instance(old)
    r = _changed(inst, new, [h.ExternalRaised("i", "x", None)])
    assert_nondeterministic(r, "ActivityScheduled(name='A')", "ExternalSubscribed(name='e')")


def test_rule_code_finished_without_scheduling_history_event():
    async def old(ctx, _):
        await ctx.schedule_activity("A")

    async def new(ctx, _):
        return 1

    inst = Instance(old)
    r = _changed(inst, new, [h.ExternalRaised("i", "x", None)])
    assert_nondeterministic(r, "ActivityScheduled(name='A')", "finished without scheduling it")


@pytest.mark.parametrize(
    "new_call, fragment",
    [
        (lambda ctx: ctx.schedule_activity("B", 1), "name='B'"),
        (lambda ctx: ctx.schedule_activity("A", 2), "input='2'"),
        (lambda ctx: ctx.schedule_activity("A", 1, tag="gpu"), "tag='gpu'"),
        (lambda ctx: ctx.schedule_activity("A", 1, session_id="s"), "session_id='s'"),
        (lambda ctx: ctx.schedule_timer(1), "TimerCreated"),
        (lambda ctx: ctx.wait_for_event("A"), "ExternalSubscribed(name='A')"),
        (lambda ctx: ctx.schedule_sub_orchestration("A", 1), "SubOrchestrationScheduled"),
    ],
)
def test_rule_action_differs_from_history(new_call, fragment):
    async def old(ctx, _):
        await ctx.schedule_activity("A", 1)

    async def new(ctx, _):
        await new_call(ctx)

    inst = Instance(old)
    r = _changed(inst, new, [h.ExternalRaised("i", "x", None)])
    assert_nondeterministic(r, "ActivityScheduled(name='A', input='1')", fragment)


def test_rule_sub_orchestration_name_input_and_explicit_id():
    async def old(ctx, _):
        await ctx.schedule_sub_orchestration("C", 1, instance_id="kid")

    for call, fragment in [
        (lambda ctx: ctx.schedule_sub_orchestration("D", 1, instance_id="kid"), "name='D'"),
        (lambda ctx: ctx.schedule_sub_orchestration("C", 2, instance_id="kid"), "input='2'"),
        (lambda ctx: ctx.schedule_sub_orchestration("C", 1, instance_id="other"), "instance='other'"),
    ]:

        async def new(ctx, _, call=call):
            await call(ctx)

        inst = Instance(old)
        assert_nondeterministic(_changed(inst, new, [h.ExternalRaised("i", "x", None)]), fragment)


def test_rule_detached_start_must_match():
    async def old(ctx, _):
        ctx.start_orchestration("W", "w1", 1)
        await ctx.wait_for_event("e")

    async def new(ctx, _):
        ctx.start_orchestration("W", "w2", 1)
        await ctx.wait_for_event("e")

    inst = Instance(old)
    assert_nondeterministic(_changed(inst, new, [h.ExternalRaised("i", "x", None)]), "instance='w1'", "instance='w2'")


def test_rule_timer_duration_change_is_not_nondeterministic():
    async def old(ctx, _):
        await ctx.schedule_timer(5)
        return "done"

    async def new(ctx, _):
        await ctx.schedule_timer(50)
        return "done"

    inst = Instance(old)
    r = _changed(inst, new, [h.TimerDue("i", 1, 2, 0)])
    assert r.status == Status.COMPLETED


def test_rule_duplicate_completion_in_history():
    async def orch(ctx, _):
        await ctx.schedule_activity("A")
        await ctx.wait_for_event("e")

    inst = Instance(orch)
    inst.complete(2, 1)
    # corrupt: a second completion for the same activity already in history
    inst.history.append(h.Event(len(inst.history) + 1, h.ActivityCompleted("2"), 2, 0))
    r = inst.turn([h.ExternalRaised("i", "x", None)])
    assert_nondeterministic(r, "already completed")


def test_rule_completion_kind_mismatch_in_history_and_in_messages():
    async def orch(ctx, _):
        await ctx.schedule_activity("A")
        await ctx.wait_for_event("e")

    inst = Instance(orch)
    r = inst.turn([h.TimerDue("i", 1, 2, 0)])  # a timer firing for an activity
    assert_nondeterministic(r, "TimerFired", "ActivityScheduled", "not a TimerCreated")

    inst2 = Instance(orch)
    inst2.history.append(h.Event(3, h.TimerFired(0), 2, 0))
    assert_nondeterministic(inst2.turn([h.ExternalRaised("i", "x", None)]), "not a TimerCreated")


def test_rule_completion_for_unknown_schedule():
    async def orch(ctx, _):
        await ctx.wait_for_event("e")

    inst = Instance(orch)
    r = inst.turn([h.ActivityResult("i", 1, 42, "1")])
    assert_nondeterministic(r, "event 42", "never scheduled")

    inst2 = Instance(orch)
    inst2.history.append(h.Event(3, h.ActivityCompleted("1"), 42, 0))
    assert_nondeterministic(inst2.turn([h.ExternalRaised("i", "x", None)]), "never scheduled")


def test_rule_code_no_longer_drops_a_future():
    async def old(ctx, _):
        await ctx.select(ctx.schedule_activity("A"), ctx.schedule_timer(1))
        await ctx.wait_for_event("e")

    async def new(ctx, _):
        a = ctx.schedule_activity("A")
        await ctx.schedule_timer(1)
        await a
        await ctx.wait_for_event("e")

    inst = Instance(old)
    inst.turn([h.TimerDue("i", 1, 3, 0)])
    assert "ActivityCancelRequested" in inst.types()
    r = _changed(inst, new, [h.ExternalRaised("i", "x", None)])
    assert_nondeterministic(r, "ActivityCancelRequested")


def test_rule_corrupted_history():
    history = [h.Event(1, h.ActivityScheduled("A"), None, 0)]
    plan = plan_turn(1, history, [])
    assert plan.action == "corrupt" and "OrchestrationStarted" in plan.reason


def test_messages_from_other_executions_and_duplicates_are_dropped():
    async def orch(ctx, _):
        return await ctx.schedule_activity("A")

    inst = Instance(orch)
    r = inst.turn([h.ActivityResult("i", 0, 2, '"old"'), h.ActivityResult("i", 1, 2, '"x"'),
                   h.ActivityResult("i", 1, 2, '"dup"')])
    assert r.output == '"x"'
    assert inst.types().count("ActivityCompleted") == 1


def test_codec_round_trips_and_tolerates_unknown_fields():
    import json

    ev = h.Event(3, h.ActivityScheduled("A", '{"x":1}', None, "t"), None, 17)
    text = h.encode_event(ev)
    assert h.decode_event(text) == ev
    d = json.loads(text)
    d["added_in_a_later_version"] = True
    del d["tag"]
    back = h.decode_event(json.dumps(d))
    assert back.kind.name == "A" and back.kind.tag is None
    for kind in h.EVENT_KINDS.values():
        fields = {a.name: _sample(a) for a in attrs.fields(kind) if a.default is attrs.NOTHING}
        e = h.Event(1, kind(**fields), 2, 3)
        assert h.decode_event(h.encode_event(e)) == e
    for cls in h.WORK_ITEM_KINDS.values():
        fields = {a.name: _sample(a) for a in attrs.fields(cls) if a.default is attrs.NOTHING}
        item = cls(**fields)
        assert h.decode_work_item(h.encode_work_item(item)) == item
    with pytest.raises(h.HistoryDecodeError):
        h.decode_event('{"type": "NoSuchEvent", "event_id": 1}')


def _sample(a: attrs.Attribute):
    if a.type in ("int", int):
        return 5
    if "ErrorDetails" in str(a.type):
        return h.ErrorDetails("application", "K", "m")
    return "s"


def test_renamed_failure_events_keep_their_stored_tag_and_old_names() -> None:
    details = h.ErrorDetails("application", "ActivityFailed", "boom")
    for cls, tag in ((h.ActivityFailedEvent, "ActivityFailed"), (h.SubOrchestrationFailedEvent, "SubOrchestrationFailed")):
        text = h.encode_event(h.Event(3, cls(details), 2, 7))
        assert json.loads(text)["type"] == tag
        assert h.decode_event(text) == h.Event(3, cls(details), 2, 7)
        with pytest.warns(DeprecationWarning, match=cls.__name__):
            old = getattr(h, tag)
        assert old is cls
    assert not issubclass(h.ActivityFailedEvent, BaseException)
    with pytest.raises(AttributeError):
        _ = h.NoSuchEvent  # type: ignore[attr-defined]


@pytest.mark.parametrize("ending", ["waiting", "completed", "raised"])
def test_a_finished_turn_is_freed_at_once_without_the_cycle_collector(ending):
    """A turn's context, futures and coroutine are freed by reference counting when the turn ends, so a
    busy runtime does not pile every turn's object graph up for the cyclic garbage collector."""
    import gc
    import weakref

    seen: list[weakref.ref] = []

    async def orch(ctx, _):
        seen.append(weakref.ref(ctx))
        a, b = ctx.schedule_activity("A", 1), ctx.schedule_activity("B", 2)
        seen.append(weakref.ref(a))
        ctx.logger.info("scheduled")
        if ending == "raised":
            raise ValueError("boom")
        values = await ctx.join([a, b])
        return values

    gc.disable()
    try:
        inst = Instance(orch)
        if ending == "completed":
            inst.complete(2, 10)
            inst.complete(3, 20)
        assert seen and all(ref() is None for ref in seen), "the turn's objects wait for the cycle collector"
    finally:
        gc.enable()
    expected = {"waiting": Status.RUNNING, "completed": Status.COMPLETED, "raised": Status.FAILED}[ending]
    assert (inst.last.status or Status.RUNNING) == expected


# The stored envelope goes through orjson where that gives the same values, else through json: whatever
# the strings and numbers, an event or a work item decodes to what was encoded, and its text is ASCII.
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # lone surrogates too
_ANY_INT = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**80), 2**80))


@settings(max_examples=300, deadline=None)
@example(instance="caf\u00e9 \ud800", name="n", payload='"\\u00e9"', execution_id=2**70 + 12345,
         activity_id=10**17 + 1, attempt=-(2**64) - 3, timestamp=1_764_780_000_000)
@given(instance=_ANY_TEXT, name=_ANY_TEXT, payload=st.one_of(st.none(), _ANY_TEXT),
       execution_id=_ANY_INT, activity_id=_ANY_INT, attempt=_ANY_INT, timestamp=_ANY_INT)
def test_envelopes_round_trip_exactly_and_are_stored_as_ascii(
    instance: str, name: str, payload: str | None, execution_id: int, activity_id: int, attempt: int,
    timestamp: int,
) -> None:
    item = h.ActivityExecute(instance, execution_id, activity_id, name, payload, attempt=attempt)
    text = h.encode_work_item(item)
    assert text.isascii()
    back = h.decode_work_item(text)
    assert back == item and type(back.execution_id) is int and type(back.attempt) is int
    ev = h.Event(activity_id, h.ActivityScheduled(name, payload, None, instance), None, timestamp)
    text = h.encode_event(ev)
    assert text.isascii()
    assert h.decode_event(text) == ev
    assert h.decode_event(text.encode()) == ev  # the same from bytes


# Payload texts must stay what json.dumps writes, byte for byte (replay compares them), however they are
# produced; plain integers and strings take a shortcut.
_JSON_TEXT = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


@settings(max_examples=300, deadline=None)
@example(value=10**18 - 1)
@example(value="caf\u00e9 \ud800 \u2028 \"\\\n")
@given(value=st.one_of(st.integers(), st.text(st.characters(codec=None, exclude_categories=())), st.booleans(),
                       st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(), max_size=3)))
def test_payload_texts_are_what_json_writes_and_read_back_as_json_reads(value: object) -> None:
    from duroxide_trio.registry import decode_payload, encode_payload

    text = encode_payload(value)
    assert text == _JSON_TEXT(value)
    assert decode_payload(text) == json.loads(text)


@pytest.mark.parametrize("text", ["0", "7", "123456789012345678", "05", "00", "-3", "\uff11", "1e3", "12 "])
def test_payload_numbers_decode_as_json_reads_them_or_fail_as_json_does(text: str) -> None:
    from duroxide_trio.registry import decode_payload

    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(dt.PayloadError):
            decode_payload(text)
    else:
        assert decode_payload(text) == expected and type(decode_payload(text)) is type(expected)
