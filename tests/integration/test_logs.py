"""Listener logs with a directly started haproxy: real haproxy -> agent socket -> file + TCP syslog
receiver; rotation; target down then up; delete (test_logs_api.py goes through the API).

haproxy is started here directly with the agent's configuration fragment as
the first -f file (the uploaded file second), exactly as the listener manager
must start it.
"""

from __future__ import annotations

import os
import uuid

import pytest
import pytest_twisted
import treq

from amphora.listeners.logs import collector
from amphora.listeners.logs.forward import BoundedQueue
from tests.helpers import free_port
from tests.logs_support import Haproxy, TCPReceiver, http_config, wait_for

MAX_BYTES = 3000
BACKUPS = 2


@pytest_twisted.async_yield_fixture
async def receiver():
    r = TCPReceiver()
    r.listen("127.0.0.1")
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def agent_config_extra(run_dir, receiver):
    return {"agent": {"run_dir": run_dir},
            "logs": {"forward": f"tcp://127.0.0.1:{receiver.number}", "max_bytes": str(MAX_BYTES),
                     "backups": str(BACKUPS)}}


@pytest_twisted.async_yield_fixture
async def listener(agent, tmp_path):
    lid = str(uuid.uuid4())
    # haproxy is run here, not by the listener manager, which does not know this id:
    # bind its socket as the manager's start would (the hook binds only for listeners that exist)
    assert agent.logs.ensure(lid)
    fragment = agent.logs.config_hook(lid)
    assert f"log unix@{agent.logs.socket_path(lid)}" in fragment
    port = free_port()
    h = Haproxy(str(tmp_path), fragment, http_config(port)).start()
    h.lid, h.port = lid, port
    try:
        await wait_for(lambda: _serving(port), what="haproxy serving")
        yield h
    finally:
        h.stop()


def _serving(port: int) -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


async def _get(port: int, path: str) -> None:
    response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
    assert response.code == 200
    await response.content()


def _file_lines(agent, lid) -> list[bytes]:
    agent.logs._collectors[lid].file.flush() if agent.logs.collecting(lid) else None
    try:
        with open(agent.logs.log_path(lid), "rb") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _request_lines(lines, marker: str) -> list[bytes]:
    return [line for line in lines if f"GET /{marker}".encode() in line]


@pytest_twisted.ensureDeferred
async def test_file_and_tcp_forward_and_delete(agent, listener, receiver):
    lid = listener.lid
    marker = "req-" + uuid.uuid4().hex[:8]
    for i in range(5):
        await _get(listener.port, f"/{marker}/{i}?q={i}")
    await wait_for(lambda: len(_request_lines(_file_lines(agent, lid), marker)) == 5,
                   what="5 request lines in the log file")
    lines = _request_lines(_file_lines(agent, lid), marker)
    # one line per request, carrying the request line (haproxy logs when a stream
    # ends, so two quick requests may be logged in either order)
    for i in range(5):
        mine = [line for line in lines if f'"GET /{marker}/{i}?q={i} HTTP/1.1"'.encode() in line]
        assert len(mine) == 1, (i, lines)
        assert mine[0].split(b" ", 2)[1].startswith(b"haproxy[")

    await wait_for(lambda: len(_request_lines(receiver.messages, marker)) == 5, what="5 forwarded lines")
    forwarded = _request_lines(receiver.messages, marker)
    sd = f'[amphora@32473 amphora_id="{agent.config.agent.amphora_id}" listener_id="{lid}"]'.encode()
    for message, line in zip(forwarded, lines):  # the same order as the file
        assert message.startswith(b"<134>1 ")
        assert sd in message
        # the same line as in the file: haproxy's message unchanged
        assert message.split(sd + b" ", 1)[1] == line.split(b": ", 1)[1]
    assert receiver.errors == []

    # delete: the very last request's line reaches the target before the files go
    await _get(listener.port, f"/{marker}/last")
    listener.stop()
    sock = agent.logs.socket_path(lid)
    assert os.path.exists(sock)
    await agent.logs.delete_hook(lid)
    assert _request_lines(receiver.messages, f"{marker}/last"), "last line not forwarded before delete"
    assert not os.path.exists(sock)
    assert not os.path.exists(agent.logs.log_path(lid))
    assert not agent.logs.knows(lid)


@pytest_twisted.ensureDeferred
async def test_rotation_keeps_backups(agent, listener):
    lid = listener.lid
    for i in range(80):  # ~150 bytes a line: 12000 bytes, more than the 3 files keep
        await _get(listener.port, f"/rot/{i}")
    await wait_for(lambda: _request_lines(_file_lines(agent, lid), "rot/79"), what="last line written")
    path = agent.logs.log_path(lid)
    names = sorted(n for n in os.listdir(os.path.dirname(path)) if n.startswith(lid))
    assert names == [f"{lid}.log", f"{lid}.log.1", f"{lid}.log.2"]
    for name in names:
        assert 0 < os.path.getsize(os.path.join(os.path.dirname(path), name)) <= MAX_BYTES
    # the newest lines are in the current file, the older ones in .1 then .2
    kept = []
    for name in reversed(names):
        with open(os.path.join(os.path.dirname(path), name), "rb") as f:
            kept += _request_lines(f.read().splitlines(), "rot/")
    numbers = [int(line.split(b"GET /rot/")[1].split(b" ")[0]) for line in kept]
    # no duplicates, the newest all there, the oldest rotated away (haproxy may log two
    # quick requests in either order, so only near-order is checked)
    assert len(set(numbers)) == len(numbers)
    assert sorted(numbers)[-20:] == list(range(60, 80))
    assert min(numbers) > 0
    assert len(numbers) >= 3 * MAX_BYTES // 200 - 3


@pytest_twisted.ensureDeferred
async def test_forward_target_down_then_up(agent, listener, receiver):
    forwarder = agent.logs.forwarder
    await wait_for(lambda: forwarder.proto is not None, what="forwarder connected")
    forwarder.queue = BoundedQueue(max_items=3)  # small, so a short outage overflows it
    await receiver.down()
    await wait_for(lambda: forwarder.proto is None, what="forwarder notices the target is down")
    collector = agent.logs._collectors[listener.lid]
    received_before = collector.received
    for i in range(8):
        await _get(listener.port, f"/down/{i}")
    await wait_for(lambda: len(_request_lines(_file_lines(agent, listener.lid), "down/")) == 8,
                   what="lines still written to the file")
    down_lines = collector.received - received_before
    assert down_lines >= 8
    assert forwarder.lost == down_lines - 3  # all but what the queue of 3 holds
    assert agent.running
    receiver.up()
    await wait_for(lambda: forwarder.proto is not None, timeout=10, what="forwarder reconnected")
    await _get(listener.port, "/up/after")
    await wait_for(lambda: _request_lines(receiver.messages, "up/after"), what="forwarding resumed")
    # what the bounded queue kept (the newest 3, in arrival order = file order)
    # arrived too, oldest first, before the new line
    kept = [line.split(b": ", 1)[1] for line in _request_lines(_file_lines(agent, listener.lid), "down/")[-3:]]
    got = [m for m in receiver.messages if b"GET /down/" in m or b"GET /up/" in m]
    assert len(got) == 4 and all(g.endswith(k) for g, k in zip(got, kept)), (got, kept)
    assert b"GET /up/after" in got[3]
    assert forwarder.lost == down_lines - 3


@pytest_twisted.ensureDeferred
async def test_delete_with_the_target_down_is_bounded(agent, listener, receiver, monkeypatch):
    forwarder = agent.logs.forwarder
    await wait_for(lambda: forwarder.proto is not None, what="forwarder connected")
    await receiver.down()
    await wait_for(lambda: forwarder.proto is None, what="forwarder notices the target is down")
    await _get(listener.port, "/orphan")
    listener.stop()
    monkeypatch.setattr(collector, "DELETE_FLUSH_TIMEOUT", 0.5)
    from twisted.internet import reactor
    started = reactor.seconds()
    await agent.logs.delete_hook(listener.lid)
    assert 0.4 < reactor.seconds() - started < 3  # waited for the target, but not for ever
    assert not os.path.exists(agent.logs.log_path(listener.lid))
    assert not os.path.exists(agent.logs.socket_path(listener.lid))
    assert any(b"GET /orphan" in m for m in forwarder.queue._items)  # still queued for later
    receiver.up()
    await wait_for(lambda: [m for m in receiver.messages if b"GET /orphan" in m], timeout=10,
                   what="queued line delivered once the target is back")
