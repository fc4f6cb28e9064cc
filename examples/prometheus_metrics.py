"""Expose the runtime's OpenTelemetry metrics to Prometheus.

    pip install "duroxide-trio[metrics]"
    python examples/prometheus_metrics.py 9464      # then: curl http://127.0.0.1:9464/metrics

The runtime records through OpenTelemetry's metrics API; here an SDK MeterProvider with the Prometheus
exporter serves them over HTTP on loopback.
"""

from __future__ import annotations

import sys

import trio
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

import duroxide_trio as dt

registry = dt.Registry()


@registry.activity("Double")
async def double(ctx: dt.ActivityContext, x: int) -> int:
    return 2 * x


@registry.orchestration("FanOut")
async def fan_out(ctx: dt.OrchestrationContext, n: int) -> int:
    return sum(await ctx.join([ctx.schedule_activity("Double", i) for i in range(n)]))


def serve_metrics(port: int) -> MeterProvider:
    """A MeterProvider whose metrics are served at http://127.0.0.1:<port>/metrics."""
    start_http_server(port, addr="127.0.0.1")
    return MeterProvider(metric_readers=[PrometheusMetricReader()])


async def main(port: int, instances: int = 20) -> None:
    meter_provider = serve_metrics(port)
    provider = await dt.SqliteProvider.in_memory()
    options = dt.RuntimeOptions(metrics_interval=0.2)
    async with provider, dt.open_runtime(provider, registry, options, meter_provider=meter_provider) as rt:
        for i in range(instances):
            await rt.client.start_orchestration(f"fan-{i}", "FanOut", 5)
        for i in range(instances):
            await rt.client.wait_for_orchestration(f"fan-{i}", timeout=30)
        print(f"ran {instances} orchestrations; metrics at http://127.0.0.1:{port}/metrics", flush=True)
        if "--stay" in sys.argv:
            await trio.sleep_forever()
        await trio.sleep(0.5)  # let the queue gauges take one more sample


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 9464)
