"""``[agent] bind_host = ::`` serves the API on IPv6 (and, dual-stack, on IPv4 too)."""

import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread


@pytest.fixture
def agent_config_extra():
    return {"agent": {"bind_host": "::"}}


def _info_status_line(host, port, pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.paths["ca"])
    ctx.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return tls.recv(4096).split(b"\r\n", 1)[0]


@pytest_twisted.ensureDeferred
async def test_bind_host_ipv6_wildcard_serves_both_families(agent, pki):
    assert agent.port.getHost().host == "::"
    for host in ("::1", "127.0.0.1"):
        assert await deferToThread(_info_status_line, host, agent.api_port, pki) == b"HTTP/1.1 200 OK", host
