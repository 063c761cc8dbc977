"""Listener logs: collect each haproxy's log lines, keep them on disk, forward them.

One object, ``ListenerLogs``, owned by the composition root as ``agent.logs``:

- **Collector.** Every listener gets a UNIX datagram socket owned by the agent,
  ``<run_dir>/logs/<uuid>.sock`` (mode 0666, so a haproxy that dropped its
  privileges with ``user``/``uid`` can still send), read by the reactor
  (``listenUNIXDatagram``: no thread per listener, no syslog daemon). haproxy
  learns about it from the text ``config_hook`` returns, a ``global`` section
  with ``log unix@<sock> len 8192 format rfc5424 local0`` that the listener
  manager puts in its agent-owned configuration file. haproxy resolves
  ``log global`` while it parses, so that file must come *before* the uploaded
  one on haproxy's command line (``-f agent.cfg -f haproxy.cfg``); the uploaded
  configuration must say ``log global`` in its ``defaults`` or frontends.
- **Files.** Each listener's lines are appended to ``<log_dir>/<uuid>.log``
  through a ``RotatingFile``: buffered (flushed within ``FLUSH_DELAY`` seconds
  or at ``FLUSH_BYTES``, never an fsync per line), rotated by the agent at
  ``[logs] max_bytes`` keeping ``[logs] backups`` files. A full disk or an
  unwritable file drops lines, is logged once, and never raises.
- **Forwarder.** With ``[logs] forward = udp://host:port`` or ``tcp://...``
  every line is also sent as an RFC 5424 syslog message (TCP framed by octet
  counting, RFC 6587), tagged with the structured-data element
  ``[amphora@32473 amphora_id="..." listener_id="..."]``. Lines wait in a
  bounded queue while the target is down or slow; when the queue is full the
  oldest are dropped and counted (``lost``). TCP reconnects on its own with
  exponential backoff (``ClientService``).
- **Delete.** ``delete_hook`` (registered in ``agent.listeners.delete_hooks``)
  reads what haproxy left in the socket, flushes the file and waits, at most
  ``DELETE_FLUSH_TIMEOUT`` seconds, until the forwarder has handed everything
  to the kernel; then removes the socket, the log file and its backups.

haproxy's lines are stored and forwarded as they are (the message part is
never rewritten); the agent's own log events here never carry line contents.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections import deque
from dataclasses import dataclass

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from amphora.fsutil import ensure_dir
from amphora.listeners.store import is_listener_id

log = Logger()

# -- tunables (no configuration key: sane fixed values, documented) ---------

#: haproxy truncates a log line to this many bytes (``len`` of the log target).
LINE_MAX = 8192
#: Largest datagram read from a collector socket (header + LINE_MAX, with room).
DATAGRAM_MAX = LINE_MAX + 1024
#: Pending file bytes are written at most this many seconds after they arrive...
FLUSH_DELAY = 0.2
#: ...or as soon as this many bytes are pending.
FLUSH_BYTES = 64 * 1024
#: Forward queue bounds (lines and bytes): beyond them the oldest lines are lost.
FORWARD_MAX_LINES = 10000
FORWARD_MAX_BYTES = 4 * 1024 * 1024
#: DELETE waits at most this long for the final lines to reach the forward target.
DELETE_FLUSH_TIMEOUT = 5.0
#: TCP reconnect backoff (seconds).
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 30.0
#: A UDP forward socket closed by an ICMP error is reopened after this delay.
UDP_REOPEN_DELAY = 0.2
#: A UDP target is called up again after this many seconds without a refusal.
UDP_QUIET_UP = 5.0
#: UNIX socket paths are limited by sun_path (108 bytes including the NUL)...
SUN_PATH_MAX = 107
#: ...and haproxy refuses "unix@" paths longer than sun_path minus room for its
#: ".<pid>.tmp" suffix (2.6 says "max 97"; kept at the listener manager's 95).
HAPROXY_PATH_MAX = 95
#: The structured-data id tagging forwarded lines (32473 is the documentation PEN, RFC 5612).
SD_ID = "amphora@32473"
#: haproxy's log facility on the agent's target (the priority it sends keeps its severity).
FACILITY = "local0"



# -- syslog parsing and formatting -------------------------------------------

@dataclass(frozen=True)
class Record:
    """One log line as haproxy sent it: priority, timestamp, pid and the message."""

    pri: int
    timestamp: str  # RFC 3339, or "-" when haproxy sent none we could read
    procid: str     # "-" when unknown
    msg: bytes      # the message part, exactly as haproxy wrote it (no trailing newline)


_PRI = re.compile(rb"<([0-9]{1,3})>")
_NILVALUE = b"-"


def parse_datagram(data: bytes) -> Record:
    """Split one datagram from haproxy into a Record.

    The agent's target asks for RFC 5424 (``<PRI>1 TS HOST APP PROCID MSGID SD MSG``);
    RFC 3164 (``<PRI>Mmm dd hh:mm:ss tag[pid]: MSG``) and bare text are
    accepted too, so a line is never lost because of its header.
    """
    data = data.rstrip(b"\r\n\x00")
    pri = 134  # local0.info
    m = _PRI.match(data)
    if m and int(m.group(1)) <= 191:
        pri = int(m.group(1))
        rest = data[m.end():]
        if rest.startswith(b"1 "):
            parts = rest[2:].split(b" ", 5)
            if len(parts) == 6:
                ts, _host, _app, procid, _msgid, tail = parts
                msg = _skip_structured_data(tail)
                if msg is not None:
                    return Record(pri, _text(ts), _text(procid), msg)
        else:
            m3164 = re.match(rb"[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} "
                             rb"(?:[^ :\[]+)(?:\[([0-9]+)\])?: ?", rest)
            if m3164:
                procid = m3164.group(1).decode() if m3164.group(1) else "-"
                return Record(pri, "-", procid, rest[m3164.end():])
            return Record(pri, "-", "-", rest)
    return Record(pri, "-", "-", data)


_PRINTUSASCII = re.compile(rb"[!-~]+")


def _text(value: bytes) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, else the NILVALUE."""
    return value.decode("ascii") if _PRINTUSASCII.fullmatch(value) else "-"


def _skip_structured_data(tail: bytes) -> bytes | None:
    """The MSG after an RFC 5424 STRUCTURED-DATA field, or None if it is malformed."""
    if tail.startswith(_NILVALUE):
        rest = tail[1:]
    elif tail.startswith(b"["):
        i, escaped, depth = 0, False, 0
        in_quote = False
        while i < len(tail):
            c = tail[i:i + 1]
            if escaped:
                escaped = False
            elif c == b"\\":
                escaped = True
            elif c == b'"':
                in_quote = not in_quote
            elif not in_quote and c == b"[":
                depth += 1
            elif not in_quote and c == b"]":
                depth -= 1
                if depth == 0 and tail[i + 1:i + 2] != b"[":
                    break
            i += 1
        else:
            return None
        rest = tail[i + 1:]
    else:
        return None
    if rest.startswith(b" "):
        rest = rest[1:]
    return rest


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_rfc5424(record: Record, hostname: str, amphora_id: str, listener_id: str) -> bytes:
    """One RFC 5424 message (no framing) carrying the listener and amphora ids.

    ``<PRI>1 TIMESTAMP HOSTNAME haproxy PROCID - [amphora@32473 amphora_id=".." listener_id=".."] MSG``:
    PRI, timestamp and pid are haproxy's; MSG is haproxy's message unchanged
    (no BOM: it is MSG-ANY, since haproxy's lines are not guaranteed UTF-8).
    """
    return Tagger(hostname, amphora_id, listener_id).format(record)


class Tagger:
    """``format_rfc5424`` with the per-listener parts encoded once (it runs for every line)."""

    def __init__(self, hostname: str, amphora_id: str, listener_id: str):
        host = _text(hostname.encode("ascii", "replace")[:255]) if hostname else "-"
        sd = f'[{SD_ID} amphora_id="{_sd_escape(amphora_id)}" listener_id="{_sd_escape(listener_id)}"]'
        self._host = f" {host} haproxy ".encode("ascii")
        self._sd = f" - {sd} ".encode("ascii")

    def format(self, record: Record) -> bytes:
        return b"".join((b"<%d>1 " % record.pri, record.timestamp.encode("ascii"), self._host,
                         record.procid[:128].encode("ascii"), self._sd, record.msg))


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d " % len(message) + message


def file_line(record: Record) -> bytes:
    """The line written to the listener's log file: timestamp, pid, haproxy's message."""
    return b"%s haproxy[%s]: %s\n" % (record.timestamp.encode(), record.procid.encode(),
                                       record.msg.replace(b"\n", b" "))


# -- the rotating file ---------------------------------------------------------

class RotatingFile:
    """Buffered appends to ``path``, rotated at ``max_bytes`` keeping ``backups`` files.

    ``append`` never raises and never blocks on more than a local ``write``:
    lines are pending in memory until a flush (``FLUSH_DELAY`` after the first
    pending line, or at once past ``FLUSH_BYTES``). Write errors (ENOSPC, EACCES,
    EROFS...) drop the pending lines, count them in ``dropped`` and are logged
    once until a write succeeds again.
    """

    def __init__(self, path: str, max_bytes: int, backups: int, clock, mode: int = 0o640):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.clock = clock
        self.mode = mode
        self.dropped = 0
        self.written = 0
        self._fd = -1
        self._size = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer = None
        self._failing = False
        self._dropped_at_failure = 0
        self._batch_written = 0

    def append(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(FLUSH_DELAY, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every pending line now (rotating as needed)."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        self._batch_written = 0
        try:
            self._write_lines(pending)
        except OSError as e:
            self._fail(e, pending)
        else:
            if self._failing:
                self._failing = False
                log.info("listener log {path} writable again; {count} lines were dropped meanwhile",
                         path=self.path, count=self.dropped - self._dropped_at_failure)

    def _write_lines(self, lines: list[bytes]) -> None:
        """Write ``lines``, rotating before a line that would push the file past ``max_bytes``."""
        self._open()
        batch: list[bytes] = []
        batch_bytes = 0
        for line in lines:
            if batch and self._size + batch_bytes + len(line) > self.max_bytes:
                self._write(batch)
                batch, batch_bytes = [], 0
            if not batch and self._size > 0 and self._size + len(line) > self.max_bytes:
                self.rotate()
            batch.append(line)
            batch_bytes += len(line)
        if batch:
            self._write(batch)

    def _write(self, batch: list[bytes]) -> None:
        view = memoryview(b"".join(batch))
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._size += n
        self.written += len(batch)
        self._batch_written += len(batch)

    def _open(self) -> None:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
            self._size = os.fstat(self._fd).st_size

    def rotate(self) -> None:
        """``path`` -> ``path.1`` -> ... -> ``path.<backups>`` (the oldest is overwritten)."""
        self._close_fd()
        if self.backups <= 0:
            _unlink(self.path)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            if os.path.exists(self.path):
                os.replace(self.path, f"{self.path}.1")
        self._open()

    def _fail(self, error: OSError, pending: list[bytes]) -> None:
        count = len(pending) - self._batch_written  # a torn line counts as dropped
        self._close_fd()
        if not self._failing:
            self._failing = True
            self._dropped_at_failure = self.dropped
            log.error("cannot write listener log {path}: {error}; dropping its lines until it works again",
                      path=self.path, error=error.strerror or str(error))
        self.dropped += count

    def _close_fd(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def close(self) -> None:
        self.flush()
        self._close_fd()

    def files(self) -> list[str]:
        """The current file then its backups, newest first (existing or not)."""
        return [self.path] + [f"{self.path}.{i}" for i in range(1, self.backups + 1)]

    def remove(self) -> None:
        """Drop pending lines and delete the file and every backup."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._pending, self._pending_bytes = [], 0
        self._close_fd()
        for path in self.files():
            _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def tail_lines(paths: list[str], n: int, block: int = 8192) -> bytes:
    """The last ``n`` lines across ``paths`` (newest file first), read backwards by blocks.

    Only the end of each file is read (seek from the end), so a large log costs
    no more than the lines asked for. A last line without its newline (torn by
    a crash or a full disk) still counts as a line.
    """
    parts: list[bytes] = []  # newest first
    found = 0
    for path in paths:
        if found >= n:
            break
        try:
            f = open(path, "rb")
        except OSError:
            continue
        with f:
            pos = f.seek(0, os.SEEK_END)
            data = b""
            while pos > 0:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
                if lines - 1 >= n - found:  # the first one may be cut: do not count it
                    break
        lines = data.splitlines(keepends=True)
        if pos > 0:
            lines = lines[1:]
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        take = lines[len(lines) - (n - found):] if len(lines) > n - found else lines
        parts.append(b"".join(take))
        found += len(take)
    return b"".join(reversed(parts))


# -- forwarding ----------------------------------------------------------------

class BoundedQueue:
    """FIFO of messages bounded by count and bytes; overflow drops the oldest."""

    def __init__(self, max_items: int = FORWARD_MAX_LINES, max_bytes: int = FORWARD_MAX_BYTES):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[bytes] = deque()
        self._bytes = 0

    def push(self, item: bytes) -> int:
        """Queue ``item``; returns how many items were dropped to make room."""
        dropped = 0
        self._items.append(item)
        self._bytes += len(item)
        while len(self._items) > self.max_items or (self._bytes > self.max_bytes and len(self._items) > 1):
            self._bytes -= len(self._items.popleft())
            dropped += 1
        if self._bytes > self.max_bytes:  # a single item larger than the whole budget
            self._bytes -= len(self._items.popleft())
            dropped += 1
        return dropped

    def push_front(self, item: bytes) -> None:
        """Put back the item just popped (it fitted a moment ago, so no bound is checked)."""
        self._items.appendleft(item)
        self._bytes += len(item)

    def pop(self) -> bytes:
        item = self._items.popleft()
        self._bytes -= len(item)
        return item

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes


def parse_target(forward: str) -> tuple[str, str, int]:
    """``udp://host:port`` / ``tcp://[v6]:port`` -> (scheme, host, port)."""
    scheme, _, rest = forward.partition("://")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    return scheme, host, int(port)


def _pending_bytes(transport) -> int:
    """Bytes a Twisted TCP transport still holds (0 when it does not say)."""
    try:
        held = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return 0
    return max(held, 0)


class Forwarder:
    """Common part of the UDP and TCP forwarders: the queue, the counters, flush waiting.

    ``send(message)`` never blocks and never raises; ``lost`` counts lines the
    agent knows it dropped (queue overflow, refused or failed sends).
    """

    def __init__(self, reactor, target: str):
        self.reactor = reactor
        self.target = target
        self.queue = BoundedQueue()
        self.sent = 0
        self.lost = 0
        self._down_logged = False
        self._lost_at_down = 0
        self._waiters: list = []

    # subclasses: _try_send(message) -> bool (False: keep it queued), _idle() -> bool

    def send(self, message: bytes) -> None:
        if not len(self.queue) and self._try_send(message):
            return
        self._count_lost(self.queue.push(message))

    def drain(self) -> None:
        """Send what is queued, in order, while the target takes it."""
        while len(self.queue):
            message = self.queue.pop()
            if not self._try_send(message):
                self.queue.push_front(message)  # still the oldest
                break
        self._check_waiters()

    def _count_lost(self, count: int) -> None:
        if count:
            self.lost += count
            self._mark_down()

    def _mark_down(self) -> None:
        if not self._down_logged:
            self._down_logged = True
            self._lost_at_down = self.lost
            log.warn("log forward target {target} is not taking lines; queueing up to {max} "
                     "and dropping the oldest beyond", target=self.target, max=self.queue.max_items)

    def _mark_up(self) -> None:
        if self._down_logged:
            self._down_logged = False
            log.info("log forward target {target} is taking lines again; {count} lines were lost meanwhile",
                     target=self.target, count=self.lost - self._lost_at_down)

    def flushed(self, timeout: float) -> Deferred:
        """Fires True once nothing is queued or held by the transport, False after ``timeout``."""
        if self._idle():
            return succeed(True)
        d = Deferred()
        entry = [d, None, None]

        def expire():
            entry[1] = None
            self._finish(entry, False)

        def poll():
            entry[2] = None
            if self._idle():
                self._finish(entry, True)
            else:
                entry[2] = self.reactor.callLater(0.02, poll)

        entry[1] = self.reactor.callLater(timeout, expire)
        entry[2] = self.reactor.callLater(0.02, poll)
        self._waiters.append(entry)
        return d

    def _finish(self, entry, value: bool) -> None:
        if entry in self._waiters:
            self._waiters.remove(entry)
        for i in (1, 2):
            call = entry[i]
            if call is not None and call.active():
                call.cancel()
            entry[i] = None
        if not entry[0].called:
            entry[0].callback(value)

    def _check_waiters(self) -> None:
        if self._waiters and self._idle():
            for entry in list(self._waiters):
                self._finish(entry, True)

    def stats(self) -> dict:
        return {"target": self.target, "sent": self.sent, "lost": self.lost, "queued": len(self.queue)}

    def start(self) -> None:  # pragma: no cover - overridden
        pass

    def stop(self) -> Deferred:
        for entry in list(self._waiters):
            self._finish(entry, False)
        return succeed(None)


class _UDPSender(DatagramProtocol):
    def __init__(self, owner: "UDPForwarder"):
        self.owner = owner

    def connectionRefused(self):
        # the kernel reports an ICMP port unreachable for (at least) one datagram
        self.owner._refused()

    def doStop(self):
        # The port went away under us: with epoll, a pending ICMP error on a
        # connected UDP socket arrives as EPOLLERR without EPOLLIN, which Twisted
        # treats as a lost connection. Open a new socket rather than go silent.
        super().doStop()
        self.owner._port_closed(self)


class UDPForwarder(Forwarder):
    """One datagram per line from a connected UDP socket (IPv4 or IPv6).

    UDP cannot tell whether a line arrived: a down target is noticed only when
    the kernel reports ICMP "port unreachable" (counted as one lost line each;
    the socket is then reopened). Lines queue (bounded) only while there is no
    socket: resolving the host name, or reopening.
    """

    def __init__(self, reactor, target: str, host: str, port: int):
        super().__init__(reactor, target)
        self.host, self.port = host, port
        self._port = None
        self._resolving = None
        self._stopped = False
        self._last_refused = 0.0

    def start(self) -> None:
        self._stopped = False
        self._connect()

    def _connect(self) -> None:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            self._resolve()
            return
        self._open(str(address), address.version)

    def _open(self, ip: str, version: int) -> None:
        try:
            port = self.reactor.listenUDP(0, _UDPSender(self), interface="::" if version == 6 else "0.0.0.0",
                                          maxPacketSize=2048)
            port.connect(ip, self.port)
        except Exception as e:  # bad address family, no route...: retry later, never raise
            log.warn("cannot open the log forward socket to {target}: {error}", target=self.target, error=e)
            self.reactor.callLater(RECONNECT_MAX, self._retry)
            return
        self._port = port
        self.drain()

    def _retry(self) -> None:
        if not self._stopped and self._port is None:
            self._connect()

    def _resolve(self) -> None:
        def resolved(infos):
            self._resolving = None
            if self._stopped:
                return
            for family, _, _, _, sockaddr in infos:
                self._open(sockaddr[0], 6 if family == socket.AF_INET6 else 4)
                return
            raise OSError("no address")

        def failed(f):
            self._resolving = None
            log.warn("cannot resolve log forward target {target}: {error}", target=self.target,
                     error=f.getErrorMessage())
            self.reactor.callLater(RECONNECT_MAX, self._retry)

        self._resolving = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), socket.getaddrinfo, self.host, self.port,
            0, socket.SOCK_DGRAM)
        self._resolving.addCallback(resolved).addErrback(failed)

    def _try_send(self, message: bytes) -> bool:
        if self._port is None:
            return False
        try:
            self._port.write(message)
        except Exception:  # EMSGSIZE, ENOBUFS, refused...: lost, never raised into the collector
            self._count_lost(1)
            return True
        self.sent += 1
        # UDP has no "connected" event: call the target back up once it has
        # refused nothing for a while (and log at most once per outage)
        if (self._down_logged and not len(self.queue)
                and self.reactor.seconds() - self._last_refused > UDP_QUIET_UP):
            self._mark_up()
        return True

    def _refused(self) -> None:
        self._last_refused = self.reactor.seconds()
        self._count_lost(1)

    def _port_closed(self, sender: "_UDPSender") -> None:
        if self._port is None or self._port.protocol is not sender:
            return  # stopped on purpose, or an older socket
        self._port = None
        self._refused()
        if not self._stopped:
            self.reactor.callLater(UDP_REOPEN_DELAY, self._retry)

    def _idle(self) -> bool:
        return not len(self.queue)

    def stop(self) -> Deferred:
        self._stopped = True
        port, self._port = self._port, None
        super().stop()
        if port is not None:
            return port.stopListening() or succeed(None)
        return succeed(None)


@implementer(IPushProducer)
class _TCPSender(Protocol):
    """Writes framed messages; pauses (queueing) when the transport's buffer fills."""

    def __init__(self, owner: "TCPForwarder"):
        self.owner = owner
        self.paused = False

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.owner._connected(self)

    def dataReceived(self, data):
        pass  # a syslog receiver never talks back

    def connectionLost(self, reason):
        self.owner._disconnected(self)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.owner.drain()

    def stopProducing(self):
        self.paused = True


class _TCPFactory(Factory):
    def __init__(self, owner):
        self.owner = owner

    def buildProtocol(self, addr):
        return _TCPSender(self.owner)


class TCPForwarder(Forwarder):
    """Octet-counted RFC 5424 over one TCP connection that reconnects by itself."""

    def __init__(self, reactor, target: str, host: str, port: int):
        super().__init__(reactor, target)
        endpoint = HostnameEndpoint(reactor, host, port, timeout=10)
        self.service = ClientService(endpoint, _TCPFactory(self), retryPolicy=backoffPolicy(
            initialDelay=RECONNECT_INITIAL, maxDelay=RECONNECT_MAX), clock=reactor)
        self.proto: _TCPSender | None = None
        self.connections = 0

    def start(self) -> None:
        self.service.startService()

    def _connected(self, proto: _TCPSender) -> None:
        self.proto = proto
        self.connections += 1
        log.info("log forwarding connected to {target}", target=self.target)
        self.drain()
        if not len(self.queue):
            self._mark_up()

    def _disconnected(self, proto: _TCPSender) -> None:
        if self.proto is proto:
            self.proto = None
            self._mark_down()

    def _try_send(self, message: bytes) -> bool:
        proto = self.proto
        if proto is None or proto.paused:
            return False
        proto.transport.write(frame_octet_counting(message))
        self.sent += 1
        return True

    def drain(self) -> None:
        super().drain()
        if self.proto is not None and not len(self.queue):
            self._mark_up()

    def _idle(self) -> bool:
        if len(self.queue):
            return False
        return self.proto is None or _pending_bytes(self.proto.transport) == 0

    def stop(self) -> Deferred:
        super().stop()
        return self.service.stopService()


def make_forwarder(reactor, forward: str) -> Forwarder | None:
    if not forward:
        return None
    scheme, host, port = parse_target(forward)
    cls = UDPForwarder if scheme == "udp" else TCPForwarder
    return cls(reactor, forward, host, port)


# -- per listener collection ---------------------------------------------------

class _Collector(DatagramProtocol):
    """Reads one listener's socket; each datagram becomes a file line and a forwarded message."""

    def __init__(self, logs: "ListenerLogs", lid: str, file: RotatingFile):
        self.logs = logs
        self.lid = lid
        self.file = file
        self.port = None
        self.received = 0
        self.tagger = Tagger(logs.hostname, logs.amphora_id, lid)

    def datagramReceived(self, data, addr):
        self.received += 1
        record = parse_datagram(data)
        self.file.append(file_line(record))
        forwarder = self.logs.forwarder
        if forwarder is not None:
            forwarder.send(self.tagger.format(record))

    def read_pending(self) -> int:
        """Read, now, every datagram already queued on the socket (haproxy's final lines)."""
        count = 0
        sock = getattr(self.port, "socket", None)
        if sock is None:
            return 0
        while True:
            try:
                data = sock.recv(DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:
                return count
            self.datagramReceived(data, None)
            count += 1


class ListenerLogs(Service):
    """Collects, stores and forwards every listener's haproxy log lines (``agent.logs``)."""

    name = "listener-logs"

    def __init__(self, config, reactor, hostname: str | None = None):
        self.config = config
        self.reactor = reactor
        self.amphora_id = config.agent.amphora_id
        self.hostname = hostname if hostname is not None else config.hostname
        self.log_dir = config.agent.log_dir
        self.socket_dir = os.path.join(config.agent.run_dir, "logs")
        self.max_bytes = config.logs.max_bytes
        self.backups = config.logs.backups
        self.forwarder = make_forwarder(reactor, config.logs.forward)
        self.listeners = None
        self._collectors: dict[str, _Collector] = {}
        for path in (self.log_dir, self.socket_dir):
            try:
                ensure_dir(path, 0o755)
            except OSError as e:  # logging never stops the agent: files/sockets fail later, logged
                log.error("cannot create {path}: {error}; listener logs will be missing", path=path,
                          error=e.strerror or str(e))

    # -- wiring ------------------------------------------------------------------

    def attach(self, listeners) -> None:
        """Register the config and delete hooks with the listener manager (if there is one)."""
        self.listeners = listeners
        if listeners is None:
            return
        if self.config_hook not in listeners.config_hooks:
            listeners.config_hooks.append(self.config_hook)
        if self.delete_hook not in listeners.delete_hooks:
            listeners.delete_hooks.append(self.delete_hook)

    def startService(self):
        super().startService()
        if self.forwarder is not None:
            self.forwarder.start()
        # haproxy keeps running across agent restarts and keeps sending to the
        # same path: listen again for every listener that exists. Without a
        # listener manager, the sockets a previous agent left say which.
        left = set(self._socket_ids())
        known = self._known_listener_ids() if self.listeners is not None else None
        wanted = left if known is None else set(known)
        for lid in sorted(wanted):
            self.ensure(lid)
        for lid in left - wanted:
            _unlink(self.socket_path(lid))

    def stopService(self):
        super().stopService()
        for lid in list(self._collectors):
            self._close(lid, unlink=False)  # the next agent binds the same paths again
        if self.forwarder is None:
            return None
        d = self.forwarder.flushed(1.0)
        d.addCallback(lambda _: self.forwarder.stop())
        return d

    def _known_listener_ids(self) -> list[str] | None:
        try:
            return list(self.listeners.listener_ids())
        except Exception as e:
            log.warn("cannot list listeners for log collection: {error}", error=e)
            return None

    def _exists(self, lid: str) -> bool:
        exists = getattr(self.listeners, "exists", None)
        if exists is None:
            return True
        try:
            return bool(exists(lid))
        except Exception as e:
            log.warn("cannot tell whether listener {lid} exists: {error}", lid=lid, error=e)
            return True

    def _socket_ids(self) -> list[str]:
        try:
            names = os.listdir(self.socket_dir)
        except OSError:
            return []
        return [n[:-5] for n in names if n.endswith(".sock") and is_listener_id(n[:-5])]

    # -- paths ---------------------------------------------------------------------

    def socket_path(self, lid: str) -> str:
        return os.path.join(self.socket_dir, f"{_check_id(lid)}.sock")

    def log_path(self, lid: str) -> str:
        return os.path.join(self.log_dir, f"{_check_id(lid)}.log")

    # -- hooks -----------------------------------------------------------------------

    def haproxy_cwd(self, lid: str) -> str:
        """haproxy's working directory: the listener's run directory (listener manager convention)."""
        return os.path.join(self.config.agent.run_dir, "listeners", _check_id(lid))

    def log_target(self, lid: str) -> str | None:
        """The socket path as haproxy must write it, or None if none fits in sun_path.

        The absolute path when it fits (always, with the default run_dir);
        otherwise the path relative to haproxy's working directory
        (``../../logs/<uuid>.sock``), as the listener manager does for its own sockets.
        """
        path = self.socket_path(lid)
        if len(os.fsencode(path)) <= HAPROXY_PATH_MAX:
            return path
        relative = os.path.relpath(path, self.haproxy_cwd(lid))
        return relative if len(os.fsencode(relative)) <= HAPROXY_PATH_MAX else None

    def config_fragment(self, lid: str) -> str:
        """The haproxy configuration text giving ``lid`` the agent's log target."""
        return (f"global\n"
                f"    # amphora-agent: listener logs (collected, rotated, forwarded by the agent)\n"
                f"    log unix@{self.log_target(lid)} len {LINE_MAX} format rfc5424 {FACILITY}\n")

    def config_hook(self, lid: str) -> str:
        """``listeners.config_hooks`` entry: bind the socket now, return the ``global`` text.

        If the socket cannot be bound the listener runs without agent logging
        (logged); haproxy is never prevented from starting by logging.

        The check of a first upload runs before the listener exists: it gets the
        text (``haproxy -c`` never opens the socket) but nothing is bound, so a
        refused upload leaves no socket or collector behind. The start that
        follows an accepted upload runs this hook again and binds.
        """
        if self.listeners is not None and not self._exists(lid):
            return self.config_fragment(lid) if self.log_target(lid) is not None else ""
        if not self.ensure(lid):
            return ""
        return self.config_fragment(lid)

    def delete_hook(self, lid: str) -> Deferred:
        """``listeners.delete_hooks`` entry: ship the final lines, then remove the files.

        haproxy has stopped when this runs; what it logged last is read from the
        socket at once. The forwarder gets ``DELETE_FLUSH_TIMEOUT`` seconds to
        hand everything to the kernel; after that the files are removed anyway
        and the lines still queued stay queued (sent if the target comes back,
        dropped and counted if the queue overflows first).
        """
        _check_id(lid)
        collector = self._collectors.get(lid)
        if collector is not None:
            collector.read_pending()
            collector.file.flush()
        self._close(lid)
        d = self.forwarder.flushed(DELETE_FLUSH_TIMEOUT) if self.forwarder is not None else succeed(True)

        def remove(flushed):
            if not flushed:
                log.warn("final log lines of listener {lid} not all forwarded within {timeout}s",
                         lid=lid, timeout=DELETE_FLUSH_TIMEOUT)
            RotatingFile(self.log_path(lid), self.max_bytes, self.backups, self.reactor).remove()
            _unlink(self.socket_path(lid))
            return None

        return d.addCallback(remove)

    # -- collectors ------------------------------------------------------------------

    def ensure(self, lid: str) -> bool:
        """Listen on ``lid``'s socket unless already listening; False if it cannot."""
        if lid in self._collectors:
            return True
        path = self.socket_path(lid)
        if self.log_target(lid) is None:
            log.error("listener {lid}: log socket path {path} does not fit in a UNIX socket address; "
                      "no agent log collection for it", lid=lid, path=path)
            return False
        dirfd = -1
        try:
            _unlink(path)  # a previous agent's socket: nobody reads it any more
            bind_path = path
            if len(os.fsencode(path)) > SUN_PATH_MAX:
                # too long to bind by name: bind through the directory's descriptor
                dirfd = os.open(self.socket_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                bind_path = f"/proc/self/fd/{dirfd}/{os.path.basename(path)}"
            collector = _Collector(self, lid, RotatingFile(self.log_path(lid), self.max_bytes, self.backups,
                                                           self.reactor))
            collector.port = self.reactor.listenUNIXDatagram(bind_path, collector, maxPacketSize=DATAGRAM_MAX,
                                                             mode=0o666)
        except (OSError, CannotListenError) as e:
            log.error("listener {lid}: cannot listen on log socket {path}: {error}", lid=lid, path=path,
                      error=e)
            return False
        finally:
            if dirfd >= 0:
                os.close(dirfd)
        self._collectors[lid] = collector
        return True

    def _close(self, lid: str, unlink: bool = True) -> None:
        collector = self._collectors.pop(lid, None)
        if collector is None:
            return
        collector.file.close()
        if collector.port is not None:
            collector.port.stopListening()
        if unlink:
            _unlink(self.socket_path(lid))

    def collecting(self, lid: str) -> bool:
        return lid in self._collectors

    def knows(self, lid: str) -> bool:
        """Whether the agent has logs for ``lid`` (a socket listening or a log file)."""
        return lid in self._collectors or os.path.exists(self.log_path(lid))

    # -- reading ---------------------------------------------------------------------

    def tail(self, lid: str, lines: int) -> bytes:
        """The last ``lines`` lines of ``lid``'s log (current file then backups)."""
        collector = self._collectors.get(lid)
        if collector is not None:
            collector.file.flush()
        files = RotatingFile(self.log_path(lid), self.max_bytes, self.backups, self.reactor).files()
        return tail_lines(files, lines)

    def counters(self, lid: str) -> dict[str, int]:
        """Loss counters shown as headers by GET .../logs: lines the file dropped, lines the
        forwarder lost (all listeners: one queue) since the agent started."""
        collector = self._collectors.get(lid)
        result = {"x-log-file-dropped": collector.file.dropped if collector is not None else 0}
        if self.forwarder is not None:
            result["x-log-forward-lost"] = self.forwarder.lost
        return result

    def stats(self) -> dict:
        files = {lid: {"received": c.received, "written": c.file.written, "dropped": c.file.dropped}
                 for lid, c in self._collectors.items()}
        return {"listeners": files,
                "forward": self.forwarder.stats() if self.forwarder is not None else None}


def _check_id(lid: str) -> str:
    """Listener ids become paths here: only canonical UUIDs get that far."""
    if not is_listener_id(lid):
        raise ValueError(f"not a canonical listener UUID: {lid!r}")
    return lid

