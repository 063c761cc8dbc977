"""Forwarding listener log lines to a syslog target (``[logs] forward``).

``make_forwarder`` turns ``udp://host:port`` / ``tcp://host:port`` into a
forwarder. ``send(message)`` never blocks and never raises: lines wait in a
``BoundedQueue`` (lines and bytes) while the target is down or slow, the
oldest dropped and counted in ``lost`` when it is full. TCP frames by octet
counting (RFC 6587) and reconnects through ``ClientService``; UDP reopens its
socket after an ICMP error or a failed open/resolve. Both retry on
``backoffPolicy`` schedules.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import deque

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from amphora.listeners.logs.syslog import frame_octet_counting

log = Logger()

#: Forward queue bounds (lines and bytes): beyond them the oldest lines are lost.
FORWARD_MAX_LINES = 10000
FORWARD_MAX_BYTES = 4 * 1024 * 1024
#: Reconnect / reopen backoff (seconds): TCP starts at RECONNECT_INITIAL...
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 30.0
#: ...UDP reopens a socket closed by an ICMP error after this delay (and backs off
#: from it while opening or resolving fails).
UDP_REOPEN_DELAY = 0.2
#: A UDP target is called up again after this many seconds without a refusal.
UDP_QUIET_UP = 5.0


def _no_jitter() -> float:
    return 0.0


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
        self._retry_policy = backoffPolicy(initialDelay=UDP_REOPEN_DELAY, maxDelay=RECONNECT_MAX,
                                           jitter=_no_jitter)
        self._failures = 0  # opens / resolutions failed in a row
        self._retry_call = None

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
            self._schedule_retry(failed=True)
            return
        self._port = port
        self._failures = 0
        self.drain()

    def _schedule_retry(self, failed: bool) -> None:
        """Try to open a socket again after the policy's delay (growing while opening fails)."""
        if self._stopped or (self._retry_call is not None and self._retry_call.active()):
            return
        delay = self._retry_policy(self._failures)
        if failed:
            self._failures += 1
        self._retry_call = self.reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
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
            self._schedule_retry(failed=True)

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
        self._schedule_retry(failed=False)

    def _idle(self) -> bool:
        return not len(self.queue)

    def stop(self) -> Deferred:
        self._stopped = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
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

    def start(self) -> None:
        self.service.startService()

    def _connected(self, proto: _TCPSender) -> None:
        self.proto = proto
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
