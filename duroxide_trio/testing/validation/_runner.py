"""The registry of validation tests and a runner that needs no pytest (used by ``duroxide-trio validate``)."""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import anyio
import attrs

from ...providers.base import ProviderFactory
from ._support import ValidationSkipped

ValidationTest = Callable[[ProviderFactory], Awaitable[None]]
Outcome = Literal["passed", "failed", "skipped"]

#: Category name -> module, in the order they run.
CATEGORY_MODULES: dict[str, str] = {
    "atomicity": "atomicity",
    "error_handling": "error_handling",
    "instance_locking": "instance_locking",
    "lock_expiration": "lock_expiration",
    "multi_execution": "multi_execution",
    "queue_semantics": "queue_semantics",
    "instance_creation": "instance_creation",
    "management": "management",
    "long_polling": "long_polling",
    "poison": "poison",
    "cancellation": "cancellation",
    "deletion": "deletion",
    "pruning": "pruning",
    "bulk_deletion": "bulk_deletion",
    "custom_status": "custom_status",
    "tag_routing": "tag_routing",
    "sessions": "sessions",
    "kv": "kv",
    "capability_filtering": "capability_filtering",
    "continue_as_new_races": "continue_as_new_races",
    "duplicate_start": "duplicate_start",
    "size_limits": "size_limits",
    "poison_accounting": "poison_accounting",
    "eager_dispatch": "eager_dispatch",
    "ack_fetches_turns": "ack_fetches_turns",
    "start_fetches_turn": "start_fetches_turn",
}

#: Per-test time limit (seconds) of the runner and the pytest plugin.
DEFAULT_TIMEOUT = 120.0


def _load_categories() -> dict[str, list[ValidationTest]]:
    out: dict[str, list[ValidationTest]] = {}
    for category, module_name in CATEGORY_MODULES.items():
        module = importlib.import_module(f"{__package__}.{module_name}")
        out[category] = [
            fn
            for name, fn in vars(module).items()
            if name.startswith("test_")
            and callable(fn)
            and getattr(fn, "__module__", None) == module.__name__
        ]
    return out


CATEGORIES: dict[str, list[ValidationTest]] = _load_categories()


def select(categories: Iterable[str] | None = None) -> list[tuple[str, ValidationTest]]:
    """``(category, test)`` pairs of the chosen categories (all when ``None``), in suite order."""
    names = list(CATEGORIES) if categories is None else list(dict.fromkeys(categories))
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown validation categories {unknown}; known: {', '.join(CATEGORIES)}")
    return [(name, fn) for name in names for fn in CATEGORIES[name]]


@attrs.frozen
class CaseResult:
    category: str
    name: str
    outcome: Outcome
    message: str = ""
    duration: float = 0.0


@attrs.define
class CategoryReport:
    name: str
    results: list[CaseResult] = attrs.field(factory=list)

    @property
    def passed(self) -> int:
        return sum(r.outcome == "passed" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.outcome == "failed" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.outcome == "skipped" for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [r.name for r in self.results if r.outcome == "failed"]

    @property
    def duration(self) -> float:
        return sum(r.duration for r in self.results)


@attrs.define
class ValidationReport:
    categories: dict[str, CategoryReport] = attrs.field(factory=dict)
    duration: float = 0.0

    @property
    def results(self) -> list[CaseResult]:
        return [r for c in self.categories.values() for r in c.results]

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.categories.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.categories.values())

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.categories.values())

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict[str, Any]:
        """``{"passed", "failed", "skipped", "duration_s", "categories": {name: {"passed", "failed",
        "skipped", "failures": [test names], "messages": {test: message}}}}``."""
        return {
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "duration_s": round(self.duration, 3),
            "categories": {
                name: {
                    "passed": c.passed,
                    "failed": c.failed,
                    "skipped": c.skipped,
                    "failures": c.failures,
                    "messages": {r.name: r.message for r in c.results if r.outcome == "failed"},
                }
                for name, c in self.categories.items()
            },
        }


def describe_exception(exc: BaseException) -> str:
    """A one-paragraph account of why a test failed: the error and where in the suite it was raised."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, AssertionError):
        text = str(exc) or "assertion failed"
    else:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if f"{__package__.replace('.', '/')}/" in frame.filename.replace("\\", "/"):
            where = f" [{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}]"
            break
    return text + where


async def run_test(
    factory: ProviderFactory, test: ValidationTest, *, timeout: float = DEFAULT_TIMEOUT
) -> tuple[Outcome, str]:
    """Run one validation test; never raises (except cancellation of the caller)."""
    try:
        with anyio.fail_after(timeout):
            await test(factory)
    except ValidationSkipped as exc:
        return "skipped", str(exc)
    except TimeoutError:
        return "failed", f"timed out after {timeout:g}s"
    except Exception as exc:
        return "failed", describe_exception(exc)
    return "passed", ""


async def run_validation(
    factory: ProviderFactory,
    categories: Iterable[str] | None = None,
    on_result: Callable[[CaseResult], Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> ValidationReport:
    """Run the suite (or the named categories) against ``factory``, one test after another, and report.

    ``on_result`` is called with each :class:`CaseResult` as soon as it is known. Raises ``ValueError``
    for an unknown category name."""
    chosen = select(categories)
    report = ValidationReport()
    started = time.monotonic()
    for category, test in chosen:
        t0 = time.monotonic()
        outcome, message = await run_test(factory, test, timeout=timeout)
        result = CaseResult(category, test.__name__, outcome, message, time.monotonic() - t0)
        report.categories.setdefault(category, CategoryReport(category)).results.append(result)
        if on_result is not None:
            on_result(result)
    report.duration = time.monotonic() - started
    return report
