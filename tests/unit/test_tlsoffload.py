"""``OffloadingTLS``: handshake steps in a pool, with the connection untouched meanwhile.

Real OpenSSL on both sides through memory BIOs; the pool is a hand-driven fake
(``run`` does the queued step), so every interleaving is chosen by the test.
"""

from __future__ import annotations

import pytest
from OpenSSL import SSL
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from amphora.api import tlsoffload
from amphora.api.tls import ServerContextFactory
from amphora.config import TLSSection
from tests.helpers import make_pki


class HandPool:
    def __init__(self):
        self.queue = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.queue.append((on_result, f, args, kwargs))

    def run(self):
        on_result, f, args, kwargs = self.queue.pop(0)
        on_result(True, f(*args, **kwargs))


class InlineReactor:
    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


@implementer(IHandshakeListener)
class App(Protocol):
    def __init__(self):
        self.data, self.handshakes, self.lost = b"", 0, []

    def handshakeCompleted(self):
        self.handshakes += 1

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.append(reason)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def _pair(pki):
    tls = TLSSection(server_cert=pki.paths["server"], server_key=None, client_ca=pki.paths["ca"])
    pool, app = HandPool(), App()
    factory = tlsoffload.OffloadingTLSFactory(ServerContextFactory(tls), Factory.forProtocol(lambda: app),
                                              InlineReactor(), pool, clock=Clock())
    server = factory.buildProtocol(None)
    wire = StringTransport()
    server.makeConnection(wire)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.use_certificate_file(pki.paths["client_cert"])
    ctx.use_privatekey_file(pki.paths["client_key"])
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    return server, wire, client, pool, app


def _client_flight(client) -> bytes:
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    out = b""
    while True:
        try:
            out += client.bio_read(65536)
        except SSL.WantReadError:
            return out


def _to_client(wire, client):
    client.bio_write(wire.value())
    wire.clear()


def test_a_handshake_runs_in_the_pool_and_bytes_that_arrive_meanwhile_follow_in_order(pki):
    server, wire, client, pool, app = _pair(pki)
    server.dataReceived(_client_flight(client))  # the ClientHello
    assert len(pool.queue) == 1 and server._busy and wire.value() == b""
    pool.run()
    assert wire.value() and not server._handshakeDone  # ServerHello ... Finished, from the pool's step
    _to_client(wire, client)
    flight = _client_flight(client)
    client.send(b"GET / HTTP/1.1\r\n\r\n")  # the request right behind the client's Finished
    request = client.bio_read(65536)
    server.dataReceived(flight[:10])
    server.dataReceived(flight[10:])       # held: the first part's step is running
    server.dataReceived(request)           # held too
    assert len(pool.queue) == 1 and app.data == b""
    while pool.queue:
        pool.run()
    assert server._handshakeDone and app.handshakes == 1
    assert app.data == b"GET / HTTP/1.1\r\n\r\n"
    client.send(b"more")
    server.dataReceived(client.bio_read(65536))  # after the handshake: the reactor thread, no pool
    assert pool.queue == [] and app.data.endswith(b"more")


def test_a_connection_lost_during_a_step_is_delivered_after_it(pki):
    server, wire, client, pool, app = _pair(pki)
    server.dataReceived(_client_flight(client))
    server.connectionLost(Failure(ConnectionLost()))
    assert app.lost == [] and server._tlsConnection is not None  # the step still owns it
    pool.run()
    assert len(app.lost) == 1 and server._tlsConnection is None


def test_an_abort_during_a_step_leaves_the_connection_to_it(pki):
    server, wire, client, pool, app = _pair(pki)
    server.dataReceived(_client_flight(client))
    server.abortConnection()  # e.g. the header deadline: no TLS alert while the step runs
    assert wire.disconnecting or wire.disconnected
    pool.run()
    assert wire.value() == b""  # nothing written after the abort
    server.connectionLost(Failure(ConnectionLost()))
    assert len(app.lost) == 1


def test_a_failed_handshake_is_closed_as_twisted_does(pki):
    server, wire, client, pool, app = _pair(pki)
    server.dataReceived(b"\x16\x03\x01\x00\x05hello, no TLS at all")
    pool.run()
    assert wire.disconnecting and not server._busy and app.handshakes == 0


@implementer(IOpenSSLContextFactory)
class AnyContext:
    def getContext(self):
        return SSL.Context(SSL.TLS_SERVER_METHOD)


def test_one_cpu_means_twisteds_own_factory(monkeypatch):
    factory, pool = tlsoffload.tls_factory(AnyContext(), Factory(), InlineReactor(), threads=0)
    assert pool is None and type(factory).protocol is not tlsoffload.OffloadingTLS
    factory, pool = tlsoffload.tls_factory(AnyContext(), Factory(), InlineReactor(), threads=2)
    assert isinstance(factory, tlsoffload.OffloadingTLSFactory) and pool.max == 2 and not pool.started
    monkeypatch.setattr(tlsoffload.os, "sched_getaffinity", lambda _: {0})
    assert tlsoffload.handshake_threads() == 0
    monkeypatch.setattr(tlsoffload.os, "sched_getaffinity", lambda _: set(range(16)))
    assert tlsoffload.handshake_threads() == tlsoffload.MAX_THREADS
