"""The TLS front door: one pyOpenSSL context, built once, for mutual TLS.

- TLS 1.2 is the minimum; compression is off.
- The server presents its whole chain: the leaf and the intermediates in
  ``tls.server_cert``, completed with any intermediate ``tls.client_ca``
  holds for it, never a self-signed root (the client has its trust anchor;
  RFC 8446 4.4.2). The chain is built once here: left to itself, OpenSSL
  completes it from the verify store on every handshake, root included
  (measured ~100 µs of server CPU per new connection, and one more
  certificate for every client to parse).
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
from cryptography.exceptions import InvalidSignature
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from amphora.config import TLSSection

# OpenSSL's SSL_MODE_NO_AUTO_CHAIN (ssl.h; 0x8 since OpenSSL 1.0.2), which pyOpenSSL does not name.
NO_AUTO_CHAIN = 0x00000008

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
        for cert in completing_intermediates(tls.server_cert, tls.client_ca):
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(cert))
        ctx.set_mode(NO_AUTO_CHAIN)  # the chain is the file's and the one completed above
        # OpenSSL does the chain and validity checks; no callback, its verdict stands.
        ctx.set_verify(SSL.VERIFY_PEER)
        ctx.set_session_id(b"amphora-agent")  # resumption with client certificates needs it
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # tickets only: nothing kept per session
        ctx.set_timeout(SESSION_LIFETIME)
        self._context = ctx

    def getContext(self) -> SSL.Context:
        return self._context


def _read_certificates(path: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        return []


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _issued(cert: x509.Certificate, by: x509.Certificate) -> bool:
    if cert.issuer != by.subject:
        return False
    try:
        cert.verify_directly_issued_by(by)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def completing_intermediates(server_cert: str, client_ca: str) -> list[x509.Certificate]:
    """The intermediates from ``client_ca`` that continue the chain of ``server_cert`` (the leaf
    and whatever intermediates the file holds) up to, not including, a self-signed root."""
    chain = _read_certificates(server_cert)
    pool = [c for c in _read_certificates(client_ca) if not _self_signed(c) and c not in chain]
    found: list[x509.Certificate] = []
    current = chain[-1] if chain else None
    while current is not None and not _self_signed(current):
        # each step takes a certificate not taken before: the walk ends
        current = next((c for c in pool if c not in found and _issued(current, by=c)), None)
        if current is not None:
            found.append(current)
    return found


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
