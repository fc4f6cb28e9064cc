"""The runtime: dispatchers that fetch work from a provider, replay turns and run activities.

The public face is ``open_runtime``, the ``Runtime`` it yields (with its live ``RuntimeStats`` and their
``RecentError`` entries) and ``RuntimeOptions``; the process liveness lease (``LivenessOptions``,
``run_liveness``) is here for harnesses that hold one outside a runtime. Everything else lives in
private modules.
"""

from ._liveness import LivenessOptions, run_liveness
from ._runtime import Runtime, open_runtime
from ._stats import RecentError, RuntimeStats
from .options import RuntimeOptions

__all__ = ["LivenessOptions", "RecentError", "Runtime", "RuntimeOptions", "RuntimeStats", "open_runtime", "run_liveness"]
