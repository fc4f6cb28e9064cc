"""How anything raised while running a SQLite operation becomes a ``ProviderError`` (by result code,
never by message text)."""

from __future__ import annotations

import sqlite3

from ..base import (
    ProviderError,
    ProviderErrorKind,
)

#: Primary SQLite result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``) and what they mean here.
_CONTENTION_CODES = {5: "SQLITE_BUSY", 6: "SQLITE_LOCKED"}
_STORE_CODES = {
    3: "SQLITE_PERM", 8: "SQLITE_READONLY", 10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT", 13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN", 15: "SQLITE_PROTOCOL", 22: "SQLITE_NOLFS", 23: "SQLITE_AUTH", 26: "SQLITE_NOTADB",
}  # fmt: skip
_INVALID_CODES = {18: "SQLITE_TOOBIG", 20: "SQLITE_MISMATCH", 25: "SQLITE_RANGE"}


def provider_error(op: str, exc: BaseException, path: str = "") -> ProviderError:
    """Map anything raised while running an operation to a ProviderError (never a raw sqlite3 error):
    busy/locked is retryable contention, an interrupted statement or no memory is retryable, a damaged,
    unreadable, read-only or full database file is permanent and names the file, constraint violations
    and values SQLite cannot hold are permanent."""
    if isinstance(exc, ProviderError):
        return exc
    where = f"SQLite database {path!r}" if path else "SQLite database"
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        text = str(exc)
        lowered = text.lower()
        if primary in _CONTENTION_CODES:  # by result code only, never by the message text
            return ProviderError.transient(op, f"{where}: {text} ({name})", kind=ProviderErrorKind.CONTENTION)
        if primary == 9 or lowered == "interrupted":
            return ProviderError.transient(op, f"{where}: statement interrupted ({name})", kind=ProviderErrorKind.TIMEOUT)
        if primary == 7:
            return ProviderError.transient(op, f"{where}: out of memory ({name})", kind=ProviderErrorKind.RESOURCES)
        if primary in _STORE_CODES or "not a database" in lowered or "malformed" in lowered:
            return ProviderError.permanent(op, f"{where} cannot be used: {text} ({name})", kind=ProviderErrorKind.CORRUPT)
        if isinstance(exc, sqlite3.IntegrityError) or primary == 19:
            return ProviderError.permanent(op, f"constraint violated: {text}", kind=ProviderErrorKind.CONFLICT)
        if primary in _INVALID_CODES or isinstance(exc, sqlite3.DataError):
            return ProviderError.permanent(op, f"invalid value: {text} ({name})", kind=ProviderErrorKind.INVALID)
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in lowered:
            return ProviderError.permanent(op, "provider is closed", kind=ProviderErrorKind.CLOSED)
        # SQLITE_ERROR and the rest (e.g. "no such table": a database this provider did not create or
        # that was altered): retrying cannot help.
        return ProviderError.permanent(op, f"{where}: {text} ({name})", kind=ProviderErrorKind.CORRUPT)
    if isinstance(exc, OverflowError):
        return ProviderError.permanent(op, f"invalid value: {exc}", kind=ProviderErrorKind.INVALID)
    return ProviderError.permanent(op, f"{type(exc).__name__}: {exc}")
