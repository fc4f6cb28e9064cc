"""``StressResult`` and the numbers it is made of."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from ._config import StressConfig

__all__ = [
    "FailureRecord",
    "LatencyStats",
    "StressResult",
    "TimelinePoint",
    "format_duration",
    "format_ms",
    "latency_stats",
    "percentile",
]

#: Shown for a figure that has no samples (e.g. a latency percentile of a run where nothing completed).
NO_VALUE = "—"


def format_ms(ms: float | None) -> str:
    """A duration in milliseconds for people: ``"0.42 ms"``, ``"4.2 ms"``, ``"92 ms"``, ``"1.5 s"``,
    ``"12 s"``, ``"2 min 5 s"``; ``"—"`` for ``None`` or NaN."""
    if ms is None or math.isnan(ms):
        return NO_VALUE
    if ms < 0:
        return "-" + format_ms(-ms)
    if ms == 0:
        return "0 ms"
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 999.5:
        return f"{ms:.0f} ms"
    return format_duration(ms / 1000.0)


def format_duration(seconds: float | None) -> str:
    """A duration in seconds for people: ``"92 ms"`` below a second, ``"1.5 s"``, ``"12 s"``,
    ``"2 min 5 s"``, ``"1 h 2 min"``; ``"—"`` for ``None`` or NaN."""
    if seconds is None or math.isnan(seconds):
        return NO_VALUE
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 0.9995:
        return format_ms(seconds * 1000.0)
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linearly interpolated; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low))


@attrs.frozen
class LatencyStats:
    """Per-instance latency in milliseconds, from the start request to the observed completion.
    Readable as attributes (``.p50``) or as a mapping (``["p50"]``)."""

    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    count: int = 0

    def __getitem__(self, key: str) -> float:
        """``stats["p50"]``: a figure by name (``KeyError`` for an unknown one)."""
        if key not in ("mean", "p50", "p95", "p99", "max", "count"):
            raise KeyError(key)
        return float(getattr(self, key))

    def as_dict(self) -> dict[str, float]:
        """The figures rounded to 3 decimals, plus ``count``."""
        return {k: round(float(getattr(self, k)), 3) for k in ("mean", "p50", "p95", "p99", "max")} | {
            "count": self.count
        }


def latency_stats(latencies_ms: Sequence[float]) -> LatencyStats:
    """Mean, p50, p95, p99, max and count of latencies in milliseconds (all zero, count 0, when empty)."""
    if not latencies_ms:
        return LatencyStats()
    values = sorted(latencies_ms)
    return LatencyStats(
        mean=sum(values) / len(values),
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        max=float(values[-1]),
        count=len(values),
    )


@attrs.frozen
class FailureRecord:
    """One instance that did not complete correctly.

    ``kind``: ``infrastructure`` / ``configuration`` / ``application`` (the instance ended Failed with that
    error category; poison counts as infrastructure), ``timeout``, ``start_error``, ``wrong_output``,
    ``driver_error`` (the harness could not deliver the scenario's events) or ``aborted`` (fail-fast)."""

    instance_id: str
    kind: str
    message: str
    at_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return attrs.asdict(self)


@attrs.frozen
class TimelinePoint:
    """One second of the run (``second`` counts from the start of the load phase): instances completed,
    failed and launched in that second (``completed`` is the throughput), the most instances in flight,
    activities executed, the latency percentiles of the instances that completed in that second (0 when
    none did: ``completed == 0``) and the process RSS."""

    second: int
    completed: int
    failed: int
    launched: int
    in_flight: int
    activities: int
    p50_ms: float
    max_ms: float
    rss_mb: float
    p95_ms: float = 0.0
    p99_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return attrs.asdict(self)


@attrs.frozen
class StressResult:
    """What one stress run measured.

    - ``success_rate`` = completed / launched × 100.
    - ``orch_throughput`` = instances completed during the load phase per second of the load phase;
      ``activity_throughput`` likewise for activities executed by the runtime. ``overall_throughput`` =
      every completion divided by the whole run (load + drain), the figure duroxide's harness printed.
    - ``latency_ms``: true per-instance latencies (not the inverse of the throughput).
    - ``peak_rss_mb`` / ``cpu_percent``: this process (100 % = one core busy), sampled during this run
      only; ``rss_start_mb`` the RSS when this run began, so ``rss_growth_mb`` is what this run added
      (a process does not give memory back, so a later run's peak includes what earlier runs kept).
    - ``duration_s`` = load + drain; ``timeline``: one point per second for plots.
    - ``interrupted``: the run was stopped early (Ctrl-C); the figures cover what ran until then.
    - ``failures``: the failed instances (capped; ``failed`` is the full count).
    - ``unfinished``: launched instances that had not reached a terminal status when the run ended
      (their own ``wait_timeout`` passed, or the drain bound cut them); they are counted in ``failed``
      too, as ``timeout`` failures.
    - ``drain_bound_s``: the longest the drain phase may take (``wait_timeout`` plus a small slack);
      ``drain_duration_s`` exceeds it only if the event loop was blocked (see ``max_loop_stall_s``).
    - ``max_loop_stall_s``: the longest time the event loop did not run the harness (an orchestration
      turn or another synchronous piece of work holding it); deadlines cannot fire meanwhile.
    - ``shutdown_s``: stopping the runtime and disposing of the provider after the drain.
    - Cost per orchestration (over the measured window: load + drain, divided by ``completed``):
      ``provider_calls`` (every call the runtime and the client made to the provider, counted by
      ``stress._counting.CountingProvider``; ``provider_calls_by_op`` per method, ``provider_call_ms`` the
      mean milliseconds of one call per method, long polls included) and
      ``round_trips_per_orch``; on PostgreSQL ``pg_transactions`` (``xact_commit + xact_rollback`` of the
      database in ``pg_stat_database``) and ``pg_wal_bytes`` (``pg_wal_lsn_diff`` of
      ``pg_current_wal_lsn()``), read from the server before the runtime opened and after its connections
      closed, and ``transactions_per_orch`` / ``wal_bytes_per_orch``. The server counts other load on the
      same database (transactions) or cluster (WAL) too. ``None`` where not measured (SQLite, or nothing
      completed).
    - ``overhead_ms`` (``sequential`` only) = p50 latency − N × ``activity_delay_ms``, and
      ``step_overhead_ms`` = ``overhead_ms`` / (N + 1): per orchestration turn (the start, then one per
      completed activity); ``None`` for other scenarios.
    - ``seed_s``: seeding ``timer_backlog`` / ``deep_history`` before the run (not in any other figure);
      ``seeded_timers``: orchestrator messages pending after seeding (the parked timers);
      ``seeded_history_rows``: history rows stored after seeding.
    """

    scenario: str
    provider: str
    config: StressConfig
    launched: int
    completed: int
    failed: int
    failed_infrastructure: int
    failed_configuration: int
    failed_application: int
    failed_other: int
    success_rate: float
    orch_throughput: float
    activity_throughput: float
    overall_throughput: float
    latency_ms: LatencyStats
    peak_rss_mb: float
    cpu_percent: float
    duration_s: float
    load_duration_s: float
    drain_duration_s: float
    activities_completed: int
    orchestration_turns: int
    expected_errors: int
    unexpected_errors: int
    backend: str
    started_at: str
    timeline: list[TimelinePoint] = attrs.field(factory=list)
    failures: list[FailureRecord] = attrs.field(factory=list)
    rss_start_mb: float = 0.0
    interrupted: bool = False
    unfinished: int = 0
    drain_bound_s: float = 0.0
    max_loop_stall_s: float = 0.0
    shutdown_s: float = 0.0
    provider_calls: int = 0
    provider_calls_by_op: dict[str, int] = attrs.field(factory=dict)
    provider_call_ms: dict[str, float] = attrs.field(factory=dict)
    round_trips_per_orch: float | None = None
    pg_transactions: int | None = None
    transactions_per_orch: float | None = None
    pg_wal_bytes: int | None = None
    wal_bytes_per_orch: float | None = None
    overhead_ms: float | None = None
    step_overhead_ms: float | None = None
    seed_s: float = 0.0
    seeded_timers: int = 0
    seeded_history_rows: int = 0

    @property
    def rss_growth_mb(self) -> float:
        """How much this run grew the process RSS (peak during the run minus the RSS at its start)."""
        return max(self.peak_rss_mb - self.rss_start_mb, 0.0) if self.rss_start_mb else 0.0

    @property
    def passed(self) -> bool:
        """Every launched instance completed with the right output (and the run was not interrupted)."""
        return not self.interrupted and self.launched > 0 and self.completed == self.launched and self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (``json.dumps(result.as_dict())``)."""
        out: dict[str, Any] = {}
        for field in attrs.fields(StressResult):
            value = getattr(self, field.name)
            if field.name == "config":
                value = self.config.as_dict()
            elif field.name == "latency_ms":
                value = self.latency_ms.as_dict()
            elif field.name in ("timeline", "failures"):
                value = [v.as_dict() for v in value]
            elif isinstance(value, float):
                value = round(value, 3)
            out[field.name] = value
        out["passed"] = self.passed
        out["rss_growth_mb"] = round(self.rss_growth_mb, 3)
        return out
