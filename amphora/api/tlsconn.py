"""The API's TLS layer per connection: Twisted's, without one needless cost.

``reactor.listenSSL`` wraps the site in Twisted's ``TLSMemoryBIOFactory``
over a TCP port; the agent does the same (``tls_factory``) with one change.
For each new connection Twisted's ``TLSMemoryBIOProtocol.makeConnection``
declares the transport's interfaces on the protocol: once per interface in a
loop (each ``directlyProvides`` replacing the one before), then once more for
all of them in ``ProtocolWrapper.makeConnection``, the declaration that
stays. Every call builds a zope ``Provides`` specification, looked up in a
weak-value cache that has lost it again by the next connection: about 40 µs
of the ~1.1 ms of server CPU a new connection costs (``bench/newconn_path.py``).

``AgentTLSProtocol`` sets that final declaration, computed once per
transport class and kept, and otherwise makes Twisted's calls in Twisted's
order (each once). ``tests/unit/test_tlsconn.py`` compares it with Twisted's own
protocol on every run (attributes, declarations, the wrapped protocol's
connection, a handshake), so a Twisted release that changes these steps
fails a test instead of drifting silently. A transport whose interfaces are
not only its class's, or a protocol not connecting its wrapped protocol (a
``startTLS``), gets Twisted's ``makeConnection`` unchanged.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import directlyProvides, implementedBy, providedBy

_declarations: dict = {}  # (protocol class, transport class) -> the Provides declaration


def _declaration(protocol, transport):
    """The ``__provides__`` Twisted's ``makeConnection`` leaves on ``protocol``, or None when the
    transport's interfaces are not its class's alone (then nothing is cached)."""
    cls = type(transport)
    provided = providedBy(transport)
    if provided is not implementedBy(cls):
        return None
    key = (type(protocol), cls)
    spec = _declarations.get(key)
    if spec is None:
        directlyProvides(protocol, provided)  # as ProtocolWrapper.makeConnection declares it
        spec = _declarations[key] = protocol.__provides__
    return spec


class AgentTLSProtocol(BufferingTLSTransport):
    """``BufferingTLSTransport`` (what ``TLSMemoryBIOFactory`` builds) with the interface
    declaration cached per transport class."""

    def makeConnection(self, transport):
        spec = _declaration(self, transport) if self._connectWrapped else None
        if spec is None:
            return super().makeConnection(transport)
        # TLSMemoryBIOProtocol.makeConnection with ProtocolWrapper.makeConnection inlined, minus
        # their directlyProvides calls (the declaration they end with is set here) and minus the
        # wrapper's repeat of Protocol.makeConnection and registerProtocol (the same attributes,
        # a no-op connectionMade, the same registry entry).
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        self.__provides__ = spec
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)
        self._checkHandshakeStatus()


class AgentTLSFactory(TLSMemoryBIOFactory):
    protocol = AgentTLSProtocol


def tls_factory(context_factory, wrapped_factory) -> AgentTLSFactory:
    """The server side of the API's TLS, as ``listenSSL`` builds it: the context comes from
    ``context_factory.getContext()`` for every connection (a rotated certificate applies to
    the next one)."""
    return AgentTLSFactory(context_factory, False, wrapped_factory)
