"""Durable futures and actions, and the engine operations they (and the context) rely on. Pure.

A future's ``__await__`` yields :data:`BLOCKED` to the engine, which drives the orchestration coroutine
with ``send()``. Every future talks to the engine through :class:`TurnEngine`, a protocol the replay
engine implements, so neither this module nor the context imports the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

import attrs

from . import limits

__all__ = [
    "BLOCKED",
    "Action",
    "DurableFuture",
    "EngineFailure",
    "JoinFuture",
    "LeafFuture",
    "NeverFuture",
    "SelectFuture",
    "TaskFuture",
    "TurnEngine",
]


class _Blocked:
    """The only value a durable future yields to the engine."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<blocked on a durable future>"


#: What a durable future yields while its result is not known yet.
BLOCKED = _Blocked()


class EngineFailure(Exception):  # noqa: N818 - internal control flow, never seen by users
    """Raised by the engine to end the instance (a system failure); never delivered to a task's awaiter."""


class TurnEngine(Protocol):
    """What the context and the futures need from the engine that runs the turn."""

    @property
    def replaying(self) -> bool:
        """True while the code re-runs through recorded history."""
        ...

    @property
    def current_ms(self) -> int:
        """The deterministic time (epoch ms) of the event the code resumes from."""
        ...

    def encode(self, value: Any, what: str, limit: int = limits.MAX_PAYLOAD_BYTES) -> str | None:
        """``value`` as JSON text; raises ``PayloadError``, or ``LimitExceeded`` over ``limit`` bytes."""
        ...

    def history_size_bytes(self) -> int:
        """The size of this execution's history so far."""
        ...

    def emit(self, action: Action) -> None:
        """Record a decision of the code (matched against history, or appended past its end)."""
        ...

    @property
    def kv(self) -> dict[str, str]:
        """The instance's key-value state (key to JSON text) as of this point of the replay."""
        ...

    def kv_write(self, kind: Any) -> None:
        """Apply a ``KeyValueSet`` / ``KeyValueCleared`` decision to :attr:`kv` and record it."""
        ...

    def decode_value(self, text: str | None, hint: Any) -> Any:
        """JSON ``text`` as a value of type ``hint`` (plain JSON for ``None``); raises ``PayloadError``."""
        ...

    def continue_as_new(self, input_text: str | None, version: str | None) -> None:
        """End the execution with a continue-as-new (the first call of a turn counts)."""
        ...

    def add_task(self, task: TaskFuture) -> None:
        """Run ``task``'s coroutine alongside the orchestration, starting it at once."""
        ...

    def next_seq(self) -> int:
        """The next completion sequence number (the order in which futures resolved)."""
        ...

    def cancel_leaf(self, fut: LeafFuture) -> None:
        """The code dropped ``fut``: record the cancellation its kind needs."""
        ...

    def send(self, coro: Coroutine[Any, Any, Any], task: TaskFuture | None) -> Any:
        """Advance ``coro`` by one step on behalf of ``task``; what it yields (or raises) is returned."""
        ...

    def bad_await(self, yielded: Any, coro: Coroutine[Any, Any, Any]) -> None:
        """``coro`` yielded something that is not a durable future: fail the instance."""
        ...

    def open_leaves_of_task(self, task: TaskFuture) -> list[LeafFuture]:
        """The leaf futures ``task`` scheduled that are still open."""
        ...

    def close_coroutine(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Close a coroutine that is no longer needed (its cleanup errors are recorded, not raised)."""
        ...


class DurableFuture:
    """Something the orchestration waits for: an activity, a timer, an event, a sub-orchestration, or a
    ``join``/``select`` of those. Await it, or pass it to ``ctx.join`` / ``ctx.select``."""

    __slots__ = ("_engine", "_done", "_value", "_exc", "_seq", "_cancelled", "__weakref__")

    def __init__(self, engine: TurnEngine) -> None:
        self._engine = engine
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._seq = 0
        self._cancelled = False

    def done(self) -> bool:
        """True once the result (or the failure) is known, from the history replayed so far."""
        self._poll()
        return self._done

    def _poll(self) -> None:
        """Composite futures check their children here."""

    def _resolve(self, value: Any) -> None:
        if self._done:
            return
        self._done, self._value = True, value
        self._seq = self._engine.next_seq()

    def _reject(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done, self._exc = True, exc
        self._seq = self._engine.next_seq()

    def _cancel(self) -> None:
        """The orchestration no longer wants this result (a select loser)."""

    def __await__(self) -> Generator[Any, None, Any]:
        while True:
            self._poll()
            if self._done:
                break
            yield BLOCKED
        if self._exc is not None:
            raise self._exc
        return self._value


class LeafFuture(DurableFuture):
    """A future bound to one scheduling action / history event; the engine resolves it."""

    __slots__ = ("action",)

    def __init__(self, engine: TurnEngine) -> None:
        super().__init__(engine)
        self.action: Action | None = None

    @property
    def is_cancelled(self) -> bool:
        """True once the code dropped this future (a ``select`` loser, a cancelled task)."""
        return self._cancelled

    def resolve(self, value: Any) -> None:
        """Complete with ``value`` (ignored once done)."""
        self._resolve(value)

    def reject(self, exc: BaseException) -> None:
        """Complete with the failure ``exc`` (ignored once done)."""
        self._reject(exc)

    def resolve_with(self, get: Callable[[], Any]) -> None:
        """Complete with what ``get()`` returns, or with the ``Exception`` it raises (a decoding error
        surfaces in the orchestration code that awaits this future)."""
        try:
            value = get()
        except Exception as exc:  # noqa: BLE001
            self._reject(exc)
        else:
            self._resolve(value)

    def _cancel(self) -> None:
        if self._done or self._cancelled:
            return
        self._cancelled = True
        self._engine.cancel_leaf(self)


class NeverFuture(DurableFuture):
    """A future that never resolves (what ``continue_as_new`` returns)."""

    __slots__ = ()


class JoinFuture(DurableFuture):
    """All of ``children``, in argument order (``ctx.join``)."""

    __slots__ = ("_children", "_return_exceptions", "_ready", "_composites")

    def __init__(self, engine: TurnEngine, children: list[DurableFuture], return_exceptions: bool) -> None:
        super().__init__(engine)
        self._children = children
        self._return_exceptions = return_exceptions
        self._ready = 0  # children[:_ready] are done: each poll resumes at the first pending child
        # Composite children (select, join, tasks) advance when polled; leaves need no polling. Polling
        # only those keeps a join of n activities O(n) per turn instead of O(n) per completion.
        self._composites = [c for c in children if not isinstance(c, LeafFuture)]

    def _poll(self) -> None:
        if self._done:
            return
        for c in self._composites:
            c._poll()
        children = self._children
        n = len(children)
        while self._ready < n:
            if not children[self._ready]._done:
                return
            self._ready += 1
        failed = [c for c in self._children if c._exc is not None]
        if failed and not self._return_exceptions:
            self._reject(min(failed, key=lambda c: c._seq)._exc)  # type: ignore[arg-type]
            return
        self._resolve([c._exc if c._exc is not None else c._value for c in self._children])


class SelectFuture(DurableFuture):
    """The first of ``children`` to complete in history order, as ``(index, value)`` (``ctx.select``)."""

    __slots__ = ("_children",)

    def __init__(self, engine: TurnEngine, children: list[DurableFuture]) -> None:
        super().__init__(engine)
        self._children = children

    def _poll(self) -> None:
        if self._done:
            return
        for c in self._children:
            c._poll()
        ready = [(c._seq, i) for i, c in enumerate(self._children) if c._done]
        if not ready:
            return
        _, index = min(ready)
        for i, c in enumerate(self._children):
            if i != index:
                c._cancel()
        winner = self._children[index]
        if winner._exc is not None:
            self._reject(winner._exc)
        else:
            self._resolve((index, winner._value))

    def _cancel(self) -> None:
        if self._done or self._cancelled:
            return
        self._cancelled = True
        for c in self._children:
            c._cancel()


class TaskFuture(DurableFuture):
    """A coroutine run by the engine alongside the orchestration: an async block passed to ``ctx.join`` /
    ``ctx.select`` (or ``ctx.task``), and the loop of an activity retry.

    Cancelling it (a ``select`` loser) cancels what it scheduled that is still open and the tasks it
    started, then closes the coroutine (its ``finally`` blocks run; what they schedule is ignored).
    """

    __slots__ = ("_coro", "_subtasks")

    def __init__(self, engine: TurnEngine, coro: Coroutine[Any, Any, Any]) -> None:
        super().__init__(engine)
        self._coro = coro
        self._subtasks: list[TaskFuture] = []

    def adopt(self, task: TaskFuture) -> None:
        """``task`` was started by this task's coroutine: cancelling this task cancels it too."""
        self._subtasks.append(task)

    @property
    def finished(self) -> bool:
        """True once the coroutine returned, raised or was cancelled: it needs no more steps."""
        return self._done or self._cancelled

    def step(self) -> bool:
        """Advance the coroutine; returns True if it finished."""
        if self.finished:
            return True
        try:
            yielded = self._engine.send(self._coro, self)
        except StopIteration as stop:
            self._resolve(stop.value)
            return True
        except EngineFailure:
            raise
        except BaseException as exc:  # noqa: BLE001 - delivered to whoever awaits the task
            self._reject(exc)
            return True
        if yielded is not BLOCKED:
            self._engine.bad_await(yielded, self._coro)
        return False

    def close(self) -> None:
        """Close the coroutine (the turn is over): its ``finally`` blocks run now."""
        self._engine.close_coroutine(self._coro)

    def _cancel(self) -> None:
        if self._done or self._cancelled:
            return
        self._cancelled = True
        for sub in self._subtasks:
            sub._cancel()
        for f in list(self._engine.open_leaves_of_task(self)):
            f._cancel()
        self.close()


@attrs.define(eq=False)
class Action:
    """One decision of the code (the history event ``kind`` to record or match), the future it completes,
    the future it cancels (``target``) and, once bound, its ``event_id``."""

    kind: Any  # the history event kind to record
    future: LeafFuture | None = None
    target: LeafFuture | None = None  # for cancellation breadcrumbs
    auto_instance: bool = False  # sub-orchestration with a derived instance id
    event_id: int | None = None
    task: TaskFuture | None = None
    attempt: int = 1  # retry attempt of an activity (RetryPolicy), carried to ActivityContext.attempt
