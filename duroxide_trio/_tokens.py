"""Unique tokens without a system call each: a random per-process prefix and a counter.

Lock tokens (both providers) and the eager-dispatch claim of each commit attempt (the runtime) are drawn
here. ``os.urandom`` per token would give up the GIL at every call, and under load, with the SQLite
connection thread running Python, getting it back cost about 0.5 ms a call on this project's VM. The
prefix is drawn again in a forked child, so parent and child never hand out the same token.
"""

from __future__ import annotations

import itertools
import os
import secrets

__all__ = ["new_token"]


class _Tokens:
    prefix = secrets.token_hex(8)
    counter = itertools.count()

    @classmethod
    def reseed(cls) -> None:
        cls.prefix = secrets.token_hex(8)
        cls.counter = itertools.count()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Tokens.reseed)


def new_token(process_id: str | None = None) -> str:
    """A fresh token of 32 hex digits, unique across processes; ``'<process>:<token>'`` with a
    ``process_id`` (a registered process's lock tokens, so survivors can release exactly a dead
    process's locks)."""
    token = f"{_Tokens.prefix}{next(_Tokens.counter):016x}"
    return f"{process_id}:{token}" if process_id else token
