"""The stress harness: ``await stress.run(factory, StressConfig(...)) -> StressResult``.

```python
from duroxide_trio import SqliteFactory, stress

result = await stress.run(SqliteFactory(), stress.StressConfig(duration=5, scenario="timers"))
assert result.success_rate == 100.0
print(result.orch_throughput, result.latency_ms.p50)
```

Multi-process runs under chaos: ``await stress.run_chaos(stress.ChaosTarget.sqlite(path), config,
processes=3, chaos=[stress.parse_chaos("kill:every=3s")]) -> ChaosResult``;
``stress.write_html_report(path, results, provider=...)`` writes the HTML report (the ``report`` extra).

The ``duroxide-trio stress`` command adds the comparison table, JSON output, tracked result files and the
live dashboard on top of these functions. The modules behind this face (``_runner``, ``_scenarios``, ...)
are private.
"""

from ._chaos import ChaosSpec, ChaosSpecError, parse_chaos
from ._chaos_runner import ChaosResult, ChaosTarget, run_chaos
from ._config import PRESETS, SUITE_CONCURRENCY, StressConfig
from ._html_report import write_report as write_html_report
from ._result import FailureRecord, LatencyStats, StressResult, TimelinePoint
from ._runner import ErrorEntry, StressAborted, StressMonitor, run, run_suite, runtime_options
from ._scenarios import SCENARIOS, Launch, Scenario, get_scenario
from ._verdict import Verdict

__all__ = [
    "PRESETS",
    "SCENARIOS",
    "SUITE_CONCURRENCY",
    "ChaosResult",
    "ChaosSpec",
    "ChaosSpecError",
    "ChaosTarget",
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
    "Verdict",
    "get_scenario",
    "parse_chaos",
    "run",
    "run_chaos",
    "run_suite",
    "runtime_options",
    "write_html_report",
]
