"""keepalived's notify FIFO: parsing its lines and reading it in the reactor."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

from twisted.logger import Logger

log = Logger()

_NOTIFY = re.compile(r'(INSTANCE|GROUP) "([^"]*)" ([A-Z_]+)(?: (\d+))?')
VRRP_STATES = ("MASTER", "BACKUP", "FAULT", "STOP")


@dataclass(frozen=True)
class NotifyEvent:
    kind: str
    name: str
    state: str
    priority: int | None


def parse_notify_line(line: bytes | str) -> NotifyEvent | None:
    """One FIFO line -> NotifyEvent, or None for lines that are not instance/group states."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    m = _NOTIFY.fullmatch(line.strip().strip("\x00"))
    if not m or m.group(3) not in VRRP_STATES:
        return None
    return NotifyEvent(m.group(1), m.group(2), m.group(3), int(m.group(4)) if m.group(4) else None)


class NotifyFifo:
    """Reads keepalived's notify FIFO in the reactor and calls ``callback(event)`` per state line.

    The FIFO is opened read-write and non-blocking: the open never waits for a
    writer, and a keepalived that exits (closing its write end) does not make
    the reader see end-of-file and spin.
    """

    MAX_LINE = 4096

    def __init__(self, reactor, path: str, callback):
        self.reactor = reactor
        self.path = path
        self.callback = callback
        self.fd = -1
        self._buffer = b""

    def open(self) -> None:
        if self.fd >= 0:
            return
        try:
            st = os.lstat(self.path)
            if not stat.S_ISFIFO(st.st_mode):
                os.unlink(self.path)
                raise FileNotFoundError
        except FileNotFoundError:
            os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        # keepalived opens its end read-write too, so lines written while no agent was
        # reading wait in the pipe: stale states, never to be taken for the current one.
        self._drain()
        self.reactor.addReader(self)

    def _drain(self) -> None:
        while True:
            try:
                if not os.read(self.fd, 65536):
                    return
            except BlockingIOError:
                return

    def close(self) -> None:
        if self.fd >= 0:
            self.reactor.removeReader(self)
            os.close(self.fd)
            self.fd = -1

    # IReadDescriptor
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "keepalived-notify"

    def connectionLost(self, reason) -> None:
        self.close()

    def doRead(self):
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            self.feed(data)
        return None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self.MAX_LINE:
            self._buffer = b""
        for line in lines:
            event = parse_notify_line(line)
            if event is not None:
                try:
                    self.callback(event)
                except Exception:
                    log.failure("keepalived notify callback failed")
