"""Passwords never reach output, logs, errors or files: ``postgresql://user:***@host/db``."""

from __future__ import annotations

import re

__all__ = ["mask_url"]

_URL_TOKEN = re.compile(r"[a-z][a-z0-9+.-]*://\S*", re.I)
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#\s]*", re.I)
_KV_PASSWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)


def _mask_one_url(token: str) -> str:
    scheme_end = token.index("://") + 3
    head, rest = token[:scheme_end], token[scheme_end:]
    at = rest.rfind("@")  # the last @: a raw @ or / in the password does not leak
    if at >= 0 and ":" in rest[:at]:
        rest = f"{rest[: rest.index(':')]}:***{rest[at:]}"
    return head + _QUERY_PASSWORD.sub(r"\1***", rest)


def mask_url(text: str | None) -> str:
    """Mask every password in ``text``: URLs (anywhere in the text, user info and ``?password=``) and
    ``key=value`` conninfo strings (``password=***``)."""
    if not text:
        return ""
    out: list[str] = []
    pos = 0
    for m in _URL_TOKEN.finditer(text):
        out.append(_KV_PASSWORD.sub(r"\1***", text[pos : m.start()]))
        out.append(_mask_one_url(m.group(0)))
        pos = m.end()
    out.append(_KV_PASSWORD.sub(r"\1***", text[pos:]))
    return "".join(out)
