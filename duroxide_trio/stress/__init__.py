"""The stress harness: ``await stress.run(factory, StressConfig(...)) -> StressResult``.

```python
from duroxide_trio import SqliteFactory, stress

result = await stress.run(SqliteFactory(), stress.StressConfig(duration=5, scenario="timers"))
assert result.success_rate == 100.0
print(result.orch_throughput, result.latency_ms.p50)
```

The ``duroxide-trio stress`` command (``duroxide_trio.cli.stress``) adds the comparison table, JSON
output, tracked result files and the live dashboard on top of these functions.
"""

from .config import PRESETS, SUITE_CONCURRENCY, StressConfig
from .result import FailureRecord, LatencyStats, StressResult, TimelinePoint
from .runner import ErrorEntry, StressAborted, StressMonitor, run, run_suite, runtime_options
from .scenarios import SCENARIOS, Launch, Scenario, get_scenario

__all__ = [
    "PRESETS",
    "SCENARIOS",
    "SUITE_CONCURRENCY",
    "ErrorEntry",
    "FailureRecord",
    "LatencyStats",
    "Launch",
    "Scenario",
    "StressAborted",
    "StressConfig",
    "StressMonitor",
    "StressResult",
    "TimelinePoint",
    "get_scenario",
    "run",
    "run_suite",
    "runtime_options",
]
