"""Nothing of a served connection outlives it: its header-deadline timer is
cancelled by its first request, and a connection that closes before that is
not kept alive by its timer."""

import gc
import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.http import HTTPChannel


def _deadline_calls(site):
    return [c for c in reactor.getDelayedCalls() if c.func == site._enforce_header_deadline]


def _connect_and_close(port):
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _channels():
    return sum(1 for o in gc.get_objects() if isinstance(o, HTTPChannel))


@pytest_twisted.ensureDeferred
async def test_deadline_timer_is_cancelled_by_the_first_request(agent, client, url):
    before = len(_deadline_calls(agent.site))
    response = await client.get(url + "/info")
    await response.content()
    assert response.code == 200
    assert len(_deadline_calls(agent.site)) == before  # the connection's timer is gone, not pending for 30 s


@pytest_twisted.ensureDeferred
async def test_connection_closed_before_a_request_is_not_kept_by_its_timer(agent):
    gc.collect()
    channels = _channels()
    for _ in range(5):
        await deferToThread(_connect_and_close, agent.api_port)
    await deferLater(reactor, 0.3, lambda: None)
    assert len(_deadline_calls(agent.site)) >= 5  # their deadlines are still ahead...
    gc.collect()
    assert _channels() <= channels  # ...but hold nothing of the closed connections


def _every_kind_of_connection_end(port: int, pki, tmp: str) -> list[str]:
    """One connection per way a connection to the API can end; what each client saw."""
    import ssl
    import struct

    from tests.helpers import expired_client

    def context(cert=None, key=None):
        ctx = ssl.create_default_context(cafile=pki.paths["ca"])
        ctx.load_cert_chain(cert or pki.paths["client_cert"], key or pki.paths["client_key"])
        return ctx

    def tls(ctx=None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        return (ctx or context()).wrap_socket(raw, server_hostname="localhost")

    seen = []
    with tls() as sock:  # a whole request, then the client closes
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: localhost\r\n\r\n")
        seen.append("request:" + sock.recv(65536).split(b"\r\n", 1)[0].decode())
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # TCP only
    seen.append("tcp-only")
    # a ClientHello, then the client vanishes mid-handshake
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    half = context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        half.do_handshake()
    except ssl.SSLWantReadError:
        pass
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(outgoing.read())
        seen.append("client-hello-only")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # not TLS at all
        raw.sendall(b"GET /info HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            raw.recv(100)
        except OSError:
            pass
        seen.append("plain-http")
    expired = expired_client(pki)  # a certificate the handshake refuses
    cert, key = f"{tmp}/expired.pem", f"{tmp}/expired-key.pem"
    with open(cert, "wb") as f:
        f.write(expired.cert_pem)
    with open(key, "wb") as f:
        f.write(expired.key_pem)
    answer = b""
    try:
        with tls(context(cert, key)) as sock:
            sock.sendall(b"GET /info HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = sock.recv(100)
    except (ssl.SSLError, OSError):
        pass  # the alert, or the connection closed under the client
    seen.append("expired: answered" if answer.startswith(b"HTTP/") else "expired: refused")
    sock = tls()  # half a request, then a reset
    sock.sendall(b"GET /info HTTP/1.1\r\nHo")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    seen.append("reset-mid-request")
    return seen


@pytest_twisted.ensureDeferred
async def test_no_connection_outlives_its_end_in_the_tls_layer(agent, pki, tmp_path):
    """The API's TLS factory (amphora.api.tlsconn) forgets every connection however it ended."""
    from amphora.api.tlsconn import AgentTLSProtocol

    factory = agent.port.factory
    assert not factory.protocols  # WrappingFactory's registry of live connections
    seen = await deferToThread(_every_kind_of_connection_end, agent.api_port, pki, str(tmp_path))
    assert seen == ["request:HTTP/1.1 200 OK", "tcp-only", "client-hello-only", "plain-http",
                    "expired: refused", "reset-mid-request"], seen
    for _ in range(100):  # the server side of the last ones ends a moment later
        if not factory.protocols:
            break
        await deferLater(reactor, 0.02, lambda: None)
    assert not factory.protocols, list(factory.protocols)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, AgentTLSProtocol) and o.factory is factory]
