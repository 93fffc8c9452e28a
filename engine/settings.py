"""Numeric settings read from ``MI_ATLAS_*`` environment variables: one parser, one message for a bad value."""

from __future__ import annotations

import os


def positive_int(name: str, default: int, unit: str) -> tuple[int, bool]:
    """``(value, set_by_env)`` of the environment variable ``name`` (``default`` when unset or empty).

    A value that is not a positive integer raises ``ValueError`` with a one-line message naming the variable,
    the value, the unit and the default; callers re-raise it as their own error type.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default, False
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${name}={raw!r}: expected a positive number of {unit} (default {default})")
    return value, True
