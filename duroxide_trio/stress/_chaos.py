"""Chaos for the multi-process stress harness: the ``--chaos`` specs, their schedules and the timeline.

Spec grammar (one ``--chaos`` option each, every spec with its own schedule)::

    kill:every=3s[,target=session]         SIGKILL a random running runtime process, start a fresh one
                                           (``target=session``: one running a session's activity, i.e. a
                                           session owner mid-session, when one does within 2 s)
    restart-db:every=20s[,mode=fast|immediate]
                                           restart PostgreSQL (only a cluster the harness started itself,
                                           unless --chaos-own-database)
    faults:rate=0.05[,after=0.5][,fetch-after=0]
                                           wrap every runtime's provider in the fault injector: transient
                                           errors before the real call, and (share ``after``) after it,
                                           i.e. the write committed but the caller saw an error
    stall:every=10s,for=2s                 SIGSTOP a random running runtime process, SIGCONT it ``for`` later

``every`` accepts ``3``, ``3s``, ``500ms``, ``1m``; a ``jitter`` (fraction, default 0.3) spreads each
period uniformly over ``every * (1 ± jitter)`` so that faults do not line up with anything periodic.
``first=`` sets the delay of the first occurrence (default: one period).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from ..errors import DuroxideError

__all__ = [
    "ChaosEvent",
    "ChaosSpec",
    "ChaosSpecError",
    "ChaosTimeline",
    "parse_chaos",
    "parse_duration",
    "run_schedule",
]

KINDS = ("kill", "restart-db", "faults", "stall")


class ChaosSpecError(DuroxideError, ValueError):
    """A ``--chaos`` spec that cannot be parsed."""


def parse_duration(text: str) -> float:
    """``"3s"``, ``"500ms"``, ``"1m"``, ``"2.5"`` (seconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if m is None:
        raise ChaosSpecError(f"not a duration: {text!r} (use e.g. 3s, 500ms, 1m)")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return value / 1000.0 if unit == "ms" else value * 60.0 if unit == "m" else value


@attrs.frozen
class ChaosSpec:
    """One parsed ``--chaos`` spec."""

    kind: str
    every: float = 0.0
    first: float | None = None
    jitter: float = 0.3
    mode: str = "fast"  # restart-db
    duration: float = 0.0  # stall: ``for``
    rate: float = 0.0  # faults
    after_share: float = 0.5  # faults: the share of injected faults raised after the real call
    fetch_after: bool = False  # faults: also raise after a fetch committed (strands its items)
    target: str = "any"  # kill: "any" running process, or "session" (one running a session's activity)
    text: str = ""

    def describe(self) -> str:
        """The spec as the user wrote it."""
        return self.text or self.kind

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return attrs.asdict(self)

    def next_delay(self, rng: random.Random, first: bool) -> float:
        """Seconds until the next occurrence (``first`` for the first, else ``every`` ± jitter)."""
        if first and self.first is not None:
            return self.first
        spread = self.every * self.jitter
        return max(self.every + rng.uniform(-spread, spread), 0.05)


def parse_chaos(text: str) -> ChaosSpec:
    """Parse one spec (see the module docstring)."""
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ChaosSpecError(f"unknown chaos kind {kind!r} in {text!r}; choose one of: {', '.join(KINDS)}")
    params: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ChaosSpecError(f"expected key=value, got {part!r} in {text!r}")
        params[key.strip().lower()] = value.strip()

    def take(key: str) -> str | None:
        return params.pop(key, None)

    fields: dict[str, Any] = {"kind": kind, "text": text.strip()}
    try:
        if kind == "faults":
            rate = take("rate")
            if rate is None:
                raise ChaosSpecError(f"{text!r}: faults needs rate=<0..1>")
            fields["rate"] = float(rate)
            if not 0.0 <= fields["rate"] <= 1.0:
                raise ChaosSpecError(f"{text!r}: rate must be between 0 and 1")
            if (after := take("after")) is not None:
                fields["after_share"] = float(after)
                if not 0.0 <= fields["after_share"] <= 1.0:
                    raise ChaosSpecError(f"{text!r}: after must be between 0 and 1")
            if (fa := take("fetch-after")) is not None:
                fields["fetch_after"] = fa.lower() in ("1", "true", "yes", "on")
        else:
            every = take("every")
            if every is None:
                raise ChaosSpecError(f"{text!r}: {kind} needs every=<duration>")
            fields["every"] = parse_duration(every)
            if fields["every"] <= 0:
                raise ChaosSpecError(f"{text!r}: every must be positive")
            if (first := take("first")) is not None:
                fields["first"] = parse_duration(first)
            if (jitter := take("jitter")) is not None:
                fields["jitter"] = min(max(float(jitter), 0.0), 0.9)
            if kind == "restart-db":
                mode = take("mode") or "fast"
                if mode not in ("fast", "immediate"):
                    raise ChaosSpecError(f"{text!r}: mode must be fast or immediate")
                fields["mode"] = mode
            if kind == "kill" and (target := take("target")) is not None:
                if target not in ("any", "session"):
                    raise ChaosSpecError(f"{text!r}: target must be any or session")
                fields["target"] = target
            if kind == "stall":
                duration = take("for")
                if duration is None:
                    raise ChaosSpecError(f"{text!r}: stall needs for=<duration>")
                fields["duration"] = parse_duration(duration)
    except ValueError as exc:
        if isinstance(exc, ChaosSpecError):
            raise
        raise ChaosSpecError(f"{text!r}: {exc}") from None
    if params:
        raise ChaosSpecError(f"{text!r}: unknown parameter(s) {', '.join(sorted(params))}")
    return ChaosSpec(**fields)


@attrs.define
class ChaosEvent:
    """One fault as it happened: ``at`` / ``until`` are seconds since the load phase began."""

    at: float
    kind: str
    detail: str
    until: float | None = None
    ok: bool = True
    pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times in seconds since the load began)."""
        return {
            "at_s": round(self.at, 3),
            "until_s": round(self.until, 3) if self.until is not None else None,
            "kind": self.kind,
            "detail": self.detail,
            "ok": self.ok,
            "pid": self.pid,
        }


class ChaosTimeline:
    """Every fault of a run, in order; times are relative to ``origin`` (the start of the load)."""

    def __init__(self) -> None:
        self.origin = time.monotonic()
        self.origin_wall = time.time()
        self.events: list[ChaosEvent] = []

    def now(self) -> float:
        """Seconds since the origin."""
        return time.monotonic() - self.origin

    def reset(self) -> None:
        """Make now the origin (the start of the load phase)."""
        self.origin = time.monotonic()
        self.origin_wall = time.time()

    def wall_to_s(self, epoch_ms: int) -> float:
        """An epoch-millisecond time (e.g. a ledger row's) in seconds since the origin."""
        return epoch_ms / 1000.0 - self.origin_wall

    def record(
        self, kind: str, detail: str, *, until: float | None = None, ok: bool = True, pid: int | None = None
    ) -> ChaosEvent:
        """Append a fault that happens now; returns it (set ``until`` when it ends)."""
        event = ChaosEvent(self.now(), kind, detail, until, ok, pid)
        self.events.append(event)
        return event

    def last_fault_end(self) -> float | None:
        """When the last fault ended (a stall's SIGCONT, a restart's server up, a kill's moment)."""
        ends = [e.until if e.until is not None else e.at for e in self.events if e.ok]
        return max(ends) if ends else None

    def as_list(self) -> list[dict[str, Any]]:
        """Every event, JSON-ready."""
        return [e.as_dict() for e in self.events]


async def run_schedule(
    spec: ChaosSpec, action: Callable[[], Awaitable[None]], seed: int, stop: anyio.Event
) -> None:
    """Call ``action`` on ``spec``'s schedule until ``stop`` is set (or the caller's scope is cancelled).
    An action is never interrupted by ``stop``: a stall always ends with its SIGCONT."""
    rng = random.Random(seed)
    first = True
    while not stop.is_set():
        delay = spec.next_delay(rng, first)
        first = False
        with anyio.move_on_after(delay):
            await stop.wait()
        if stop.is_set():
            return
        with anyio.CancelScope(shield=True):
            await action()
