"""Forwarding over UDP (IPv4, IPv6) and TCP over IPv6; a UDP target down then up; the order rule.

haproxy is started here directly with the agent's configuration fragment.
"""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.helpers import free_port
from tests.logs_support import Haproxy, TCPReceiver, UDPReceiver, http_config, wait_for


@pytest.fixture(params=[("udp", "::1"), ("udp", "127.0.0.1"), ("tcp", "::1"), ("udp", "localhost"),
                        ("tcp", "localhost")],
                ids=["udp6", "udp4", "tcp6", "udp-name", "tcp-name"])
def target(request):
    return request.param


@pytest_twisted.async_yield_fixture
async def receiver(target):
    scheme, host = target
    if host == "localhost":  # listen where the agent's resolver will send first
        import socket
        host = socket.getaddrinfo("localhost", 0, 0, socket.SOCK_DGRAM)[0][4][0]
    r = UDPReceiver() if scheme == "udp" else TCPReceiver()
    r.number = r.listen(host)
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def agent_config_extra(run_dir, target, receiver):
    scheme, host = target
    shown = f"[{host}]" if ":" in host else host
    return {"agent": {"run_dir": run_dir}, "logs": {"forward": f"{scheme}://{shown}:{receiver.number}"}}


def _start(agent, tmp_path, order_ok: bool = True):
    lid = str(uuid.uuid4())
    port = free_port()
    assert agent.logs.ensure(lid)  # as the manager's start would (the hook binds only for existing listeners)
    h = Haproxy(str(tmp_path), agent.logs.config_hook(lid), http_config(port))
    if not order_ok:  # the uploaded file first: haproxy resolves "log global" before it sees ours
        h.fragment_path, h.config_path = h.config_path, h.fragment_path
    h.start()
    h.lid, h.port = lid, port
    return h


async def _get(port: int, path: str, tries: int = 100) -> None:
    for _ in range(tries):
        try:
            response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
        except Exception:
            await deferLater(reactor, 0.05, lambda: None)
            continue
        assert response.code == 200
        await response.content()
        return
    raise AssertionError(f"haproxy on {port} never answered")


@pytest_twisted.ensureDeferred
async def test_forward_lines_with_listener_id(agent, receiver, tmp_path):
    h = _start(agent, tmp_path)
    try:
        for i in range(3):
            await _get(h.port, f"/fw/{i}")
        sd = f'listener_id="{h.lid}"'.encode()
        await wait_for(lambda: len([m for m in receiver.messages if b"GET /fw/" in m]) == 3,
                       what="3 forwarded lines")
        got = [m for m in receiver.messages if b"GET /fw/" in m]
        for m in got:
            assert sd in m and f"amphora_id=\"{agent.config.agent.amphora_id}\"".encode() in m
        for i in range(3):  # each request once (haproxy may log two quick ones in either order)
            assert len([m for m in got if f'"GET /fw/{i} HTTP/1.1"'.encode() in m]) == 1
        assert agent.logs.forwarder.lost == 0
    finally:
        h.stop()


@pytest.mark.parametrize("target", [("udp", "127.0.0.1")], ids=["udp4"], indirect=False)
@pytest_twisted.ensureDeferred
async def test_udp_target_down_then_up(agent, receiver, tmp_path):
    h = _start(agent, tmp_path)
    forwarder = agent.logs.forwarder
    try:
        await _get(h.port, "/before")
        await wait_for(lambda: [m for m in receiver.messages if b"GET /before" in m], what="first line")
        await receiver.stop()
        for i in range(5):
            await _get(h.port, f"/gone/{i}")
            await deferLater(reactor, 0.02, lambda: None)
        await wait_for(lambda: forwarder.lost >= 1, what="refused datagrams counted as lost")
        assert agent.running
        receiver.listen("127.0.0.1", receiver.number)
        await _get(h.port, "/again")
        await wait_for(lambda: [m for m in receiver.messages if b"GET /again" in m], what="forwarding resumed")
    finally:
        h.stop()


@pytest.mark.parametrize("target", [("tcp", "::1")], ids=["tcp6"], indirect=False)
@pytest_twisted.ensureDeferred
async def test_fragment_must_come_before_the_uploaded_file(agent, receiver, tmp_path):
    """haproxy 2.6 copies the global log targets into "log global" while parsing: order matters."""
    h = _start(agent, tmp_path, order_ok=False)
    try:
        await _get(h.port, "/late")
        await deferLater(reactor, 0.5, lambda: None)
        agent.logs.tail(h.lid, 10)
        assert b"GET /late" not in agent.logs.tail(h.lid, 10)
    finally:
        h.stop()
