"""Log a failing condition once, and its recovery once ("log once until it recovers").

A reader that fails on every timer tick, a file that cannot be written for
an hour: one line when it starts failing, one when it works again, nothing in
between. Keys name the conditions; each is independent.
"""

from __future__ import annotations


class LogOnce:
    """Per-key "failing" flags over a ``twisted.logger.Logger``."""

    def __init__(self, log):
        self.log = log
        self._failing: set = set()

    def failing(self, key) -> bool:
        return key in self._failing

    def fail(self, key, format: str, level: str = "warn", **fields) -> bool:
        """Mark ``key`` failing; logs ``format`` (at ``level``) only if it was not. True if logged."""
        if key in self._failing:
            return False
        self._failing.add(key)
        getattr(self.log, level)(format, **fields)
        return True

    def recover(self, key, format: str | None = None, level: str = "info", **fields) -> bool:
        """Mark ``key`` working; logs ``format`` (if any) only if it was failing. True if it was."""
        if key not in self._failing:
            return False
        self._failing.discard(key)
        if format is not None:
            getattr(self.log, level)(format, **fields)
        return True
