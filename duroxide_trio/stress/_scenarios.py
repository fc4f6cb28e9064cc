"""The stress scenarios. Each registers its orchestrations and activities and checks every output.

A scenario turns a sequence number into a :class:`Launch`: which orchestration to start with which input,
how to check the output (a wrong value is a failure), and optionally a *driver* the harness runs next to
the wait (the ``events`` scenario raises the events itself). Activities sleep ``activity_delay_ms``;
timers are tens of milliseconds so that a run measures the runtime, not the sleep.

Every value an instance computes is derived from its sequence number (``seed``), so a result delivered
to the wrong instance, or to the wrong activity of an instance, shows up as a wrong output.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ..registry import Registry

if TYPE_CHECKING:
    from ..activity import ActivityContext
    from ..client import Client, OrchestrationState
    from ..orchestration.context import OrchestrationContext
    from ._config import StressConfig

__all__ = ["SCENARIOS", "Launch", "Scenario", "get_scenario"]

Check = Callable[[Any, "OrchestrationState"], "str | None"]
Driver = Callable[["Client", str], Awaitable[None]]

#: Timer length of the ``timers`` scenario, in milliseconds.
TIMER_MS = 20
#: Payload sizes of the ``large-payload`` scenario, in KB (small / medium / large outputs, activity inputs).
SMALL_KB, MEDIUM_KB, LARGE_KB, INPUT_KB, CHILD_INPUT_KB = 10, 50, 100, 25, 50


@attrs.frozen
class Launch:
    """One instance to start: ``orchestration(input)``, then ``check(output, state)`` returns ``None`` when
    the output is right or a reason; ``drive(client, instance_id)`` runs next to the wait if given."""

    orchestration: str
    input: Any
    check: Check
    drive: Driver | None = None


class Scenario:
    """A stress workload: what it registers, and what each launched instance runs and must return. ``name``
    is its CLI name (``--scenario``), ``description`` one line for ``--help``."""
    name: str = ""
    description: str = ""

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
# mixed


class Mixed(Scenario):
    """``mixed``: every other scenario, round robin."""
    name = "mixed"
    description = "all of the above at once, round robin"

    def __init__(self) -> None:
        self.parts: list[Scenario] = [
            Fanout(), Timers(), SubOrchestrations(), ContinueAsNew(), Events(), LargePayload()
        ]  # fmt: skip

    def register(self, registry: Registry, config: StressConfig) -> None:
        for part in self.parts:
            part.register(registry, config)

    def plan(self, seq: int, config: StressConfig) -> Launch:
        return self.parts[seq % len(self.parts)].plan(seq, config)


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls for cls in (Fanout, LargePayload, Timers, SubOrchestrations, ContinueAsNew, Events, Mixed)
}


def get_scenario(name: str) -> Scenario:
    """A new instance of the scenario called ``name``. Raises ValueError (listing the names) for an unknown
    one."""
    try:
        return SCENARIOS[name]()
    except KeyError:
        raise ValueError(f"unknown stress scenario {name!r}; choose one of: {', '.join(SCENARIOS)}") from None
