"""Unit tests for the amphora.listeners.logs package: parsing, RFC 5424 / RFC 6587, rotation, tail, bounded forwarding."""

from __future__ import annotations

import errno
import os
import re

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from amphora.listeners.logs import collector, forward, logfile, syslog
from amphora.testing import FakeListeners

LID = "0b7f3c8e-1d2a-4c5b-8e9f-112233445566"
AID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"

# what haproxy 2.6 sends with "format rfc5424" (captured from the real thing)
HAPROXY_5424 = (b'<134>1 2026-11-28T17:32:03.322307+00:00 - haproxy 8343 - - 127.0.0.1:46688 '
                b'[28/Nov/2026:17:32:03.322] fe fe/<NOSRV> 0/-1/-1/-1/0 200 73 - - LR-- 1/1/0/0/0 0/0 '
                b'"GET /x?y=1 HTTP/1.1"\n')


# -- parsing ---------------------------------------------------------------------

def test_parse_rfc5424_from_haproxy():
    r = syslog.parse_datagram(HAPROXY_5424)
    assert r.pri == 134
    assert r.timestamp == "2026-11-28T17:32:03.322307+00:00"
    assert r.procid == "8343"
    assert r.msg.startswith(b"127.0.0.1:46688 [28/Nov/2026")
    assert r.msg.endswith(b'"GET /x?y=1 HTTP/1.1"')


def test_parse_rfc5424_with_structured_data_keeps_message_as_is():
    r = syslog.parse_datagram(b'<131>1 2026-01-01T00:00:00Z h app 12 ID [a@1 k="v \\] [x"][b@2 z="1"] hello ] world')
    assert r.pri == 131
    assert r.msg == b"hello ] world"


def test_parse_rfc3164_and_raw():
    r = syslog.parse_datagram(b"<133>Nov 28 17:32:03 haproxy[42]: Proxy fe started.")
    assert (r.pri, r.procid, r.timestamp, r.msg) == (133, "42", "-", b"Proxy fe started.")
    r = syslog.parse_datagram(b"no header at all")
    assert (r.pri, r.msg) == (134, b"no header at all")
    r = syslog.parse_datagram(b"<999>1 bogus")  # out-of-range PRI: the whole thing is the message
    assert r.msg == b"<999>1 bogus"


def test_parse_malformed_5424_never_loses_the_line():
    r = syslog.parse_datagram(b"<134>1 2026-01-01T00:00:00Z host")
    assert b"host" in r.msg


# -- RFC 5424 / RFC 6587 ---------------------------------------------------------

_RFC5424 = re.compile(
    rb'<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[[^\]]*\]) (.*)', re.S)


def test_format_rfc5424_tags_listener_and_amphora():
    r = syslog.parse_datagram(HAPROXY_5424)
    msg = syslog.Tagger("amphora-1", AID, LID).format(r)
    m = _RFC5424.fullmatch(msg)
    assert m, msg
    pri, ts, host, app, procid, msgid, sd, body = m.groups()
    assert (pri, ts, host, app, procid, msgid) == (b"134", b"2026-11-28T17:32:03.322307+00:00",
                                                    b"amphora-1", b"haproxy", b"8343", b"-")
    assert sd == f'[amphora@32473 amphora_id="{AID}" listener_id="{LID}"]'.encode()
    assert body == r.msg  # haproxy's message unchanged


def test_format_rfc5424_nil_values_and_bad_hostname():
    r = syslog.Record(134, "-", "-", b"x")
    msg = syslog.Tagger("", AID, LID).format(r)
    assert msg.startswith(b"<134>1 - - haproxy - - [amphora@32473 ")
    msg = syslog.Tagger("bad host", AID, LID).format(r)
    assert msg.split(b" ")[2] == b"-"


def test_octet_counting_framing():
    assert syslog.frame_octet_counting(b"<134>1 - - - - - - hi") == b"21 <134>1 - - - - - - hi"
    assert syslog.frame_octet_counting("é".encode()) == b"2 \xc3\xa9"  # octets, not characters


def test_file_line():
    r = syslog.parse_datagram(HAPROXY_5424)
    assert syslog.file_line(r) == b"2026-11-28T17:32:03.322307+00:00 haproxy[8343]: " + r.msg + b"\n"
    assert syslog.file_line(syslog.Record(134, "-", "-", b"a\nb")) == b"- haproxy[-]: a b\n"


# -- rotating file -----------------------------------------------------------------

def _lines(prefix: str, n: int, width: int = 10) -> list[bytes]:
    return [f"{prefix}{i:0{width - len(prefix) - 1}d}\n".encode() for i in range(n)]


def test_buffered_until_delay_then_written(tmp_path):
    clock = Clock()
    path = str(tmp_path / "l.log")
    f = logfile.RotatingFile(path, 1000, 2, clock)
    f.append(b"one\n")
    f.append(b"two\n")
    assert not os.path.exists(path)  # nothing written per line
    clock.advance(logfile.FLUSH_DELAY)
    assert open(path, "rb").read() == b"one\ntwo\n"
    assert not clock.getDelayedCalls()


def test_flushes_at_once_past_flush_bytes(tmp_path):
    clock = Clock()
    path = str(tmp_path / "l.log")
    f = logfile.RotatingFile(path, 10 * logfile.FLUSH_BYTES, 2, clock)
    line = b"x" * 1023 + b"\n"
    for _ in range(logfile.FLUSH_BYTES // len(line)):
        f.append(line)
    assert os.path.getsize(path) == logfile.FLUSH_BYTES
    assert not clock.getDelayedCalls()


def test_rotation_keeps_backups(tmp_path):
    clock = Clock()
    path = str(tmp_path / "l.log")
    f = logfile.RotatingFile(path, 100, 2, clock)
    lines = _lines("L", 50)  # 10 bytes each: 10 lines per file
    for line in lines:
        f.append(line)
    f.flush()
    names = sorted(os.listdir(tmp_path))
    assert names == ["l.log", "l.log.1", "l.log.2"]
    for name in names:
        assert os.path.getsize(tmp_path / name) <= 100
    assert open(path, "rb").read() == b"".join(lines[40:])
    assert open(path + ".1", "rb").read() == b"".join(lines[30:40])
    assert open(path + ".2", "rb").read() == b"".join(lines[20:30])
    # rotation continues across flushes and re-opens (size is taken from the file)
    f.close()
    g = logfile.RotatingFile(path, 100, 2, clock)
    g.append(b"Z" * 9 + b"\n")
    g.flush()
    assert open(path, "rb").read() == b"Z" * 9 + b"\n"
    assert open(path + ".1", "rb").read() == b"".join(lines[40:])


def test_rotation_without_backups_and_oversized_line(tmp_path):
    clock = Clock()
    path = str(tmp_path / "l.log")
    f = logfile.RotatingFile(path, 20, 0, clock)
    f.append(b"a" * 15 + b"\n")
    f.append(b"b" * 50 + b"\n")  # larger than max_bytes: alone in its file
    f.append(b"c\n")
    f.flush()
    assert sorted(os.listdir(tmp_path)) == ["l.log"]
    assert open(path, "rb").read() == b"c\n"


def test_unwritable_is_logged_once_counts_and_recovers(tmp_path, monkeypatch):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = Clock()
        path = str(tmp_path / "missing-dir" / "l.log")
        f = logfile.RotatingFile(path, 1000, 1, clock)
        for i in range(3):
            f.append(b"line\n")
            f.flush()  # never raises
        errors = [e for e in events if e.get("log_namespace") == logfile.log.namespace
                  and "cannot write" in e.get("log_format", "")]
        assert len(errors) == 1
        assert "line" not in repr(errors[0].get("path"))
        assert f.dropped == 3
        os.mkdir(tmp_path / "missing-dir")
        f.append(b"back\n")
        f.flush()
        assert open(path, "rb").read() == b"back\n"
        assert any("writable again" in e.get("log_format", "") for e in events)
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_disk_full_drops_without_raising(tmp_path, monkeypatch):
    clock = Clock()
    path = str(tmp_path / "l.log")
    f = logfile.RotatingFile(path, 1000, 1, clock)
    real_write = logfile.LogFile.write

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logfile.LogFile, "write", full)
    f.append(b"a\n")
    f.append(b"b\n")
    clock.advance(logfile.FLUSH_DELAY)
    assert f.dropped == 2
    monkeypatch.setattr(logfile.LogFile, "write", real_write)
    f.append(b"c\n")
    clock.advance(logfile.FLUSH_DELAY)
    assert open(path, "rb").read() == b"c\n"


def test_remove_deletes_file_and_backups(tmp_path):
    clock = Clock()
    path = str(tmp_path / "l.log")
    f = logfile.RotatingFile(path, 10, 3, clock)
    for line in _lines("r", 5):
        f.append(line)
    f.flush()
    f.append(b"pending\n")
    assert len(os.listdir(tmp_path)) == 4
    f.remove()
    assert os.listdir(tmp_path) == []
    assert not clock.getDelayedCalls()


# -- tail ----------------------------------------------------------------------------

def test_tail_reads_from_the_end_only(tmp_path, monkeypatch):
    path = tmp_path / "big.log"
    lines = [f"line {i}\n".encode() for i in range(100000)]
    path.write_bytes(b"".join(lines))
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n):
            data = self.f.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda p, m="r", *a, **k: Counting(real_open(p, m, *a, **k)))
    out = logfile.tail_lines([str(path)], 10, block=4096)
    assert out == b"".join(lines[-10:])
    assert sum(read) <= 4096  # not the 1.2 MB file


def test_tail_spans_backups_and_handles_partial_last_line(tmp_path):
    (tmp_path / "l.log").write_bytes(b"d\ne")  # torn last line
    (tmp_path / "l.log.1").write_bytes(b"a\nb\nc\n")
    paths = [str(tmp_path / "l.log"), str(tmp_path / "l.log.1"), str(tmp_path / "l.log.2")]
    assert logfile.tail_lines(paths, 1) == b"e\n"
    assert logfile.tail_lines(paths, 3) == b"c\nd\ne\n"
    assert logfile.tail_lines(paths, 100) == b"a\nb\nc\nd\ne\n"
    assert logfile.tail_lines([str(tmp_path / "none")], 5) == b""


def test_tail_small_blocks_long_lines(tmp_path):
    lines = [(b"%d" % i) * (i + 1) + b"\n" for i in range(40)]
    (tmp_path / "l.log").write_bytes(b"".join(lines))
    for n in (1, 2, 7, 40, 41):
        assert logfile.tail_lines([str(tmp_path / "l.log")], n, block=3) == b"".join(lines[-n:])


# -- bounded queue and forwarders --------------------------------------------------------

def test_bounded_queue_drops_oldest_by_count_and_bytes():
    q = forward.BoundedQueue(max_items=3, max_bytes=100)
    assert [q.push(b"%d" % i) for i in range(5)] == [0, 0, 0, 1, 1]
    assert [q.pop() for _ in range(len(q))] == [b"2", b"3", b"4"]
    q = forward.BoundedQueue(max_items=100, max_bytes=10)
    q.push(b"aaaa")
    q.push(b"bbbb")
    assert q.push(b"cccc") == 1
    assert q.bytes == 8
    assert q.push(b"x" * 11) == 3  # bigger than the whole budget: nothing fits
    assert len(q) == 0 and q.bytes == 0


def test_parse_target():
    assert forward.parse_target("udp://127.0.0.1:514") == ("udp", "127.0.0.1", 514)
    assert forward.parse_target("tcp://[::1]:6514") == ("tcp", "::1", 6514)
    assert forward.parse_target("tcp://logs.example:601") == ("tcp", "logs.example", 601)


def _tcp(clock):
    fw = forward.TCPForwarder(clock, "tcp://127.0.0.1:1", "127.0.0.1", 1)
    fw.queue = forward.BoundedQueue(max_items=3)
    return fw


def _connect(fw):
    proto = forward._TCPSender(fw)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_tcp_forwarder_queues_while_down_counts_lost_and_resumes():
    clock = MemoryReactorClock()
    fw = _tcp(clock)
    for i in range(5):
        fw.send(b"m%d" % i)  # down: never blocks, never raises
    assert fw.lost == 2 and len(fw.queue) == 3
    proto, transport = _connect(fw)
    assert transport.value() == b"2 m22 m32 m4"  # the newest three, octet-counted, in order
    fw.send(b"m5")
    assert transport.value().endswith(b"2 m5")
    assert fw.sent == 4 and fw.lost == 2
    proto.connectionLost(None)
    fw.send(b"m6")
    assert len(fw.queue) == 1
    proto2, transport2 = _connect(fw)
    assert transport2.value() == b"2 m6"


def test_tcp_forwarder_pauses_with_the_transport():
    clock = MemoryReactorClock()
    fw = _tcp(clock)
    proto, transport = _connect(fw)
    proto.pauseProducing()  # the transport's buffer is full
    for i in range(4):
        fw.send(b"p%d" % i)
    assert transport.value() == b"" and fw.lost == 1
    proto.resumeProducing()
    assert transport.value() == b"2 p12 p22 p3"


def test_flushed_waits_for_connection_or_times_out():
    clock = MemoryReactorClock()
    fw = _tcp(clock)
    fw.send(b"late")
    d = fw.flushed(1.0)
    results = []
    d.addCallback(results.append)
    clock.advance(0.5)
    assert results == []
    clock.advance(0.6)
    assert results == [False]
    d = fw.flushed(1.0)
    d.addCallback(results.append)
    _connect(fw)
    clock.advance(0.05)
    assert results == [False, True]
    assert not [c for c in clock.getDelayedCalls() if c.active()]  # timers cancelled


def test_udp_forwarder_counts_refused_and_failed_sends():
    clock = Clock()
    fw = forward.UDPForwarder(clock, "udp://127.0.0.1:1", "127.0.0.1", 1)
    sent = []

    class Port:
        fail = False

        def write(self, data):
            if self.fail:
                raise OSError(errno.ECONNREFUSED, "refused")
            sent.append(data)

    fw.send(b"before")  # no socket yet: queued
    assert len(fw.queue) == 1
    fw._port = Port()
    fw.drain()
    assert sent == [b"before"] and fw.sent == 1
    fw._port.fail = True
    fw.send(b"x")
    assert fw.lost == 1
    fw._refused()
    assert fw.lost == 2
    fw._port.fail = False
    fw.send(b"y")
    assert sent[-1] == b"y"


def test_check_id_refuses_paths():
    with pytest.raises(ValueError):
        collector._check_id("../../etc/passwd")
    with pytest.raises(ValueError):
        collector._check_id(LID.upper())
    assert collector._check_id(LID) == LID


# -- ListenerLogs wiring (fake reactor, fake listener manager) -----------------------

class _FakePort:
    def __init__(self, path, proto):
        self.path, self.protocol, self.stopped = path, proto, False

    def stopListening(self):
        self.stopped = True


class _FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.unix = []

    def listenUNIXDatagram(self, path, proto, maxPacketSize, mode):
        assert mode == 0o666 and maxPacketSize >= collector.LINE_MAX
        open(path, "w").close()  # stands for the socket file
        port = _FakePort(path, proto)
        self.unix.append(port)
        return port


@pytest.fixture
def short(tmp_path):
    from tests.logs_support import remove_dir, short_dir

    path = short_dir()  # socket paths must fit in sun_path
    yield path
    remove_dir(path)


def _logs(pki, tmp_path, run, forward="", listeners=None):
    from amphora.config import load_config
    from tests.helpers import write_config

    config = load_config(write_config(pki, str(tmp_path / "a"), 0, {
        "agent": {"run_dir": run}, "logs": {"forward": forward, "max_bytes": "100", "backups": "1"}}))
    reactor = _FakeReactor()
    listeners = listeners if listeners is not None else FakeListeners(existing=[LID])
    return collector.ListenerLogs(config, reactor, listeners, hostname="amp"), reactor


def test_attach_registers_hooks_once(pki, tmp_path, short):
    listeners = FakeListeners()
    logs, _ = _logs(pki, tmp_path, short, listeners=listeners)
    logs.attach(listeners)
    logs.attach(listeners)
    assert listeners.config_hooks == [logs.config_hook]
    assert listeners.delete_hooks == [logs.delete_hook]


def test_config_hook_binds_and_returns_a_global_log_line(pki, tmp_path, short):
    logs, reactor = _logs(pki, tmp_path, short)
    text = logs.config_hook(LID)
    assert text.startswith("global\n")
    assert f"    log unix@{logs.socket_path(LID)} len 8192 format rfc5424 local0\n" in text
    assert logs.config_hook(LID) == text and len(reactor.unix) == 1  # idempotent
    assert logs.socket_path(LID) == os.path.join(short, "logs", f"{LID}.sock")
    # a datagram becomes a file line (flushed by the clock) and nothing is forwarded (no target)
    reactor.unix[0].protocol.datagramReceived(HAPROXY_5424, None)
    reactor.advance(logfile.FLUSH_DELAY)
    assert logs.tail(LID, 5).endswith(b'"GET /x?y=1 HTTP/1.1"\n')
    with pytest.raises(ValueError):
        logs.config_hook("../x")


def test_config_hook_binds_nothing_for_a_listener_that_does_not_exist_yet(pki, tmp_path, short):
    """The check of a first upload gets the log line, but a refused upload must leave no
    socket (and no collector holding a descriptor) behind; the start after it binds."""
    listeners = FakeListeners()
    logs, reactor = _logs(pki, tmp_path, short, listeners=listeners)
    text = logs.config_hook(LID)
    assert f"    log unix@{logs.socket_path(LID)} len 8192 format rfc5424 local0\n" in text
    assert reactor.unix == [] and not logs.collecting(LID)
    assert not os.path.exists(logs.socket_path(LID))
    listeners.existing.add(LID)  # the upload was accepted: the start binds
    assert logs.config_hook(LID) == text
    assert [p.path for p in reactor.unix] == [logs.socket_path(LID)] and logs.collecting(LID)


def test_socket_path_too_long_means_no_log_target(pki, tmp_path, short):
    logs, reactor = _logs(pki, tmp_path, short)
    logs.socket_dir = "/tmp/" + "d" * 80
    assert logs.config_hook(LID) == ""
    assert reactor.unix == []


def test_delete_hook_removes_files_without_forwarder(pki, tmp_path, short):
    logs, reactor = _logs(pki, tmp_path, short)
    logs.config_hook(LID)
    proto = reactor.unix[0].protocol
    for _ in range(5):
        proto.datagramReceived(HAPROXY_5424, None)  # ~200 bytes each: rotates at 100
    logs.tail(LID, 1)
    assert os.path.exists(logs.log_path(LID) + ".1")
    results = []
    logs.delete_hook(LID).addCallback(results.append)
    assert results == [None]
    assert reactor.unix[0].stopped
    assert not os.path.exists(logs.socket_path(LID))
    assert not os.path.exists(logs.log_path(LID)) and not os.path.exists(logs.log_path(LID) + ".1")
    assert not logs.knows(LID)


def test_start_rebinds_existing_listeners_and_drops_stale_sockets(pki, tmp_path, short):
    other = "11111111-2222-4333-8444-555555555555"
    logs, reactor = _logs(pki, tmp_path, short, listeners=FakeListeners(existing=[LID]))
    for lid in (LID, other):
        open(logs.socket_path(lid), "w").close()
    logs.startService()
    assert [p.path for p in reactor.unix] == [logs.socket_path(LID)]
    assert not os.path.exists(logs.socket_path(other))
    logs.stopService()
    assert reactor.unix[0].stopped
    assert os.path.exists(logs.socket_path(LID))  # kept: haproxy still sends there; the next agent rebinds


def test_unusable_log_dir_never_stops_the_agent(pki, tmp_path, short):
    from amphora.config import load_config
    from tests.helpers import write_config

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = load_config(write_config(pki, str(tmp_path / "a"), 0, {
        "agent": {"run_dir": short, "log_dir": str(blocker / "logs")}}))
    reactor = _FakeReactor()
    logs = collector.ListenerLogs(config, reactor, FakeListeners(existing=[LID]), hostname="amp")  # does not raise
    assert logs.config_hook(LID)  # haproxy still gets its target; lines are dropped (and counted)
    reactor.unix[0].protocol.datagramReceived(HAPROXY_5424, None)
    reactor.advance(logfile.FLUSH_DELAY)
    assert logs.losses(LID).file_dropped == 1
    assert logs.tail(LID, 10) == b""


@pytest.mark.parametrize("socket_len", [100, 150])
def test_long_run_dir_targets_relative_and_binds_through_the_directory(pki, tmp_path, short, socket_len):
    filler = socket_len - len(short) - len(f"//logs/{LID}.sock")
    run = os.path.join(short, "r" * filler)
    logs, reactor = _logs(pki, tmp_path, run)
    assert len(logs.socket_path(LID)) == socket_len
    text = logs.config_hook(LID)
    # haproxy refuses unix@ paths beyond 95-97 bytes: relative to its cwd <run>/listeners/<id>
    assert f"    log unix@../../logs/{LID}.sock len 8192" in text
    if socket_len > 107:  # beyond sun_path: bound through the directory's descriptor
        assert re.fullmatch(rf"/proc/self/fd/\d+/{LID}\.sock", reactor.unix[0].path)
    else:
        assert reactor.unix[0].path == logs.socket_path(LID)
    assert os.path.exists(logs.socket_path(LID))  # the socket lives in the real directory
