"""LogOnce: a failing condition is logged once, its recovery once, each key on its own."""

from __future__ import annotations

from amphora.logonce import LogOnce


class RecordingLog:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda format, **fields: self.lines.append((level, format.format(**fields)))


def test_failure_and_recovery_are_logged_once_each():
    log = RecordingLog()
    once = LogOnce(log)
    assert once.recover("disk", "disk works again") is False  # never failed: nothing to say
    assert once.fail("disk", "cannot read {what}", what="disk") is True
    assert once.fail("disk", "cannot read {what}", what="disk") is False
    assert once.failing("disk")
    assert once.recover("disk", "disk works again") is True
    assert once.recover("disk", "disk works again") is False
    assert once.fail("disk", "cannot read {what}", level="error", what="disk") is True
    assert log.lines == [("warn", "cannot read disk"), ("info", "disk works again"), ("error", "cannot read disk")]


def test_keys_are_independent_and_recovery_may_be_silent():
    log = RecordingLog()
    once = LogOnce(log)
    once.fail("a", "a fails")
    once.fail("b", "b fails")
    assert once.recover("a") is True and not once.failing("a") and once.failing("b")
    assert log.lines == [("warn", "a fails"), ("warn", "b fails")]
