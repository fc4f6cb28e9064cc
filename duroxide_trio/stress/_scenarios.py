"""The stress scenarios. Each registers its orchestrations and activities and checks every output.

A scenario turns a sequence number into a :class:`Launch`: which orchestration to start with which input,
how to check the output (a wrong value is a failure), and optionally a *driver* the harness runs next to
the wait (the ``events`` scenario raises the events itself). Activities sleep ``activity_delay_ms``;
timers are tens of milliseconds so that a run measures the runtime, not the sleep.

Every value an instance computes is derived from its sequence number (``seed``), so a result delivered
to the wrong instance, or to the wrong activity of an instance, shows up as a wrong output.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ..history import ActivityCompleted
from ..registry import Registry

if TYPE_CHECKING:
    from ..activity import ActivityContext
    from ..client import Client, OrchestrationState
    from ..orchestration.context import OrchestrationContext
    from ._config import StressConfig

__all__ = ["SCENARIOS", "STRESS_TAG", "Launch", "Scenario", "get_scenario"]

Check = Callable[[Any, "OrchestrationState"], "str | None"]
Driver = Callable[["Client", str], Awaitable[None]]
Verify = Callable[["Client", str], Awaitable["str | None"]]

#: The activity tag of the ``sessions`` scenario's tagged activities; the stress runtimes accept it
#: (``RuntimeOptions.activity_tags = TagFilter.default_and(STRESS_TAG)``).
STRESS_TAG = "stress"

#: Timer length of the ``timers`` scenario, in milliseconds.
TIMER_MS = 20
#: Payload sizes of the ``large-payload`` scenario, in KB (small / medium / large outputs, activity inputs).
SMALL_KB, MEDIUM_KB, LARGE_KB, INPUT_KB, CHILD_INPUT_KB = 10, 50, 100, 25, 50


@attrs.frozen
class Launch:
    """One instance to start: ``orchestration(input)``, then ``check(output, state)`` returns ``None`` when
    the output is right or a reason; ``drive(client, instance_id)`` runs next to the wait if given;
    ``verify(client, instance_id)``, if given, reads the store once the output checked out (e.g. the
    instance's committed key-value state) and returns ``None`` or a reason."""

    orchestration: str
    input: Any
    check: Check
    drive: Driver | None = None
    verify: Verify | None = None


class Scenario:
    """A stress workload: what it registers, and what each launched instance runs and must return. ``name``
    is its CLI name (``--scenario``), ``description`` one line for ``--help``."""
    name: str = ""
    description: str = ""
    #: Tasks per instance the CLI uses for this scenario when ``--tasks`` is not given (``None``: the
    #: preset's or ``StressConfig``'s default).
    default_tasks: int | None = None

    def register(self, registry: Registry, config: StressConfig) -> None:
        """Add this scenario's orchestrations and activities to ``registry`` (names it already has are
        kept, so a test can plant a deliberately wrong handler)."""
        raise NotImplementedError

    def plan(self, seq: int, config: StressConfig) -> Launch:
        """The ``seq``-th instance to launch: orchestration name, input, the check of its output and, for
        scenarios that need one, the driver that sends it events."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# helpers


def _value(seed: int, i: int) -> int:
    """What ``StressProcessTask([seed, i])`` returns."""
    return seed * 1000 + i


def _equals(expected: Any) -> Check:
    def check(output: Any, state: OrchestrationState) -> str | None:
        if output == expected:
            return None
        return f"wrong output: expected {expected!r:.200}, got {output!r:.200}"

    return check


def _add_activity(registry: Registry, name: str, fn: Callable[..., Any]) -> None:
    """Register unless the registry already has ``name`` (tests plant deliberately wrong activities)."""
    if registry.get_activity(name) is None:
        registry.add_activity(fn, name)


def _add_orchestration(registry: Registry, name: str, fn: Callable[..., Any]) -> None:
    if not registry.has_orchestration(name):
        registry.add_orchestration(fn, name)


def _register_process_task(registry: Registry, config: StressConfig) -> None:
    delay = config.activity_delay_ms / 1000.0

    async def process_task(ctx: ActivityContext, item: list[int]) -> int:
        if delay:
            await anyio.sleep(delay)
        seed, i = item
        return _value(seed, i)

    _add_activity(registry, "StressProcessTask", process_task)


def _payload(seed: int, i: int, kb: int) -> str:
    unit = f"<{seed}:{i}>"
    size = kb * 1024
    return (unit * (size // len(unit) + 1))[:size]


# ---------------------------------------------------------------------------------------------------------
# fanout


async def _fanout(ctx: OrchestrationContext, input: dict[str, int]) -> dict[str, int]:
    seed, n = input["seed"], input["tasks"]
    results = await ctx.join([ctx.schedule_activity("StressProcessTask", [seed, i]) for i in range(n)])
    return {"seed": seed, "count": len(results), "sum": sum(results)}


class Fanout(Scenario):
    """``fanout``: fan out N activities that sleep ``activity_delay_ms``, join them, check the sum."""
    name = "fanout"
    description = (
        "fan out N activities that sleep activity_delay_ms, join them (duroxide's parallel orchestrations)"
    )

    def register(self, registry: Registry, config: StressConfig) -> None:
        _register_process_task(registry, config)
        _add_orchestration(registry, "StressFanout", _fanout)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        expected = {"seed": seq, "count": n, "sum": sum(_value(seq, i) for i in range(n))}
        return Launch("StressFanout", {"seed": seq, "tasks": n}, _equals(expected))


# ---------------------------------------------------------------------------------------------------------
# sequential


async def _sequential(ctx: OrchestrationContext, input: dict[str, int]) -> dict[str, Any]:
    seed, n = input["seed"], input["tasks"]
    results = []
    for i in range(n):
        results.append(await ctx.schedule_activity("StressProcessTask", [seed, i]))
    return {"seed": seed, "results": results}


class Sequential(Scenario):
    """``sequential``: N activities one after another (each scheduled when the previous one completed).

    An instance takes N + 1 orchestration turns (the start, then one per completed activity) and N
    activities; the result's ``overhead_ms`` = p50 latency − N × ``activity_delay_ms`` and
    ``step_overhead_ms`` = ``overhead_ms`` / (N + 1), the cost of one turn with its round trips."""
    name = "sequential"
    description = (
        "N activities one after another (N+1 turns); reports the per-step overhead = "
        "(p50 - N x activity delay) / (N+1); N defaults to 3"
    )
    default_tasks = 3

    def register(self, registry: Registry, config: StressConfig) -> None:
        _register_process_task(registry, config)
        _add_orchestration(registry, "StressSequential", _sequential)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        expected = {"seed": seq, "results": [_value(seq, i) for i in range(n)]}
        return Launch("StressSequential", {"seed": seq, "tasks": n}, _equals(expected))


# ---------------------------------------------------------------------------------------------------------
# large payloads


def _crc(values: list[str]) -> int:
    crc = 0
    for v in values:
        crc = zlib.crc32(v.encode(), crc)
    return crc


def _payload_plan(n: int) -> tuple[list[tuple[int, int]], int, int]:
    """(size of each sequential activity's output and input in KB), sub-orchestrations, tail activities."""
    count = 4 * n
    sizes = []
    for i in range(count):
        if i < count // 3:
            sizes.append((SMALL_KB, 0))
        elif i < 2 * count // 3:
            sizes.append((MEDIUM_KB, INPUT_KB))
        else:
            sizes.append((LARGE_KB, INPUT_KB))
    return sizes, n, 2 * n


async def _large_payload(ctx: OrchestrationContext, input: dict[str, int]) -> dict[str, Any]:
    seed, n = input["seed"], input["tasks"]
    sizes, children, tail = _payload_plan(n)
    received: list[str] = []
    for i, (out_kb, in_kb) in enumerate(sizes):
        blob = _payload(seed, -i, in_kb) if in_kb else ""
        received.append(
            await ctx.schedule_activity("StressPayload", {"seed": seed, "i": i, "kb": out_kb, "blob": blob})
        )
    child_out = await ctx.join(
        [
            ctx.schedule_sub_orchestration(
                "StressPayloadChild",
                {"seed": seed, "i": 1000 + c, "blob": _payload(seed, 1000 + c, CHILD_INPUT_KB)},
            )
            for c in range(children)
        ]
    )
    for j in range(tail):
        received.append(
            await ctx.schedule_activity(
                "StressPayload", {"seed": seed, "i": 2000 + j, "kb": SMALL_KB, "blob": ""}
            )
        )
    return {
        "crc": _crc(received),
        "bytes": sum(len(r) for r in received),
        "children": child_out,
        "blob": _payload(seed, 9999, LARGE_KB),
    }


async def _large_payload_child(ctx: OrchestrationContext, input: dict[str, Any]) -> dict[str, int]:
    out = await ctx.schedule_activity(
        "StressPayload", {"seed": input["seed"], "i": input["i"], "kb": SMALL_KB}
    )
    return {
        "input_len": len(input["blob"]),
        "input_crc": zlib.crc32(input["blob"].encode()),
        "crc": zlib.crc32(out.encode()),
    }


class LargePayload(Scenario):
    """``large-payload``: sequential activities and sub-orchestrations with 10-100 KB payloads."""
    name = "large-payload"
    description = (
        "4N sequential activities with 10/50/100 KB outputs (25 KB inputs), N sub-orchestrations with 50 KB "
        "inputs, 2N more activities, a 100 KB result"
    )

    def register(self, registry: Registry, config: StressConfig) -> None:
        delay = config.activity_delay_ms / 1000.0

        async def payload(ctx: ActivityContext, item: dict[str, Any]) -> str:
            if delay:
                await anyio.sleep(delay)
            blob = item.get("blob") or ""
            if blob and blob != _payload(item["seed"], -item["i"], len(blob) // 1024):
                raise ValueError(f"activity {item['i']} of seed {item['seed']} got a corrupted input")
            return _payload(item["seed"], item["i"], item["kb"])

        _add_activity(registry, "StressPayload", payload)
        _add_orchestration(registry, "StressLargePayload", _large_payload)
        _add_orchestration(registry, "StressPayloadChild", _large_payload_child)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        sizes, children, tail = _payload_plan(n)
        received = [_payload(seq, i, kb) for i, (kb, _) in enumerate(sizes)]
        received += [_payload(seq, 2000 + j, SMALL_KB) for j in range(tail)]
        child_expected = []
        for c in range(children):
            blob = _payload(seq, 1000 + c, CHILD_INPUT_KB).encode()
            child_expected.append(
                {
                    "input_len": len(blob),
                    "input_crc": zlib.crc32(blob),
                    "crc": zlib.crc32(_payload(seq, 1000 + c, SMALL_KB).encode()),
                }
            )
        expected = {
            "crc": _crc(received),
            "bytes": sum(len(r) for r in received),
            "children": child_expected,
            "blob": _payload(seq, 9999, LARGE_KB),
        }
        return Launch("StressLargePayload", {"seed": seq, "tasks": n}, _equals(expected))


# ---------------------------------------------------------------------------------------------------------
# timers


async def _timers(ctx: OrchestrationContext, input: dict[str, int]) -> dict[str, Any]:
    seed, n, timer_ms = input["seed"], input["tasks"], input["timer_ms"]
    start = ctx.now()
    total = 0
    for i in range(n):
        await ctx.schedule_timer(timer_ms / 1000.0)
        total += await ctx.schedule_activity("StressProcessTask", [seed, i])
    # A race the timer must win: the event never comes, its subscription is cancelled.
    winner, _ = await ctx.select(ctx.wait_for_event("StressNever"), ctx.schedule_timer(timer_ms / 1000.0))
    elapsed_ms = (ctx.now() - start).total_seconds() * 1000.0
    return {"sum": total, "winner": winner, "elapsed_ms": elapsed_ms}


class Timers(Scenario):
    """``timers``: durable timers in a loop, then a timer raced against an event."""
    name = "timers"
    description = f"N rounds of a {TIMER_MS} ms durable timer then an activity, then a timer/event race"

    def register(self, registry: Registry, config: StressConfig) -> None:
        _register_process_task(registry, config)
        _add_orchestration(registry, "StressTimers", _timers)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        expected_sum = sum(_value(seq, i) for i in range(n))
        # Timers never fire early; allow 1 ms per timer for millisecond rounding of timestamps.
        min_elapsed = (n + 1) * TIMER_MS - (n + 1)

        def check(output: Any, state: OrchestrationState) -> str | None:
            if not isinstance(output, dict):
                return f"wrong output: expected a dict, got {output!r:.200}"
            if output.get("sum") != expected_sum or output.get("winner") != 1:
                return f"wrong output: expected sum {expected_sum} and timer winning the race, got {output!r:.200}"
            if not isinstance(output.get("elapsed_ms"), (int, float)) or output["elapsed_ms"] < min_elapsed:
                return (
                    f"timers fired early: {n + 1} timers of {TIMER_MS} ms took {output.get('elapsed_ms')} ms"
                )
            return None

        return Launch("StressTimers", {"seed": seq, "tasks": n, "timer_ms": TIMER_MS}, check)


# ---------------------------------------------------------------------------------------------------------
# sub-orchestrations


async def _parent(ctx: OrchestrationContext, input: dict[str, int]) -> dict[str, Any]:
    seed, n = input["seed"], input["tasks"]
    children = await ctx.join(
        [ctx.schedule_sub_orchestration("StressChild", {"seed": seed, "i": i}) for i in range(n)]
    )
    return {
        "children": len(children),
        "sum": sum(c["value"] for c in children),
        "order": [c["i"] for c in children],
    }


async def _child(ctx: OrchestrationContext, input: dict[str, int]) -> dict[str, int]:
    value = await ctx.schedule_activity("StressProcessTask", [input["seed"], input["i"]])
    return {"i": input["i"], "value": value}


class SubOrchestrations(Scenario):
    """``sub-orchestrations``: a parent starts N children and joins them."""
    name = "sub-orchestrations"
    description = "a parent starts N child orchestrations (one activity each) and joins them"

    def register(self, registry: Registry, config: StressConfig) -> None:
        _register_process_task(registry, config)
        _add_orchestration(registry, "StressParent", _parent)
        _add_orchestration(registry, "StressChild", _child)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        expected = {"children": n, "sum": sum(_value(seq, i) for i in range(n)), "order": list(range(n))}
        return Launch("StressParent", {"seed": seq, "tasks": n}, _equals(expected))


# ---------------------------------------------------------------------------------------------------------
# continue-as-new


async def _eternal(ctx: OrchestrationContext, input: dict[str, int]) -> Any:
    seed, iteration, total, acc = input["seed"], input["iteration"], input["total"], input["acc"]
    carried = ctx.get_value("acc", 0)  # durable key-value state, carried across continue-as-new
    if carried != acc:
        return {"kv_mismatch": {"carried": carried, "input": acc, "execution_id": ctx.execution_id}}
    acc += await ctx.schedule_activity("StressProcessTask", [seed, iteration])
    ctx.set_value("acc", acc)
    if iteration + 1 < total:
        return await ctx.continue_as_new(
            {"seed": seed, "iteration": iteration + 1, "total": total, "acc": acc}
        )
    return {"acc": acc, "iterations": total, "execution_id": ctx.execution_id, "kv": ctx.get_value("acc")}


class ContinueAsNew(Scenario):
    """``continue-as-new``: an eternal orchestration that rolls its history N times."""
    name = "continue-as-new"
    description = (
        "an eternal orchestration: one activity per execution, continue-as-new N times with a carried sum "
        "(also kept in its durable key-value state)"
    )

    def register(self, registry: Registry, config: StressConfig) -> None:
        _register_process_task(registry, config)
        _add_orchestration(registry, "StressEternal", _eternal)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        acc = sum(_value(seq, i) for i in range(n))
        expected = {"acc": acc, "iterations": n, "execution_id": n, "kv": acc}
        equals = _equals(expected)

        def check(output: Any, state: OrchestrationState) -> str | None:
            if (reason := equals(output, state)) is not None:
                return reason
            if state.execution_id != n:
                return f"wrong execution: expected execution {n} to complete, status reports {state.execution_id}"
            return None

        return Launch("StressEternal", {"seed": seq, "iteration": 0, "total": n, "acc": 0}, check)


# ---------------------------------------------------------------------------------------------------------
# external events


async def _events(ctx: OrchestrationContext, input: dict[str, int]) -> dict[str, Any]:
    n = input["tasks"]
    ctx.set_custom_status("waiting")
    approval = await ctx.wait_for_event("StressApproval")
    items = [await ctx.dequeue_event("StressItems") for _ in range(n)]
    total = await ctx.schedule_activity("StressSum", items)
    return {"approval": approval, "items": items, "sum": total}


class Events(Scenario):
    """``events``: the harness raises an event and enqueues mailbox messages right after the start."""
    name = "events"
    description = (
        "the harness raises a positional event and enqueues N mailbox events right after the start; both "
        "are kept until the orchestration waits for them"
    )

    def register(self, registry: Registry, config: StressConfig) -> None:
        delay = config.activity_delay_ms / 1000.0

        async def stress_sum(ctx: ActivityContext, items: list[int]) -> int:
            if delay:
                await anyio.sleep(delay)
            return sum(items)

        _add_activity(registry, "StressSum", stress_sum)
        _add_orchestration(registry, "StressEvents", _events)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        items = [_value(seq, i) for i in range(n)]
        approval = f"approved-{seq}"

        async def drive(client: Client, instance_id: str) -> None:
            # Both kinds are kept in history until the orchestration waits for them: nothing is lost when
            # they arrive before the subscription (or even before the first turn).
            await client.raise_event(instance_id, "StressApproval", approval)
            for item in items:  # FIFO mailbox
                await client.enqueue_event(instance_id, "StressItems", item)

        expected = {"approval": approval, "items": items, "sum": sum(items)}
        return Launch("StressEvents", {"seed": seq, "tasks": n}, _equals(expected), drive)


# ---------------------------------------------------------------------------------------------------------
# durable key-value state


#: Activities (and counter increments) per execution of the ``kv`` scenario.
KV_STEPS = 2


async def _kv(ctx: OrchestrationContext, input: dict[str, int]) -> Any:
    seed, iteration, total = input["seed"], input["iteration"], input["total"]
    counter = ctx.get_value("counter", 0)  # carried across continue-as-new
    if counter != iteration * KV_STEPS:
        return {"kv_mismatch": {"counter": counter, "iteration": iteration, "values": ctx.get_values()}}
    if iteration == 0:
        ctx.set_value("seed", seed)
        ctx.set_value("scratch", f"tmp-{seed}")
    elif iteration == 1:
        ctx.clear_value("scratch")
    elif iteration == 2:
        ctx.clear_values()  # everything goes, then the counter is put back
        ctx.set_value("counter", counter)
    for step in range(KV_STEPS):
        value = await ctx.schedule_activity("StressProcessTask", [seed, iteration * KV_STEPS + step])
        # One increment per turn, read-modify-write: a turn lost or committed twice shows in the count.
        ctx.set_value("counter", ctx.get_value("counter", 0) + 1)
        ctx.set_value("last", value)
    ctx.set_value(f"e{iteration}", ctx.get_value("last"))
    if iteration + 1 < total:
        return await ctx.continue_as_new({"seed": seed, "iteration": iteration + 1, "total": total})
    return {"counter": ctx.get_value("counter"), "values": ctx.get_values()}


def kv_expected(seed: int, total: int) -> dict[str, Any]:
    """The key-value state the ``kv`` scenario's instance ``seed`` ends with after ``total`` executions."""
    values: dict[str, Any] = {}
    counter = 0
    for iteration in range(total):
        if iteration == 0:
            values.update(seed=seed, scratch=f"tmp-{seed}")
        elif iteration == 1:
            values.pop("scratch", None)
        elif iteration == 2:
            values = {"counter": counter}
        for step in range(KV_STEPS):
            counter += 1
            values["counter"] = counter
            values["last"] = _value(seed, iteration * KV_STEPS + step)
        values[f"e{iteration}"] = values["last"]
    return values


class KeyValues(Scenario):
    """``kv``: durable key-value state written, read and cleared across turns and continue-as-new."""
    name = "kv"
    description = (
        f"durable key-value state: N executions (continue-as-new) of {KV_STEPS} activities, a counter "
        "incremented per turn (set_value(get_value() + 1)), keys set, cleared and carried; the output and "
        "Client.get_values must both hold exactly what the code wrote"
    )

    def register(self, registry: Registry, config: StressConfig) -> None:
        _register_process_task(registry, config)
        _add_orchestration(registry, "StressKeyValues", _kv)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        values = kv_expected(seq, n)
        equals = _equals({"counter": n * KV_STEPS, "values": values})

        def check(output: Any, state: OrchestrationState) -> str | None:
            if (reason := equals(output, state)) is not None:
                return reason
            if state.execution_id != n:
                return f"wrong execution: expected execution {n} to complete, status reports {state.execution_id}"
            return None

        async def verify(client: Client, instance_id: str) -> str | None:
            stored = await client.get_values(instance_id)
            if stored != values:
                return f"wrong key-value state in the store: expected {values!r:.200}, got {stored!r:.200}"
            # The counter went up once per turn that followed an activity: as many as history completed.
            turns = 0
            for execution_id in await client.list_executions(instance_id):
                history = await client.get_history(instance_id, execution_id)
                turns += sum(1 for e in history if isinstance(e.kind, ActivityCompleted))
            if stored.get("counter") != turns:
                return f"counter {stored.get('counter')} but history holds {turns} activity completions"
            return None

        return Launch("StressKeyValues", {"seed": seq, "iteration": 0, "total": n}, check, verify=verify)


# ---------------------------------------------------------------------------------------------------------
# sessions and tags

#: What each process has seen of each session (the per-process state a session exists for): the last
#: step it ran and how many of the session's steps run in it right now.
_SESSION_SEEN: dict[str, dict[str, Any]] = {}
#: How many sessions a process remembers (the oldest are forgotten first).
SESSIONS_REMEMBERED = 20_000


async def _sessions(ctx: OrchestrationContext, input: dict[str, int]) -> dict[str, Any]:
    seed, n = input["seed"], input["tasks"]
    session = f"stress-{ctx.instance_id}"
    steps = [
        ctx.schedule_activity(
            "StressSessionStep", {"seed": seed, "i": i, "n": n}, session_id=session,
            tag=STRESS_TAG if i % 2 else None,
        )
        for i in range(n)
    ]  # fmt: skip
    tagged = [ctx.schedule_activity("StressTagged", [seed, 100 + i], tag=STRESS_TAG) for i in range(n)]
    results = await ctx.join(steps + tagged)
    return {"session": session, "steps": results[:n], "tagged": results[n:]}


def _check_steps(steps: Any, session: str, n: int, seed: int) -> str | None:
    """Why the session steps of one instance did not run one at a time, in scheduling order, in one
    process at a time (a step re-run after its process died runs in the next owner)."""
    if not isinstance(steps, list) or len(steps) != n:
        return f"expected {n} session steps, got {steps!r:.200}"
    previous_pid = None
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            return f"session step {i}: got {step!r:.100}"
        if step.get("value") != _value(seed, i) or step.get("i") != i:
            return f"session step {i}: wrong result {step!r:.200}"
        if step.get("session") != session or step.get("tag") != (STRESS_TAG if i % 2 else None):
            return f"session step {i} ran with session {step.get('session')!r}, tag {step.get('tag')!r}"
        if step.get("overlap"):
            return f"session step {i} ran while another step of its session ran in the same process"
        prev = step.get("prev")
        if step.get("pid") == previous_pid or i == 0:
            allowed = {i - 1, i} if i else {None, 0}  # i: the step itself ran here before (a retried ack)
            if prev not in allowed:
                return f"session step {i} ran after step {prev} in process {step.get('pid')}: out of order"
        elif prev is not None and prev > i:
            return f"session step {i} ran after step {prev}: out of order"
        previous_pid = step.get("pid")
    return None


class Sessions(Scenario):
    """``sessions``: N activities on one session (one at a time, in order, in one process) next to N
    tagged activities; every step reports what its process saw of the session."""
    name = "sessions"
    description = (
        f"N activities with one session_id (every other one also tagged {STRESS_TAG!r}) must run one at a "
        f"time, in scheduling order, in one process; next to N activities tagged {STRESS_TAG!r} (the stress "
        "runtimes accept the tag)"
    )

    def register(self, registry: Registry, config: StressConfig) -> None:
        delay = config.activity_delay_ms / 1000.0

        async def session_step(ctx: ActivityContext, item: dict[str, int]) -> dict[str, Any]:
            session = ctx.session_id or ""
            seen = _SESSION_SEEN.setdefault(session, {"last": None, "running": 0})
            prev, overlap = seen["last"], seen["running"] > 0
            seen["running"] += 1
            try:
                await anyio.sleep(delay or 0.001)  # long enough for a second step to show as an overlap
            finally:
                seen["running"] -= 1
            seen["last"] = item["i"]
            if len(_SESSION_SEEN) > SESSIONS_REMEMBERED:  # a long run: forget the oldest sessions
                del _SESSION_SEEN[next(iter(_SESSION_SEEN))]
            return {
                "i": item["i"], "value": _value(item["seed"], item["i"]), "prev": prev, "overlap": overlap,
                "pid": os.getpid(), "session": ctx.session_id, "tag": ctx.tag,
            }  # fmt: skip

        async def tagged(ctx: ActivityContext, item: list[int]) -> dict[str, Any]:
            if delay:
                await anyio.sleep(delay)
            return {"value": _value(*item), "tag": ctx.tag, "session": ctx.session_id}

        _add_activity(registry, "StressSessionStep", session_step)
        _add_activity(registry, "StressTagged", tagged)
        _add_orchestration(registry, "StressSessions", _sessions)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        n = config.tasks_per_instance
        tagged = [{"value": _value(seq, 100 + i), "tag": STRESS_TAG, "session": None} for i in range(n)]

        def check(output: Any, state: OrchestrationState) -> str | None:
            if not isinstance(output, dict):
                return f"wrong output: expected a dict, got {output!r:.200}"
            if output.get("tagged") != tagged:
                return f"wrong tagged results: expected {tagged!r:.200}, got {output.get('tagged')!r:.200}"
            reason = _check_steps(output.get("steps"), str(output.get("session")), n, seq)
            return None if reason is None else f"wrong output: {reason}"

        return Launch("StressSessions", {"seed": seq, "tasks": n}, check)


# ---------------------------------------------------------------------------------------------------------
# mixed


class Mixed(Scenario):
    """``mixed``: every other scenario, round robin."""
    name = "mixed"
    description = "all of the above at once, round robin"

    def __init__(self) -> None:
        self.parts: list[Scenario] = [
            Fanout(), Timers(), SubOrchestrations(), ContinueAsNew(), Events(), LargePayload(), KeyValues(),
            Sessions(),
        ]  # fmt: skip

    def register(self, registry: Registry, config: StressConfig) -> None:
        for part in self.parts:
            part.register(registry, config)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        return self.parts[seq % len(self.parts)].plan(seq, config)


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        Fanout, Sequential, LargePayload, Timers, SubOrchestrations, ContinueAsNew, Events, KeyValues, Sessions,
        Mixed,
    )  # fmt: skip
}


def get_scenario(name: str) -> Scenario:
    """A new instance of the scenario called ``name``. Raises ValueError (listing the names) for an unknown
    one."""
    try:
        return SCENARIOS[name]()
    except KeyError:
        raise ValueError(f"unknown stress scenario {name!r}; choose one of: {', '.join(SCENARIOS)}") from None
