"""The runtime API client on a real UNIX socket served by a fake haproxy (no haproxy needed)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from amphora.listeners.stats import query
from tests.listener_support import remove_dir, short_dir


class FakeCLI(Protocol):
    """Answers like haproxy in non-interactive mode: one command (payload up to an empty line), then close."""

    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        first = self.buffer.split(b"\n", 1)[0]
        done = self.buffer.endswith(b"\n\n") if b"<<" in first else self.buffer.endswith(b"\n")
        if done:
            self.factory.received.append(self.buffer)
            self.transport.write(b"answer to " + first + b"\n")
            self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_commands_and_payload_commands():
    directory = short_dir("amp3")
    path = f"{directory}/s.sock"
    factory = Factory.forProtocol(FakeCLI)
    factory.received = []
    port = await UNIXServerEndpoint(reactor, path).listen(factory)
    try:
        assert await query(reactor, path, "show info") == b"answer to show info\n"
        pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        answer = await query(reactor, path, f"set ssl cert /c/x.pem <<\n{pem}")
        assert answer == b"answer to set ssl cert /c/x.pem <<\n"
        assert factory.received == [b"show info\n", f"set ssl cert /c/x.pem <<\n{pem}\n".encode()]
    finally:
        await port.stopListening()
        remove_dir(directory)
