"""Helpers shared by CLI commands."""

from __future__ import annotations

import os

from .._masking import mask_url

__all__ = ["database_url", "mask_url"]


def database_url(option: str | None) -> str | None:
    """The ``--database-url`` option, else ``$DATABASE_URL``, else ``None``."""
    return option or os.environ.get("DATABASE_URL") or None
