"""amphora.api.tlsconn: the agent's TLS connections are Twisted's, minus the per-connection
interface declarations (the two are compared here on every run)."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import alsoProvides, directlyProvidedBy, providedBy
from zope.interface.interface import Interface

from amphora.api import tlsconn
from amphora.api.tls import ServerContextFactory, peer_subject
from amphora.config import load_config
from tests.helpers import TCPLike, drain_bio, write_config

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Recorder(Protocol):
    made = 0

    def connectionMade(self):
        type(self).made += 1


class IExtra(Interface):
    """An interface one transport instance provides on its own."""


def _pair(pki, tmp_path):
    context = ServerContextFactory(load_config(write_config(pki, str(tmp_path))).tls)
    wrapped = Factory.forProtocol(Recorder)
    return (TLSMemoryBIOFactory(context, False, wrapped, clock=Clock()),
            tlsconn.tls_factory(context, wrapped))


def _connect(factory, transport):
    protocol = factory.buildProtocol(PEER)
    protocol.makeConnection(transport)
    return protocol


def test_connection_is_set_up_as_twisteds(pki, tmp_path):
    twisted_factory, agent_factory = _pair(pki, tmp_path)
    made = Recorder.made
    theirs, ours = _connect(twisted_factory, TCPLike()), _connect(agent_factory, TCPLike())
    assert Recorder.made == made + 2  # both connected the wrapped protocol
    assert isinstance(ours, tlsconn.AgentTLSProtocol)
    # the same attributes set, the same interfaces provided, the same declaration left
    assert sorted(vars(ours)) == sorted(vars(theirs))
    assert list(providedBy(ours)) == list(providedBy(theirs))
    assert list(directlyProvidedBy(ours)) == list(directlyProvidedBy(theirs)) != []
    assert ours in agent_factory.protocols and ours.wrappedProtocol.transport is ours
    assert isinstance(ours.getHandle(), SSL.Connection)


def test_declaration_is_cached_per_transport_class(pki, tmp_path):
    _, factory = _pair(pki, tmp_path)
    first, second = _connect(factory, TCPLike()), _connect(factory, TCPLike())
    assert first.__dict__["__provides__"] is second.__dict__["__provides__"]
    assert list(directlyProvidedBy(second)) == list(directlyProvidedBy(first)) != []


def test_transport_with_its_own_interfaces_gets_twisteds_path(pki, tmp_path):
    twisted_factory, agent_factory = _pair(pki, tmp_path)
    special = TCPLike()
    alsoProvides(special, IExtra)
    ours = _connect(agent_factory, special)
    theirs_transport = TCPLike()
    alsoProvides(theirs_transport, IExtra)
    theirs = _connect(twisted_factory, theirs_transport)
    assert list(providedBy(ours)) == list(providedBy(theirs))
    assert list(directlyProvidedBy(ours)) == list(directlyProvidedBy(theirs))
    assert tlsconn._declaration(ours, special) is None  # not cached by class: Twisted's own steps


def test_handshake_and_request_through_it(pki, tmp_path):
    """A real in-memory handshake with the client certificate, then bytes both ways."""
    received = []

    class Echo(Protocol):
        def dataReceived(self, data):
            received.append(data)
            self.transport.write(data.upper())

    context = ServerContextFactory(load_config(write_config(pki, str(tmp_path))).tls)
    factory = tlsconn.AgentTLSFactory(context, False, Factory.forProtocol(Echo), clock=Clock())
    transport = TCPLike()
    server = _connect(factory, transport)
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.use_certificate_file(pki.paths["client_cert"])
    client_ctx.use_privatekey_file(pki.paths["client_key"])
    client_ctx.load_verify_locations(pki.paths["ca"])
    client_ctx.set_verify(SSL.VERIFY_PEER)
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()

    answer = b""
    sent = False
    for _ in range(10):
        try:
            client.do_handshake()
            if not sent:
                client.send(b"hello")
                sent = True
        except SSL.WantReadError:
            pass
        server.dataReceived(drain_bio(client))
        factory._clock.advance(0)
        client.bio_write(transport.value())
        transport.clear()
        for _ in range(3):
            try:
                answer += client.recv(100)
            except SSL.WantReadError:
                pass
        if answer:
            break
    assert received == [b"hello"] and answer == b"HELLO"
    assert peer_subject(server) == "CN=test-controller"
