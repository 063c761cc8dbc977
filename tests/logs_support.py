"""Test helpers for listener logs: syslog receivers (UDP, TCP octet-counting) and a bare haproxy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater

HAPROXY = "/usr/sbin/haproxy"


async def wait_for(predicate, timeout: float = 5.0, step: float = 0.02, what: str = "condition"):
    """Polls ``predicate`` through the reactor until true; AssertionError after ``timeout``."""
    waited = 0.0
    while True:
        value = predicate()
        if value:
            return value
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(_reactor, step, lambda: None)
        waited += step


def short_dir() -> str:
    """A short directory (UNIX socket paths must stay under 108 bytes)."""
    return tempfile.mkdtemp(prefix="amp10-", dir="/tmp")


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class UDPReceiver(DatagramProtocol):
    """A syslog-over-UDP receiver: one message per datagram."""

    def __init__(self):
        self.messages: list[bytes] = []
        self.port = None

    def datagramReceived(self, data, addr):
        self.messages.append(data)

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.port = _reactor.listenUDP(port, self, interface=host)
        return self.port.getHost().port

    async def stop(self):
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()


class _Framed(Protocol):
    def __init__(self, receiver):
        self.receiver = receiver
        self.buf = b""

    def connectionMade(self):
        self.receiver.connections.append(self)

    def connectionLost(self, reason):
        if self in self.receiver.connections:
            self.receiver.connections.remove(self)

    def dataReceived(self, data):
        self.buf += data
        while True:
            length, sep, rest = self.buf.partition(b" ")
            if not sep:
                return
            if not length.isdigit():
                self.receiver.errors.append(self.buf)
                self.transport.loseConnection()
                return
            n = int(length)
            if len(rest) < n:
                return
            self.receiver.messages.append(rest[:n])
            self.buf = rest[n:]


class TCPReceiver(Factory):
    """A syslog-over-TCP receiver with RFC 6587 octet-counting framing; can go down and up."""

    def __init__(self):
        self.messages: list[bytes] = []
        self.errors: list[bytes] = []
        self.connections: list[_Framed] = []
        self.port = None
        self.number = 0
        self.host = "127.0.0.1"

    def buildProtocol(self, addr):
        return _Framed(self)

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.host = host
        self.port = _reactor.listenTCP(port, self, interface=host)
        self.number = self.port.getHost().port
        return self.number

    async def down(self):
        """Stop listening and cut every connection (the target is gone)."""
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        for conn in list(self.connections):
            conn.transport.abortConnection()
        await wait_for(lambda: not self.connections, what="receiver connections closed")

    def up(self):
        self.listen(self.host, self.number)

    async def stop(self):
        await self.down()


class Haproxy:
    """A real haproxy in the foreground (-db) with the agent's fragment FIRST, then the uploaded file."""

    def __init__(self, directory: str, fragment: str, uploaded: str):
        self.directory = directory
        self.fragment_path = os.path.join(directory, "agent.cfg")
        self.config_path = os.path.join(directory, "haproxy.cfg")
        with open(self.fragment_path, "w") as f:
            f.write(fragment)
        with open(self.config_path, "w") as f:
            f.write(uploaded)
        self.proc: subprocess.Popen | None = None
        self.output_path = os.path.join(directory, "haproxy.out")

    def start(self) -> "Haproxy":
        self._out = open(self.output_path, "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.fragment_path, "-f", self.config_path],
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop: lets it log its last lines
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._out.close()

    def output(self) -> str:
        try:
            with open(self.output_path, "rb") as f:
                return f.read().decode(errors="replace")[-3000:]
        except OSError:
            return ""


def http_config(port: int, extra_global: str = "") -> str:
    """An Octavia-like uploaded configuration: ``log global`` in defaults, httplog, one frontend."""
    return f"""global
    maxconn 1000
    user nobody
    group nogroup
{extra_global}
defaults
    log global
    mode http
    option httplog
    option dontlognull
    timeout connect 5s
    timeout client 5s
    timeout server 5s

frontend fe
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string ok
"""
