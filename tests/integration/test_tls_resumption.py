"""TLS session resumption (tickets) against an in-process agent: a controller that
keeps its session and reconnects resumes it, and is still known by its certificate."""

import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher


def _get_info(port, ctx, session=None):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"GET /info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            # In TLS 1.3 the ticket arrives after the handshake: read, then take the session.
            return tls.session, tls.session_reused, tls.version(), data


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest_twisted.ensureDeferred
async def test_second_connection_resumes_the_session(agent, pki, version):
    ctx = ssl.create_default_context(cafile=pki.paths["ca"])
    ctx.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
    ctx.minimum_version = ctx.maximum_version = version
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        session, reused, proto, first = await deferToThread(_get_info, agent.api_port, ctx)
        assert first.startswith(b"HTTP/1.1 200 ") and not reused
        assert proto == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
        assert session is not None and session.has_ticket
        _, reused, _, second = await deferToThread(_get_info, agent.api_port, ctx, session)
        assert reused, "the second connection did a full handshake"
        assert second.startswith(b"HTTP/1.1 200 ")  # not 401: the resumed session keeps the certificate
        _, reused, _, third = await deferToThread(_get_info, agent.api_port, ctx)
        assert not reused and third.startswith(b"HTTP/1.1 200 ")  # no session offered: a full handshake
        await deferLater(reactor, 0.05, lambda: None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    access = [e for e in events if e.get("log_namespace") == "amphora.access"]
    assert [e["status"] for e in access] == [200, 200, 200]
    assert all("test-controller" in e["client"] for e in access)
