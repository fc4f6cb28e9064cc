"""Test helpers shared by runtime tests on every provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import duroxide_trio as dt

FAST = dt.RuntimeOptions(
    orchestrator_lock_timeout=2.0,
    worker_lock_timeout=2.0,
    poll_interval=0.5,
    shutdown_grace=1.0,
    unregistered_backoff=0.05,
    unregistered_backoff_cap=0.2,
    max_attempts=4,
    activity_cancellation_grace=0.5,
)

ProviderMaker = Callable[[], Awaitable[Any]]


@asynccontextmanager
async def running(
    make_provider: ProviderMaker, registry: dt.Registry, options: dt.RuntimeOptions = FAST
) -> AsyncIterator[tuple[Any, dt.Client]]:
    provider = await make_provider()
    async with provider, dt.open_runtime(provider, registry, options) as runtime:
        yield provider, runtime.client


async def run_one(
    make_provider: ProviderMaker,
    registry: dt.Registry,
    name: str,
    input: Any = None,
    *,
    instance_id: str = "i-1",
    timeout: float = 15,
) -> dt.OrchestrationState:
    async with running(make_provider, registry) as (_, client):
        await client.start_orchestration(instance_id, name, input)
        return await client.wait_for_orchestration(instance_id, timeout=timeout)
