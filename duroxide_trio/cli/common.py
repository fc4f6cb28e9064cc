"""Helpers shared by CLI commands."""

from __future__ import annotations

import os
import re

_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<netloc>[^/?#\s]*)", re.I)
_KV_PASSWORD = re.compile(r"(?P<prefix>\bpassword\s*=\s*)(?P<password>'[^']*'|\S+)", re.I)


def mask_url(url: str | None) -> str:
    """``postgresql://user:***@host/db``: a password never reaches output, logs or files."""
    if not url:
        return ""

    def _netloc(m: re.Match[str]) -> str:
        userinfo, at, host = m["netloc"].rpartition("@")
        if not at or ":" not in userinfo:
            return m.group(0)
        user = userinfo.split(":", 1)[0]
        return f"{m['scheme']}{user}:***@{host}"

    return _KV_PASSWORD.sub(lambda m: f"{m['prefix']}***", _URL.sub(_netloc, url))


def database_url(option: str | None) -> str | None:
    return option or os.environ.get("DATABASE_URL") or None
