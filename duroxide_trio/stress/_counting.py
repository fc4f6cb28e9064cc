"""``CountingProvider``: a thin wrapper that counts the calls a runtime makes to its provider.

Every coroutine method of the wrapped provider (the ``Provider`` protocol, its optional capabilities and
the management interface the client reaches through ``as_admin``) is forwarded unchanged and counted by
name. The stress runner divides the total by the completed orchestrations: *provider round trips per
orchestration*. One provider call is one round trip to the store for the stored-function PostgreSQL
provider and one transaction on the SQLite provider's connection thread; a long poll
(``poll_timeout > 0``) counts once however long it waits.

It is an ordinary object (nothing is patched): ``seconds`` adds the wall time spent in each method (for the mean time of a fetch, say).
``CountingProvider(inner)`` passes ``isinstance(x,
Provider)`` and forwards ``notifier``, ``capabilities`` and ``name``.
"""

from __future__ import annotations

import collections
import inspect
import time
from collections.abc import Callable
from typing import Any

from ..providers.base import ProviderCapabilities, capabilities_of

__all__ = ["CountingProvider"]


class _Counter:
    """The counts shared by a provider wrapper and its admin wrapper."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.counting = True


def _counted(counter: _Counter, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        if not counter.counting:
            return await fn(*args, **kwargs)
        counter.calls[name] += 1
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            counter.seconds[name] += time.perf_counter() - started

    call.__name__ = name
    call.__doc__ = fn.__doc__
    return call


class _Forwarder:
    """Forward attributes to ``inner``; coroutine methods are counted (wrapped once, then cached)."""

    def __init__(self, inner: Any, counter: _Counter) -> None:
        self._inner = inner
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr
        wrapped = _counted(self._counter, name, attr)
        self.__dict__[name] = wrapped  # later lookups skip __getattr__
        return wrapped


class _CountingAdmin(_Forwarder):
    """The wrapped provider's management interface, counted into the same totals."""


class CountingProvider(_Forwarder):
    """Count every call to ``inner``'s coroutine methods (see the module docstring).

    ``calls`` is a ``Counter`` by method name; ``total`` their sum; ``reset()`` starts again from zero;
    ``pause()`` / ``resume()`` stop and restart counting (e.g. around seeding)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner, _Counter())
        self._admin: _CountingAdmin | None = None

    @property
    def inner(self) -> Any:
        """The wrapped provider."""
        return self._inner

    @property
    def calls(self) -> collections.Counter[str]:
        """Calls per method name since the last ``reset()``."""
        return self._counter.calls

    @property
    def seconds(self) -> collections.defaultdict[str, float]:
        """Seconds spent in the calls per method name (wall time, waits of long polls included)."""
        return self._counter.seconds

    def mean_ms(self) -> dict[str, float]:
        """Mean milliseconds per call, per method name."""
        return {k: self._counter.seconds[k] * 1000.0 / n for k, n in self._counter.calls.items() if n}

    @property
    def total(self) -> int:
        """Every counted call since the last ``reset()``."""
        return sum(self._counter.calls.values())

    def reset(self) -> None:
        """Forget the counts so far."""
        self._counter.calls.clear()
        self._counter.seconds.clear()

    def pause(self) -> None:
        """Stop counting (calls still go through)."""
        self._counter.counting = False

    def resume(self) -> None:
        """Count again."""
        self._counter.counting = True

    @property
    def notifier(self) -> Any:
        """The wrapped provider's notifier (in-process wake-ups keep working)."""
        return self._inner.notifier

    @property
    def capabilities(self) -> ProviderCapabilities:
        """The wrapped provider's declared capabilities (each optional operation is forwarded, counted)."""
        return capabilities_of(self._inner)

    @property
    def name(self) -> str:
        """The wrapped provider's name (results keep reading ``"sqlite"`` / ``"postgres"``)."""
        return str(self._inner.name)

    def as_admin(self) -> Any:
        """The wrapped management interface, its calls counted too (``None`` if there is none)."""
        admin = self._inner.as_admin()
        if admin is None:
            return None
        if admin is self._inner:
            return self
        if self._admin is None or self._admin._inner is not admin:
            self._admin = _CountingAdmin(admin, self._counter)
        return self._admin

    async def close(self) -> None:
        """Close the wrapped provider (not counted)."""
        await self._inner.close()

    async def __aenter__(self) -> CountingProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.close()
