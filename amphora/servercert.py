"""Rotation of the agent's own server certificate without a restart
(``PUT /1.0/certificate``, ``PUT /0.5/certificate``).

The body is what Octavia's housekeeping sends: the new certificate (CN = the
amphora id), optionally its intermediates, and its private key, all PEM. Before
anything is replaced:

1. it is parsed (at least one certificate, exactly one unencrypted private key,
   nothing else), the key matches the first certificate, each further
   certificate issued the one before it, and the leaf is within its validity;
2. an OpenSSL server context is built from it, with the agent's TLS settings
   (``amphora.api.tls.ServerContextFactory``), so what is installed is exactly
   what will serve.

Only then is it stored where ``[tls] server_cert`` points (the key where
``[tls] server_key`` points, if set; otherwise after the chain in the one
file), each file written atomically, mode 0600, and the context holder swaps
to the new context: the next handshake presents the new certificate, while
connections already open keep the context they were made with. A restart
reads the same files. A refused body changes nothing.

With two files, the key is written before the certificate: a crash between the
two leaves the old certificate with the new key, which the agent refuses at its
next start (``tls.server_key: private key does not match``) rather than serving
something unexpected.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from amphora.api.tls import ServerContextFactory
from amphora.config import TLSSection
from amphora.errors import InvalidRequest
from amphora.fsutil import atomic_write

log = Logger()

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.S)
_KEY_TYPES = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")


@implementer(IOpenSSLContextFactory)
class ContextHolder:
    """The context factory the API endpoint holds: Twisted asks it for a context at
    every new connection, and it answers with the current one. ``swap`` makes the
    next handshake use another; connections already open are not touched."""

    def __init__(self, factory):
        self.factory = factory

    def getContext(self) -> SSL.Context:
        return self.factory.getContext()

    def swap(self, factory) -> None:
        self.factory = factory


@dataclasses.dataclass(frozen=True)
class ServerPEM:
    chain: bytes   # the certificates, leaf first, PEM
    key: bytes     # the private key, PEM
    leaf: x509.Certificate


def _refuse(why: str) -> InvalidRequest:
    return InvalidRequest(why, message="Invalid server certificate")


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_server_pem(data: bytes, now: datetime.datetime | None = None) -> ServerPEM:
    """The validated certificate chain and key of ``data``, or 400 naming what is wrong."""
    blocks = [(m.group(1), m.group(0)) for m in _BLOCK.finditer(data)]
    if not blocks:
        raise _refuse("the body holds no PEM block (expected the certificate and its private key)")
    rest = _BLOCK.sub(b"", data).strip()
    if rest:
        raise _refuse("the body holds text outside PEM blocks")
    certs_pem = [b for kind, b in blocks if kind == b"CERTIFICATE"]
    keys_pem = [b for kind, b in blocks if kind in _KEY_TYPES]
    others = sorted({kind.decode() for kind, _ in blocks if kind != b"CERTIFICATE" and kind not in _KEY_TYPES})
    if others:
        raise _refuse(f"unexpected PEM blocks: {', '.join(others)}")
    if not certs_pem:
        raise _refuse("no certificate in the body")
    if len(keys_pem) != 1:
        raise _refuse(f"expected exactly one private key, found {len(keys_pem)}")
    try:
        certs = [x509.load_pem_x509_certificate(b) for b in certs_pem]
    except ValueError as e:
        raise _refuse(f"a certificate does not parse: {e}") from None
    try:
        key = serialization.load_pem_private_key(keys_pem[0], password=None)
    except TypeError:
        raise _refuse("the private key is encrypted") from None
    except ValueError as e:
        raise _refuse(f"the private key does not parse: {e}") from None
    leaf = certs[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise _refuse("the private key does not match the certificate")
    for child, issuer in zip(certs, certs[1:]):
        try:
            child.verify_directly_issued_by(issuer)
        except Exception as e:  # ValueError, TypeError, InvalidSignature (which has no message)
            raise _refuse(f"the chain is broken: {child.subject.rfc4514_string()} is not issued by "
                          f"{issuer.subject.rfc4514_string()} ({type(e).__name__})") from None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise _refuse(f"the certificate is not valid now (valid {leaf.not_valid_before_utc.isoformat()} "
                      f"to {leaf.not_valid_after_utc.isoformat()})")
    return ServerPEM(b"".join(_ended(b) for b in certs_pem), _ended(keys_pem[0]), leaf)


def _ended(block: bytes) -> bytes:
    return block if block.endswith(b"\n") else block + b"\n"


def names_of(cert: x509.Certificate) -> set[str]:
    names = {a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
    try:
        names.update(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                     .get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return names


class ServerCertificate:
    """Validates, stores and installs a new server certificate (see the module docstring)."""

    def __init__(self, tls: TLSSection, holder: ContextHolder, amphora_id: str, scratch_dir: str,
                 build=ServerContextFactory):
        self.tls = tls
        self.holder = holder
        self.amphora_id = amphora_id
        self.scratch_dir = scratch_dir  # private (0700): the key is written there to build the context
        self.build = build

    def rotate(self, data: bytes) -> str:
        """Install ``data``; returns the new certificate's subject. 400 if refused (nothing changed)."""
        pem = parse_server_pem(data)
        factory = self._context_for(pem)
        if self.amphora_id not in names_of(pem.leaf):
            log.warn("server certificate: the new certificate does not name this amphora ({amphora_id});"
                     " Octavia's controllers check that name", amphora_id=self.amphora_id)
        if self.tls.server_key:
            atomic_write(self.tls.server_key, pem.key, 0o600)
            atomic_write(self.tls.server_cert, pem.chain, 0o600)
        else:
            atomic_write(self.tls.server_cert, pem.chain + pem.key, 0o600)
        self.holder.swap(factory)
        subject = pem.leaf.subject.rfc4514_string()
        log.info("server certificate replaced: {subject}, serial {serial:x}, valid until {until}",
                 subject=subject, serial=pem.leaf.serial_number, until=pem.leaf.not_valid_after_utc.isoformat())
        return subject

    def _context_for(self, pem: ServerPEM):
        """The new server context, built by OpenSSL from private scratch copies (the
        context keeps what it loaded; the copies are removed at once)."""
        with tempfile.TemporaryDirectory(prefix=".rotate-", dir=self.scratch_dir) as tmp:
            cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, content in ((cert_path, pem.chain), (key_path, pem.key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
            try:
                return self.build(dataclasses.replace(self.tls, server_cert=cert_path, server_key=key_path))
            except SSL.Error as e:
                raise _refuse(f"OpenSSL refuses it: {e}") from None
