"""The TLS front door: one pyOpenSSL context, built once, for mutual TLS.

- TLS 1.2 is the minimum; compression is off.
- The server presents its whole chain (leaf first, as in ``tls.server_cert``).
- A client certificate is *requested* and verified against ``tls.client_ca``:
  one from another CA, or an expired one, fails the handshake. A client that
  sends none completes the handshake so it can be told ``401`` in JSON (the
  spec's "Authentication of the client certificate failed").
- Session resumption with tickets: a controller that keeps its TLS session
  and reconnects skips the certificate exchange (and the RSA signature). The
  ticket key lives in this context only (a restart invalidates every ticket),
  a session lives ``SESSION_LIFETIME`` seconds, and there is no server-side
  session cache: tickets carry the session, so no per-client memory is kept.

What a new connection costs beyond the handshake itself is kept to nothing
(measured against bare Klein, see bench/api_throughput.py): OpenSSL verifies
the chain without a Python callback (pyOpenSSL's callback made two upcalls and
two certificate wrappers per handshake), and the client's subject, needed once
per connection, is parsed once per distinct certificate (``peer_subject``).
"""

from __future__ import annotations

from functools import lru_cache

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from amphora.config import TLSSection

# How long a resumable session (a ticket) stays valid. Short: a resumed
# handshake does not re-check the client certificate's validity period.
SESSION_LIFETIME = 300


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
        # OpenSSL does the chain and validity checks; no callback, its verdict stands.
        ctx.set_verify(SSL.VERIFY_PEER)
        ctx.set_session_id(b"amphora-agent")  # resumption with client certificates needs it
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # tickets only: nothing kept per session
        ctx.set_timeout(SESSION_LIFETIME)
        self._context = ctx

    def getContext(self) -> SSL.Context:
        return self._context


def peer_subject(transport) -> str | None:
    """The verified client certificate's subject (``CN=...``), or None if there is none."""
    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        return None
    return _subject(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))


@lru_cache(maxsize=64)
def _subject(der: bytes) -> str:
    # Parsing the certificate and rendering RFC 4514 costs several times the
    # DER dump; controllers present the same few certificates again and again.
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()
