"""Passwords never reach output, logs, errors or files: ``postgresql://user:***@host/db``.

Two layers, both applied by :func:`redact` to every message built from a connection string:

1. Pattern masking (:func:`mask_url`): URLs anywhere in a text (their user info, also when the password
   holds raw spaces, ``@``, ``/``, ``#`` or ``?``, and ``?password=``) and ``key=value`` conninfo strings
   (``password=***``). Alone it cannot always tell where a raw password holding both a space and an
   ``@`` ends; layer 2 covers the URL the user gave.
2. The known password: from the URL the user gave we know the password string (also how libpq would
   read a malformed URL, its percent-decoded form and, for a malformed one, its pieces); every occurrence
   of any of them is replaced, whatever form the surrounding text takes (a driver message quoting part
   of the conninfo, a traceback, a host name libpq cut out of the password).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = ["mask_url", "redact", "url_password_problem", "url_secrets"]

_URL_START = re.compile(r"[a-z][a-z0-9+.-]*://", re.I)
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#\s]*", re.I)
_KV_PASSWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)
#: Characters that end a piece of a malformed password in a driver's message.
_PIECE_SPLIT = re.compile(r"[@/?#:\s'\"]+")
#: Raw characters libpq cannot read inside a URL password (it needs them percent-encoded).
_RAW_IN_PASSWORD = {"@": "%40", "/": "%2F", " ": "%20", "\t": "%09", "\n": "%0A"}

MASK = "***"


def _mask_url_at(text: str, start: int) -> tuple[str, int]:
    """Mask the URL starting at ``start``; return the masked URL and where it ended in ``text``."""
    head_end = text.index("://", start) + 3
    token_end = head_end
    while token_end < len(text) and not text[token_end].isspace():
        token_end += 1
    token = text[head_end:token_end]
    at = token.rfind("@")  # the last @: a raw @ or / in the password does not leak
    end = token_end
    if at < 0 and ":" in token:
        # "user:pass word@host": the user info may run past whitespace, up to the last @ of the line.
        # (A URL without user info followed by an @ later on its line is masked too: safe, if terse.)
        line_end = text.find("\n", token_end)
        line_end = len(text) if line_end < 0 else line_end
        line_at = text.rfind("@", token_end, line_end)
        if line_at >= 0:
            end = line_at + 1
            while end < len(text) and not text[end].isspace():
                end += 1
            token = text[head_end:end]
            at = token.rfind("@")
    rest = token
    if at >= 0 and ":" in rest[:at]:
        rest = f"{rest[: rest.index(':')]}:{MASK}{rest[at:]}"
    return text[start:head_end] + _QUERY_PASSWORD.sub(rf"\1{MASK}", rest), end


def mask_url(text: str | None) -> str:
    """Mask every password in ``text``: URLs (anywhere in the text, user info and ``?password=``) and
    ``key=value`` conninfo strings (``password=***``)."""
    if not text:
        return ""
    out: list[str] = []
    pos = 0
    while (m := _URL_START.search(text, pos)) is not None:
        out.append(_KV_PASSWORD.sub(rf"\1{MASK}", text[pos : m.start()]))
        masked, pos = _mask_url_at(text, m.start())
        out.append(masked)
    out.append(_KV_PASSWORD.sub(rf"\1{MASK}", text[pos:]))
    return "".join(out)


def _url_password(url: str) -> str | None:
    """The password as the user meant it: between the user's ``:`` and the LAST ``@``."""
    m = _URL_START.match(url.strip())
    if m is None:
        return None
    rest = url.strip()[m.end() :]
    at = rest.rfind("@")
    if at < 0 or ":" not in rest[:at]:
        return None
    return rest[:at].split(":", 1)[1]


def url_secrets(url: str | None) -> list[str]:
    """Every string that is (or is part of) the password of ``url`` (a URL or a key=value conninfo),
    longest first: what :func:`redact` replaces."""
    if not url:
        return []
    found: set[str] = set()
    password = _url_password(url)
    if password:
        found.update({password, unquote(password)})
        # How libpq reads it: the user info ends at the first @ or /.
        libpq = re.split(r"[@/]", password, maxsplit=1)[0]
        if len(libpq) >= 2:
            found.update({libpq, unquote(libpq)})
        if _PIECE_SPLIT.search(password):
            found.update(p for p in _PIECE_SPLIT.split(password) if len(p) >= 2)
    for m in _QUERY_PASSWORD.finditer(url):
        value = url[m.end(1) : m.end()]
        if value:
            found.update({value, unquote(value)})
    for m in _KV_PASSWORD.finditer(url):
        value = m.group(2)
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if value:
            found.add(value)
    return sorted((s for s in found if s), key=len, reverse=True)


def redact(text: object, url: str | None = None, *, secrets: Iterable[str] | None = None) -> str:
    """``text`` with passwords masked by pattern and every occurrence of the password of ``url`` (or of
    the given ``secrets``) replaced by ``***``. Use it on every message built from a connection string
    or from a driver's error text."""
    out = mask_url(str(text) if text is not None else "")
    for secret in sorted(set(secrets if secrets is not None else url_secrets(url)), key=len, reverse=True):
        if secret and secret != MASK:
            out = out.replace(secret, MASK)
    return out


def url_password_problem(url: str) -> str | None:
    """Why libpq would misread the password of ``url`` (raw ``@``, ``/`` or whitespace in it), or None.

    libpq ends the user info at the first ``@`` or ``/`` and refuses raw spaces, so such a URL connects
    to the wrong host, with the wrong password, or not at all, and its error quotes pieces of the
    password. The message never contains the password."""
    password = _url_password(url)
    if not password:
        return None
    raw = [c for c in _RAW_IN_PASSWORD if c in password]
    if not raw:
        return None
    names = {"@": "'@'", "/": "'/'", " ": "a space", "\t": "a tab", "\n": "a newline"}
    listed = ", ".join(names[c] for c in raw)
    codes = ", ".join(f"{names[c]} as {_RAW_IN_PASSWORD[c]}" for c in raw)
    return f"the password contains {listed}, which must be percent-encoded in a URL ({codes})"
