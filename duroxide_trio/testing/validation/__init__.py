"""Provider validation suite: the executable definition of the storage contract in
``duroxide_trio.providers.base``, after duroxide's provider validation tests (spec §4).

Every test is ``async def test_xxx(factory)`` taking a :class:`~duroxide_trio.providers.base.ProviderFactory`;
it creates fresh providers through the factory and disposes of them (``factory.cleanup(provider)`` when
the factory has it, else ``provider.close()``). Categories (one module each): atomicity, error_handling,
instance_locking, lock_expiration, multi_execution, queue_semantics, instance_creation, management,
long_polling, poison, cancellation, deletion, pruning, bulk_deletion, custom_status, kv, tag_routing,
sessions, capability_filtering, continue_as_new_races, duplicate_start, size_limits, poison_accounting,
ack_fetches_turns (``ProviderCapabilities.ack_fetches_turns``; skipped without it), eager_dispatch,
start_fetches_turn (``ProviderCapabilities.start_fetches_turn``; skipped without it).

Run it
  - without pytest: ``report = await run_validation(factory, categories=None, on_result=None)``, or the
    command ``duroxide-trio validate --provider sqlite|sqlite-memory|postgres``;
  - with pytest: define a fixture ``duroxide_provider_factory`` returning your factory, and in a test
    module write ``from duroxide_trio.testing.validation.plugin import validation_tests`` and
    ``test_my_provider = validation_tests()`` (see :mod:`.plugin`).

Optional factory attributes/hooks the suite uses
  - ``lock_timeout`` (seconds, default 1.0): the short lock timeout lock-expiry tests wait out;
  - ``cleanup(provider)``: dispose of a provider (drop its schema, remove its file...);
  - ``test_hooks(provider)``: a ``TestHooks`` (``testing.validation._support.TestHooks``) into the
    provider's storage: ``corrupt_instance_history(instance_id)`` makes the stored history undecodable
    (tests that need it are skipped without it), ``max_attempt_count(instance_id)`` is the stored maximum
    attempt count of an instance's orchestrator messages (extra checks when present). The older factory
    methods ``corrupt_instance_history(provider, instance_id)`` / ``get_max_attempt_count(provider,
    instance_id)`` still work;
  - ``open_peer(provider)``: another provider (connection or pool) on the *same* store, closed with
    ``close()``; concurrency tests then run across several connections. Without it, a file-backed
    SQLite provider gets a second connection to its file, and other providers are shared by the
    concurrent tasks;
  - ``long_poll`` (bool, on the factory or the provider) and ``short_poll_threshold`` (seconds, default
    0.25) for the long-polling category.

duroxide's own sessions, tag-filtering and capability-filtering tests are covered by our categories
``sessions``, ``tag_routing`` (``ProviderCapabilities.worker_routing``) and ``capability_filtering``
(``fetch_orchestration_item(..., versions=VersionRange)``; a provider whose fetch takes no ``versions=``
skips it); the KV store is the ``kv`` category (``ProviderCapabilities.key_values``). The four duroxide
capability-filtering tests about corrupted histories that do not involve a filter are in the ``poison``
category.

Where our contract deliberately differs from duroxide's, the tests assert ours:
  - messages for an instance that does not exist yet are kept, not dropped (a client may enqueue right
    after ``start_orchestration``, before the first turn created the instance row); fetch does not return
    them while the instance has neither a row nor a pending start (``queue_semantics``);
  - ``enqueue_start`` raises ``InstanceAlreadyExists`` for an id with an instance or a pending start
    (``instance_creation``);
  - durations are seconds (floats); points in time are epoch milliseconds;
  - errors are typed: ``InstanceNotFound``, ``InstanceStillRunning``, ``CannotDeleteSubOrchestration``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._runner import (
        CATEGORIES,
        DEFAULT_TIMEOUT,
        CaseResult,
        CategoryReport,
        ValidationReport,
        ValidationTest,
        run_test,
        run_validation,
        select,
    )
    from ._support import ValidationSkipped

__all__ = [
    "CATEGORIES",
    "DEFAULT_TIMEOUT",
    "CaseResult",
    "CategoryReport",
    "ValidationReport",
    "ValidationSkipped",
    "ValidationTest",
    "run_test",
    "run_validation",
    "select",
]


def __getattr__(name: str) -> Any:
    # Lazy: the pytest plugin module lives in this package and is imported by every pytest run.
    if name == "ValidationSkipped":
        from ._support import ValidationSkipped

        return ValidationSkipped
    if name in __all__:
        from . import _runner

        return getattr(_runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
