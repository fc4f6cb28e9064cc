"""Runtime metrics through OpenTelemetry's metrics API (the optional ``metrics`` extra).

Without ``opentelemetry-api`` installed every call here is a no-op. With it, instruments come from the
global meter provider (or the one given to ``open_runtime(..., meter_provider=...)``); configure an SDK
``MeterProvider`` with any reader — e.g. the Prometheus exporter, see ``examples/prometheus_metrics.py``.

Instruments (all prefixed ``duroxide.``):

- ``duroxide.turns`` (counter) and ``duroxide.turn.duration`` (histogram, s), attribute ``outcome``
  (``running`` / ``completed`` / ``failed`` / ``continued_as_new`` / ``abandoned``)
- ``duroxide.activities`` (counter) and ``duroxide.activity.duration`` (histogram, s), attribute
  ``outcome`` (``completed`` / ``failed`` / ``poison`` / ``abandoned`` / ``lost``)
- ``duroxide.activity.retries`` (counter): activity attempts scheduled by a ``RetryPolicy`` after the first
- ``duroxide.poison`` (counter), attribute ``kind`` (``orchestration`` / ``activity``)
- ``duroxide.lock_renewals_lost`` (counter), attribute ``kind``
- ``duroxide.fetch.duration`` (histogram, s), attribute ``queue`` (``orchestrator`` / ``worker``)
- ``duroxide.provider_errors`` (counter), attributes ``role``, ``retryable``
- ``duroxide.queue.depth`` and ``duroxide.queue.oldest_age`` (observable gauges, messages / s), attribute
  ``queue``; sampled from the provider every ``RuntimeOptions.metrics_interval`` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import anyio

__all__ = ["RuntimeMetrics"]

log = logging.getLogger("duroxide_trio.runtime.metrics")

_otel: Any
try:  # the optional extra
    from opentelemetry import metrics as _otel_metrics

    _otel = _otel_metrics
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _otel = None


class _Null:
    def add(self, *args: Any, **kwargs: Any) -> None:
        pass

    record = add


_NULL = _Null()


class RuntimeMetrics:
    """The instruments of one runtime (no-ops without OpenTelemetry)."""

    def __init__(self, meter_provider: Any = None) -> None:
        self.enabled = _otel is not None
        self._depths: dict[str, tuple[int, float | None]] = {}
        if _otel is None:
            self.turns = self.turn_duration = self.activities = self.activity_duration = _NULL
            self.retries = self.poison = self.locks_lost = self.fetch_duration = self.provider_errors = _NULL
            return
        meter = (meter_provider or _otel.get_meter_provider()).get_meter("duroxide_trio")
        self.turns = meter.create_counter("duroxide.turns", description="orchestration turns committed")
        self.turn_duration = meter.create_histogram("duroxide.turn.duration", unit="s",
                                                    description="time from fetch to commit of a turn")
        self.activities = meter.create_counter("duroxide.activities", description="activity executions")
        self.activity_duration = meter.create_histogram("duroxide.activity.duration", unit="s",
                                                        description="time an activity's code ran")
        self.retries = meter.create_counter("duroxide.activity.retries",
                                            description="activity attempts scheduled by a RetryPolicy")
        self.poison = meter.create_counter("duroxide.poison", description="messages failed as poison")
        self.locks_lost = meter.create_counter("duroxide.lock_renewals_lost", description="locks lost")
        self.fetch_duration = meter.create_histogram("duroxide.fetch.duration", unit="s",
                                                     description="provider fetch latency")
        self.provider_errors = meter.create_counter("duroxide.provider_errors", description="storage errors")
        meter.create_observable_gauge("duroxide.queue.depth", callbacks=[self._observe_depth],
                                      description="messages waiting (unlocked)")
        meter.create_observable_gauge("duroxide.queue.oldest_age", callbacks=[self._observe_age], unit="s",
                                      description="how long the oldest ready message has waited")

    def _observe_depth(self, options: Any) -> Iterable[Any]:
        assert _otel is not None
        return [_otel.Observation(depth, {"queue": q}) for q, (depth, _) in self._depths.items()]

    def _observe_age(self, options: Any) -> Iterable[Any]:
        assert _otel is not None
        return [_otel.Observation(age or 0.0, {"queue": q}) for q, (_, age) in self._depths.items()]

    async def sample_queues(self, provider: Any, interval: float) -> None:
        """Read queue depths every ``interval`` seconds (a task of the runtime); ends when cancelled."""
        admin = provider.as_admin()
        if not self.enabled or admin is None:
            return
        while True:
            try:
                d = await admin.get_queue_depths()
            except Exception as exc:  # noqa: BLE001 - metrics must never disturb the runtime
                log.debug("queue depth sample failed: %s", exc)
            else:
                o, w = d.oldest_orchestrator_age_ms, d.oldest_worker_age_ms
                self._depths = {
                    "orchestrator": (d.orchestrator_queue, None if o is None else o / 1000.0),
                    "worker": (d.worker_queue, None if w is None else w / 1000.0),
                }
            await anyio.sleep(interval)
