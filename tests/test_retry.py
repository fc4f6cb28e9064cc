"""The one retry loop (``duroxide_trio._retry.Retry``), on virtual time: no test here sleeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from duroxide_trio._retry import Retry, RetryExhausted
from duroxide_trio.clock import VirtualClock
from duroxide_trio.errors import DuroxideError


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def transient_only(exc: Exception) -> bool:
    return isinstance(exc, Transient)


async def on_virtual_time(clock: VirtualClock, work: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``work``, moving ``clock`` to its next wake-up whenever every task waits; return its result
    or raise its error."""
    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            outcome["value"] = await work()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while not outcome:
            await anyio.wait_all_tasks_blocked()
            due = clock.next_wakeup()
            if due is not None:
                clock.advance_to(due)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Flaky:
    """Fails with ``errors`` in turn, then returns ``"done"``; notes the clock at every call."""

    def __init__(self, clock: VirtualClock, errors: list[Exception]) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(self.clock.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_the_waits_grow_by_the_factor_up_to_the_cap() -> None:
    policy = Retry(base=0.01, factor=2.0, cap=0.5)
    assert [policy.delay(n) for n in range(8)] == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5])
    assert Retry(base=0.01, factor=2.0, cap=1e9, max_exponent=3).delay(50) == pytest.approx(0.08)


def test_jitter_shortens_a_wait_by_at_most_its_share() -> None:
    draws = iter([0.0, 0.5, 0.999])
    policy = Retry(base=1.0, factor=1.0, cap=1.0, jitter=0.2, rng=lambda: next(draws))
    assert [policy.delay(0) for _ in range(3)] == pytest.approx([1.0, 0.9, 0.8002])


def test_a_policy_that_makes_no_sense_is_refused() -> None:
    for bad in ({"attempts": -1}, {"factor": 0.5}, {"jitter": 2.0}, {"base": -1.0}):
        with pytest.raises(ValueError):
            Retry(**bad)


@pytest.mark.anyio
async def test_transient_errors_are_retried_with_the_waits_on_the_given_clock(anyio_backend) -> None:
    clock = VirtualClock(start=1000.0)
    op = Flaky(clock, [Transient("a"), Transient("b"), Transient("c")])
    seen: list[tuple[str, int, float]] = []
    policy = Retry(attempts=5, base=0.5, factor=2.0, cap=10.0)

    result = await on_virtual_time(
        clock,
        lambda: policy.call(op, retry_if=transient_only, on_retry=lambda e, n, d: seen.append((str(e), n, d)),
                            clock=clock),
    )

    assert result == "done"
    assert seen == [("a", 0, 0.5), ("b", 1, 1.0), ("c", 2, 2.0)]
    assert [t - 1000.0 for t in op.calls] == pytest.approx([0.0, 0.5, 1.5, 3.5])


@pytest.mark.anyio
async def test_an_error_not_to_retry_is_raised_at_once(anyio_backend) -> None:
    clock = VirtualClock(start=0.0)
    op = Flaky(clock, [Transient("a"), Permanent("stop"), Transient("never reached")])
    retries: list[int] = []
    with pytest.raises(Permanent, match="stop"):
        await on_virtual_time(
            clock,
            lambda: Retry(attempts=10).call(op, retry_if=transient_only, on_retry=lambda e, n, d: retries.append(n),
                                            clock=clock),
        )
    assert len(op.calls) == 2 and retries == [0]


@pytest.mark.anyio
async def test_attempts_alone_bound_the_tries_and_the_last_error_is_raised(anyio_backend) -> None:
    clock = VirtualClock(start=0.0)
    op = Flaky(clock, [Transient(str(i)) for i in range(10)])
    with pytest.raises(Transient, match="^3$"):
        await on_virtual_time(clock, lambda: Retry(attempts=4).call(op, retry_if=transient_only, clock=clock))
    assert len(op.calls) == 4


@pytest.mark.anyio
async def test_with_attempts_and_a_deadline_both_must_be_used_up(anyio_backend) -> None:
    clock = VirtualClock(start=0.0)
    op = Flaky(clock, [Transient(str(i)) for i in range(100)])
    policy = Retry(attempts=2, base=1.0, factor=1.0, cap=1.0).with_deadline(5.0)
    with pytest.raises(Transient):
        await on_virtual_time(clock, lambda: policy.call(op, retry_if=transient_only, clock=clock))
    # Two tries would satisfy the count; the deadline keeps it trying once a second until 5 s have passed.
    assert op.calls == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])

    clock = VirtualClock(start=0.0)
    op = Flaky(clock, [Transient(str(i)) for i in range(100)])
    policy = Retry(attempts=6, base=10.0, factor=1.0, cap=10.0).with_deadline(1.0)
    with pytest.raises(Transient):
        await on_virtual_time(clock, lambda: policy.call(op, retry_if=transient_only, clock=clock))
    assert len(op.calls) == 6  # past the deadline after one wait, but the count is not used up yet


@pytest.mark.anyio
async def test_without_limits_it_retries_until_it_succeeds(anyio_backend) -> None:
    clock = VirtualClock(start=0.0)
    op = Flaky(clock, [Transient(str(i)) for i in range(40)])
    assert await on_virtual_time(clock, lambda: Retry(cap=3.0).call(op, retry_if=transient_only, clock=clock)) == "done"
    assert len(op.calls) == 41


@pytest.mark.anyio
async def test_a_policy_allowing_no_attempt_says_so(anyio_backend) -> None:
    clock = VirtualClock(start=0.0)
    op = Flaky(clock, [])
    with pytest.raises(RetryExhausted) as caught:
        await Retry(attempts=0).call(op, retry_if=transient_only, clock=clock)
    assert isinstance(caught.value, DuroxideError) and op.calls == []


@pytest.mark.anyio
async def test_sleep_waits_the_delay_on_the_clock(anyio_backend) -> None:
    clock = VirtualClock(start=0.0)
    await on_virtual_time(clock, lambda: Retry(base=0.25, factor=2.0, cap=1.0).sleep(3, clock))
    assert clock.monotonic() == pytest.approx(1.0)
