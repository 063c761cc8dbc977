"""The agent's log observers: cheap text lines by default, JSON lines for log shippers.

By default twistd would write text with its own observer, which formats the
time zone and the template of every event and flushes after each line; the
access log (one event per request, see ``amphora.api.accesslog``) made that
most of a request's cost. So the agent offers twistd its own observer
(:func:`offer_observer`; only when twistd was not told ``--logger`` or
``--syslog``): the same text lines, to the same place (standard output with
``-n``, else ``--logfile``, rotated on SIGUSR1 like twistd's), with the
timestamp formatted once a second, access events rendered without Twisted's
formatter, and every write done by a :class:`LogWriter` thread.

    twistd -n --pidfile= --logger amphora.logging.json_observer amphora-agent --config FILE

writes every twisted.logger event as one JSON object per line on standard
output (systemd's journal, a container runtime, or a pipe to a shipper picks it
up). The agent's events carry their fields as keys: the access log
(``log_namespace`` ``amphora.access``) has ``method``, ``path``, ``status``,
``duration_ms`` and ``client`` (the certificate subject); domain events carry
``listener``, ``action``, ``pid`` and the like. ``log_format`` keeps the
human-readable template and ``log_time`` the UNIX time.

Events are written as Twisted's ``eventAsJSON`` writes them and without a
record separator, so the stream is plain JSON Lines rather than RFC 7464
sequences. Fields that cannot be serialised are written as their ``repr`` by
Twisted, never dropped silently. Bodies and key material are never put in
events, so they never reach this stream.
"""

from __future__ import annotations

import atexit
import io
import os
import signal
import sys
import threading
import time
from collections import deque

from twisted.logger import ILogObserver, LogLevel, eventAsJSON, formatEventAsClassicLogText
from twisted.python.logfile import LogFile
from zope.interface import implementer

from amphora.api import accesslog


def _stdout():
    """The process's real standard output.

    twistd replaces ``sys.stdout`` with a logging file once logging starts;
    writing log lines there would feed them back into the log. A duplicate of
    file descriptor 1 is immune to that."""
    return io.open(os.dup(sys.__stdout__.fileno() if sys.__stdout__ else 1), "w",
                   encoding="utf-8", errors="backslashreplace")


class LogWriter:
    """Writes text to ``out`` from a thread of its own.

    Lines are queued; an ``urgent`` write (any event but an access line) wakes
    the thread at once, access lines wait for the next tick (``interval``) or
    for ``batch`` lines. The queue is bounded: above ``limit`` lines, access
    lines are dropped and counted (the count is written as soon as there is
    room again), so a stuck disk costs lines, never the reactor or unbounded
    memory. ``close`` (also at interpreter exit) drains the queue and writes
    synchronously from then on. Appending to the queue takes no lock (a deque's
    append is atomic); only waking the thread does.
    """

    def __init__(self, out, interval: float = 0.5, batch: int = 512, limit: int = 50_000):
        self.out = out
        self.interval, self.batch, self.limit = interval, batch, limit
        self.dropped = 0
        self._queue: deque = deque()
        self._wake = self._closed = self._rotate = False
        self._start()
        os.register_at_fork(after_in_child=self._start)  # twistd without -n forks after the observer is made
        atexit.register(self.close)

    def _start(self) -> None:
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="amphora-log-writer", daemon=True)
        self._thread.start()

    def write(self, text: str, urgent: bool = True) -> None:
        if self._closed:
            with self._cond:
                self._emit([text])
            return
        queued = len(self._queue)
        if not urgent:
            if queued >= self.limit:
                self.dropped += 1
                return
            self._queue.append(text)
            if queued + 1 != self.batch:
                return
        else:
            self._queue.append(text)
        self._notify()

    def _notify(self, **flags) -> None:
        with self._cond:
            self._wake = True
            for name in flags:
                setattr(self, name, True)
            self._cond.notify()

    def rotate(self) -> None:
        """Rotate the output (a LogFile) in the writer thread, before its next write."""
        self._notify(_rotate=True)

    def flush(self, timeout: float = 5.0) -> None:
        """Write everything queued so far (waits for the thread)."""
        if self._closed:
            return
        done = threading.Event()
        self._queue.append(done)
        self._notify()
        done.wait(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._notify(_closed=True)
        self._thread.join(10)
        with self._cond:  # what raced with the close
            self._emit(self._drain())

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wake:
                    self._cond.wait(self.interval)
                self._wake = False
                rotate, self._rotate = self._rotate, False
                closed = self._closed
                items = self._drain()
                # After a close, writes go straight out under the same lock: nothing interleaves.
                if closed:
                    self._emit(items)
                    return
            if rotate and hasattr(self.out, "rotate"):
                self._guard(self.out.rotate)
            self._emit(items)

    def _drain(self) -> list:
        items, pop = [], self._queue.popleft
        while self._queue:
            items.append(pop())
        dropped, self.dropped = self.dropped, 0
        if dropped:
            items.append(f"{_stamp(time.time())} [amphora.logging#warn] {dropped} access log "
                         "lines dropped: the log output is too slow\n")
        return items

    def _emit(self, items) -> None:
        text = "".join(i for i in items if isinstance(i, str))
        if text:
            self._guard(self.out.write, text)
            self._guard(self.out.flush)
        for i in items:
            if isinstance(i, threading.Event):
                i.set()

    @staticmethod
    def _guard(call, *args) -> None:
        try:
            call(*args)
        except Exception:  # a full disk or a closed pipe must not kill the writer
            pass


_stamp_cache = [None, ""]


def _stamp(when) -> str:
    """twistd's timestamp (RFC 3339, local time, seconds), formatted once per second."""
    if when is None:
        return "-"
    second = int(when)
    if _stamp_cache[0] != second:
        _stamp_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        _stamp_cache[0] = second
    return _stamp_cache[1]


@implementer(ILogObserver)
class WriterObserver:
    """Renders events with ``render`` (``access`` for access events) into a LogWriter."""

    def __init__(self, writer: LogWriter, render, access):
        self.writer, self.render, self.access = writer, render, access

    def __call__(self, event) -> None:
        if accesslog.is_access(event):
            self.writer.write(self.access(event), urgent=False)
            return
        text = self.render(event)
        if text:
            self.writer.write(text, urgent=event.get("log_level") is not LogLevel.debug)


def text_observer(out) -> WriterObserver:
    """twistd's classic text lines into ``out`` (a text file or a LogFile)."""
    return WriterObserver(LogWriter(out), lambda e: formatEventAsClassicLogText(e, formatTime=_stamp),
                          lambda e: accesslog.text_line(e, _stamp(e.get("log_time"))))


def json_observer() -> WriterObserver:
    """``--logger amphora.logging.json_observer``: JSON Lines on standard output."""
    return WriterObserver(LogWriter(_stdout()), lambda e: eventAsJSON(e) + "\n", accesslog.json_line)


def offer_observer(application, twistd_options) -> None:
    """Give twistd the text observer it would build by default, made cheap.

    twistd uses an application's ``ILogObserver`` component when the command
    line names no ``--logger``; with ``--syslog``, or without twistd options
    (tests, embedding), nothing changes.
    """
    if twistd_options is None or not hasattr(application, "setComponent"):
        return
    get = twistd_options.get
    if get("logger") or get("syslog") or application.getComponent(ILogObserver, None) is not None:
        return
    name = get("logfile")
    if name == "-" and not get("nodaemon"):
        return  # twistd refuses this itself
    if name == "-" or (get("nodaemon") and not name):
        out = _stdout()
    else:
        out = LogFile.fromFullPath(name or "twistd.log")
    observer = text_observer(out)
    if isinstance(out, LogFile):
        signal.signal(signal.SIGUSR1, lambda *_: observer.writer.rotate())
    application.setComponent(ILogObserver, observer)
