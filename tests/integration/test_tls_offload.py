"""TLS handshakes in threads (``amphora.api.tlsoffload``) on a real agent, real mTLS on loopback.

Many clients at once, each on a new connection, and clients that leave in the
middle of a handshake: every complete request gets its answer, the agent keeps
serving, and the handshakes really ran in the pool's threads.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest_twisted
from twisted.internet.threads import deferToThread

from amphora.api import tlsoffload


def _context(pki, with_certificate=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.paths["ca"])
    if with_certificate:
        ctx.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
    return ctx


def _get_info(port, ctx):
    """One request on a new connection (Connection: close); (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _many(port, pki, count, workers):
    ctx = _context(pki)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: _get_info(port, ctx), range(count)))


def _leave_mid_handshake(port, pki):
    """A ClientHello, then gone (the server's step may still be running); then half a handshake."""
    ctx = _context(pki)
    for _ in range(20):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(outgoing.read())  # the ClientHello, then close at once
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x05garbage that is no handshake")
        raw.settimeout(5)
        try:
            while raw.recv(4096):
                pass
        except OSError:
            pass


@pytest_twisted.ensureDeferred
async def test_many_new_connections_at_once_each_get_their_answer(agent, pki):
    assert agent.handshake_pool is not None or tlsoffload.handshake_threads() == 0
    seen = set()
    real_step = tlsoffload._step

    def step(connection, data):
        seen.add(threading.current_thread().name)
        return real_step(connection, data)
    tlsoffload._step = step
    try:
        results = await deferToThread(_many, agent.api_port, pki, 60, 12)
    finally:
        tlsoffload._step = real_step
    assert [code for code, _ in results] == [200] * 60
    assert {json.loads(body)["uuid"] for _, body in results} == {agent.config.agent.amphora_id}
    if agent.handshake_pool is not None:
        assert seen and all("tls-handshake" in name for name in seen), seen


@pytest_twisted.ensureDeferred
async def test_clients_that_leave_mid_handshake_leave_the_agent_serving(agent, pki):
    await deferToThread(_leave_mid_handshake, agent.api_port, pki)
    code, body = await deferToThread(_get_info, agent.api_port, _context(pki))
    assert code == 200 and json.loads(body)["uuid"] == agent.config.agent.amphora_id
    # no certificate: the handshake completes in the pool and the answer is the spec's 401
    code, body = await deferToThread(_get_info, agent.api_port, _context(pki, with_certificate=False))
    assert code == 401 and "message" in json.loads(body)
