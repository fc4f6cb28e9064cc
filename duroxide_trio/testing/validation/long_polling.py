"""Long polling: fetches honour ``poll_timeout`` (short-poll providers return at once, long-poll ones wait
at most about ``poll_timeout`` and wake when work arrives).

A provider declares long polling with a truthy ``long_poll`` attribute on its factory or on itself; the
threshold for "at once" is the factory's optional ``short_poll_threshold`` (seconds, default 0.25).
"""

from __future__ import annotations

import time

import anyio

from ...providers.base import ProviderFactory
from ._support import (
    activity,
    expect,
    fresh_provider,
    is_long_poll,
    ok,
    short_poll_threshold,
    skip,
    start_item,
)

POLL = 0.5


async def test_short_poll_returns_immediately(factory: ProviderFactory) -> None:
    """On an empty queue, ``poll_timeout=0`` returns None within the short-poll threshold; a short-poll
    provider does so for any ``poll_timeout``."""
    limit = short_poll_threshold(factory)
    async with fresh_provider(factory) as p:
        timeouts = [0.0] if is_long_poll(factory, p) else [0.0, POLL]
        for poll in timeouts:
            t0 = time.monotonic()
            item = await ok(p.fetch_orchestration_item(30.0, poll), "fetch_orchestration_item")
            elapsed = time.monotonic() - t0
            expect(item is None, f"empty queue returned {item!r}")
            expect(elapsed <= limit, f"fetch with poll_timeout={poll} took {elapsed:.3f}s (limit {limit}s)")


async def test_long_poll_waits_for_timeout(factory: ProviderFactory) -> None:
    """(Long-poll providers only.) An empty fetch waits about ``poll_timeout`` and wakes early for work."""
    async with fresh_provider(factory) as p:
        if not is_long_poll(factory, p):
            skip("provider does not long-poll (no truthy long_poll attribute)")
        t0 = time.monotonic()
        item = await ok(p.fetch_orchestration_item(30.0, POLL), "fetch_orchestration_item")
        elapsed = time.monotonic() - t0
        expect(item is None, f"empty queue returned {item!r}")
        expect(elapsed >= POLL * 0.8, f"long poll returned after {elapsed:.3f}s, poll_timeout {POLL}s")
        got: list[object] = []

        async def _fetch() -> None:
            got.append(await p.fetch_orchestration_item(30.0, 5.0))

        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_fetch)
            await anyio.sleep(0.1)
            await ok(p.enqueue_start(start_item("inst-A")), "enqueue_start during a long poll")
        elapsed = time.monotonic() - t0
        expect(got and got[0] is not None, "a long poll must return the work that arrived while it waited")
        expect(elapsed < 2.5, f"a long poll woke {elapsed:.3f}s after the start was enqueued")


async def test_fetch_respects_timeout_upper_bound(factory: ProviderFactory) -> None:
    """No fetch blocks much beyond ``poll_timeout``."""
    slack = short_poll_threshold(factory) + 0.25
    async with fresh_provider(factory) as p:
        for label, call in (
            ("fetch_orchestration_item", lambda: p.fetch_orchestration_item(30.0, POLL)),
            ("fetch_work_item", lambda: p.fetch_work_item(30.0, POLL)),
        ):
            t0 = time.monotonic()
            result = await ok(call(), label)
            elapsed = time.monotonic() - t0
            expect(result is None, f"{label} on an empty queue returned {result!r}")
            expect(elapsed <= POLL + slack, f"{label} with poll_timeout={POLL} took {elapsed:.3f}s")


async def test_short_poll_work_item_returns_immediately(factory: ProviderFactory) -> None:
    """Like the orchestration test, for ``fetch_work_item``; an available item is returned at once too."""
    limit = short_poll_threshold(factory)
    async with fresh_provider(factory) as p:
        timeouts = [0.0] if is_long_poll(factory, p) else [0.0, POLL]
        for poll in timeouts:
            t0 = time.monotonic()
            lease = await ok(p.fetch_work_item(30.0, poll), "fetch_work_item")
            elapsed = time.monotonic() - t0
            expect(lease is None, f"empty worker queue returned {lease!r}")
            expect(
                elapsed <= limit,
                f"fetch_work_item with poll_timeout={poll} took {elapsed:.3f}s (limit {limit}s)",
            )
        await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker")
        t0 = time.monotonic()
        lease = await ok(p.fetch_work_item(30.0, 5.0), "fetch_work_item with work available")
        elapsed = time.monotonic() - t0
        expect(lease is not None, "an available work item must be returned")
        expect(elapsed <= limit, f"fetch_work_item with work available took {elapsed:.3f}s (limit {limit}s)")


async def test_long_poll_work_item_waits_for_timeout(factory: ProviderFactory) -> None:
    """(Long-poll providers only.) Like the orchestration test, for ``fetch_work_item``."""
    async with fresh_provider(factory) as p:
        if not is_long_poll(factory, p):
            skip("provider does not long-poll (no truthy long_poll attribute)")
        t0 = time.monotonic()
        lease = await ok(p.fetch_work_item(30.0, POLL), "fetch_work_item")
        elapsed = time.monotonic() - t0
        expect(lease is None, f"empty worker queue returned {lease!r}")
        expect(elapsed >= POLL * 0.8, f"long poll returned after {elapsed:.3f}s, poll_timeout {POLL}s")
        got: list[object] = []

        async def _fetch() -> None:
            got.append(await p.fetch_work_item(30.0, 5.0))

        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_fetch)
            await anyio.sleep(0.1)
            await ok(p.enqueue_for_worker(activity("inst-A", 1)), "enqueue_for_worker during a long poll")
        elapsed = time.monotonic() - t0
        expect(got and got[0] is not None, "a long poll must return the work that arrived while it waited")
        expect(elapsed < 2.5, f"a long poll woke {elapsed:.3f}s after the item was enqueued")
