"""The TLS front door: one pyOpenSSL context, built once, for mutual TLS.

- TLS 1.2 is the minimum; compression is off.
- The server presents its whole chain (leaf first, as in ``tls.server_cert``).
- A client certificate is *requested* and verified against ``tls.client_ca``:
  one from another CA, or an expired one, fails the handshake. A client that
  sends none completes the handshake so it can be told ``401`` in JSON (the
  spec's "Authentication of the client certificate failed").
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from amphora.config import TLSSection


def _verify(conn, cert, errno, depth, ok) -> bool:
    # OpenSSL has done the chain and validity checks; keep its verdict.
    return bool(ok)


@implementer(IOpenSSLContextFactory)
class ServerContextFactory:
    """Builds the server context once; every connection reuses it."""

    def __init__(self, tls: TLSSection):
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.use_certificate_chain_file(tls.server_cert)
        ctx.use_privatekey_file(tls.server_key or tls.server_cert)
        ctx.check_privatekey()
        ctx.load_verify_locations(tls.client_ca)
        ctx.load_client_ca(tls.client_ca.encode())  # names the acceptable CAs to the client
        ctx.set_verify(SSL.VERIFY_PEER, _verify)
        ctx.set_session_id(b"amphora-agent")
        self._context = ctx

    def getContext(self) -> SSL.Context:
        return self._context


def peer_subject(transport) -> str | None:
    """The verified client certificate's subject (``CN=...``), or None if there is none."""
    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        return None
    return cert.to_cryptography().subject.rfc4514_string()
