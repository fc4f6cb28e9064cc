"""PostgreSQL errors classified by SQLSTATE only (never by their text)."""

from __future__ import annotations

import re

from ..base import (
    ProviderErrorKind,
)

_INDEX_NAME = re.compile(r'index "([^"]+)"')

def classify_sqlstate(state: str | None) -> tuple[bool, ProviderErrorKind | None]:
    """``(retryable, kind)`` of a server error, by its SQLSTATE only (never by its text).

    Retryable: connection exceptions (class 08), transaction rollback (class 40: serialization failure,
    deadlock), insufficient resources (53), operator intervention (57P0x: admin shutdown, crash
    recovery), lock not available (55P03), a cancelled statement (57014, statement_timeout) and 0A000
    (a prepared statement made stale by a concurrent migration: another connection succeeds). Everything
    else is permanent: data exceptions (22), integrity (23), program limits (54), the project's own DX
    codes, syntax and the rest. ``None`` (no SQLSTATE: a client-side error) is decided by the caller."""
    if not state:
        return False, None
    cls = state[:2]
    if state == "55P03" or cls == "40":
        return True, ProviderErrorKind.CONTENTION
    if cls == "08" or state.startswith("57P0"):
        return True, ProviderErrorKind.CONNECTION
    if cls == "53":
        return True, ProviderErrorKind.RESOURCES
    if state == "57014":
        return True, ProviderErrorKind.TIMEOUT
    if state == "0A000":  # "cached plan must not change result type": a fresh connection fixes it
        return True, ProviderErrorKind.CONNECTION
    if cls in ("22", "54"):
        return False, ProviderErrorKind.INVALID
    if cls == "23":
        return False, ProviderErrorKind.CONFLICT
    if state in ("DX001", "DX002"):
        return False, ProviderErrorKind.LOCK_LOST
    if cls == "DX":
        return False, ProviderErrorKind.CONFLICT
    if cls in ("28", "3D", "42"):
        return False, ProviderErrorKind.CONFIG
    return False, None

def too_large(message: str) -> str:
    """What a program-limit error (54000, e.g. an index row too large) was about, for the message."""
    m = _INDEX_NAME.search(message)
    index = f" (index {m.group(1)!r})" if m else ""
    return (
        f"a key is too large to store{index}: PostgreSQL indexes keys of at most about 2.7 KB, so an "
        "instance id (or an orchestration or activity name, a session id, an event name) is too long"
    )
