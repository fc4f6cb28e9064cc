"""Harness of the bad-input catalogue (``tests/test_bad_input.py``).

A catalogue row is a case: an id, a setup (an orchestration to start, a client call to make, a command
line to run, a row to corrupt) and what the user must see (the error type and message fragments). Every
runtime case checks the three promises of the robustness contract:

(a) the error the user sees names what was wrong (message fragments, category, kind);
(b) other instances keep running: a healthy instance started beside each bad one completes, and the
    runtime itself never stops (``open_runtime`` must not raise because of one instance);
(c) nothing already stored is lost or changed: a baseline instance completed before the bad input was
    sent has the same status, output and history afterwards.

Cases form *groups*. The first test of a group (for one provider and backend) runs the whole group and
caches the result; every case then asserts only its own part. In a group each case runs on its own
database (a SQLite file, a PostgreSQL schema) and runtime, several at a time on one event loop, so one
crash or hang cannot hide another; a *shared* group runs its cases one after another on one database and
runtime. Groups run on a fresh event loop of their own (``anyio.run`` in a synchronous test) so that a
``KeyboardInterrupt``/``SystemExit`` escaping a runtime is reported as that group's failure instead of
ending the pytest session; cases that might do that (or block the loop) have groups of their own.
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import attrs

import duroxide_trio as dt
from duroxide_trio.history import encode_event

KiB = 1024
MiB = 1024 * 1024
HISTORY_LIMIT = 5 * MiB
PAYLOAD_LIMIT = 3 * MiB
NAME_LIMIT = 64 * KiB
STATUS_LIMIT = 256 * KiB

#: A message fragment: a string, or a tuple of alternatives (any one must appear). Case-insensitive.
Frag = str | tuple[str, ...]

#: What a user must never see instead of an explanation.
FORBIDDEN = ("RecursionError", "maximum recursion depth", "Traceback (most recent call last)")

_HUMAN = {HISTORY_LIMIT: "5 MiB", PAYLOAD_LIMIT: "3 MiB", NAME_LIMIT: "64 KiB", STATUS_LIMIT: "256 KiB"}


def limit(n: int) -> tuple[str, ...]:
    """The ways a message may name the byte limit ``n``: "3 MiB", "3MiB", "3145728", "3,145,728"."""
    human = _HUMAN[n]
    return (human, human.replace(" ", ""), str(n), f"{n:,}", f"{n:_}")


#: Words that name an allowed range of a number.
RANGE_AT_LEAST_1 = (">= 1", ">=1", "at least 1", "≥ 1", "≥1", "positive", "1 or more", "greater than 0", "> 0",
                    "between 1", "[1,", "1..", "from 1")
RANGE_POSITIVE = ("positive", "> 0", ">0", "greater than 0", "greater than zero", "more than 0")


def describe(exc: BaseException) -> str:
    """An exception, with the members of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        inner = "; ".join(describe(e) for e in exc.exceptions)
        return f"{type(exc).__name__}[{inner}]"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def fragment_problems(text: str | None, fragments: Sequence[Frag], where: str) -> list[str]:
    low = (text or "").lower()
    out = []
    for frag in fragments:
        alternatives = (frag,) if isinstance(frag, str) else frag
        if not any(a.lower() in low for a in alternatives):
            shown = alternatives[0] if len(alternatives) == 1 else " | ".join(alternatives)
            out.append(f"{where} should mention {shown!r}: {(text or '')[:160]!r}")
    return out


def forbidden_problems(text: str | None, where: str, extra: Sequence[str] = ()) -> list[str]:
    return [f"{where} shows {bad!r}: {(text or '')[:300]!r}" for bad in (*FORBIDDEN, *extra) if bad in (text or "")]


def size_problems(message: str) -> list[str]:
    """A limit message names the limit *and* the size: at least two numbers."""
    if len(re.findall(r"\d[\d,_]*(?:\.\d+)?", message)) < 2:
        return [f"limit message should name both the limit and the size: {message[:300]!r}"]
    return []


# ---------------------------------------------------------------------------------------------------------
# Expectations


_ANY = object()


@attrs.define
class Expect:
    """How a bad instance must end."""

    status: dt.Status = dt.Status.FAILED
    category: str | None = None
    kind: str | None = None
    fragments: tuple[Frag, ...] = ()
    output: Any = _ANY
    within: float | None = None  # seconds from start to the terminal state
    max_message: int | None = None  # the stored error message must not be longer (bytes)
    names_size: bool = False  # a limit message: names the limit and the size

    def problems(self, state: dt.OrchestrationState, elapsed: float) -> list[str]:
        out: list[str] = []
        if state.status is not self.status:
            detail = state.error.display()[:200] if state.error is not None else repr(state.output)[:160]
            return [f"status is {state.status.value}, expected {self.status.value} ({detail})"]
        if self.status is dt.Status.FAILED:
            err = state.error
            if err is None or not err.message:
                return ["failed without an explained error"]
            if self.category is not None and err.category != self.category:
                out.append(f"error category is {err.category!r}, expected {self.category!r} ({err.message[:160]!r})")
            if self.kind is not None and err.kind != self.kind:
                out.append(f"error kind is {err.kind!r}, expected {self.kind!r} ({err.message[:160]!r})")
            out += fragment_problems(err.message, self.fragments, "error message")
            out += forbidden_problems(err.message, "error message")
            if self.max_message is not None and len(err.message.encode()) > self.max_message:
                out.append(f"stored error message is {len(err.message.encode())} bytes, over {self.max_message}")
            if self.names_size:
                out += size_problems(err.message)
        elif self.output is not _ANY and state.output != self.output:
            out.append(f"output is {state.output!r:.300}, expected {self.output!r:.300}")
        if self.within is not None and elapsed > self.within:
            out.append(f"took {elapsed:.1f}s to end, expected under {self.within}s")
        return out


def limit_exceeded(n: int, *fragments: Frag) -> Expect:
    """A limit violation: Failed, configuration/LimitExceeded, naming the limit and the size."""
    return Expect(category="configuration", kind="LimitExceeded", fragments=(limit(n), *fragments), names_size=True)


# ---------------------------------------------------------------------------------------------------------
# Cases


@attrs.define
class Env:
    provider: Any
    raw: dt.Client  # no registry: can start names the runtime does not know
    client: dt.Client  # runtime.client (knows the registry)
    runtime: Any
    logs: list[logging.LogRecord]
    baseline: str


Check = Callable[[Env, str, dt.OrchestrationState], Awaitable[list[str]]]


@attrs.define
class InstanceCase:
    """Start ``orchestration`` with ``input`` as a fresh instance; it must end as ``expect`` says."""

    id: str
    orchestration: str
    expect: Expect
    input: Any = None
    group: str = "engine"
    raw_start: bool = False  # start through a client without registry (unknown names)
    instance_id: str | None = None
    before_runtime: Callable[[dt.Client, str], Awaitable[None]] | None = None  # runs before the runtime opens
    check: Check | None = None
    timeout: float = 10.0

    @property
    def iid(self) -> str:
        return self.instance_id or f"bad-{self.id}"


@attrs.define
class ClientCase:
    """A client call that must be refused with ``raises`` naming ``fragments``; ``absent`` ids must not exist
    afterwards (nothing was written). ``call`` may also return a list of problems for custom checks."""

    id: str
    call: Callable[[Env], Awaitable[Any]]
    raises: type[BaseException] | tuple[type[BaseException], ...] | None
    fragments: tuple[Frag, ...] = ()
    absent: tuple[str, ...] = ()
    group: str = "client"


Case = InstanceCase | ClientCase


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def log_text(records: Sequence[logging.LogRecord]) -> str:
    out = []
    for r in records:
        try:
            out.append(f"{r.name} {r.levelname} {r.getMessage()}")
        except Exception:  # noqa: BLE001
            out.append(f"{r.name} {r.levelname} {r.msg}")
    return "\n".join(out)


async def snapshot(client: dt.Client, instance_id: str) -> tuple[Any, ...]:
    state = await client.get_status(instance_id)
    history = [encode_event(e) for e in await client.get_history(instance_id)]
    return (state.status, state.output, state.error, state.custom_status, state.name, state.version,
            state.execution_id, history)


async def dense_ids_problems(client: dt.Client, instance_id: str) -> list[str]:
    try:
        history = await client.get_history(instance_id)
    except Exception as exc:  # noqa: BLE001
        return [f"cannot read the history of {instance_id!r} afterwards: {describe(exc)}"]
    ids = [e.event_id for e in history]
    if ids != list(range(1, len(ids) + 1)):
        return [f"event ids of {instance_id!r} are not dense: {ids[:5]}...{ids[-5:]}"]
    return []


def history_bytes(history: Sequence[Any]) -> int:
    return sum(len(encode_event(e).encode()) for e in history)


def history_below(max_bytes: int) -> Check:
    """The oversized data was never written: the stored history stays small."""

    async def check(env: Env, iid: str, state: dt.OrchestrationState) -> list[str]:
        size = history_bytes(await env.raw.get_history(iid))
        info = await env.raw.get_instance_info(iid)
        stored = len((info.output or "").encode()) if info is not None else 0
        stored += len((info.custom_status or "").encode()) if info is not None else 0
        out = []
        if size > max_bytes:
            out.append(f"{size} bytes of history were written (the oversized data reached storage)")
        if stored > max_bytes:
            out.append(f"{stored} bytes of output/custom status were written")
        return out

    return check


HEALTHY = "Healthy"


def add_healthy(registry: dt.Registry) -> None:
    """The orchestration run beside every bad input: an activity, a timer, a result."""

    @registry.activity("Double")
    async def double(ctx: dt.ActivityContext, x: int) -> int:
        return x * 2

    @registry.orchestration(HEALTHY)
    async def healthy(ctx: dt.OrchestrationContext, x: int) -> int:
        y = await ctx.schedule_activity("Double", x)
        await ctx.schedule_timer(0.01)
        return int(y)



@attrs.define
class CaseResult:
    problems: list[str] = attrs.field(factory=list)
    finished: bool = False
    crash: str | None = None
    seconds: float = 0.0

    def all_problems(self) -> list[str]:
        out = list(self.problems)
        if not self.finished:
            out.append("the case did not finish (its runtime stopped or hung)")
        if self.crash is not None:
            out.append(f"the runtime stopped: {self.crash}")
        return out


@attrs.define
class Storage:
    """Where the cases of a group keep their state: one fresh database per case (a SQLite file in
    ``directory``, or a fresh PostgreSQL schema), opened exactly as the ``make_provider`` fixture does."""

    kind: str  # "sqlite" | "postgres"
    directory: str
    pg_url: str | None = None
    schemas: list[str] = attrs.field(factory=list)

    async def open(self, name: str) -> Any:
        if self.kind == "sqlite":
            safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:80]
            return await dt.SqliteProvider.open(os.path.join(self.directory, f"{safe}.db"))
        import pg_support

        from duroxide_trio.providers.postgres import PostgresProvider

        assert self.pg_url is not None
        schema = pg_support.new_schema_name("bad")
        self.schemas.append(schema)
        await anyio.to_thread.run_sync(pg_support.create_schema, self.pg_url, schema)
        return await PostgresProvider.connect(self.pg_url, schema=schema, pool_max=2)

    def cleanup(self) -> None:
        if self.pg_url is None:
            return
        import pg_support

        for schema in self.schemas:
            try:
                pg_support.drop_schema(self.pg_url, schema)
            except Exception:  # noqa: BLE001 - best effort: a leaked session may hold a lock
                logging.getLogger(__name__).warning("could not drop schema %s", schema)
        self.schemas.clear()


async def _start_healthy(env: Env, iid: str, x: int, res: CaseResult) -> None:
    try:
        await env.client.start_orchestration(iid, HEALTHY, x)
    except Exception as exc:  # noqa: BLE001
        res.problems.append(f"starting a healthy instance beside it raised {describe(exc)}")


async def _expect_healthy(env: Env, iid: str, x: int, res: CaseResult) -> None:
    try:
        state = await env.client.wait_for_orchestration(iid, timeout=10)
    except Exception as exc:  # noqa: BLE001
        res.problems.append(f"the healthy instance beside it did not finish: {describe(exc)}")
        return
    if state.status is not dt.Status.COMPLETED or state.output != 2 * x:
        res.problems.append(
            f"the healthy instance beside it ended {state.status.value} "
            f"({state.error.display() if state.error else state.output!r})"
        )


async def _instance_case(env: Env, case: InstanceCase, res: CaseResult) -> None:
    problems = res.problems
    if case.before_runtime is None:
        try:
            client = env.raw if case.raw_start else env.client
            await client.start_orchestration(case.iid, case.orchestration, case.input)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"start_orchestration raised {describe(exc)}")
    started = time.monotonic()
    await _start_healthy(env, f"healthy-beside-{case.id}", 5, res)
    if not problems:
        try:
            state = await env.client.wait_for_orchestration(case.iid, timeout=case.timeout)
        except Exception as exc:  # noqa: BLE001
            try:
                now = await env.raw.get_status(case.iid)
                where = f"status {now.status.value}"
            except Exception as exc2:  # noqa: BLE001
                where = f"get_status raised {describe(exc2)}"
            problems.append(f"the instance did not end ({describe(exc)}; {where})")
        else:
            problems += case.expect.problems(state, time.monotonic() - started)
            problems += await dense_ids_problems(env.raw, case.iid)
            if case.check is not None:
                try:
                    problems += await case.check(env, case.iid, state)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"check raised {describe(exc)}")
    await _expect_healthy(env, f"healthy-beside-{case.id}", 5, res)


async def _client_case(env: Env, case: ClientCase, res: CaseResult) -> None:
    problems = res.problems
    try:
        returned = await case.call(env)
    except BaseException as exc:  # noqa: BLE001 - anything but the expected error is a finding
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            raise
        if case.raises is None or not isinstance(exc, case.raises):
            problems.append(f"raised {describe(exc)}, expected {_names(case.raises)}")
        else:
            problems += fragment_problems(str(exc), case.fragments, f"{type(exc).__name__} message")
            problems += forbidden_problems(str(exc), f"{type(exc).__name__} message")
    else:
        if isinstance(returned, list):
            problems += returned
        elif case.raises is not None:
            problems.append(f"was accepted (returned {returned!r:.100}), expected {_names(case.raises)}")
    for iid in case.absent:
        try:
            state = await env.raw.get_status(iid)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"get_status({iid[:40]!r}...) raised {describe(exc)}")
            continue
        if state.status is not dt.Status.NOT_FOUND:
            problems.append(f"instance {iid[:40]!r} exists after the call was refused ({state.status.value})")
    await _start_healthy(env, f"healthy-beside-{case.id}", 5, res)
    await _expect_healthy(env, f"healthy-beside-{case.id}", 5, res)


def _names(t: Any) -> str:
    if t is None:
        return "acceptance"
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return str(t.__name__)


BASELINE = "baseline-done"


async def run_cases(storage: Storage, registry: dt.Registry, cases: Sequence[Case], options: dt.RuntimeOptions,
                    results: dict[str, CaseResult], logs: list[logging.LogRecord]) -> None:
    """Cases one after another on one database and runtime: a baseline instance completes first, then each
    case runs with a healthy instance beside it, then the baseline must be unchanged."""
    t0 = time.monotonic()
    provider = await storage.open(cases[0].id)
    async with provider:
        raw = dt.Client(provider)
        env = Env(provider, raw, raw, None, logs, BASELINE)
        for case in cases:
            if isinstance(case, InstanceCase) and case.before_runtime is not None:
                try:
                    await case.before_runtime(raw, case.iid)
                except Exception as exc:  # noqa: BLE001
                    results[case.id].problems.append(f"setup before the runtime raised {describe(exc)}")
        try:
            async with dt.open_runtime(provider, registry, options) as runtime:
                env.client, env.runtime = runtime.client, runtime
                await runtime.client.start_orchestration(BASELINE, HEALTHY, 21)
                done = await runtime.client.wait_for_orchestration(BASELINE, timeout=20)
                before = await snapshot(raw, BASELINE)
                for case in cases:
                    res = results[case.id]
                    if done.output != 42:
                        res.problems.append(f"the baseline instance ended {done}")
                    if isinstance(case, ClientCase):
                        await _client_case(env, case, res)
                    else:
                        await _instance_case(env, case, res)
                    after = await snapshot(raw, BASELINE)
                    if after != before:
                        res.problems.append(
                            f"previously completed instance changed: {before!r:.300} -> {after!r:.300}")
                        before = after
                    res.finished = True
        except Exception as exc:  # noqa: BLE001 - the runtime stopped
            crash = describe(exc) + "\n" + "".join(traceback.format_exception(exc))[-1200:]
            for case in cases:
                results[case.id].crash = crash
    for case in cases:
        results[case.id].seconds = time.monotonic() - t0


async def _run_all(storage: Storage, registry: dt.Registry, cases: Sequence[Case], options: dt.RuntimeOptions,
                   results: dict[str, CaseResult], logs: list[logging.LogRecord], concurrency: int,
                   shared: bool) -> None:
    limiter = anyio.CapacityLimiter(concurrency)

    async def some(batch: Sequence[Case]) -> None:
        async with limiter:
            try:
                await run_cases(storage, registry, batch, options, results, logs)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt/SystemExit escaping the runtime
                for case in batch:
                    results[case.id].crash = describe(exc)

    async with anyio.create_task_group() as tg:
        for batch in ([cases] if shared else [[c] for c in cases]):
            tg.start_soon(some, batch)


def run_group(storage: Storage, backend: str, registry: dt.Registry, cases: Sequence[Case],
              options: dt.RuntimeOptions, *, concurrency: int = 6, shared: bool = False) -> dict[str, CaseResult]:
    """Run every case of a group on a fresh event loop: each isolated on its own database and runtime,
    ``concurrency`` at a time — or, ``shared``, one after another on one database and runtime. Never
    raises: a crash is recorded on the cases it hit."""
    results = {c.id: CaseResult() for c in cases}
    capture = _Capture()
    logger = logging.getLogger("duroxide_trio")
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        anyio.run(_run_all, storage, registry, cases, options, results, capture.records, concurrency, shared,
                  backend=backend)
    except BaseException as exc:  # noqa: BLE001 - e.g. KeyboardInterrupt ending the whole asyncio loop
        for r in results.values():
            if not r.finished:
                r.crash = r.crash or describe(exc)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
        storage.cleanup()
    return results
