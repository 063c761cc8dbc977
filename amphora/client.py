"""An mTLS HTTP client for the agent's API (tests, benchmarks, tools).

``make_client(reactor, ca, cert, key)`` returns a treq ``HTTPClient`` whose
connections present the client certificate, trust only ``ca``, and are kept
alive in a pool.
"""

from __future__ import annotations

from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """Trust one CA; present an optional client certificate; check the server name."""

    def __init__(self, ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None,
                 server_name: str | None = None, **options):
        self._trust = ssl.Certificate.loadPEM(ca_pem)
        self._client = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem) if cert_pem else None
        self._server_name = server_name
        self._options = options

    def creatorForNetloc(self, hostname: bytes, port: int):
        name = self._server_name or hostname.decode()
        kwargs = dict(self._options)
        if self._client is not None:
            kwargs["clientCertificate"] = self._client
        return ssl.optionsForClientTLS(name, trustRoot=self._trust, **kwargs)


def make_client(reactor, ca: str, cert: str | None = None, key: str | None = None,
                persistent: bool = True, server_name: str | None = None, **options) -> HTTPClient:
    """A treq client for the agent; ``ca``/``cert``/``key`` are file paths.

    ``key`` may be omitted when ``cert`` holds the key too.
    """
    cert_pem = _read(cert) if cert else None
    key_pem = _read(key) if key else cert_pem
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = 8
    policy = ClientTLSPolicy(_read(ca), cert_pem, key_pem, server_name=server_name, **options)
    client = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    client.pool = pool  # callers close it with client.pool.closeCachedConnections()
    return client
