"""Fault injection through a provider wrapper (never by patching internals).

``FaultyProvider(inner, faults)`` forwards everything to ``inner``; for the operations named in
``faults`` it raises an injected ``ProviderError`` according to a ``Fault`` rule before (or after) the
real call. Use it to prove that a runtime retries, backs off and still finishes every orchestration.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs

from ..providers.base import ProviderCapabilities, ProviderError, capabilities_of

__all__ = ["Fault", "FaultyProvider"]


@attrs.define
class Fault:
    """Fail an operation: every ``every``-th call, or with ``probability``, at most ``limit`` times.
    ``after=True`` runs the real operation first and then raises (the caller cannot know it committed).
    ``error`` raises that exception type (called with the message) instead of a ``ProviderError`` — a
    provider with a bug, for proving that the runtime contains it."""

    every: int = 0
    probability: float = 0.0
    limit: int | None = None
    retryable: bool = True
    after: bool = False
    message: str = "injected fault"
    error: type[Exception] | None = None
    calls: int = 0
    injected: int = 0

    def should_fail(self, rng: random.Random) -> bool:
        """Count a call and decide whether it fails (``every``-th call, ``probability``, up to ``limit``)."""
        self.calls += 1
        if self.limit is not None and self.injected >= self.limit:
            return False
        hit = (self.every > 0 and self.calls % self.every == 0) or (
            self.probability > 0 and rng.random() < self.probability
        )
        if hit:
            self.injected += 1
        return hit


#: Operations faulted under another operation's name: the routed worker fetch (tags, sessions) is the
#: batched worker fetch the runtime makes, so a ``"fetch_work_items"`` fault covers both.
#: Operations that do the job of another one (and more) fail with that one's fault too.
_FAULT_ALIASES = {
    "fetch_routed_work_items": "fetch_work_items",
    "ack_work_items_and_fetch": "ack_work_items",  # the activity ack that also hands over next turns
    "enqueue_start_and_fetch": "enqueue_start",  # a runtime client's start that also locks the first turn
}


class FaultyProvider:
    """A provider wrapper that injects ``ProviderError``s into the named operations (a
    ``"fetch_work_items"`` fault also fails ``fetch_routed_work_items``, an ``"ack_work_items"`` fault
    also fails ``ack_work_items_and_fetch``, an ``"enqueue_start"`` fault ``enqueue_start_and_fetch``)."""

    def __init__(self, inner: Any, faults: dict[str, Fault], *, seed: int = 0) -> None:
        self._inner = inner
        self.faults = faults
        self._rng = random.Random(seed)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        fault = self.faults.get(name) or self.faults.get(_FAULT_ALIASES.get(name, ""))
        if fault is None or not callable(attr):
            return attr
        return self._wrap(name, attr, fault)

    def _wrap(self, name: str, fn: Callable[..., Any], fault: Fault) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            failing = fault.should_fail(self._rng)
            if failing and not fault.after:
                raise self._error(name, fault, "before")
            result = await fn(*args, **kwargs)
            if failing:
                raise self._error(name, fault, "after commit")
            return result

        return call

    @staticmethod
    def _error(name: str, fault: Fault, when: str) -> Exception:
        if fault.error is not None:
            return fault.error(f"{fault.message} ({when})")
        return ProviderError(name, f"{fault.message} ({when})", retryable=fault.retryable)

    @property
    def capabilities(self) -> ProviderCapabilities:
        """The wrapped provider's capabilities (each optional operation is forwarded, faults included)."""
        return capabilities_of(self._inner)

    @property
    def notifier(self) -> Any:
        """The wrapped provider's notifier."""
        return self._inner.notifier

    @property
    def name(self) -> str:
        """``"faulty-<wrapped name>"``."""
        return f"faulty-{self._inner.name}"

    def as_admin(self) -> Any:
        """The wrapped provider's management interface (no faults injected there)."""
        return self._inner.as_admin()

    async def close(self) -> None:
        """Close the wrapped provider."""
        await self._inner.close()

    async def __aenter__(self) -> FaultyProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.close()
