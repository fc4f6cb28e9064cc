"""The verdict of a chaos run, computed from the database after the load and the drain.

What it counts (see the README's "Chaos testing" section for how to read each figure):

- ``lost``: launched (the start was acknowledged) but never terminal: not Completed or Failed in the
  store when the verdict reads it, after the drain (listed with what the store shows).
- ``stuck``: not terminal ``stuck_after`` seconds after the last fault (every lost instance is stuck
  too; a stuck one may still have finished later).
- ``wrong_output``: terminal, but the output is not what the scenario computes (a Failed instance counts
  here too, with its error).
- ``completed_twice``: an execution whose history holds two terminal events, or an activity with a second
  completion event.
- ``lost_activity_results``: a terminal execution with an activity scheduled but never completed (nor
  cancelled).
- executions per logical activity, counted by the ledger (the database): ``duplicate_executions`` is a
  figure, not a failure (activities are at-least-once), split by the fault that caused each
  (``duplicates_by_cause``: kill / stall / restart-db / faults). ``unrecorded_completions`` counts
  completions in history without a ledger row (0 unless the ledger itself lost writes).
- ``kv_mismatch``: an instance (or sub-orchestration) whose key-value state in the store is not what its
  history wrote (``KeyValueSet`` / ``KeyValueCleared`` of its latest execution, carried values
  included): a write lost, or one applied that the history does not hold. The ``kv`` scenario's own
  check adds that the values are what its code computes (a counter incremented once per turn equals
  the turns it took).
- ``session_violations``: from the ledger (each execution's process, start and end): a session whose
  activities overlapped in time (two running at once, unless one of them ran in a stalled process), ran
  out of scheduling order (an activity began before the one scheduled before it had finished once), or
  moved to another process although the one that ran it was neither killed nor stalled (nor the
  database restarted shortly before).
  ``sessions_moved`` counts the moves a kill or a stall explains (a figure).
- ``drain_s``: from the last fault to the moment every launched instance was terminal.

The verdict passes when lost, stuck, wrong_output, completed_twice, lost_activity_results, kv_mismatch
and session_violations are all 0 and every launched instance is terminal.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..history import (
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    Event,
    kv_state,
)
from ..providers.base import capabilities_of
from ._chaos import ChaosTimeline
from ._ledger import LedgerRow

__all__ = ["Verdict", "compute_verdict", "examine_history", "examine_sessions"]

#: Failure lists, in the order ``Verdict.reasons`` names them.
FAILURES = (
    "lost", "stuck", "wrong_output", "completed_twice", "lost_activity_results", "kv_mismatch",
    "session_violations",
)  # fmt: skip

#: Seconds after a database restart in which a session may move without its owner being killed or stalled.
RESTART_MOVES_FOR = 30.0
#: How many ids each failure list keeps (the counts are complete).
MAX_LISTED = 50


@attrs.define
class Verdict:
    """The figures of one chaos run (see the module docstring); ``counts`` holds the full count of each failure list."""
    launched: int = 0
    terminal: int = 0
    completed: int = 0
    failed: int = 0
    lost: list[str] = attrs.field(factory=list)
    stuck: list[str] = attrs.field(factory=list)
    wrong_output: list[str] = attrs.field(factory=list)
    completed_twice: list[str] = attrs.field(factory=list)
    lost_activity_results: list[str] = attrs.field(factory=list)
    kv_mismatch: list[str] = attrs.field(factory=list)
    session_violations: list[str] = attrs.field(factory=list)
    kv_instances_checked: int = 0
    sessions_examined: int = 0
    session_executions: int = 0
    sessions_moved: int = 0
    instances_examined: int = 0
    executions_examined: int = 0
    logical_activities: int = 0
    activity_executions: int = 0
    duplicate_executions: int = 0
    duplicated_activities: int = 0
    max_executions_per_activity: int = 0
    duplicates_by_cause: dict[str, int] = attrs.field(factory=dict)
    unrecorded_completions: int = 0
    last_fault_s: float | None = None
    all_terminal_s: float | None = None
    drain_s: float | None = None
    stuck_after_s: float = 0.0
    counts: dict[str, int] = attrs.field(factory=dict)

    @property
    def reasons(self) -> list[str]:
        """Why the verdict fails (empty when it passes)."""
        out = []
        for name in FAILURES:
            items = getattr(self, name)
            count = self.counts.get(name, len(items))
            if count:
                out.append(f"{count} {name.replace('_', ' ')} (e.g. {', '.join(items[:3])})")
        if self.launched == 0:
            out.append("nothing was launched")
        elif self.terminal != self.launched and not out:
            out.append(f"only {self.terminal} of {self.launched} instances are terminal")
        return out

    @property
    def passed(self) -> bool:
        """No lost, stuck, wrong, twice-completed instance, no lost activity result, no key-value state
        other than the history wrote, no session that ran out of order or two activities at once."""
        return not self.reasons

    @property
    def duplicate_rate(self) -> float:
        """Duplicate executions per logical activity, in percent."""
        return self.duplicate_executions / self.logical_activities * 100.0 if self.logical_activities else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every figure, up to 50 ids per failure list, ``passed`` and ``reasons``."""
        out: dict[str, Any] = {}
        for field in attrs.fields(Verdict):
            value = getattr(self, field.name)
            if isinstance(value, list):
                out[field.name] = self.counts.get(field.name, len(value))
                out[field.name + "_ids"] = value[:MAX_LISTED]
            elif isinstance(value, float):
                out[field.name] = round(value, 3)
            elif field.name != "counts":
                out[field.name] = value
        out["duplicate_rate_percent"] = round(self.duplicate_rate, 3)
        out["passed"] = self.passed
        out["reasons"] = self.reasons
        return out

    def _add(self, name: str, ident: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        items: list[str] = getattr(self, name)
        if len(items) < MAX_LISTED:
            items.append(ident)


def examine_history(events: Sequence[Event]) -> tuple[int, list[int], list[int], set[int]]:
    """(terminal events, activity ids completed twice, activity ids scheduled but never completed or
    cancelled, activity ids completed) of one execution's history."""
    terminal = sum(1 for e in events if e.is_terminal())
    scheduled: set[int] = set()
    cancelled: set[int] = set()
    completions: collections.Counter[int] = collections.Counter()
    for e in events:
        if isinstance(e.kind, ActivityScheduled):
            scheduled.add(e.event_id)
        elif isinstance(e.kind, (ActivityCompleted, ActivityFailedEvent)) and e.source_event_id is not None:
            completions[e.source_event_id] += 1
        elif isinstance(e.kind, ActivityCancelRequested) and e.source_event_id is not None:
            cancelled.add(e.source_event_id)
    twice = sorted(k for k, n in completions.items() if n > 1)
    missing = sorted(scheduled - set(completions) - cancelled) if terminal else []
    return terminal, twice, missing, set(completions)


def _cause(
    rows: list[LedgerRow], timeline: ChaosTimeline, killed_pids: set[int], faults: bool
) -> str:
    """Which fault made a logical activity run more than once (its executions ``rows``, by time): the
    latest kill or stall of a process that ran an earlier execution, or restart of the database, between
    the first execution and the last one; else the injected faults."""
    earlier = {r.pid for r in rows[:-1]}
    every = {r.pid for r in rows}  # a stalled process finishes late: its execution may be the last row
    first_s = timeline.wall_to_s(rows[0].at_ms) - 0.5
    last_s = timeline.wall_to_s(rows[-1].at_ms) + 0.5
    best: tuple[float, str] | None = None
    for e in timeline.events:
        if not e.ok or e.kind not in ("kill", "stall", "restart-db"):
            continue
        if (e.kind == "kill" and e.pid not in earlier) or (e.kind == "stall" and e.pid not in every):
            continue
        if e.kind == "kill" and e.pid not in killed_pids:
            continue
        end = e.until if e.until is not None else e.at
        if e.at <= last_s and end >= first_s and (best is None or e.at > best[0]):
            best = (e.at, e.kind)
    if best is not None:
        return best[1]
    return "faults" if faults else "other"


def examine_sessions(
    rows: Sequence[LedgerRow], timeline: ChaosTimeline, killed_pids: set[int]
) -> tuple[list[str], int, int, int]:
    """(violations, sessions examined, their executions, moves explained by a kill or a stall) of the
    ledger rows that carry a session (see the module docstring). A process killed by the harness runs
    nothing after its kill; a stalled one may finish a stale execution late (its lock was reclaimed)."""
    stalls = [(e.pid, e.at, e.until if e.until is not None else e.at)
              for e in timeline.events if e.kind == "stall" and e.ok]  # fmt: skip
    kills = {e.pid: e.at for e in timeline.events if e.kind == "kill" and e.ok and e.pid in killed_pids}
    # A database restart can let any claim lapse (its owner cannot renew while the server is down).
    restarts = [(e.at, e.until if e.until is not None else e.at)
                for e in timeline.events if e.kind == "restart-db" and e.ok]  # fmt: skip
    slack = 0.5  # seconds: the timeline's and the ledger's clocks are read at slightly different moments

    def stalled_during(row: LedgerRow) -> bool:
        begin = timeline.wall_to_s(row.started_ms if row.started_ms is not None else row.at_ms)
        end = timeline.wall_to_s(row.at_ms)
        return any(pid == row.pid and at - slack <= end and until + slack >= begin for pid, at, until in stalls)

    def left_by_fault(pid: int, before_ms: int) -> bool:
        moment = timeline.wall_to_s(before_ms) + slack
        return (
            (pid in kills and kills[pid] <= moment)
            or any(p == pid and at <= moment for p, at, _ in stalls)
            or any(at <= moment <= until + RESTART_MOVES_FOR for at, until in restarts)
        )

    by_session: dict[str, list[LedgerRow]] = collections.defaultdict(list)
    for row in rows:
        if row.session_id is not None and row.started_ms is not None:
            by_session[row.session_id].append(row)
    problems: list[str] = []
    executions = moved = 0
    for session, runs in sorted(by_session.items()):
        executions += len(runs)
        runs.sort(key=lambda r: (r.started_ms or 0, r.at_ms))
        # one at a time: no execution begins while another one of the session runs
        running: LedgerRow | None = None
        for row in runs:
            assert row.started_ms is not None
            if running is not None and row.started_ms < running.at_ms:
                if not (stalled_during(running) or stalled_during(row)):
                    problems.append(
                        f"session {session}: activity {row.activity_id} began on pid {row.pid} while activity "
                        f"{running.activity_id} ran on pid {running.pid}"
                    )
                    break
            if running is None or row.at_ms > running.at_ms:
                running = row
        # scheduling order: an activity begins only once the one scheduled before it finished once
        first_start: dict[tuple[str, int, int], int] = {}
        first_end: dict[tuple[str, int, int], int] = {}
        for row in runs:
            assert row.started_ms is not None
            first_start[row.key] = min(first_start.get(row.key, row.started_ms), row.started_ms)
            first_end[row.key] = min(first_end.get(row.key, row.at_ms), row.at_ms)
        keys = sorted(first_start)
        for earlier, later in zip(keys, keys[1:], strict=False):
            if earlier[:2] == later[:2] and first_start[later] < first_end[earlier]:
                problems.append(
                    f"session {session}: activity {later[2]} began before activity {earlier[2]} (scheduled "
                    "before it) had finished"
                )
                break
        # one process at a time: the session moves only when the process that ran it was killed or stalled
        for before, row in zip(runs, runs[1:], strict=False):
            if row.pid == before.pid:
                continue
            assert row.started_ms is not None
            if left_by_fault(before.pid, row.started_ms):
                moved += 1
            else:
                problems.append(
                    f"session {session}: moved from pid {before.pid} to pid {row.pid} (activity "
                    f"{row.activity_id}) although pid {before.pid} was neither killed nor stalled"
                )
                break
    return problems, len(by_session), executions, moved


async def _describe_stuck(admin: Any, instance_id: str) -> str:
    """What the store says about a stuck instance (for the report): status and queue depth hints."""
    try:
        info = await admin.get_instance_info(instance_id)
        history = await admin.read_history(instance_id)
    except Exception as exc:  # noqa: BLE001 - only a description
        return f" (unreadable: {exc})"
    if info is None:
        return " (no instance row: its start was never processed)"
    last = history[-1].type_name if history else "none"
    return f" ({info.status}, {len(history)} events, last {last})"


async def compute_verdict(
    provider: Any,
    launched: Mapping[str, Any],
    ledger_rows: Sequence[LedgerRow],
    timeline: ChaosTimeline,
    *,
    killed_pids: set[int],
    faults: bool,
    stuck_after: float,
    all_terminal_s: float | None,
    load_end_s: float = 0.0,
    registry: Any = None,
    stuck_at_deadline: set[str] | None = None,
) -> Verdict:
    """Examine every launched instance (``launched``: instance id -> its scenario ``Launch``) and its
    sub-orchestrations in ``provider`` (any provider with the admin API), against the ledger."""
    from ..client import Client, Status

    client = Client(provider, registry=registry)
    admin = provider.as_admin()
    v = Verdict(launched=len(launched), stuck_after_s=stuck_after)
    v.last_fault_s = timeline.last_fault_end()
    v.all_terminal_s = all_terminal_s
    if all_terminal_s is not None:
        v.drain_s = max(all_terminal_s - max(v.last_fault_s or 0.0, load_end_s), 0.0)
    completed_keys: set[tuple[str, int, int]] = set()
    kv_store = capabilities_of(provider).key_values
    for instance_id, launch in launched.items():
        state = await client.get_status(instance_id)
        if state.status is Status.NOT_FOUND:
            v._add("lost", instance_id + " (no instance row: its start was never processed)")
            v._add("stuck", instance_id)
            continue
        if state.status not in (Status.COMPLETED, Status.FAILED):
            v._add("lost", instance_id + await _describe_stuck(admin, instance_id))
            v._add("stuck", instance_id)
        elif stuck_at_deadline and instance_id in stuck_at_deadline:
            v.terminal += 1  # terminal by now, but only after the stuck bound
            v._add("stuck", instance_id + " (terminal only after the stuck bound)")
        else:
            v.terminal += 1
            if state.status is Status.COMPLETED:
                v.completed += 1
                try:
                    reason = launch.check(state.output, state)
                except Exception as exc:  # noqa: BLE001 - a check that cannot read the output
                    reason = f"{type(exc).__name__}: {exc}"
                if reason is None and launch.verify is not None:
                    reason = await launch.verify(client, instance_id)
                if reason is not None:
                    v._add("wrong_output", f"{instance_id}: {reason[:120]}")
            else:
                v.failed += 1
                err = state.error
                v._add("wrong_output", f"{instance_id}: failed {err.category if err else ''}/{err.kind if err else ''}")
        for member in await admin.get_instance_tree(instance_id):
            v.instances_examined += 1
            history = []
            for execution_id in await admin.list_executions(member):
                v.executions_examined += 1
                history = await admin.read_history(member, execution_id)
                terminal, twice, missing, done = examine_history(history)
                if terminal > 1:
                    v._add("completed_twice", f"{member}#{execution_id} has {terminal} terminal events")
                for act in twice:
                    v._add("completed_twice", f"{member}#{execution_id} activity {act} completed twice")
                for act in missing:
                    v._add("lost_activity_results", f"{member}#{execution_id} activity {act}")
                completed_keys.update((member, execution_id, a) for a in done)
            if kv_store and history:
                # The latest execution's history holds the carried values and every write since.
                v.kv_instances_checked += 1
                stored = await provider.get_kv_values(member)
                written = kv_state(history)
                if stored != written:
                    lost = sorted(set(written) - set(stored))
                    extra = sorted(set(stored) - set(written))
                    changed = sorted(k for k in set(written) & set(stored) if written[k] != stored[k])
                    detail = ", ".join(
                        f"{label} {keys[:3]}" for label, keys in (("lost", lost), ("not written", extra),
                                                                  ("differs", changed)) if keys
                    )  # fmt: skip
                    v._add("kv_mismatch", f"{member}: store {detail} (e.g. {changed[:1] and stored[changed[0]]!s:.40})")
    by_key: dict[tuple[str, int, int], list[LedgerRow]] = collections.defaultdict(list)
    for row in ledger_rows:
        by_key[row.key].append(row)
    v.logical_activities = len(by_key)
    v.activity_executions = len(ledger_rows)
    causes: collections.Counter[str] = collections.Counter()
    for rows in by_key.values():
        rows.sort(key=lambda r: r.at_ms)
        v.max_executions_per_activity = max(v.max_executions_per_activity, len(rows))
        if len(rows) > 1:
            v.duplicated_activities += 1
            v.duplicate_executions += len(rows) - 1
            causes[_cause(rows, timeline, killed_pids, faults)] += len(rows) - 1
    v.duplicates_by_cause = dict(causes)
    problems, v.sessions_examined, v.session_executions, v.sessions_moved = examine_sessions(
        ledger_rows, timeline, killed_pids
    )
    for problem in problems:
        v._add("session_violations", problem)
    v.unrecorded_completions = len(completed_keys - set(by_key))
    return v
