"""``StressConfig`` and the named presets (the seeds' test configurations)."""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["PRESETS", "SUITE_CONCURRENCY", "StressConfig"]


def _positive_int(instance: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"StressConfig.{attribute.name} must be a positive integer, got {value!r}")


def _non_negative_int(instance: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"StressConfig.{attribute.name} must be a non-negative integer, got {value!r}")


def _positive_seconds(instance: object, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or value <= 0:
        raise ValueError(f"StressConfig.{attribute.name} must be a positive number of seconds, got {value!r}")


def _scenario_name(instance: object, attribute: attrs.Attribute, value: str) -> None:  # type: ignore[type-arg]
    # Only the shape: whether a scenario of that name exists is checked where the catalogue is used
    # (``get_scenario``, called by the runners and the CLI), so the config knows nothing of the catalogue.
    if not isinstance(value, str) or not value:
        raise ValueError(f"StressConfig.scenario must be a scenario name, got {value!r}")


@attrs.frozen
class StressConfig:
    """One stress run.

    - ``max_concurrent``: instances in flight at once (the pump keeps this many running).
    - ``duration``: seconds of load; afterwards the runner waits for the instances still in flight.
    - ``tasks_per_instance``: fan-out degree (activities, children, timers, events, executions: see the
      scenario).
    - ``activity_delay_ms``: how long each stress activity sleeps.
    - ``orchestration_concurrency`` / ``worker_concurrency``: the runtime's dispatcher concurrency.
    - ``wait_timeout``: how long one instance may take from its start request to completion.
    - ``scenario``: one of ``duroxide_trio.stress.SCENARIOS`` (an unknown name is a ``ValueError`` from
      ``run``/``run_suite``/``get_scenario``, before any provider is opened).
    - ``timer_backlog``: before the measured window, park instances on far-future durable timers until
      this many timers are pending (``stress._seed``); 0: none.
    - ``deep_history``: before the measured window, run instances with long histories to completion
      until at least this many history rows are stored; 0: none.
    """

    max_concurrent: int = attrs.field(default=20, validator=_positive_int)
    duration: float = attrs.field(default=10.0, validator=_positive_seconds)
    tasks_per_instance: int = attrs.field(default=5, validator=_positive_int)
    activity_delay_ms: int = attrs.field(default=10, validator=_non_negative_int)
    orchestration_concurrency: int = attrs.field(default=2, validator=_positive_int)
    worker_concurrency: int = attrs.field(default=2, validator=_positive_int)
    wait_timeout: float = attrs.field(default=60.0, validator=_positive_seconds)
    scenario: str = attrs.field(default="fanout", validator=_scenario_name)
    timer_backlog: int = attrs.field(default=0, validator=_non_negative_int)
    deep_history: int = attrs.field(default=0, validator=_non_negative_int)

    @property
    def concurrency_label(self) -> str:
        """``"2:2"`` (orchestration : activity dispatcher concurrency)."""
        return f"{self.orchestration_concurrency}:{self.worker_concurrency}"

    def describe(self) -> str:
        """One line for people: scenario, duration, in flight, tasks, activity delay, concurrency."""
        seeded = (f", {self.timer_backlog} timers pending" if self.timer_backlog else "") + (
            f", {self.deep_history} history rows stored" if self.deep_history else ""
        )
        return (
            f"{self.scenario}, {self.duration:g}s, {self.max_concurrent} in flight, {self.tasks_per_instance} tasks, "
            f"{self.activity_delay_ms}ms activities, {self.concurrency_label}{seeded}"
        )

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return attrs.asdict(self)

    def evolve(self, **changes: Any) -> StressConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return attrs.evolve(self, **changes)


#: The seeds' test configurations (pg-stress README and its implementation plan).
PRESETS: dict[str, dict[str, Any]] = {
    "light": dict(duration=5.0, max_concurrent=10, tasks_per_instance=3, activity_delay_ms=5,
                  orchestration_concurrency=2, worker_concurrency=2),
    "standard": dict(duration=10.0, max_concurrent=20, tasks_per_instance=5, activity_delay_ms=10,
                     orchestration_concurrency=2, worker_concurrency=2),
    "high-concurrency": dict(duration=30.0, max_concurrent=50, tasks_per_instance=10, activity_delay_ms=10,
                             orchestration_concurrency=4, worker_concurrency=4),
    "long-duration": dict(duration=300.0, max_concurrent=20, tasks_per_instance=5, activity_delay_ms=10,
                          orchestration_concurrency=2, worker_concurrency=2),
}  # fmt: skip

#: ``--suite``: the orchestration:activity concurrency matrix of the seeds.
SUITE_CONCURRENCY: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (4, 4))
