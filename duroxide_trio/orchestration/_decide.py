"""The turn decision: what one fetched batch means, as one value. Pure and total.

``decide_turn`` looks at a locked batch (history, messages, attempt count, decode errors) and returns
either a :class:`Commit` (a ``TurnResult`` to ack: run the code, discard late messages, fail the instance
as poison / corrupt / unregistered / over a limit) or an :class:`Abandon` (give the batch back after a
delay). It never raises, whatever the history, the messages or the user's code do; the dispatcher only
does I/O around it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from ..history import (
    ContinueAsNew,
    ErrorDetails,
    Event,
    OrchestrationStarted,
    StartOrchestration,
    Status,
    SubOrchError,
    WorkItem,
)
from . import limits
from ._replay import Codec, Handler, TurnPlan, TurnResult, fail_instance, plan_turn, run_turn

__all__ = ["Abandon", "Batch", "Commit", "Decision", "Handlers", "TurnPolicy", "decide_turn", "refused_commit"]


class Batch(Protocol):
    """What a provider's fetch returns (``providers.base.OrchestrationItem`` has these fields)."""

    @property
    def instance_id(self) -> str:
        """The locked instance."""
        ...

    @property
    def orchestration_name(self) -> str:
        """The stored orchestration name (a new instance: its start message's; ``""`` if there is none)."""
        ...

    @property
    def version(self) -> str | None:
        """The stored (or requested) version; ``None``: the latest."""
        ...

    @property
    def execution_id(self) -> int:
        """The current execution id."""
        ...

    @property
    def history(self) -> list[Event]:
        """The current execution's history, in event id order."""
        ...

    @property
    def messages(self) -> list[WorkItem]:
        """Every message for the instance that was visible at fetch, in enqueue order."""
        ...

    @property
    def attempt_count(self) -> int:
        """How many times these messages have been fetched (the highest count of the batch)."""
        ...

    @property
    def history_error(self) -> str | None:
        """Why the history or a message could not be decoded (``None``: everything was read)."""
        ...


class Handlers(Protocol):
    """Resolves orchestration handlers (the ``Registry``)."""

    def resolve_orchestration(self, name: str, version: str | None = None) -> Any:
        """The handler of ``name`` at exactly ``version`` (the latest if ``None``), or ``None``."""
        ...

    @property
    def orchestration_names(self) -> list[str]:
        """The registered orchestration names (for error messages)."""
        ...


@attrs.frozen
class TurnPolicy:
    """The runtime options the decision depends on."""

    max_attempts: int = 10
    retry_delay: Callable[[int], float] = lambda attempt: 1.0  # for unregistered / unreadable batches
    #: Whether this runtime replays a version (``RuntimeOptions.supported_replay_versions``). A batch at a
    #: version it does not is another runtime's work: given back without counting an attempt, never failed.
    accepts_version: Callable[[str | None], bool] = lambda version: True


@attrs.frozen
class Commit:
    """Ack this result (it may be empty: the messages are consumed and nothing else happens)."""

    result: TurnResult
    level: int = logging.DEBUG  # how loudly the dispatcher should log ``note``
    note: str = ""
    ran_code: bool = False  # the user's code ran (a turn counted in the stats)


@attrs.frozen
class Abandon:
    """Give the batch back; it becomes visible again after ``delay`` seconds."""

    delay: float
    level: int = logging.WARNING
    note: str = ""
    #: False: the batch was never this runtime's to run (a version outside its range), so giving it back
    #: does not count towards poison.
    count_attempt: bool = True


Decision = Commit | Abandon


def decide_turn(
    batch: Batch,
    *,
    handlers: Handlers,
    codec: Codec,
    policy: TurnPolicy,
    now_ms: int,
    logger: Any = None,
) -> Decision:
    """Decide what ``batch`` means. Total: any failure inside (even a bug of the engine) becomes a
    terminal, explained state of this instance alone."""
    try:
        decision = _decide(batch, handlers, codec, policy, now_ms, logger)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape: it would stop every instance
        details = ErrorDetails(
            "infrastructure",
            "EngineError",
            limits.truncate_message(
                f"internal error of the duroxide-trio engine (please report it): {type(exc).__name__}: {exc}"
            ),
        )
        decision = Commit(_fail(batch, details, now_ms), logging.ERROR, details.message)
    return decision


# ---------------------------------------------------------------------------------------------------------


def _plan(batch: Batch) -> TurnPlan:
    if batch.history_error is not None:
        return TurnPlan("unreadable", batch.orchestration_name, batch.version, batch.execution_id,
                        reason=batch.history_error)
    return plan_turn(batch.execution_id, batch.history, batch.messages)


def _fail(batch: Batch, details: ErrorDetails, now_ms: int, plan: TurnPlan | None = None) -> TurnResult:
    """End the instance Failed without running code. An unreadable history gets no new event (its next
    event id is unknown; ids stay dense): only the status says Failed."""
    plan = plan or _safe_plan(batch)
    name = plan.name or batch.orchestration_name or "unknown"
    version = plan.version or batch.version or "0.0.0"
    if plan.action == "unreadable":
        return TurnResult(execution_id=batch.execution_id, name=name, version=version, status=Status.FAILED,
                          error=details)
    return fail_instance(instance_id=batch.instance_id, plan=plan, details=details, now_ms=now_ms,
                         name=name, version=version)


def _safe_plan(batch: Batch) -> TurnPlan:
    try:
        return _plan(batch)
    except Exception:  # noqa: BLE001
        return TurnPlan("unreadable", batch.orchestration_name, batch.version, batch.execution_id)


def _decide(
    batch: Batch, handlers: Handlers, codec: Codec, policy: TurnPolicy, now_ms: int, logger: Any
) -> Decision:
    plan = _plan(batch)
    attempt = batch.attempt_count
    instance = batch.instance_id

    if plan.action == "unreadable":
        if attempt < policy.max_attempts:
            delay = policy.retry_delay(attempt)
            return Abandon(delay, logging.ERROR,
                           f"instance {instance!r}: cannot read its history or messages ({plan.reason}); "
                           f"retrying in {delay:.1f}s (attempt {attempt} of {policy.max_attempts}) — a newer "
                           "version of the runtime may be able to")
        details = ErrorDetails(
            "poison", "UnreadableHistory",
            limits.truncate_message(
                f"poison: instance {instance!r} has a history or messages this runtime cannot read "
                f"(gave up after {attempt} attempts): {plan.reason}"),
        )
        return Commit(_fail(batch, details, now_ms, plan), logging.ERROR, details.message)

    if plan.action == "discard":
        return Commit(_with_refused_starts(TurnResult(execution_id=batch.execution_id), batch, plan),
                      note=f"instance {instance!r}: {plan.reason}")

    if attempt > policy.max_attempts:
        details = ErrorDetails(
            "poison", "Orchestration",
            f"poison: orchestration {plan.name or batch.orchestration_name!r} instance {instance!r} exceeded "
            f"{policy.max_attempts} attempts (the turn kept failing to commit)",
        )
        return Commit(_fail(batch, details, now_ms, plan), logging.ERROR, details.message)

    if plan.action == "corrupt":
        details = ErrorDetails("configuration", "CorruptedHistory", plan.reason)
        return Commit(_with_refused_starts(_fail(batch, details, now_ms, plan), batch, plan), logging.ERROR,
                      f"instance {instance!r}: {plan.reason}")

    if plan.version is not None and not policy.accepts_version(plan.version):
        # The fetch filters by the version a turn runs at (recorded, or asked for by a start or a
        # continue-as-new), so this is a safety net: a provider that filters less, or two pending starts
        # asking for different versions, can still bring a batch to a runtime outside its range. That is
        # not a failure of the instance: another runtime's work, given back uncounted.
        delay = policy.retry_delay(1)
        return Abandon(delay, logging.INFO,
                       f"instance {instance!r}: orchestration {plan.name!r} version {plan.version} is outside "
                       f"this runtime's supported_replay_versions; given back for another runtime",
                       count_attempt=False)
    handler: Handler | None = handlers.resolve_orchestration(plan.name, plan.version)
    if handler is None:
        what = f"orchestration {plan.name!r}" + (f" version {plan.version}" if plan.version else "")
        if attempt >= policy.max_attempts:
            details = ErrorDetails(
                "poison", "Unregistered", f"poison: {what} is not registered (gave up after {attempt} attempts)")
            return Commit(_fail(batch, details, now_ms, plan), logging.ERROR, details.message)
        delay = policy.retry_delay(attempt)
        registered = ", ".join(handlers.orchestration_names) or "none"
        return Abandon(delay, logging.WARNING,
                       f"instance {instance!r}: {what} is not registered in this runtime (registered: "
                       f"{registered}); retrying in {delay:.1f}s (attempt {attempt} of {policy.max_attempts})")

    result = run_turn(instance_id=instance, plan=plan, handler=handler, codec=codec, now_ms=now_ms,
                      logger=logger)
    over = _over_limit(plan, result)
    if over is not None:
        result = _fail(batch, over, now_ms, plan)
        return Commit(_with_refused_starts(result, batch, plan), logging.ERROR,
                      f"instance {instance!r}: {over.message}", ran_code=True)
    result = _with_refused_starts(result, batch, plan)
    if result.warnings:
        return Commit(result, logging.WARNING, f"instance {instance!r}: " + "; ".join(result.warnings),
                      ran_code=True)
    if result.status == Status.FAILED and result.error is not None and result.error.category != "application":
        return Commit(result, logging.ERROR, f"instance {instance!r} failed: {result.error.message}", ran_code=True)
    return Commit(result, ran_code=True)


def refused_commit(batch: Batch, reason: str, *, now_ms: int) -> TurnResult:
    """The commit to make when the storage refused a turn's commit as invalid (a value it cannot hold,
    e.g. an id too long for PostgreSQL's index): the instance fails with the storage's reason instead of
    replaying a turn that can never commit."""
    details = ErrorDetails(
        "configuration", "StorageRejected",
        limits.truncate_message(f"the storage refused to commit this instance's turn: {reason}"),
    )
    return _fail(batch, details, now_ms)


def _over_limit(plan: TurnPlan, result: TurnResult) -> ErrorDetails | None:
    """The first limit this turn's commit would break, or ``None``."""
    try:
        size = sum(limits.check_event(ev) for ev in result.history_delta)
        size += limits.history_bytes(plan.history)
        if size > limits.MAX_HISTORY_BYTES:
            raise limits.LimitExceeded(
                f"the history of execution {result.execution_id}", size, limits.MAX_HISTORY_BYTES,
                "use ctx.continue_as_new before ctx.history_size_bytes() gets there")
    except limits.LimitExceeded as exc:
        return exc.details
    return None


def _with_refused_starts(result: TurnResult, batch: Batch, plan: TurnPlan) -> TurnResult:
    """A parent's start of a child whose id is already taken (by another instance, or a finished one) is
    refused: the parent gets a failure for that child instead of waiting forever."""
    own: tuple[str | None, int | None, int | None] | None = None
    if plan.start is not None:
        own = (plan.start.parent_instance, plan.start.parent_id, plan.start.parent_execution_id)
    elif plan.history and isinstance(plan.history[0].kind, OrchestrationStarted):
        s = plan.history[0].kind
        own = (s.parent_instance, s.parent_id, s.parent_execution_id)
    refused: list[WorkItem] = []
    for m in _starts(batch.messages):
        if not isinstance(m, StartOrchestration) or m is plan.start or not m.parent_instance:
            continue
        if own == (m.parent_instance, m.parent_id, m.parent_execution_id):
            continue  # a second delivery of our own start
        details = ErrorDetails(
            "application", "InstanceAlreadyExists",
            f"sub-orchestration {m.name!r} cannot start: instance id {m.instance!r} is already taken by "
            "another instance")
        refused.append(SubOrchError(m.parent_instance, m.parent_execution_id or 1, m.parent_id or 0, details))
    if refused:
        result.orchestrator_items.extend(refused)
    return result


def _starts(messages: Sequence[WorkItem]) -> list[WorkItem]:
    return [m for m in messages if isinstance(m, (StartOrchestration, ContinueAsNew))]
