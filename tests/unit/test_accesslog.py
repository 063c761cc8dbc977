"""The access log's event, its text and JSON renderings, the buffered writer, and
how the agent offers twistd its observer (no sockets, no twistd)."""

import io
import json
import signal
import threading

from twisted.internet.task import Clock
from twisted.logger import (ILogObserver, LogLevel, Logger, eventsFromJSONLogFile, formatEvent,
                            formatEventAsClassicLogText)
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from amphora import logging as amphora_logging
from amphora.api import accesslog


class FakeRequest:
    method = b"GET"
    path = b"/v0.1/listeners/x/haproxy"
    client_subject = "CN=test-controller"

    def __init__(self, started):
        self.started = started


def recorded(status=200):
    clock = Clock()
    clock.advance(100.0)
    request = FakeRequest(clock.seconds())
    events = []
    log = accesslog.AccessLog(clock, publisher=events.append)
    clock.advance(0.0123456)
    log.record(request, status)
    return events


def test_event_has_the_fields_and_twisteds_keys():
    [event] = recorded(404)
    assert {k: event[k] for k in ("method", "path", "status", "duration_ms", "client")} == {
        "method": "GET", "path": "/v0.1/listeners/x/haproxy", "status": 404, "duration_ms": 12.35,
        "client": "CN=test-controller"}
    assert event["log_namespace"] == "amphora.access" and event["log_level"] is LogLevel.info
    assert formatEvent(event) == "GET /v0.1/listeners/x/haproxy 404 12.35ms CN=test-controller"
    assert accesslog.is_access(event)
    assert not accesslog.is_access({**event, "log_system": "other"})


def test_text_line_is_what_twisteds_text_observer_writes():
    [event] = recorded()
    stamp = amphora_logging._stamp(event["log_time"])
    assert accesslog.text_line(event, stamp) == formatEventAsClassicLogText(
        event, formatTime=amphora_logging._stamp)
    event["path"] = "/a\nb"  # cannot come from HTTP, but never breaks the one-line-per-event rule
    assert accesslog.text_line(event, stamp) == formatEventAsClassicLogText(
        event, formatTime=amphora_logging._stamp)


def test_json_line_reads_back_as_the_same_event():
    [event] = recorded(201)
    line = accesslog.json_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    loaded = json.loads(line)
    for key in ("method", "path", "status", "duration_ms", "client", "log_namespace", "log_time", "log_format"):
        assert loaded[key] == event[key]
    assert loaded["log_level"]["name"] == "info"
    [back] = list(eventsFromJSONLogFile(io.StringIO(line), recordSeparator=""))
    assert back["log_level"] is LogLevel.info
    assert formatEvent(back) == formatEvent(event)


class SlowOut(io.StringIO):
    """An output whose writes block until released (a stuck disk)."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def write(self, text):
        self.release.wait(10)
        return super().write(text)


def test_writer_holds_access_lines_until_the_tick_and_writes_them_at_close():
    out = io.StringIO()
    writer = amphora_logging.LogWriter(out, interval=60)
    try:
        writer.write("access 1\n", urgent=False)
        writer.write("access 2\n", urgent=False)
        assert out.getvalue() == ""  # buffered: no write per line
        writer.flush()
        assert out.getvalue() == "access 1\naccess 2\n"
        writer.write("access 3\n", urgent=False)
    finally:
        writer.close()
    assert out.getvalue().endswith("access 3\n")  # flushed at stop
    writer.write("late\n")  # after close: written at once, not lost
    assert out.getvalue().endswith("late\n")


def test_writer_bounds_its_queue_when_the_output_is_stuck():
    out = SlowOut()
    writer = amphora_logging.LogWriter(out, interval=0.01, batch=10 ** 9, limit=20)
    try:
        writer.write("first\n")  # the thread takes it and blocks in write
        for i in range(200):
            writer.write(f"access line {i:04d}\n", urgent=False)
        assert writer.dropped > 150  # bounded: the rest were counted, not kept
        out.release.set()
        writer.flush()
    finally:
        out.release.set()
        writer.close()
    text = out.getvalue()
    assert "access line 0000" in text and "access log lines dropped" in text
    assert "access line 0199" not in text


def test_observer_renders_access_events_cheaply_and_others_as_twisted_does():
    out = io.StringIO()
    observer = amphora_logging.text_observer(out)
    [event] = recorded()
    observer(event)
    Logger(namespace="amphora.test", observer=observer).warn("listener {listener} down", listener="L1")
    observer.writer.close()
    access, other = out.getvalue().splitlines()
    assert access.endswith(" [amphora.access#info] GET /v0.1/listeners/x/haproxy 200 12.35ms CN=test-controller")
    assert other.endswith(" [amphora.test#warn] listener L1 down")


def test_offer_observer_follows_twistds_options(tmp_path):
    usr1 = signal.getsignal(signal.SIGUSR1)  # a log file is rotated on SIGUSR1, as twistd does
    try:
        _offer(tmp_path)
    finally:
        signal.signal(signal.SIGUSR1, usr1)


def _offer(tmp_path):
    app = Componentized()
    amphora_logging.offer_observer(app, None)  # not under twistd: nothing
    amphora_logging.offer_observer(app, {"logger": "amphora.logging.json_observer", "nodaemon": True})
    amphora_logging.offer_observer(app, {"syslog": True})
    assert app.getComponent(ILogObserver, None) is None
    amphora_logging.offer_observer(app, {"logfile": str(tmp_path / "agent.log"), "nodaemon": True})
    observer = app.getComponent(ILogObserver)
    assert isinstance(observer.writer.out, LogFile)
    observer.writer.close()
    observer.writer.out.close()
