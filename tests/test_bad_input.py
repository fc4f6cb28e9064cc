"""The bad-input catalogue: what a user may send (or what may fail) and what they must see.

The contract (robustness issue): nothing a user sends and nothing that fails may stop the runtime, strand
an instance or lose stored data. Exceptions from user code and payload conversion end *that* instance
Failed with an explained error; limit violations end it Failed with ``configuration``/``LimitExceeded``
before anything is written; the client refuses bad input with an error naming the field; other instances
keep running; stored data stays as it was. See ``catalogue_support`` for how each row is checked.

Tables, in order:

- ``INSTANCE_CASES``: orchestrations that misbehave or receive bad input (both providers, both backends;
  each case on its own database and runtime — six at a time on one event loop, so one crash or hang
  cannot hide another — with a healthy instance beside it and a previously completed baseline);
- ``CLIENT_CASES``: client calls that must be refused (both providers, both backends; one database and
  runtime per provider and backend, the cases one after another);
- ``CONFIG_CASES``: options and registrations refused at construction (no I/O);
- ``STORAGE_CASES``: corrupted rows in a real database (both providers, both backends);
- ``PROVIDER_BUG_CASES``: a provider call that raises something other than ``ProviderError``;
- ``OPEN_CASES`` / ``PG_CONNECT_CASES``: databases that cannot be opened, hostile schema names;
- ``CLI_CASES``: ``duroxide-trio instances`` against bad databases and bad arguments.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import attrs
import pytest
import trio
from catalogue_support import (
    HEALTHY,
    HISTORY_LIMIT,
    NAME_LIMIT,
    PAYLOAD_LIMIT,
    RANGE_AT_LEAST_1,
    RANGE_POSITIVE,
    STATUS_LIMIT,
    ClientCase,
    Env,
    Expect,
    InstanceCase,
    MiB,
    Storage,
    add_healthy,
    describe,
    forbidden_problems,
    fragment_problems,
    history_below,
    limit,
    limit_exceeded,
    log_text,
    run_group,
)
from helpers import FAST

import duroxide_trio as dt
from duroxide_trio.providers.base import ProviderError

# ---------------------------------------------------------------------------------------------------------
# Orchestrations and activities of the catalogue. The orchestration of an instance case is registered
# under the case id.

REGISTRY = dt.Registry()
INSTANCE_CASES: list[InstanceCase] = []
add_healthy(REGISTRY)


def case(case_id: str, expect: Expect, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated orchestration as the setup of catalogue row ``case_id``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY.add_orchestration(fn, case_id)
        INSTANCE_CASES.append(InstanceCase(case_id, case_id, expect, **kw))
        return fn

    return deco


def big(n: int, ch: str = "x") -> str:
    return ch * n


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


SINK = "Sink"


@REGISTRY.orchestration(SINK)
async def sink(ctx: dt.OrchestrationContext, x: Any = None) -> None:
    """Takes anything, does nothing: the target of starts whose input must be refused."""


@attrs.define
class Order:
    sku: str
    qty: int


@REGISTRY.activity("Echo")
async def echo(ctx: dt.ActivityContext, x: Any) -> Any:
    return x


@REGISTRY.activity("TypedOrder")
async def typed_order(ctx: dt.ActivityContext, order: Order) -> str:
    return order.sku


@REGISTRY.activity("ReturnsNaN")
async def returns_nan(ctx: dt.ActivityContext) -> Any:
    return float("nan")


@REGISTRY.activity("ReturnsObject")
async def returns_object(ctx: dt.ActivityContext) -> Any:
    return object()


@REGISTRY.activity("ReturnsBig")
async def returns_big(ctx: dt.ActivityContext, n: int) -> str:
    return big(n)


@REGISTRY.activity("ClaimsInt")
async def claims_int(ctx: dt.ActivityContext) -> int:
    return "not a number"  # type: ignore[return-value]


@REGISTRY.activity("RaisesKeyboardInterrupt")
async def raises_keyboard_interrupt(ctx: dt.ActivityContext) -> None:
    raise KeyboardInterrupt


@REGISTRY.activity("SyncRaisesSystemExit")
def sync_raises_system_exit(ctx: dt.ActivityContext) -> None:
    raise SystemExit(3)


@REGISTRY.activity("RaisesCancelledError")
async def raises_cancelled_error(ctx: dt.ActivityContext) -> None:
    raise asyncio.CancelledError("user code raised CancelledError")


@REGISTRY.activity("RaisesHugeMessage")
async def raises_huge_message(ctx: dt.ActivityContext) -> None:
    raise RuntimeError(big(100_000, "y"))


@REGISTRY.activity("FailsUntilThirdAttempt")
async def fails_until_third_attempt(ctx: dt.ActivityContext) -> list[int]:
    if ctx.attempt < 3:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return [ctx.attempt, ctx.delivery_count]  # type: ignore[attr-defined]


_blocked_once: set[str] = set()


@REGISTRY.activity("BlockingSleep")
async def blocking_sleep(ctx: dt.ActivityContext) -> str:
    if ctx.instance_id not in _blocked_once:  # block the event loop on the first run only
        _blocked_once.add(ctx.instance_id)
        time.sleep(6)
    return "woke"


# --- input conversion ------------------------------------------------------------------------------------


INPUT_PROBLEM = ("input", "BadInput", "convert")


@case("input-attrs-class-gets-wrong-shape", Expect(fragments=(INPUT_PROBLEM, "Order")), input={"wrong": 1})
async def input_attrs_wrong_shape(ctx: dt.OrchestrationContext, order: Order) -> str:
    return order.sku


@case("input-int-gets-string", Expect(fragments=(INPUT_PROBLEM, "int")), input="abc")
async def input_int_gets_string(ctx: dt.OrchestrationContext, x: int) -> int:
    return x + 1


@case("activity-input-attrs-class-gets-wrong-shape", Expect(fragments=("Order",)))
async def activity_input_wrong_shape(ctx: dt.OrchestrationContext) -> str:
    return str(await ctx.schedule_activity("TypedOrder", {"wrong": 1}))


@case("activity-result-does-not-match-its-annotation", Expect(fragments=("int", "not a number")))
async def activity_result_mismatch(ctx: dt.OrchestrationContext) -> int:
    return int(await ctx.schedule_activity("ClaimsInt"))


# --- exceptions from orchestration code --------------------------------------------------------------------


@case("orchestration-raises-valueerror", Expect(category="application", fragments=("ValueError", "boom")))
async def raises_value_error(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_activity("Echo", 1)
    raise ValueError("boom")


@case("orchestration-raises-keyboardinterrupt", Expect(fragments=("KeyboardInterrupt",)), group="ki-orch")
async def raises_keyboard_interrupt_orch(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_activity("Echo", 1)
    raise KeyboardInterrupt


@case("orchestration-raises-systemexit", Expect(fragments=("SystemExit",)), group="exit-orch")
async def raises_system_exit_orch(ctx: dt.OrchestrationContext) -> None:
    raise SystemExit(2)


@case("orchestration-raises-cancellederror", Expect(fragments=("CancelledError",)), group="cancel-orch")
async def raises_cancelled_orch(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_timer(0.01)
    raise asyncio.CancelledError("user code raised CancelledError")


#: An over-long error message is cut to the limit, saying so (or refused as LimitExceeded): never stored whole.
CUT_MESSAGE = Expect(fragments=(("cut", "truncat", "KiB", "bytes"),), max_message=NAME_LIMIT)


@case("orchestration-error-message-over-limit", attrs.evolve(CUT_MESSAGE, fragments=(
    ("ValueError", "error message"), *CUT_MESSAGE.fragments)))
async def raises_huge_message_orch(ctx: dt.OrchestrationContext) -> None:
    raise ValueError(big(100_000))


# --- exceptions from activities ----------------------------------------------------------------------------


@case("activity-raises-keyboardinterrupt", Expect(fragments=("KeyboardInterrupt",)), group="ki-act")
async def activity_ki(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_activity("RaisesKeyboardInterrupt")


@case("sync-activity-raises-systemexit", Expect(fragments=("SystemExit",)), group="exit-act")
async def activity_exit(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_activity("SyncRaisesSystemExit")


@case("activity-raises-cancellederror", Expect(fragments=("CancelledError",)), group="cancel-act")
async def activity_cancelled(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_activity("RaisesCancelledError")


@case("activity-error-message-over-limit", attrs.evolve(CUT_MESSAGE, fragments=(
    ("RuntimeError", "error message"), *CUT_MESSAGE.fragments)))
async def activity_huge_message(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_activity("RaisesHugeMessage")


@case("activity-returns-nan", Expect(fragments=("nan",)))
async def activity_nan(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_activity("ReturnsNaN")


@case("activity-returns-non-json-object", Expect(fragments=("json", "object")))
async def activity_object(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_activity("ReturnsObject")


@case("activity-attempt-is-the-retry-attempt", Expect(status=dt.Status.COMPLETED, output=[3, 1]))
async def attempt_is_retry_attempt(ctx: dt.OrchestrationContext) -> list[int]:
    """``attempt`` counts RetryPolicy attempts (1, 2, 3); ``delivery_count`` the deliveries of one item."""
    policy = dt.RetryPolicy(max_attempts=3, backoff=dt.Backoff.none())
    return list(await ctx.schedule_activity("FailsUntilThirdAttempt", retry=policy))


# --- awaiting what is not a durable future ---------------------------------------------------------------


@case("orchestration-awaits-trio-sleep", Expect(fragments=("sleep", ("durable", "ctx."))))
async def awaits_trio_sleep(ctx: dt.OrchestrationContext) -> None:
    await trio.sleep(0.01)


@case("orchestration-awaits-asyncio-sleep", Expect(fragments=("sleep", ("durable", "ctx."))))
async def awaits_asyncio_sleep(ctx: dt.OrchestrationContext) -> None:
    await asyncio.sleep(0.01)


@case("orchestration-awaits-asyncio-sleep-0", Expect(fragments=("sleep", ("durable", "ctx."))))
async def awaits_asyncio_sleep_0(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_activity("Echo", 1)
    await asyncio.sleep(0)


# --- outputs that cannot be stored ----------------------------------------------------------------------


@case("orchestration-returns-non-json-object", Expect(fragments=("output", "object")))
async def returns_object_orch(ctx: dt.OrchestrationContext) -> Any:
    return object()


@case("orchestration-returns-nan", Expect(fragments=("output", "nan")))
async def returns_nan_orch(ctx: dt.OrchestrationContext) -> Any:
    return float("nan")


@case("orchestration-returns-unawaited-future", Expect(fragments=("output", ("DurableFuture", "future"))))
async def returns_future(ctx: dt.OrchestrationContext) -> Any:
    return ctx.schedule_activity("Echo", 1)


@case("orchestration-returns-json-nested-100000-deep", Expect(fragments=(("nest", "deep", "depth"),)))
async def returns_nested(ctx: dt.OrchestrationContext) -> Any:
    return nested(100_000)


@case("custom-status-non-json", Expect(fragments=("custom status",)))
async def custom_status_object(ctx: dt.OrchestrationContext) -> None:
    ctx.set_custom_status({"when": object()})


# --- limits ------------------------------------------------------------------------------------------------


@case("output-over-payload-limit", limit_exceeded(PAYLOAD_LIMIT, "output"), check=history_below(MiB))
async def output_over_limit(ctx: dt.OrchestrationContext) -> str:
    return big(PAYLOAD_LIMIT + 1000)


@case("activity-input-over-payload-limit", limit_exceeded(PAYLOAD_LIMIT, "input"), check=history_below(MiB))
async def activity_input_over_limit(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_activity("Echo", big(PAYLOAD_LIMIT + 1000))


@case("activity-result-over-payload-limit", limit_exceeded(PAYLOAD_LIMIT), check=history_below(MiB))
async def activity_result_over_limit(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_activity("ReturnsBig", PAYLOAD_LIMIT + 1000)


@case("sub-orchestration-input-over-payload-limit", limit_exceeded(PAYLOAD_LIMIT, "input"),
      check=history_below(MiB))
async def sub_input_over_limit(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_sub_orchestration(SINK, big(PAYLOAD_LIMIT + 1000))


@case("continue-as-new-input-over-payload-limit", limit_exceeded(PAYLOAD_LIMIT, "input"),
      check=history_below(MiB))
async def can_input_over_limit(ctx: dt.OrchestrationContext, x: Any = None) -> Any:
    if x is None:
        return await ctx.continue_as_new(big(PAYLOAD_LIMIT + 1000))
    return "continued with an oversized input"


@case("detached-start-input-over-payload-limit", limit_exceeded(PAYLOAD_LIMIT),
      check=history_below(MiB))
async def detached_start_over_limit(ctx: dt.OrchestrationContext) -> None:
    ctx.start_orchestration(SINK, f"detached-of-{ctx.instance_id}", big(PAYLOAD_LIMIT + 1000))


@case("custom-status-over-limit", limit_exceeded(STATUS_LIMIT, "custom status"), check=history_below(MiB))
async def custom_status_over_limit(ctx: dt.OrchestrationContext) -> None:
    ctx.set_custom_status(big(300 * 1024))
    await ctx.schedule_timer(0.01)


@case("history-over-limit", limit_exceeded(HISTORY_LIMIT, "history"), check=history_below(HISTORY_LIMIT))
async def history_over_limit(ctx: dt.OrchestrationContext) -> int:
    total = 0
    for _ in range(3):  # three 2 MiB results: each payload is allowed, the history is not
        total += len(await ctx.schedule_activity("ReturnsBig", 2 * MiB))
    return total


@case("too-many-scheduled-activities", limit_exceeded(HISTORY_LIMIT, "history"),
      check=history_below(HISTORY_LIMIT), group="heavy", timeout=40)
async def too_many_activities(ctx: dt.OrchestrationContext) -> int:
    padding = big(1000, "p")  # 6 000 scheduled activities of 1 KB each: over the history limit in one turn
    return len(await ctx.join([ctx.schedule_activity("Echo", f"{i}{padding}") for i in range(6_000)]))


@case("event-name-over-limit", limit_exceeded(NAME_LIMIT, "name"), check=history_below(MiB))
async def event_name_over_limit(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.wait_for_event(big(70_000, "e"))


@case("activity-name-over-limit", limit_exceeded(NAME_LIMIT, "name"), check=history_below(MiB))
async def activity_name_over_limit(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_activity(big(70_000, "a"))


@case("sub-orchestration-id-over-limit", limit_exceeded(NAME_LIMIT), check=history_below(MiB))
async def sub_id_over_limit(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_sub_orchestration(HEALTHY, 1, instance_id=big(70_000, "c"))


@case("sub-orchestration-explicit-id-already-taken", Expect(fragments=(("already exists", "already taken",
                                                                      "InstanceAlreadyExists"), "baseline-done")))
async def child_id_taken(ctx: dt.OrchestrationContext) -> Any:
    """The explicit child id is the baseline's (a completed instance): the child fails, the baseline stays."""
    return await ctx.schedule_sub_orchestration(HEALTHY, 1, instance_id="baseline-done")


@case("history-size-bytes-is-reported", Expect(status=dt.Status.COMPLETED, output=[True, True]))
async def history_size_reported(ctx: dt.OrchestrationContext) -> list[bool]:
    before = ctx.history_size_bytes()  # type: ignore[attr-defined]
    await ctx.schedule_activity("ReturnsBig", 10_000)
    after = ctx.history_size_bytes()  # type: ignore[attr-defined]
    return [before > 0, after >= before + 10_000]


# --- timers --------------------------------------------------------------------------------------------


@case("timer-beyond-horizon-1e17-seconds", Expect(category="configuration", fragments=("timer",), within=5))
async def timer_1e17(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_timer(1e17)


@case("timer-infinite", Expect(fragments=("timer",), within=5))
async def timer_inf(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_timer(float("inf"))


@case("timer-nan", Expect(fragments=("timer",), within=5))
async def timer_nan(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_timer(float("nan"))


@case("timer-negative", Expect(fragments=("timer", ("negative", "between 0")), within=5))
async def timer_negative(ctx: dt.OrchestrationContext) -> None:
    await ctx.schedule_timer(-1)


# --- misuse of the context -----------------------------------------------------------------------------


@case("select-of-nothing", Expect(fragments=("select",)))
async def select_nothing(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.select()


@case("join-of-a-non-future", Expect(fragments=("join", "durable future")))
async def join_non_future(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.join([ctx.schedule_activity("Echo", 1), 42])  # type: ignore[list-item]


@case("activity-name-not-a-string", Expect(fragments=("activity name",)))
async def activity_name_int(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_activity(123)  # type: ignore[arg-type]


# --- unknown names ---------------------------------------------------------------------------------------


@case("unknown-activity-name", Expect(category="poison", fragments=("NoSuchActivity", "not registered")))
async def unknown_activity(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_activity("NoSuchActivity", 1)


@case("unknown-sub-orchestration-name", Expect(fragments=("NoSuchChild",)))
async def unknown_child(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.schedule_sub_orchestration("NoSuchChild", 1)


INSTANCE_CASES.append(
    InstanceCase(
        "unknown-orchestration-name",
        "NoSuchOrchestration",
        Expect(category="poison", fragments=("NoSuchOrchestration", "not registered")),
        raw_start=True,
    )
)

# --- odd but valid ids; cancel before the first turn ---------------------------------------------------


@case("unicode-instance-id", Expect(status=dt.Status.COMPLETED, output="订单-🚀-ß"),
      instance_id="订单-🚀-ß")
async def unicode_id(ctx: dt.OrchestrationContext) -> str:
    await ctx.schedule_activity("Echo", ctx.instance_id)
    return ctx.instance_id


async def _start_then_cancel(client: dt.Client, iid: str) -> None:
    await client.start_orchestration(iid, "cancel-queued-before-first-turn-wins")
    await client.cancel_instance(iid, "too early")


async def _start_then_raise(client: dt.Client, iid: str) -> None:
    await client.start_orchestration(iid, "event-raised-before-first-turn-is-delivered")
    await client.raise_event(iid, "go", 7)  # the instance does not exist yet: its start is pending


@case("event-raised-before-first-turn-is-delivered", Expect(status=dt.Status.COMPLETED, output=7),
      before_runtime=_start_then_raise)
async def waits_for_early_event(ctx: dt.OrchestrationContext) -> Any:
    return await ctx.wait_for_event("go")


@case("cancel-queued-before-first-turn-wins", Expect(kind="Cancelled", fragments=("cancel", "too early")),
      before_runtime=_start_then_cancel)
async def finishes_on_first_turn(ctx: dt.OrchestrationContext) -> str:
    return "finished although cancelled"


# --- blocking the event loop in an async activity ---------------------------------------------------------


async def _watchdog_named_it(env: Env, iid: str, state: dt.OrchestrationState) -> list[str]:
    text = log_text(env.logs) + "\n" + (state.error.message if state.error else "")
    lines = [line for line in text.splitlines() if "blocked" in line.lower()]
    if not lines:
        return ["nothing in the logs or the error says the event loop was blocked"]
    problems = fragment_problems("\n".join(lines), (("BlockingSleep", iid), ("loop",)), "watchdog report")
    if not any(re.search(r"\d+(\.\d+)?\s*(s\b|sec)", line) for line in lines):
        problems.append(f"watchdog report should say for how long: {lines[:3]!r}")
    return problems


async def _start_blocking(client: dt.Client, iid: str) -> None:
    _blocked_once.discard(iid)  # every run (provider, backend) blocks once
    await client.start_orchestration(iid, "async-activity-blocks-the-event-loop")


@case("async-activity-blocks-the-event-loop", Expect(status=dt.Status.COMPLETED, output="woke"),
      group="blocking", check=_watchdog_named_it, timeout=30, before_runtime=_start_blocking)
async def blocks_loop(ctx: dt.OrchestrationContext) -> str:
    return str(await ctx.schedule_activity("BlockingSleep"))


# ---------------------------------------------------------------------------------------------------------
# Client calls that must be refused


def _id_with_nul_is_refused_or_round_trips() -> Callable[[Env], Any]:
    async def call(env: Env) -> list[str]:
        iid = "nul\x00inside"
        try:
            await env.client.start_orchestration(iid, SINK, 1)
        except ValueError as exc:
            return fragment_problems(str(exc), ("instance_id",), "ValueError message")
        except Exception as exc:  # noqa: BLE001
            return [f"raised {describe(exc)}; expected a ValueError naming instance_id, or acceptance"]
        state = await env.client.wait_for_orchestration(iid, timeout=15)
        if state.status is not dt.Status.COMPLETED or state.instance_id != iid:
            return [f"accepted but ended {state.status.value}"]
        return []

    return call


def _long_id_is_refused_or_round_trips() -> Callable[[Env], Any]:
    """10 KB: under the 64 KiB limit, over PostgreSQL's btree index entry (~2.7 KB)."""

    async def call(env: Env) -> list[str]:
        iid = big(10_000, "L")
        try:
            await env.client.start_orchestration(iid, SINK, 1)
        except (ValueError, ProviderError) as exc:
            problems = fragment_problems(str(exc), (("instance_id", "instance id"), ("long", "index", "bytes")),
                                         f"{type(exc).__name__} message")
            state = await env.raw.get_status(iid)
            if state.status is not dt.Status.NOT_FOUND:
                problems.append(f"refused, but the instance exists ({state.status.value})")
            return problems
        except Exception as exc:  # noqa: BLE001
            return [f"raised {describe(exc)}; expected a clear refusal naming the id's length, or acceptance"]
        state = await env.client.wait_for_orchestration(iid, timeout=10)
        if state.status is not dt.Status.COMPLETED:
            return [f"accepted but ended {state.status.value}"]
        return []

    return call


def _start(iid: str, name: str = SINK, input: Any = 1, **kw: Any) -> Callable[[Env], Any]:
    return lambda env: env.client.start_orchestration(iid, name, input, **kw)


CLIENT_CASES: list[ClientCase] = [
    ClientCase("start-empty-instance-id", _start(""), ValueError, ("instance_id",)),
    ClientCase("start-instance-id-70kb", _start(big(70_000, "i")), ValueError, ("instance_id", limit(NAME_LIMIT)),
               absent=(big(70_000, "i"),)),
    ClientCase("start-root-id-with-sub-marker", _start("P::sub::2"), ValueError, ("::sub::",), absent=("P::sub::2",)),
    ClientCase("start-instance-id-with-nul", _id_with_nul_is_refused_or_round_trips(), None),
    ClientCase("start-instance-id-10kb", _long_id_is_refused_or_round_trips(), None),
    ClientCase("start-instance-id-not-a-string", _start(123), (ValueError, TypeError), ("instance_id",)),  # type: ignore[arg-type]
    ClientCase("start-empty-orchestration-name", _start("c-empty-name", ""), ValueError, ("name",),
               absent=("c-empty-name",)),
    ClientCase("start-unknown-orchestration", _start("c-unknown", "NoSuchOrchestration"), dt.UnknownOrchestration,
               ("NoSuchOrchestration", "registered"), absent=("c-unknown",)),
    ClientCase("start-unknown-version", _start("c-version", SINK, 1, version="9.9.9"), dt.UnknownOrchestration,
               ("9.9.9",), absent=("c-version",)),
    ClientCase("start-malformed-version", _start("c-badversion", SINK, 1, version="v1"), ValueError,
               ("version",), absent=("c-badversion",)),
    ClientCase("start-existing-instance-id", _start("baseline-done", SINK, 5), dt.InstanceAlreadyExists,
               ("baseline-done", "exists")),
    ClientCase("start-input-non-json-object", _start("c-object", SINK, object()), dt.PayloadError,
               ("object",), absent=("c-object",)),
    ClientCase("start-input-set-of-objects", _start("c-set", SINK, {object()}), dt.PayloadError, ("json",),
               absent=("c-set",)),
    ClientCase("start-input-nan", _start("c-nan", SINK, float("nan")), dt.PayloadError, ("nan",),
               absent=("c-nan",)),
    ClientCase("start-input-dict-with-tuple-keys", _start("c-keys", SINK, {(1, 2): 3}), dt.PayloadError,
               ("json",), absent=("c-keys",)),
    ClientCase("start-input-over-payload-limit", _start("c-big", SINK, big(PAYLOAD_LIMIT + 1000)), ValueError,
               ("input", limit(PAYLOAD_LIMIT)), absent=("c-big",)),
    ClientCase("start-input-json-nested-100000-deep", _start("c-deep", SINK, nested(100_000)),
               (ValueError, TypeError), (("nest", "deep", "depth"),), absent=("c-deep",)),
    ClientCase("raise-event-name-over-limit",
               lambda env: env.client.raise_event("baseline-done", big(70_000, "n"), 1), ValueError,
               ("name", limit(NAME_LIMIT))),
    ClientCase("raise-event-data-over-payload-limit",
               lambda env: env.client.raise_event("baseline-done", "go", big(PAYLOAD_LIMIT + 1000)), ValueError,
               ("data", limit(PAYLOAD_LIMIT))),
    ClientCase("raise-event-data-json-nested-100000-deep",
               lambda env: env.client.raise_event("baseline-done", "go", nested(100_000)), (ValueError, TypeError),
               (("nest", "deep", "depth"),)),
    ClientCase("raise-event-empty-name", lambda env: env.client.raise_event("baseline-done", "", 1), ValueError,
               ("name",)),
    ClientCase("raise-event-unknown-instance", lambda env: env.client.raise_event("no-such-instance", "go", 1),
               dt.InstanceNotFound, ("no-such-instance",), absent=("no-such-instance",)),
    ClientCase("enqueue-event-unknown-instance",
               lambda env: env.client.enqueue_event("no-such-instance", "q", 1), dt.InstanceNotFound,
               ("no-such-instance",), absent=("no-such-instance",)),
    ClientCase("enqueue-event-data-over-payload-limit",
               lambda env: env.client.enqueue_event("baseline-done", "q", big(PAYLOAD_LIMIT + 1000)), ValueError,
               ("data", limit(PAYLOAD_LIMIT))),
    ClientCase("cancel-unknown-instance", lambda env: env.client.cancel_instance("no-such-instance", "why"),
               dt.InstanceNotFound, ("no-such-instance",), absent=("no-such-instance",)),
    ClientCase("cancel-reason-over-limit",
               lambda env: env.client.cancel_instance("baseline-done", big(70_000, "r")), ValueError,
               ("reason", limit(NAME_LIMIT))),
    ClientCase("wait-negative-timeout", lambda env: env.client.wait_for_orchestration("baseline-done", -1),
               ValueError, ("timeout",)),
    ClientCase("wait-nan-timeout", lambda env: env.client.wait_for_orchestration("baseline-done", float("nan")),
               ValueError, ("timeout",)),
    ClientCase("wait-timeout-given-as-string", lambda env: env.client.wait_for_orchestration("baseline-done", "5"),
               (ValueError, TypeError), ("timeout",)),  # type: ignore[arg-type]
    ClientCase("wait-timeout-none", lambda env: env.client.wait_for_orchestration("baseline-done", None),
               (ValueError, TypeError), ("timeout",)),  # type: ignore[arg-type]
    ClientCase("list-instances-unknown-status", lambda env: env.client.list_instances("Sleeping"), ValueError,
               ("status", "Sleeping")),
]


# ---------------------------------------------------------------------------------------------------------
# Groups: one provider and one runtime per group, per provider and backend.

#: Runtime options per group (the blocking case needs a short worker lock: the watchdog must notice).
GROUP_OPTIONS: dict[str, dt.RuntimeOptions] = {
    "blocking": attrs.evolve(FAST, worker_lock_timeout=2.0, worker_lock_renewal_buffer=0.5),
}
#: Groups that are about the event loop, not the storage: run on SQLite only (both backends).
SQLITE_ONLY_GROUPS = {"blocking"}

#: Groups whose cases share one database and runtime, one after another (client-side refusals); every
#: other case runs isolated on its own database and runtime, so that one crash cannot hide another.
SHARED_GROUPS = {"client"}

_RESULTS: dict[tuple[str, str, str], Any] = {}


def _group_results(request: pytest.FixtureRequest, backend: str, group: str) -> dict[str, Any]:
    """Run the group on first use (for this provider and backend), then serve every case from the cache."""
    kind = request.node.callspec.params["make_provider"]
    key = (kind, backend, group)
    if key not in _RESULTS:
        cases = [c for c in [*INSTANCE_CASES, *CLIENT_CASES] if c.group == group]
        directory = str(request.getfixturevalue("tmp_path"))
        url = request.getfixturevalue("pg_url") if kind == "postgres" else None
        storage = Storage(kind, directory, url)
        _RESULTS[key] = run_group(storage, backend, REGISTRY, cases, GROUP_OPTIONS.get(group, FAST),
                                  shared=group in SHARED_GROUPS)
    return _RESULTS[key]


def _check_group_case(case: Any, make_provider: Any, backend: str, request: pytest.FixtureRequest) -> None:
    problems = _group_results(request, backend, case.group)[case.id].all_problems()
    assert not problems, f"{case.id}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in INSTANCE_CASES
                                  if c.group not in SQLITE_ONLY_GROUPS])
def test_instance_case(case: InstanceCase, make_provider: Any, anyio_backend: str, request: pytest.FixtureRequest):
    _check_group_case(case, make_provider, anyio_backend, request)


@pytest.mark.parametrize("make_provider", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in INSTANCE_CASES if c.group in SQLITE_ONLY_GROUPS])
def test_event_loop_case(case: InstanceCase, make_provider: Any, anyio_backend: str, request: pytest.FixtureRequest):
    """About the event loop, not the storage: SQLite only, both backends."""
    _check_group_case(case, make_provider, anyio_backend, request)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CLIENT_CASES])
def test_client_case(case: ClientCase, make_provider: Any, anyio_backend: str, request: pytest.FixtureRequest):
    _check_group_case(case, make_provider, anyio_backend, request)


# ---------------------------------------------------------------------------------------------------------
# Options and registrations refused at construction


def _sync_orchestration() -> None:
    def not_async(ctx: Any) -> None:
        return None

    dt.Registry().add_orchestration(not_async, "NotAsync")  # type: ignore[arg-type]


def _orchestration_without_ctx() -> None:
    async def no_ctx() -> None:
        return None

    dt.Registry().add_orchestration(no_ctx, "NoCtx")


CONFIG_CASES: list[tuple[str, Callable[[], Any], type[BaseException] | tuple[type[BaseException], ...],
                         tuple[Any, ...]]] = [
    ("options-max-attempts-0", lambda: dt.RuntimeOptions(max_attempts=0), ValueError,
     ("max_attempts", RANGE_AT_LEAST_1)),
    ("options-max-attempts-negative", lambda: dt.RuntimeOptions(max_attempts=-3), ValueError,
     ("max_attempts", RANGE_AT_LEAST_1)),
    ("options-orchestration-concurrency-0", lambda: dt.RuntimeOptions(orchestration_concurrency=0), ValueError,
     ("orchestration_concurrency", RANGE_AT_LEAST_1)),
    ("options-orchestration-slots-0", lambda: dt.RuntimeOptions(orchestration_slots=0), ValueError,
     ("orchestration_slots", RANGE_AT_LEAST_1)),
    ("options-activity-slots-0", lambda: dt.RuntimeOptions(activity_slots=0), ValueError,
     ("activity_slots", RANGE_AT_LEAST_1)),
    ("options-worker-concurrency-negative", lambda: dt.RuntimeOptions(worker_concurrency=-1), ValueError,
     ("worker_concurrency",)),
    ("options-max-attempts-not-an-integer", lambda: dt.RuntimeOptions(max_attempts=2.5), (ValueError, TypeError),
     ("max_attempts",)),
    ("options-orchestrator-lock-timeout-0", lambda: dt.RuntimeOptions(orchestrator_lock_timeout=0), ValueError,
     ("orchestrator_lock_timeout", RANGE_POSITIVE)),
    ("options-poll-interval-negative", lambda: dt.RuntimeOptions(poll_interval=-1), ValueError,
     ("poll_interval", RANGE_POSITIVE)),
    ("options-lock-timeout-beyond-a-year", lambda: dt.RuntimeOptions(worker_lock_timeout=400 * 86400.0),
     ValueError, ("worker_lock_timeout",)),
    ("options-poll-interval-infinite", lambda: dt.RuntimeOptions(poll_interval=float("inf")), ValueError,
     ("poll_interval",)),
    ("options-shutdown-grace-nan", lambda: dt.RuntimeOptions(shutdown_grace=float("nan")), ValueError,
     ("shutdown_grace",)),
    ("options-worker-lock-timeout-string", lambda: dt.RuntimeOptions(worker_lock_timeout="2"),
     (ValueError, TypeError), ("worker_lock_timeout",)),
    ("retry-policy-max-attempts-0", lambda: dt.RetryPolicy(max_attempts=0), ValueError, ("max_attempts",)),
    ("retry-policy-negative-timeout", lambda: dt.RetryPolicy(timeout=-1), ValueError, ("timeout",)),
    ("register-sync-function-as-orchestration", _sync_orchestration, TypeError, ("async def",)),
    ("register-orchestration-without-ctx", _orchestration_without_ctx, TypeError, ("OrchestrationContext",)),
]


@pytest.mark.parametrize(("call", "exc_type", "fragments"),
                         [pytest.param(c, e, f, id=i) for i, c, e, f in CONFIG_CASES])
def test_config_case(call: Callable[[], Any], exc_type: Any, fragments: tuple[Any, ...]):
    with pytest.raises(exc_type) as info:
        call()
    problems = fragment_problems(str(info.value), fragments, f"{type(info.value).__name__} message")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------------
# Corrupted rows in a real database


def _garbage(_: str) -> str:
    return "{this is not json"


def _unknown_event_type(_: str) -> str:
    return json.dumps({"type": "NoSuchEventType", "event_id": 2, "timestamp_ms": 0})


def _json_array(_: str) -> str:
    return "[1, 2, 3]"


#: (case id, the table whose row is overwritten, the text written). A "history" case overwrites event 3 of a
#: waiting instance; a "queue" case overwrites the event raised to it while no runtime runs.
STORAGE_CASES: list[tuple[str, str, Callable[[str], str]]] = [
    ("corrupt-history-row-garbage", "history", _garbage),
    ("corrupt-history-row-unknown-event-type", "history", _unknown_event_type),
    ("corrupt-history-row-json-array", "history", _json_array),
    ("corrupt-queue-message-garbage", "queue", _garbage),
]

WAITER = "WaitsForGo"


@REGISTRY.orchestration(WAITER)
async def waits_for_go(ctx: dt.OrchestrationContext) -> Any:
    first = await ctx.schedule_activity("Echo", "first")
    data = await ctx.wait_for_event("go")
    return [first, data]


_CORRUPT_SQL = {
    "history": "UPDATE {}history SET event_data = {} WHERE instance_id = {} AND event_id = 3",
    "queue": "UPDATE {}orchestrator_queue SET work_item = {} WHERE instance_id = {}",
}


def _write_row(kind: str, pg: tuple[str, str] | None, tmp_path: Any, table: str, iid: str, text: str) -> None:
    """Overwrite a row of ``iid`` behind the provider's back (event 3 of its history, or its queued message)."""
    if kind == "sqlite":
        conn = sqlite3.connect(tmp_path / "state.db")
        try:
            n = conn.execute(_CORRUPT_SQL[table].format("", "?", "?"), (text, iid)).rowcount
            conn.commit()
        finally:
            conn.close()
    else:
        import psycopg
        from psycopg import sql

        assert pg is not None
        url, schema = pg
        with psycopg.connect(url, autocommit=True) as conn:
            statement = _CORRUPT_SQL[table].format("{}.", "%s", "%s")
            n = conn.execute(sql.SQL(statement).format(sql.Identifier(schema)), (text, iid)).rowcount
    assert n == 1, f"no {table} row to corrupt for {iid}"


def _read_event_ids(kind: str, pg: tuple[str, str] | None, tmp_path: Any, iid: str) -> list[int]:
    if kind == "sqlite":
        conn = sqlite3.connect(tmp_path / "state.db")
        try:
            return [r[0] for r in conn.execute(
                "SELECT event_id FROM history WHERE instance_id = ? ORDER BY execution_id, event_id", (iid,))]
        finally:
            conn.close()
    import psycopg
    from psycopg import sql

    assert pg is not None
    url, schema = pg
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT event_id FROM {}.history WHERE instance_id = %s ORDER BY execution_id, event_id").format(
                sql.Identifier(schema)
            ),
            (iid,),
        ).fetchall()
    return [r[0] for r in rows]


async def _corruption_scenario(make_provider: Any, corrupt: Callable[[str, str, str], None],
                               ids: Callable[[str], list[int]]) -> dict[str, list[str]]:
    """Every corruption of STORAGE_CASES on its own waiting instance, then one runtime to notice them."""
    out: dict[str, list[str]] = {cid: [] for cid, _, _ in STORAGE_CASES}
    provider = await make_provider()
    async with provider:
        async with dt.open_runtime(provider, REGISTRY, FAST) as rt:
            await rt.client.start_orchestration("done-before", HEALTHY, 4)
            assert (await rt.client.wait_for_orchestration("done-before", timeout=15)).output == 8
            for cid, _, _ in STORAGE_CASES:
                await rt.client.start_orchestration(f"w-{cid}", WAITER)
            with anyio.fail_after(15):
                for cid, _, _ in STORAGE_CASES:
                    while len(await rt.client.get_history(f"w-{cid}")) < 4:  # ... ActivityCompleted, subscribed
                        await anyio.sleep(0.02)
            before = [await rt.client.get_status("done-before"), await rt.client.get_history("done-before")]
        for cid, table, make_text in STORAGE_CASES:
            if table == "queue":  # the event waits in the queue: no runtime runs
                await dt.Client(provider).raise_event(f"w-{cid}", "go", cid)
            await anyio.to_thread.run_sync(corrupt, table, f"w-{cid}", make_text(cid))
        try:
            async with dt.open_runtime(provider, REGISTRY, FAST) as rt:
                client = rt.client
                for cid, table, _ in STORAGE_CASES:
                    if table == "queue":
                        continue
                    try:
                        await client.raise_event(f"w-{cid}", "go", cid)
                    except Exception as exc:  # noqa: BLE001
                        out[cid].append(f"raise_event to the corrupted instance raised {describe(exc)}")
                await client.start_orchestration("healthy-after", HEALTHY, 5)

                async def one(cid: str) -> None:
                    iid = f"w-{cid}"
                    try:
                        state = await client.wait_for_orchestration(iid, timeout=15)
                    except Exception as exc:  # noqa: BLE001
                        out[cid].append(f"the corrupted instance did not end Failed: {describe(exc)}")
                    else:
                        out[cid] += Expect(fragments=(("cannot read", "corrupt", "unreadable"),)).problems(state, 0)
                    got = await anyio.to_thread.run_sync(ids, iid)
                    if got != list(range(1, len(got) + 1)):
                        out[cid].append(f"event ids of the corrupted instance are not dense: {got}")

                async with anyio.create_task_group() as tg:
                    for cid, _, _ in STORAGE_CASES:
                        tg.start_soon(one, cid)
                healthy = await client.wait_for_orchestration("healthy-after", timeout=15)
                after = [await client.get_status("done-before"), await client.get_history("done-before")]
            for cid, _, _ in STORAGE_CASES:
                if healthy.status is not dt.Status.COMPLETED:
                    out[cid].append(f"a healthy instance ended {healthy.status.value}")
                if after != before:
                    out[cid].append("the previously completed instance changed")
        except Exception as exc:  # noqa: BLE001
            for cid, _, _ in STORAGE_CASES:
                out[cid].append(f"the runtime stopped: {describe(exc)}")
    return out


@pytest.mark.parametrize("case_id", [c for c, _, _ in STORAGE_CASES])
def test_storage_case(case_id: str, make_provider: Any, anyio_backend: str, request: pytest.FixtureRequest,
                      tmp_path: Any):
    kind = request.node.callspec.params["make_provider"]
    key = (kind, anyio_backend, "storage")
    if key not in _RESULTS:
        pg = None if kind == "sqlite" else (request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema"))

        def corrupt(table: str, iid: str, text: str) -> None:
            _write_row(kind, pg, tmp_path, table, iid, text)

        def ids(iid: str) -> list[int]:
            return _read_event_ids(kind, pg, tmp_path, iid)

        try:
            _RESULTS[key] = anyio.run(_corruption_scenario, make_provider, corrupt, ids, backend=anyio_backend)
        except BaseException as exc:  # noqa: BLE001
            _RESULTS[key] = {c: [f"the scenario stopped: {describe(exc)}"] for c, _, _ in STORAGE_CASES}
    problems = _RESULTS[key][case_id]
    assert not problems, f"{case_id}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------------------
# A provider with a bug: one call raises something that is not a ProviderError

PROVIDER_BUG_CASES = ["fetch_orchestration_item", "ack_orchestration_item", "fetch_work_items", "ack_work_items"]


@pytest.mark.parametrize("operation", PROVIDER_BUG_CASES)
def test_provider_bug_case(operation: str, make_provider: Any, anyio_backend: str):
    """The runtime contains it (logs it, retries), and the instance completes as if nothing happened."""
    from duroxide_trio.testing.faults import Fault, FaultyProvider

    fault = Fault(every=1, limit=1, error=RuntimeError, message=f"a bug in {operation}")

    async def main() -> list[str]:
        provider = FaultyProvider(await make_provider(), {operation: fault})
        async with provider, dt.open_runtime(provider, REGISTRY, FAST) as rt:
            await rt.client.start_orchestration("h", HEALTHY, 3)
            state = await rt.client.wait_for_orchestration("h", timeout=15)
        if state.status is not dt.Status.COMPLETED or state.output != 6:
            return [f"the instance ended {state.status.value} ({state.error})"]
        return []

    try:
        problems = anyio.run(main, backend=anyio_backend)
    except Exception as exc:  # noqa: BLE001 - open_runtime must not raise because a provider call did
        problems = [f"the runtime stopped: {describe(exc)}"]
    assert fault.injected == 1, "the fault was never injected"
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------------
# Databases that cannot be opened, hostile schema names


def _not_a_database(tmp_path: Any) -> str:
    path = tmp_path / "notes.txt"
    path.write_text("this is a text file, not a database\n" * 100)
    return str(path)


def _a_directory(tmp_path: Any) -> str:
    (tmp_path / "adir").mkdir(exist_ok=True)
    return str(tmp_path / "adir")


def _missing_parent(tmp_path: Any) -> str:
    return str(tmp_path / "no" / "such" / "dir" / "state.db")


OPEN_CASES: list[tuple[str, Callable[[Any], str], tuple[Any, ...]]] = [
    ("sqlite-file-that-is-not-a-database", _not_a_database, ("not a database", "notes.txt")),
    ("sqlite-path-that-is-a-directory", _a_directory, ("adir", ("directory", "cannot open", "unable to open"))),
    ("sqlite-path-in-missing-directory", _missing_parent, ("state.db", ("cannot open", "unable to open", "no such"))),
]


@pytest.mark.parametrize(("make_path", "fragments"), [pytest.param(m, f, id=i) for i, m, f in OPEN_CASES])
def test_open_case(make_path: Callable[[Any], str], fragments: tuple[Any, ...], anyio_backend: str, tmp_path: Any):
    path = make_path(tmp_path)
    before = open(path, "rb").read() if os.path.isfile(path) else None

    async def main() -> BaseException | None:
        try:
            provider = await dt.SqliteProvider.open(path)
        except Exception as exc:  # noqa: BLE001
            return exc
        await provider.close()
        return None

    exc = anyio.run(main, backend=anyio_backend)
    assert exc is not None, f"{path} was opened as a database"
    problems = fragment_problems(str(exc), fragments, f"{type(exc).__name__} message")
    if before is not None and open(path, "rb").read() != before:
        problems.append("the file was modified")
    assert not problems, "\n".join(problems)


SECRET = "s3cret-Pw"
HOSTILE_SCHEMAS = ("x; drop table y", 'a"b')


def _drop_hostile_schemas(url: str) -> None:
    """Today a hostile name may be accepted (and the schema created): remove what the case created."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        for name in HOSTILE_SCHEMAS:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))


def _with(url: str, *, user: str | None = None, password: str | None = None, db: str | None = None,
          port: int | None = None) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user or parts.username or 'postgres'}:{password or SECRET}@{host}:{port or parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, "/" + (db or parts.path.lstrip("/")), parts.query, ""))


PG_CONNECT_CASES: list[tuple[str, Callable[[str], tuple[str, str]], Any, tuple[Any, ...]]] = [
    ("pg-unknown-user", lambda url: (_with(url, user="no_such_role_x"), "duroxide"), ProviderError,
     ("no_such_role_x",)),
    ("pg-unknown-database", lambda url: (_with(url, db="no_such_db_x"), "duroxide"), ProviderError,
     ("no_such_db_x",)),
    ("pg-nothing-listening-on-port", lambda url: (_with(url, port=1), "duroxide"), ProviderError,
     (("connect", "refused"),)),
    ("pg-hostile-schema-name-sql-injection", lambda url: (url, HOSTILE_SCHEMAS[0]), ValueError, ("schema",)),
    ("pg-hostile-schema-name-quote", lambda url: (url, HOSTILE_SCHEMAS[1]), ValueError, ("schema",)),
    ("pg-hostile-schema-name-too-long", lambda url: (url, "s" * 64), ValueError, ("schema",)),
    ("pg-hostile-schema-name-empty", lambda url: (url, ""), ValueError, ("schema",)),
]


@pytest.mark.parametrize(("target", "exc_type", "fragments"),
                         [pytest.param(t, e, f, id=i) for i, t, e, f in PG_CONNECT_CASES])
def test_pg_connect_case(target: Callable[[str], tuple[str, str]], exc_type: Any, fragments: tuple[Any, ...],
                         anyio_backend: str, pg_url: str):
    url, schema = target(pg_url)

    async def main() -> BaseException | None:
        try:
            with anyio.fail_after(20):
                provider = await dt.PostgresProvider.connect(url, schema=schema, pool_max=1, connect_timeout=5)
        except Exception as exc:  # noqa: BLE001
            return exc
        await provider.close()
        return None

    try:
        exc = anyio.run(main, backend=anyio_backend)
    finally:
        _drop_hostile_schemas(pg_url)
    assert exc is not None, f"connected to {schema!r}"
    problems = [] if isinstance(exc, exc_type) else [f"raised {describe(exc)}, expected {exc_type.__name__}"]
    problems += fragment_problems(str(exc), fragments, f"{type(exc).__name__} message")
    shown = "".join(traceback.format_exception(exc))
    if SECRET in shown or SECRET in repr(exc):
        problems.append("the password is shown")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------------
# The command line


def _cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, BaseException | None]:
    from typer.testing import CliRunner

    from duroxide_trio.cli import app

    result = CliRunner(env=env).invoke(app, args)
    output = result.output
    try:
        if result.stderr and result.stderr not in output:
            output += result.stderr
    except (ValueError, AttributeError):
        pass
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, output, exc


def _fresh_db(tmp_path: Any) -> str:
    path = str(tmp_path / "fresh.db")

    async def make() -> None:
        provider = await dt.SqliteProvider.open(path)
        await provider.close()

    anyio.run(make)
    return path


CLI_CASES: list[tuple[str, Callable[[Any, str | None], list[str]], int | None, tuple[Any, ...]]] = [
    ("cli-list-file-that-is-not-a-database",
     lambda tmp, url: ["instances", "list", "--db", _not_a_database(tmp)], 1, ("not a database",)),
    ("cli-show-directory-as-database",
     lambda tmp, url: ["instances", "show", "x", "--db", _a_directory(tmp)], 1, ("adir",)),
    ("cli-raise-event-json-nested-100000-deep",
     lambda tmp, url: ["instances", "raise-event", "x", "go", "[" * 100_000 + "]" * 100_000, "--db", _fresh_db(tmp)],
     None, ("json", ("nest", "deep", "depth"))),
    ("cli-raise-event-unknown-instance",
     lambda tmp, url: ["instances", "raise-event", "no-such-instance", "go", "1", "--db", _fresh_db(tmp)], 1,
     ("no-such-instance", ("not found", "no instance"))),
    ("cli-cancel-unknown-instance",
     lambda tmp, url: ["instances", "cancel", "no-such-instance", "--db", _fresh_db(tmp)], 1,
     ("no-such-instance", ("not found", "no instance"))),
    ("cli-raise-event-empty-instance-id",
     lambda tmp, url: ["instances", "raise-event", "", "go", "1", "--db", _fresh_db(tmp)], None,
     (("instance_id", "no instance ''", "empty"),)),
    ("cli-list-unknown-status",
     lambda tmp, url: ["instances", "list", "--status", "Sleeping", "--db", _fresh_db(tmp)], None, ("Sleeping",)),
    ("cli-postgres-unknown-user",
     lambda tmp, url: ["instances", "list", "--database-url", _with(url or "", user="no_such_role_x")], None,
     ("no_such_role_x",)),
    ("cli-postgres-hostile-schema",
     lambda tmp, url: ["instances", "list", "--database-url", url or "", "--schema", HOSTILE_SCHEMAS[0]], None,
     ("schema",)),
]


@pytest.mark.parametrize(("make_args", "exit_code", "fragments"),
                         [pytest.param(a, e, f, id=i) for i, a, e, f in CLI_CASES])
def test_cli_case(make_args: Callable[[Any, str | None], list[str]], exit_code: int | None,
                  fragments: tuple[Any, ...], tmp_path: Any, request: pytest.FixtureRequest):
    needs_pg = "postgres" in request.node.callspec.id
    url = request.getfixturevalue("pg_url") if needs_pg else None
    try:
        code, output, exc = _cli(make_args(tmp_path, url))
    finally:
        if url is not None:
            _drop_hostile_schemas(url)
    problems = []
    if exc is not None:
        problems.append(f"uncaught {describe(exc)}")
    if exit_code is not None and code != exit_code:
        problems.append(f"exit code {code}, expected {exit_code}")
    if code == 0:
        problems.append("exit code 0 for a failed command")
    problems += fragment_problems(output, fragments, "output")
    problems += forbidden_problems(output, "output", (SECRET,))
    assert not problems, "\n".join(problems) + f"\noutput: {output[-600:]!r}"


def test_cli_not_a_database_in_a_real_process(tmp_path: Any):
    """The literal command of the issue, in its own process: a clear message, exit code 1, no traceback."""
    out = subprocess.run(
        [sys.executable, "-m", "duroxide_trio.cli", "instances", "list", "--db", _not_a_database(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    assert "not a database" in text, text
