"""Hostile and careless clients: slow ones, anonymous ones, ones that hang up mid-operation."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from tests.helpers import free_port
from tests.listener_support import Backend, eventually, http_config, http_get, new_id


def _connection_dropped_within(port: int, seconds: float, tls_pki=None, drip: bytes = b"") -> float:
    """Connect (optionally TLS without a client certificate), drip ``drip`` a byte at a
    time every 0.2 s, and return how long until the server dropped the connection."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    sock = raw
    if tls_pki is not None:
        ctx = ssl.create_default_context(cafile=tls_pki.paths["ca"])
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
    started = time.monotonic()
    sock.settimeout(0.2)
    try:
        for i in range(int(seconds / 0.2)):
            if drip:
                try:
                    sock.sendall(drip[i % len(drip):i % len(drip) + 1])
                except OSError:
                    return time.monotonic() - started
            try:
                if sock.recv(1024) == b"":
                    return time.monotonic() - started
            except socket.timeout:
                continue
            except (OSError, ssl.SSLError):
                return time.monotonic() - started
        return float("inf")
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_silent_connection_is_dropped_at_the_header_deadline(agent):
    agent.site.header_deadline = 0.5
    elapsed = await deferToThread(_connection_dropped_within, agent.api_port, 5.0)
    assert elapsed < 3.0


@pytest_twisted.ensureDeferred
async def test_dripping_anonymous_client_is_dropped_at_the_header_deadline(agent, pki):
    agent.site.header_deadline = 0.8
    elapsed = await deferToThread(_connection_dropped_within, agent.api_port, 6.0, pki,
                                  b"GET /info HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100)
    assert elapsed < 4.0


def _anonymous_request_then_wait(port: int, pki) -> tuple[bytes, bool]:
    ctx = ssl.create_default_context(cafile=pki.paths["ca"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return data, True  # the server closed the connection after the answer
                data += chunk


@pytest_twisted.ensureDeferred
async def test_401_closes_the_connection(agent, pki):
    data, closed = await deferToThread(_anonymous_request_then_wait, agent.api_port, pki)
    assert data.startswith(b"HTTP/1.1 401")
    assert closed


def _put_and_hang_up(port: int, pki, path: str) -> None:
    ctx = ssl.create_default_context(cafile=pki.paths["ca"])
    ctx.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
            # hang up at once, before the agent can answer


@pytest_twisted.ensureDeferred
async def test_client_hanging_up_does_not_abandon_a_start(agent, client, url, listeners, pki):
    events = []
    globalLogPublisher.addObserver(events.append)
    backend = Backend("hangup").start()
    lid, port = new_id(), free_port()
    try:
        response = await client.put(f"{url}/v0.1/listeners/{lid}/haproxy",
                                    data=http_config(lid, port, new_id(), [(new_id(), backend.port)]).encode())
        assert response.code == 201, await response.content()
        await deferToThread(_put_and_hang_up, agent.api_port, pki, f"/v0.1/listeners/{lid}/start")

        async def active():
            r = await client.get(f"{url}/v0.1/listeners/{lid}")
            return json.loads(await r.content())["status"] == "ACTIVE"

        await eventually(active, timeout=15, message="the start finished although its client left")
        status, body = await deferToThread(http_get, port)
        assert status == 200 and "hangup" in body
        await deferLater(reactor, 0.2, lambda: None)
        assert any(e.get("log_namespace") == "amphora.access" and e.get("status") == 499
                   and e.get("path", "").endswith("/start") for e in events)
    finally:
        globalLogPublisher.removeObserver(events.append)
        backend.stop()


@pytest_twisted.ensureDeferred
async def test_access_log_switch(agent, client, url):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        def access_lines():
            return [e for e in events if e.get("log_namespace") == "amphora.access"]

        await (await client.get(url + "/info")).content()
        await deferLater(reactor, 0.05, lambda: None)
        assert len(access_lines()) == 1
        agent.site.access_log = False  # what [agent] access_log = false sets
        await (await client.get(url + "/info")).content()
        await deferLater(reactor, 0.05, lambda: None)
        assert len(access_lines()) == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
