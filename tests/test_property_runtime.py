"""Property: whatever a small orchestration program does and whatever the storage does to it, every
instance ends terminal with exactly the output or error its program implies, and the runtime keeps running.

Hypothesis generates programs — sequences of steps: an activity that returns a value, an activity that
raises (caught or not, with or without a retry policy), a timer of a few ms, a join of activities (one of
them may fail), a sub-orchestration (that may fail), a raise inside the orchestration, and at most one
continue-as-new — and fault schedules: ``FaultyProvider`` failing random provider calls before or after
they commit, retryable or not, sometimes with an exception that is not a ``ProviderError`` (a provider
bug). One interpreter orchestration (``Prog``) runs any program on a real runtime
(a SQLite file, Trio); ``expected`` computes what the program must produce, in pure Python.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import anyio
import attrs
from helpers import FAST
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

import duroxide_trio as dt
from duroxide_trio.testing.faults import Fault, FaultyProvider

# ---------------------------------------------------------------------------------------------------------
# Programs

#: Steps (JSON lists; ``i`` below is the step's index, which names its messages):
#: ["act", v]                      -> result 3v+1 appended
#: ["fail", caught, retry]         -> activity raises RuntimeError("m<i>"); caught: "caught:m<i>" appended
#: ["timer", ms]                   -> "t" appended
#: ["join", [v...], k|None, caught]-> all results appended as a list; member k (mod len) raises "m<i>"
#: ["sub", v, fails, caught]       -> child returns 3v+101, or raises ValueError("child-m<i>")
#: ["raise"]                       -> ValueError("m<i>") escapes the orchestration
#: ["can"]                         -> "can" appended, continue-as-new with the rest of the program

values = st.integers(-50, 50)
steps = st.one_of(
    st.tuples(st.just("act"), values),
    st.tuples(st.just("fail"), st.booleans(), st.booleans()),
    st.tuples(st.just("timer"), st.integers(1, 15)),
    st.tuples(st.just("join"), st.lists(values, min_size=1, max_size=4), st.none() | st.integers(0, 3),
              st.booleans()),
    st.tuples(st.just("sub"), values, st.booleans(), st.booleans()),
    st.tuples(st.just("raise")),
    st.tuples(st.just("can")),
)


def _at_most_one_can(program: list[tuple[Any, ...]]) -> list[list[Any]]:
    out, seen = [], False
    for step in program:
        if step[0] == "can":
            if seen:
                continue
            seen = True
        out.append(list(step))
    return out


programs = st.lists(steps, min_size=1, max_size=6).map(_at_most_one_can)


def expected(program: list[list[Any]]) -> tuple[dt.Status, Any, int]:
    """(status, output or a fragment of the error message, final execution id) — the pure interpreter."""
    acc: list[Any] = []
    execution = 1
    for i, step in enumerate(program):
        kind, msg = step[0], f"m{i}"
        if kind == "act":
            acc.append(3 * step[1] + 1)
        elif kind == "fail":
            if not step[1]:
                return dt.Status.FAILED, msg, execution
            acc.append(f"caught:{msg}")
        elif kind == "timer":
            acc.append("t")
        elif kind == "join":
            vs, k, caught = step[1], step[2], step[3]
            if k is None:
                acc.append([3 * v + 1 for v in vs])
            elif caught:
                acc.append(f"joinfail:{msg}")
            else:
                return dt.Status.FAILED, msg, execution
        elif kind == "sub":
            v, fails, caught = step[1], step[2], step[3]
            if not fails:
                acc.append(3 * v + 101)
            elif caught:
                acc.append(f"subfail:{msg}")
            else:
                return dt.Status.FAILED, f"child-{msg}", execution
        elif kind == "raise":
            return dt.Status.FAILED, msg, execution
        elif kind == "can":
            acc.append("can")
            execution += 1
    return dt.Status.COMPLETED, acc, execution


REGISTRY = dt.Registry()


@REGISTRY.activity("Triple")
async def triple(ctx: dt.ActivityContext, v: int) -> int:
    return 3 * v + 1


@REGISTRY.activity("Fail")
async def fail(ctx: dt.ActivityContext, msg: str) -> None:
    raise RuntimeError(msg)


@REGISTRY.orchestration("Child")
async def child(ctx: dt.OrchestrationContext, spec: dict[str, Any]) -> int:
    r = await ctx.schedule_activity("Triple", spec["v"])
    if spec["fail"]:
        raise ValueError(spec["msg"])
    return int(r) + 100


@REGISTRY.orchestration("Prog")
async def prog(ctx: dt.OrchestrationContext, state: dict[str, Any]) -> Any:
    program, acc = state["prog"], list(state["acc"])
    for i in range(state["pc"], len(program)):
        step = program[i]
        kind, msg = step[0], f"m{i}"
        if kind == "act":
            acc.append(await ctx.schedule_activity("Triple", step[1]))
        elif kind == "fail":
            retry = dt.RetryPolicy(max_attempts=2, backoff=dt.Backoff.none()) if step[2] else None
            try:
                await ctx.schedule_activity("Fail", msg, retry=retry)
            except dt.ActivityFailed:
                if not step[1]:
                    raise
                acc.append(f"caught:{msg}")
        elif kind == "timer":
            await ctx.schedule_timer(step[1] / 1000)
            acc.append("t")
        elif kind == "join":
            vs, k, caught = step[1], step[2], step[3]
            bad = None if k is None else k % len(vs)
            futures = [ctx.schedule_activity("Fail", msg) if j == bad else ctx.schedule_activity("Triple", v)
                       for j, v in enumerate(vs)]
            try:
                acc.append(await ctx.join(futures))
            except dt.ActivityFailed:
                if not caught:
                    raise
                acc.append(f"joinfail:{msg}")
        elif kind == "sub":
            v, fails, caught = step[1], step[2], step[3]
            try:
                acc.append(await ctx.schedule_sub_orchestration("Child", {"v": v, "fail": fails,
                                                                          "msg": f"child-{msg}"}))
            except dt.SubOrchestrationFailed:
                if not caught:
                    raise
                acc.append(f"subfail:{msg}")
        elif kind == "raise":
            raise ValueError(msg)
        elif kind == "can":
            acc.append("can")
            return await ctx.continue_as_new({"prog": program, "pc": i + 1, "acc": acc})
    return acc


# ---------------------------------------------------------------------------------------------------------
# Fault schedules

OPERATIONS = [
    "fetch_orchestration_item",
    "ack_orchestration_item",
    "abandon_orchestration_item",
    "renew_orchestration_item_lock",
    "fetch_work_items",
    "ack_work_items",
    "renew_work_item_lock",
    "abandon_work_item",
    "enqueue_start",
]


def fault_schedules(errors: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Fault]]:
    faults = st.builds(
        Fault,
        probability=st.floats(0.2, 0.9),
        after=st.booleans(),  # after=True: the call committed, the caller is told it failed
        limit=st.integers(1, 3),  # few enough that no message reaches max_attempts (10) by faults alone
        retryable=st.booleans(),
        error=errors,
    )
    return st.dictionaries(st.sampled_from(OPERATIONS), faults, min_size=2, max_size=5)


#: Storage errors (``ProviderError``, retryable or not).
STORAGE_ERRORS = fault_schedules(st.none())
#: A provider with a bug: some calls raise an exception that is not a ``ProviderError``.
PROVIDER_BUGS = fault_schedules(st.sampled_from([None, RuntimeError, OSError, KeyError]))

OPTIONS = attrs.evolve(
    FAST,
    orchestrator_lock_timeout=1.0,
    orchestrator_lock_renewal_buffer=0.3,
    worker_lock_timeout=1.0,
    worker_lock_renewal_buffer=0.3,
    poll_interval=0.2,
    max_attempts=10,
)


async def _start(client: dt.Client, iid: str, name: str, input: Any) -> None:
    """Start, retrying injected storage errors; a start that committed before its error counts."""
    for _ in range(10):
        try:
            await client.start_orchestration(iid, name, input)
            return
        except dt.InstanceAlreadyExists:
            return
        except dt.ProviderError:
            await anyio.sleep(0.01)
        except (RuntimeError, OSError, KeyError) as exc:  # an injected provider bug
            if "injected fault" not in str(exc):
                raise
            await anyio.sleep(0.01)
    raise AssertionError(f"could not start {iid}")


async def _run(path: str, programs_: list[list[list[Any]]], schedule: dict[str, Fault], seed: int) -> list[str]:
    problems: list[str] = []
    provider = FaultyProvider(await dt.SqliteProvider.open(path), schedule, seed=seed)
    async with provider, dt.open_runtime(provider, REGISTRY, OPTIONS) as runtime:
        client = runtime.client
        for n, program in enumerate(programs_):
            await _start(client, f"p{n}", "Prog", {"prog": program, "pc": 0, "acc": []})

        async def check(n: int, program: list[list[Any]]) -> None:
            status, want, execution = expected(program)
            try:
                state = await client.wait_for_orchestration(f"p{n}", timeout=20)
            except TimeoutError as exc:
                problems.append(f"p{n} never ended: {exc}")
                return
            if state.status is not status:
                problems.append(f"p{n} ended {state.status.value} ({state.error or state.output!r}), "
                                f"expected {status.value} ({want!r})")
            elif status is dt.Status.COMPLETED and state.output != want:
                problems.append(f"p{n} output {state.output!r}, expected {want!r}")
            elif status is dt.Status.FAILED and (state.error is None or want not in state.error.message
                                                 or state.error.category != "application"):
                problems.append(f"p{n} error {state.error!r}, expected an application error naming {want!r}")
            elif state.execution_id != execution:
                problems.append(f"p{n} ended in execution {state.execution_id}, expected {execution}")

        async with anyio.create_task_group() as tg:
            for n, program in enumerate(programs_):
                tg.start_soon(check, n, program)
        # The runtime still runs: a fresh instance completes after everything else.
        await _start(client, "after", "Prog", {"prog": [["act", 1]], "pc": 0, "acc": []})
        after = await client.wait_for_orchestration("after", timeout=30)
        if after.status is not dt.Status.COMPLETED or after.output != [4]:
            problems.append(f"an instance started afterwards ended {after.status.value}: {after.error}")
    return problems


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return f"{type(exc).__name__}[{'; '.join(_describe(e) for e in exc.exceptions)}]"
    return f"{type(exc).__name__}: {exc}"


def _check(programs_: list[list[list[Any]]], schedule: dict[str, Fault], seed: int) -> None:
    note(f"programs: {programs_}")
    note(f"faults: {schedule}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            problems = anyio.run(_run, os.path.join(tmp, "state.db"), programs_, schedule, seed, backend="trio")
        except Exception as exc:  # noqa: BLE001 - open_runtime must not raise because of an instance
            problems = [f"the runtime stopped: {_describe(exc)}"]
    injected = sum(f.injected for f in schedule.values())
    event(f"faults injected: {'none' if injected == 0 else '1-3' if injected <= 3 else 'more'}")
    event(f"continue-as-new: {any(s[0] == 'can' for p in programs_ for s in p)}")
    event(f"ends: {sorted({expected(p)[0].value for p in programs_})}")
    assert not problems, "\n".join(problems)


def _settings(examples: int, *, shrink: bool = True) -> settings:
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    database=None, phases=phases)


@_settings(25)
@given(programs_=st.lists(programs, min_size=1, max_size=3), schedule=STORAGE_ERRORS, seed=st.integers(0, 2**16))
def test_every_program_ends_as_it_implies_under_storage_errors(
    programs_: list[list[list[Any]]], schedule: dict[str, Fault], seed: int
) -> None:
    """Storage errors (before or after the commit, retryable or not) are retried; nothing else changes."""
    _check(programs_, schedule, seed)


@_settings(15, shrink=False)  # a failing example is reported as found: shrinking runtimes takes minutes
@given(programs_=st.lists(programs, min_size=1, max_size=3), schedule=PROVIDER_BUGS, seed=st.integers(0, 2**16))
def test_every_program_ends_as_it_implies_with_a_buggy_provider(
    programs_: list[list[list[Any]]], schedule: dict[str, Fault], seed: int
) -> None:
    """A provider call that raises something other than ``ProviderError`` (a bug) is contained too: the
    runtime does not stop, and every instance still ends as its program says."""
    _check(programs_, schedule, seed)


def test_the_interpreter_itself():
    """The expected-output interpreter, on hand-written programs (so a bug in it cannot hide one in the
    runtime)."""
    assert expected([["act", 2], ["timer", 3], ["join", [1, 2], None, False]]) == (
        dt.Status.COMPLETED, [7, "t", [4, 7]], 1)
    assert expected([["fail", True, True], ["can"], ["sub", 0, False, False]]) == (
        dt.Status.COMPLETED, ["caught:m0", "can", 101], 2)
    assert expected([["act", 1], ["can"], ["sub", 5, True, False], ["act", 1]]) == (
        dt.Status.FAILED, "child-m2", 2)
    assert expected([["join", [1], 0, True], ["raise"], ["act", 1]]) == (dt.Status.FAILED, "m1", 1)
