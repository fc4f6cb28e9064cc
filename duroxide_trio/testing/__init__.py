"""Testing tools shipped with duroxide-trio.

- ``TestEnvironment``: an in-memory runtime on virtual time with replaceable activities (``environment``).
- ``Replayer``: replay recorded histories against the current code (``replay``).
- ``duroxide_env``: a pytest fixture (``pytest_plugin``), and the provider validation suite
  (``testing.validation``) for provider authors.
"""

from ..clock import VirtualClock
from .environment import TEST_OPTIONS, ActivityCall, TestEnvironment
from .replay import Mismatch, RecordedExecution, RecordedInstance, Replayer, ReplayReport, load_histories

__all__ = [
    "TEST_OPTIONS",
    "ActivityCall",
    "Mismatch",
    "RecordedExecution",
    "RecordedInstance",
    "ReplayReport",
    "Replayer",
    "TestEnvironment",
    "VirtualClock",
    "load_histories",
]
