"""Deliberately broken providers for the chaos tests that prove the verdict fails: each wraps a real
SqliteProvider and is opened in every worker process through ``ChaosTarget.custom`` (this directory
must be on the workers' ``PYTHONPATH``).

- ``open_without_sessions``: the provider hides its ``worker_routing`` capability, so the runtime
  fetches session items like any others (several at once, on any process): no session affinity.
- ``open_lossy_kv``: a store that, after some turns, loses some key-value writes and applies a counter
  increment a second time (behind the runtime's back, as a broken storage layer would).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import anyio.to_thread
import attrs

import duroxide_trio as dt
from duroxide_trio.providers.base import capabilities_of


class _Wrapper:
    """Forwards everything to ``inner`` (the runtime, the client and the admin API see one provider)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __aenter__(self) -> _Wrapper:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)


class WithoutSessions(_Wrapper):
    """Declares no ``worker_routing``: tags are filtered by the runtime, sessions give no affinity."""

    @property
    def capabilities(self) -> Any:
        return attrs.evolve(capabilities_of(self._inner), worker_routing=False)

    def as_admin(self) -> Any:
        return self._inner.as_admin()


async def open_without_sessions(path: str) -> WithoutSessions:
    return WithoutSessions(await dt.SqliteProvider.open(path))


class WithoutSessionsFactory:
    """A ``ProviderFactory`` of fresh SQLite files wrapped in :class:`WithoutSessions` (``stress.run``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def description(self) -> str:
        return "sqlite without worker routing"

    async def create_provider(self) -> Any:
        return await open_without_sessions(self.path)


class LossyKV(_Wrapper):
    """Every third committed turn, the store forgets every ``last`` value and increments every
    ``counter`` once more (a write lost, a write applied twice)."""

    def __init__(self, inner: Any, path: str) -> None:
        super().__init__(inner)
        self._path = path
        self._acks = 0

    async def ack_orchestration_item(self, *args: Any, **kwargs: Any) -> None:
        await self._inner.ack_orchestration_item(*args, **kwargs)
        self._acks += 1
        if self._acks % 3 == 0:
            await anyio.to_thread.run_sync(self._corrupt)

    def _corrupt(self) -> None:
        conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("DELETE FROM kv_store WHERE key = 'last'")
            conn.execute("UPDATE kv_store SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'counter'")
        finally:
            conn.close()


async def open_lossy_kv(path: str) -> LossyKV:
    return LossyKV(await dt.SqliteProvider.open(path), path)
