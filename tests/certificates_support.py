"""Helpers for the certificate tests: real keys and certificates, a fake listener
manager, a real haproxy with TLS on loopback, and a TLS client that reports what
certificate it was served."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from twisted.internet.task import deferLater

from amphora import devpki

HAPROXY = "/usr/sbin/haproxy"


@lru_cache(maxsize=None)
def root_ca() -> devpki.Issued:
    return devpki.make_ca("amp4 test root CA")


@lru_cache(maxsize=None)
def intermediate_ca() -> devpki.Issued:
    return devpki.make_ca("amp4 test intermediate CA", issuer=root_ca())


@dataclass
class Bundle:
    """One certificate with its key and chain, as PEM pieces."""

    issued: devpki.Issued
    chain: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return self.issued.key_pem

    @property
    def cert(self) -> bytes:
        return self.issued.cert_pem

    @property
    def cn(self) -> str:
        return self.issued.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    def pem(self) -> bytes:
        """Key, leaf, chain: the order the spec describes."""
        return self.key + self.cert + b"".join(self.chain)


def bundle(cn: str = "www.example.com", key_kind: str = "rsa", chain: bool = True,
           not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None) -> Bundle:
    """A server certificate signed by the intermediate CA (chain: intermediate, root)."""
    issued = devpki.issue(intermediate_ca(), cn, server=True, dns=(cn,), key_kind=key_kind,
                          not_before=not_before, not_after=not_after)
    pieces = [intermediate_ca().cert_pem, root_ca().cert_pem] if chain else []
    return Bundle(issued, pieces)


def expired_bundle(cn: str = "old.example.com") -> Bundle:
    now = datetime.datetime.now(datetime.timezone.utc)
    return bundle(cn, not_before=now - datetime.timedelta(days=60), not_after=now - datetime.timedelta(days=1))


def encrypted_pkcs8(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"secret"))


def encrypted_traditional(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.BestAvailableEncryption(b"secret"))


def ed25519_key_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# -- a real haproxy terminating TLS --------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_tls_config(port: int, crt: str, stats_socket: str) -> str:
    return f"""global
    stats socket {stats_socket} level admin
    tune.ssl.default-dh-param 2048

defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s

frontend amp4_tls
    bind 127.0.0.1:{port} ssl crt {crt}
    http-request return status 200 content-type text/plain string amp4-ok
"""


class HAProxy:
    """haproxy -db as a child of the test; always stopped by pid in ``stop``."""

    def __init__(self, config_path: str, log_path: str):
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "HAProxy":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.config_path], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    async def wait_ready(self, reactor, socket_path: str, port: int, timeout: float = 10.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited with {self.proc.returncode}: {self.log()}")
            if os.path.exists(socket_path):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    return
                except OSError:
                    pass
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"haproxy not ready: {self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-3000:]
        except OSError:
            return ""


def tls_get(port: int, server_name: str | None = None, cafile: str | None = None) -> tuple[x509.Certificate, bytes]:
    """``GET /`` over a NEW TLS connection to 127.0.0.1:port: (the leaf served, the HTTP answer).

    With ``cafile`` the client verifies the chain (so the server must send its
    intermediate) and ``server_name`` against the certificate. Blocking: call it
    through deferToThread from the reactor thread.
    """
    context = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            answer = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1."), answer
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)), answer


def served_certificate(port: int, server_name: str | None = None, cafile: str | None = None) -> x509.Certificate:
    """The leaf a NEW TLS connection to 127.0.0.1:port is served (see ``tls_get``)."""
    return tls_get(port, server_name, cafile)[0]


def cn_of(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
