"""Bounded values from a query or a body: ``integer`` and the logs route's ``?lines=N``."""

from __future__ import annotations

from amphora.errors import InvalidRequest


def integer(raw, name: str, low: int, high: int) -> int:
    """A JSON integer from ``low`` to ``high`` (a boolean is no integer)."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise InvalidRequest(f"{name}: must be an integer from {low} to {high}, got {raw!r}")
    return raw


MAX_LOG_LINES = 1000


def parse_lines(args: dict, default: int = 100) -> int:
    """``?lines=N`` of the logs route: one decimal from 1 to MAX_LOG_LINES."""
    values = args.get(b"lines") or [str(default).encode()]
    raw = values[-1].decode("ascii", "replace")
    # Leading zeros are fine; thousands of digits must not reach int() (it refuses above 4300).
    digits = raw.lstrip("0") if raw.isascii() and raw.isdigit() else None
    if len(values) != 1 or digits is None or len(digits) > 4 or not 1 <= int(digits or 0) <= MAX_LOG_LINES:
        raise InvalidRequest(f"lines must be an integer from 1 to {MAX_LOG_LINES}, got {raw!r}")
    return int(digits)
