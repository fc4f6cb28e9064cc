"""Async blocks (coroutines) in ``ctx.join`` / ``ctx.select``: engine unit tests, no I/O, no event loop."""

from __future__ import annotations

import json

import pytest
from test_engine import Fn, Instance

from duroxide_trio import history as h
from duroxide_trio.history import Status


async def _two_steps(ctx):
    a = await ctx.schedule_activity("A", 1)
    b = await ctx.schedule_activity("B", a)
    return [a, b]


def _select_timer_or_block(ctx, _):
    async def orch(ctx, _):
        index, value = await ctx.select(ctx.schedule_timer(5), _two_steps(ctx))
        return [index, value]

    return orch(ctx, _)


def test_block_wins_select_when_its_last_step_comes_first_in_history():
    inst = Instance(_select_timer_or_block)  # timer=2, A=3
    assert inst.types() == ["OrchestrationStarted", "TimerCreated", "ActivityScheduled"]
    inst.complete(3, 10)  # ActivityCompleted=4, B=5
    assert inst.event("ActivityScheduled", 1).kind.input == "10"
    r = inst.turn([h.ActivityResult("i", 1, 5, '"b"'), h.TimerDue("i", 1, 2, 0)])
    assert r.status == Status.COMPLETED and json.loads(r.output) == [1, [10, "b"]]


def test_block_loses_select_and_what_it_scheduled_is_cancelled():
    inst = Instance(_select_timer_or_block)
    inst.complete(3, 10)  # block now waits on B=5
    r = inst.turn([h.TimerDue("i", 1, 2, 0), h.ActivityResult("i", 1, 5, '"late"')])
    assert r.status == Status.COMPLETED and json.loads(r.output) == [0, None]
    cancel = inst.event("ActivityCancelRequested")
    assert cancel.source_event_id == 5 and cancel.kind.reason == "dropped_future"
    assert r.cancelled_activities == [("i", 1, 5)]
    # A was completed before: it is not cancelled.
    assert [e.source_event_id for e in inst.history if e.type_name == "ActivityCancelRequested"] == [5]


def test_block_loser_is_deterministic_on_replay():
    def orch(ctx, _):
        async def run(ctx):
            index, _ = await ctx.select(ctx.schedule_timer(5), _two_steps(ctx))
            await ctx.wait_for_event("hold")
            return index

        return run(ctx)

    inst = Instance(orch)
    inst.complete(3, 10)
    inst.turn([h.TimerDue("i", 1, 2, 0)])
    before = list(inst.types())
    r = inst.turn([h.ActivityResult("i", 1, 5, '"late"')])  # replays the whole history again
    assert r.status is None and inst.types() == [*before, "ActivityCompleted"] and r.cancelled_activities == []
    r = inst.turn([h.ExternalRaised("i", "hold", "null")])
    assert r.status == Status.COMPLETED and r.output == "0"


def test_nested_block_and_retry_inside_a_losing_block_are_cancelled():
    import duroxide_trio as dt

    async def inner(ctx):
        return await ctx.schedule_activity("Inner", retry=dt.RetryPolicy(3, dt.Backoff.none()))

    async def outer(ctx):
        return await ctx.join([inner(ctx), ctx.wait_for_event("e")])

    def orch(ctx, _):
        async def run(ctx):
            return await ctx.select(ctx.schedule_timer(1), outer(ctx))

        return run(ctx)

    inst = Instance(orch)  # timer=2, ExternalSubscribed=3 (the list is built first), Inner=4
    assert inst.types() == ["OrchestrationStarted", "TimerCreated", "ExternalSubscribed", "ActivityScheduled"]
    r = inst.turn([h.TimerDue("i", 1, 2, 0)])
    assert r.status == Status.COMPLETED
    assert r.cancelled_activities == [("i", 1, 4)]
    assert "ExternalSubscribedCancelled" in inst.types()


def test_join_of_blocks_resolves_in_argument_order_and_first_failure_in_history_order():
    async def step(ctx, name):
        return await ctx.schedule_activity(name)

    def orch(ctx, _):
        async def run(ctx):
            return await ctx.join([step(ctx, "A"), step(ctx, "B"), ctx.schedule_activity("C")])

        return run(ctx)

    inst = Instance(orch)  # C=2 (an argument, scheduled while the list is built), then the blocks: A=3, B=4
    assert [e.kind.name for e in inst.history if e.type_name == "ActivityScheduled"] == ["C", "A", "B"]
    r = inst.turn([h.ActivityResult("i", 1, 2, '"c"'), h.ActivityResult("i", 1, 4, '"b"'),
                   h.ActivityResult("i", 1, 3, '"a"')])
    assert json.loads(r.output) == ["a", "b", "c"]

    inst = Instance(orch)
    fail = h.ErrorDetails("application", "E", "b failed")
    r = inst.turn([h.ActivityError("i", 1, 4, fail), h.ActivityError("i", 1, 3, h.ErrorDetails("application", "E", "a")),
                   h.ActivityResult("i", 1, 2, '"c"')])
    assert r.status == Status.FAILED and "b failed" in r.error.message


def test_ctx_task_runs_a_block_and_its_exception_reaches_the_awaiter():
    async def boom(ctx):
        await ctx.schedule_timer(1)
        raise ValueError("inside the block")

    def orch(ctx, _):
        async def run(ctx):
            t = ctx.task(boom(ctx))
            try:
                await t
            except ValueError as exc:
                return str(exc)

        return run(ctx)

    inst = Instance(orch)
    r = inst.turn([h.TimerDue("i", 1, 2, 0)])
    assert r.status == Status.COMPLETED and r.output == '"inside the block"'


def test_block_that_changes_its_schedule_is_nondeterministic():
    inst = Instance(_select_timer_or_block)

    async def changed_steps(ctx):
        return await ctx.schedule_activity("Other", 1)

    def orch2(ctx, _):
        async def run(ctx):
            return await ctx.select(ctx.schedule_timer(5), changed_steps(ctx))

        return run(ctx)

    r = inst.turn([h.ActivityResult("i", 1, 3, "1")], handler=Fn(orch2))
    assert r.status == Status.FAILED and r.error.kind == "Nondeterminism"
    assert "'A'" in r.error.message and "'Other'" in r.error.message


def test_block_awaiting_an_event_loop_api_fails_with_a_clear_error():
    import trio

    async def sleeps(ctx):
        await trio.sleep(1)

    def orch(ctx, _):
        async def run(ctx):
            return await ctx.select(ctx.schedule_timer(5), sleeps(ctx))

        return run(ctx)

    inst = Instance(orch)
    assert inst.last.status == Status.FAILED
    assert "trio." in inst.last.error.message and "not a durable future" in inst.last.error.message


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda ctx: _two_steps, "the async function _two_steps itself; call it"),
        (lambda ctx: 42, "argument 2 is 42"),
        (lambda ctx: (lambda: None), "argument 2 is <function"),
    ],
)
def test_things_that_are_not_futures_or_blocks_are_refused_by_name(make, fragment):
    seen = {}

    def orch(ctx, _):
        async def run(ctx):
            try:
                ctx.select(ctx.schedule_timer(1), make(ctx))
            except TypeError as exc:
                seen["msg"] = str(exc)
                return "refused"

        return run(ctx)

    inst = Instance(orch)
    assert inst.last.output == '"refused"'
    assert fragment in seen["msg"], seen["msg"]


def test_a_started_coroutine_is_refused_and_fresh_ones_are_closed():
    seen = {}

    def orch(ctx, _):
        async def run(ctx):
            block = _two_steps(ctx)
            ctx.task(block)
            fresh = _two_steps(ctx)
            try:
                ctx.join([fresh, block])
            except TypeError as exc:
                seen["msg"] = str(exc)
            seen["fresh_closed"] = fresh.cr_frame is None
            return None

        return run(ctx)

    Instance(orch)
    assert "has already started" in seen["msg"] and seen["fresh_closed"]


# -------------------------------------------------------------------------------- smaller gaps (issue 12.6)


def test_custom_status_is_readable_and_carried_across_continue_as_new():
    seen = []

    def orch(ctx, n):
        async def run(ctx, n):
            seen.append((ctx.execution_id, ctx.custom_status))
            if n == 0:
                ctx.set_custom_status({"phase": "one", "n": n})
                assert ctx.custom_status == {"phase": "one", "n": 0}
                await ctx.schedule_timer(1)
                return await ctx.continue_as_new(1)
            return ctx.custom_status

        return run(ctx, n)

    inst = Instance(orch, 0)
    r = inst.turn([h.TimerDue("i", 1, 3, 0)])
    assert r.status == Status.CONTINUED_AS_NEW
    can = next(m for m in r.orchestrator_items if isinstance(m, h.ContinueAsNew))
    inst.history, inst.execution_id = [], 2
    r = inst.turn([can])
    assert r.status == Status.COMPLETED and json.loads(r.output) == {"phase": "one", "n": 0}
    assert seen[0] == (1, None) and seen[-1] == (2, {"phase": "one", "n": 0})


def test_a_second_queued_event_in_the_completing_batch_is_still_recorded():
    def orch(ctx, _):
        async def run(ctx):
            return await ctx.dequeue_event("q")

        return run(ctx)

    inst = Instance(orch)
    r = inst.turn([h.QueueMessage("i", "q", '"first"'), h.QueueMessage("i", "q", '"second"')])
    assert r.status == Status.COMPLETED and r.output == '"first"'
    delivered = [e.kind.data for e in inst.history if e.type_name == "QueueEventDelivered"]
    assert delivered == ['"first"', '"second"']


@pytest.mark.parametrize("n", [1024, 2048])
def test_fan_in_of_many_children_replays_and_completes(n):
    def orch(ctx, n):
        async def run(ctx, n):
            results = await ctx.join([ctx.schedule_sub_orchestration("Child", i) for i in range(n)])
            return sum(results)

        return run(ctx, n)

    inst = Instance(orch, n)
    children = [e for e in inst.history if e.type_name == "SubOrchestrationScheduled"]
    assert len(children) == n
    # Half the children complete in one turn, the rest in another: the second turn replays n completions.
    half = n // 2
    msgs = [h.SubOrchResult("i", 1, c.event_id, json.dumps(i)) for i, c in enumerate(children)]
    r = inst.turn(msgs[:half])
    assert r.status is None
    r = inst.turn(msgs[half:])
    assert r.status == Status.COMPLETED and r.output == str(sum(range(n)))


def test_retry_policy_non_retryable_stops_at_once():
    import duroxide_trio as dt

    class PaymentDeclined(Exception):
        pass

    policy = dt.RetryPolicy(5, dt.Backoff.fixed(1.0), non_retryable=(PaymentDeclined, "BadInput"))
    assert not policy.is_retryable(h.ErrorDetails("application", "ActivityFailed", "PaymentDeclined: no funds"))
    assert not policy.is_retryable(h.ErrorDetails("application", "BadInput", "cannot decode"))
    assert policy.is_retryable(h.ErrorDetails("application", "ActivityFailed", "RuntimeError: flaky"))
    with pytest.raises(TypeError, match="non_retryable"):
        dt.RetryPolicy(non_retryable=(42,))

    def orch(ctx, _):
        async def run(ctx):
            try:
                await ctx.schedule_activity("Pay", retry=policy)
            except dt.ActivityFailed as exc:
                return exc.details.message

        return run(ctx)

    inst = Instance(orch)
    r = inst.turn([h.ActivityError("i", 1, 2, h.ErrorDetails("application", "ActivityFailed", "PaymentDeclined: no"))])
    assert r.status == Status.COMPLETED and r.output == '"PaymentDeclined: no"'
    assert inst.types().count("ActivityScheduled") == 1 and "TimerCreated" not in inst.types()

    inst = Instance(orch)  # a retryable failure still retries (a timer, then a second attempt)
    inst.turn([h.ActivityError("i", 1, 2, h.ErrorDetails("application", "ActivityFailed", "RuntimeError: x"))])
    assert "TimerCreated" in inst.types()


def test_automatic_child_ids_include_the_execution_id_after_continue_as_new():
    def orch(ctx, n):
        async def run(ctx, n):
            await ctx.schedule_sub_orchestration("Child", n)
            if n == 0:
                return await ctx.continue_as_new(1)
            return "done"

        return run(ctx, n)

    inst = Instance(orch, 0)
    first = inst.event("SubOrchestrationScheduled").kind.instance
    r = inst.turn([h.SubOrchResult("i", 1, 2, "null")])
    can = next(m for m in r.orchestrator_items if isinstance(m, h.ContinueAsNew))
    inst.history, inst.execution_id = [], 2
    inst.turn([can])
    second = inst.event("SubOrchestrationScheduled").kind.instance
    assert first == "i::sub::2" and second == "i::sub::2.2" and first != second
