"""Size limits (as duroxide has them), checked before anything is persisted. Pure.

A violation found while orchestration code runs raises :class:`LimitExceeded` at the call (code may catch
it); anything that still reaches a turn's commit oversized ends the instance Failed with category
``configuration``, kind ``LimitExceeded``, and the oversized data is never written.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import DuroxideError
from ..history import ErrorDetails, Event

__all__ = [
    "MAX_CUSTOM_STATUS_BYTES",
    "MAX_HISTORY_BYTES",
    "MAX_KV_KEYS",
    "MAX_KV_VALUE_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_TIMER_SECONDS",
    "LimitExceeded",
    "check_event",
    "event_bytes",
    "text_bytes",
    "truncate_message",
]

KIB = 1024
MIB = 1024 * KIB

#: History of one execution (sum of its events' sizes).
MAX_HISTORY_BYTES = 5 * MIB
#: One payload: an input, a result, an output, event data.
MAX_PAYLOAD_BYTES = 3 * MIB
#: Instance ids, orchestration/activity/event/queue names, session ids, tags, error messages.
MAX_NAME_BYTES = 64 * KIB
#: Custom status.
MAX_CUSTOM_STATUS_BYTES = 256 * KIB
#: Keys of one instance's key-value state (``ctx.set_value``).
MAX_KV_KEYS = 150
#: One key-value value, encoded (JSON text); a key is a name (:data:`MAX_NAME_BYTES`).
MAX_KV_VALUE_BYTES = 64 * KIB
#: The longest durable timer: 100 years.
MAX_TIMER_SECONDS = 100 * 365 * 24 * 3600.0

_EVENT_OVERHEAD = 48  # envelope (ids, type, timestamp) of one stored event, roughly

_PAYLOAD_FIELDS = frozenset({"input", "result", "data", "output"})
_STATUS_FIELDS = frozenset({"status", "initial_custom_status"})


def text_bytes(text: str | None) -> int:
    """UTF-8 size of ``text`` (0 for ``None``)."""
    if text is None:
        return 0
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def human(n: int | float) -> str:
    """``5 MiB``, ``64 KiB``, ``1234 bytes``."""
    if n >= MIB and n % MIB == 0:
        return f"{int(n // MIB)} MiB"
    if n >= KIB and n % KIB == 0:
        return f"{int(n // KIB)} KiB"
    return f"{int(n)} bytes"


class LimitExceeded(DuroxideError, ValueError):
    """A size limit was exceeded. ``details`` is the ``configuration`` / ``LimitExceeded`` error the
    instance fails with when orchestration code does not catch it."""

    def __init__(self, what: str, size: int | float, limit: int | float, hint: str = "", *,
                 message: str | None = None) -> None:
        if message is None:
            message = f"limit exceeded: {what} is {size} bytes, over the {human(limit)} limit"
            if hint:
                message += f" ({hint})"
        super().__init__(message)
        self.what = what
        self.size = size
        self.limit = limit
        self.details = ErrorDetails("configuration", "LimitExceeded", message)


def check_text(text: str | None, limit: int, what: str, hint: str = "") -> None:
    """Raise :class:`LimitExceeded` if ``text`` is over ``limit`` bytes."""
    if text is None or len(text) * 4 <= limit:
        return
    size = text_bytes(text)
    if size > limit:
        raise LimitExceeded(what, size, limit, hint)


def limit_for_field(field: str) -> int:
    """The byte limit of an event field by name: payloads (``input``, ``result``, ``data``, ``output``)
    3 MiB, custom status fields 256 KiB, anything else (names, ids, messages) 64 KiB."""
    if field in _PAYLOAD_FIELDS:
        return MAX_PAYLOAD_BYTES
    if field in _STATUS_FIELDS:
        return MAX_CUSTOM_STATUS_BYTES
    return MAX_NAME_BYTES


_FIELDS: dict[type, tuple[str, ...]] = {}


def _strings(kind: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    names = _FIELDS.get(type(kind))
    if names is None:
        names = _FIELDS[type(kind)] = tuple(a.name for a in attrs.fields(type(kind)))
    for name in names:
        value = getattr(kind, name)
        if isinstance(value, str):
            out.append((name, value))
        elif isinstance(value, ErrorDetails):
            out.append(("error message", value.message))
        elif isinstance(value, list):  # carry_forward: (queue, data) pairs
            for pair in value:
                if isinstance(pair, tuple):
                    out.extend(("data" if i else "name", s) for i, s in enumerate(pair) if isinstance(s, str))
    return out


def event_bytes(ev: Event) -> int:
    """The size an event counts for against :data:`MAX_HISTORY_BYTES`."""
    return _EVENT_OVERHEAD + sum(text_bytes(s) for _, s in _strings(ev.kind))


def history_bytes(events: Any) -> int:
    """The size ``events`` count for against :data:`MAX_HISTORY_BYTES` (sum of :func:`event_bytes`)."""
    return sum(event_bytes(ev) for ev in events)


def check_event(ev: Event) -> int:
    """Raise :class:`LimitExceeded` if one field of ``ev`` is over its limit; else return its size (as
    :func:`event_bytes` counts it)."""
    size = _EVENT_OVERHEAD
    for field, text in _strings(ev.kind):
        limit = limit_for_field(field)
        if len(text) * 4 > limit:  # may be over (a code point is at most 4 bytes): name it only then
            check_text(text, limit, f"{field} of {ev.type_name} (event {ev.event_id})")
        size += text_bytes(text)
    return size


def truncate_message(message: str, limit: int = MAX_NAME_BYTES) -> str:
    """Error messages are cut (not rejected) at the name limit, saying how long they were."""
    if len(message) * 4 <= limit or text_bytes(message) <= limit:
        return message
    size = text_bytes(message)
    keep = message.encode("utf-8", "surrogatepass")[: limit - 64].decode("utf-8", "ignore")
    return f"{keep}… [truncated: the message was {size} bytes]"
