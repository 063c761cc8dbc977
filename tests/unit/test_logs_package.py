"""Unit tests for the pieces of the amphora.listeners.logs package added by its split:
the rotating file on Twisted's LogFile, the UDP forwarder's retry policy, the plain loss counters."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from twisted.internet.task import Clock

from amphora.listeners.logs import Losses, forward, logfile

LID = "0b7f3c8e-1d2a-4c5b-8e9f-112233445566"


def _fill(f: logfile.RotatingFile, prefix: bytes, count: int) -> list[bytes]:
    """``count`` 10-byte lines, each flushed on its own (so each may rotate)."""
    lines = [prefix + b"%08d\n" % i for i in range(count)]
    for line in lines:
        f.append(line)
        f.flush()
    return lines


# -- rotation on LogFile --------------------------------------------------------------

@pytest.mark.parametrize("backups", [1, 3])
def test_rotation_keeps_exactly_backups_files_named_like_before(tmp_path, backups):
    path = str(tmp_path / f"{LID}.log")
    f = logfile.RotatingFile(path, 30, backups, Clock())  # three 10-byte lines per file
    lines = _fill(f, b"a", 3 * (backups + 4))
    f.close()
    expected = [f"{LID}.log"] + [f"{LID}.log.{i}" for i in range(1, backups + 1)]
    assert sorted(os.listdir(tmp_path)) == sorted(expected)
    assert f.files() == [str(tmp_path / name) for name in expected]
    for i, name in enumerate(expected):  # newest first, three lines each
        end = len(lines) - 3 * i
        assert (tmp_path / name).read_bytes() == b"".join(lines[end - 3:end])


def test_rotation_removes_backups_beyond_a_lowered_setting(tmp_path):
    path = str(tmp_path / "l.log")
    for i in range(1, 6):  # left by an agent that kept 5
        (tmp_path / f"l.log.{i}").write_bytes(b"old\n")
    f = logfile.RotatingFile(path, 20, 2, Clock())
    _fill(f, b"n", 3)  # one rotation
    assert sorted(os.listdir(tmp_path)) == ["l.log", "l.log.1", "l.log.2"]
    assert (tmp_path / "l.log.2").read_bytes() == b"old\n"


def test_files_created_with_mode_under_umask_and_umask_untouched(tmp_path, monkeypatch):
    path = str(tmp_path / "l.log")
    real_umask, calls = os.umask, []
    old = real_umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
        f = logfile.RotatingFile(path, 20, 1, Clock(), mode=0o666)
        _fill(f, b"m", 3)  # creates, rotates, creates again
    finally:
        real_umask(old)
    assert calls == []  # the process-wide umask is never changed (LogFile's umask(0o777) is not used)
    for name in ("l.log", "l.log.1"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640


def test_failed_rotation_drops_and_counts_then_recovers(tmp_path, monkeypatch):
    path = str(tmp_path / "l.log")
    f = logfile.RotatingFile(path, 20, 1, Clock())
    _fill(f, b"x", 2)
    real_rename = os.rename

    def refuse(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "rename", refuse)
    f.append(b"y" * 9 + b"\n")
    f.flush()  # would rotate: the rename fails, the line is dropped, nothing raises
    assert f.dropped == 1
    monkeypatch.setattr(os, "rename", real_rename)
    f.append(b"z" * 9 + b"\n")
    f.flush()
    assert f.dropped == 1
    assert open(path, "rb").read() == b"z" * 9 + b"\n"
    assert open(path + ".1", "rb").read().startswith(b"x")


def test_an_oversized_batch_fills_files_in_order(tmp_path):
    """One flush of many lines: batches split where a file is full, LogFile rotates between."""
    path = str(tmp_path / "l.log")
    f = logfile.RotatingFile(path, 25, 2, Clock())
    lines = [b"%09d\n" % i for i in range(7)]  # 10 bytes: two per file
    for line in lines:
        f.append(line)
    f.flush()
    assert open(path, "rb").read() == b"".join(lines[6:])
    assert open(path + ".1", "rb").read() == b"".join(lines[4:6])
    assert open(path + ".2", "rb").read() == b"".join(lines[2:4])


# -- UDP forwarder retries ----------------------------------------------------------------

class _UDPReactor(Clock):
    """listenUDP fails ``fail`` times, then hands out ports that record what they send."""

    def __init__(self, fail: int):
        super().__init__()
        self.fail, self.opened = fail, []

    def listenUDP(self, port, protocol, interface, maxPacketSize):
        if self.fail:
            self.fail -= 1
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        reactor = self

        class Port:
            def __init__(self):
                self.protocol, self.sent, self.stopped = protocol, [], False
                reactor.opened.append(self)
                protocol.doStart()  # as a real port's startListening does

            def connect(self, host, port):
                pass

            def write(self, data):
                self.sent.append(data)

            def stopListening(self):
                self.stopped = True

        return Port()


def test_udp_open_failures_back_off_then_an_icmp_close_reopens_quickly():
    reactor = _UDPReactor(fail=3)
    fw = forward.UDPForwarder(reactor, "udp://127.0.0.1:1", "127.0.0.1", 1)
    fw.start()
    delays = []
    while not reactor.opened:
        (call,) = reactor.getDelayedCalls()
        delays.append(round(call.getTime() - reactor.seconds(), 6))
        reactor.advance(delays[-1])
    policy = forward.backoffPolicy(forward.UDP_REOPEN_DELAY, forward.RECONNECT_MAX, jitter=lambda: 0)
    assert delays == pytest.approx([policy(0), policy(1), policy(2)]) and delays[0] < delays[1] < delays[2]
    fw.send(b"m")
    assert reactor.opened[0].sent == [b"m"]
    # an ICMP error closed the socket: reopened after UDP_REOPEN_DELAY (the policy's first step again)
    reactor.opened[0].protocol.doStop()
    (call,) = reactor.getDelayedCalls()
    assert call.getTime() - reactor.seconds() == pytest.approx(forward.UDP_REOPEN_DELAY)
    reactor.advance(forward.UDP_REOPEN_DELAY)
    assert len(reactor.opened) == 2
    fw.stop()
    assert reactor.opened[1].stopped and not reactor.getDelayedCalls()


def test_udp_stop_cancels_a_pending_retry():
    reactor = _UDPReactor(fail=1)
    fw = forward.UDPForwarder(reactor, "udp://127.0.0.1:1", "127.0.0.1", 1)
    fw.start()
    assert len(reactor.getDelayedCalls()) == 1
    fw.stop()
    assert not reactor.getDelayedCalls()
    reactor.advance(forward.RECONNECT_MAX)
    assert reactor.opened == []


# -- losses: plain counters (the route names the headers) -----------------------------------

def test_losses_are_plain_counters():
    assert Losses(file_dropped=2, forward_lost=None) == Losses(2, None)
    assert not any(name.startswith("x-") for name in Losses.__dataclass_fields__)


def test_appends_even_when_another_writer_grew_the_file(tmp_path):
    """O_APPEND, as before the split: lines written meanwhile by someone else are never overwritten."""
    path = tmp_path / "l.log"
    f = logfile.RotatingFile(str(path), 1000, 1, Clock())
    f.append(b"one\n")
    f.flush()
    with open(path, "ab") as other:
        other.write(b"other\n")
    f.append(b"two\n")
    f.flush()
    assert path.read_bytes() == b"one\nother\ntwo\n"
