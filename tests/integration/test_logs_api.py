"""Listener logs through the real API: upload + start a listener, real HTTP traffic, its log file,
a TCP syslog receiver, GET .../logs, DELETE ships the last line and removes the file and socket.

Two run_dirs: a short one (the socket path is used as is) and pytest's long
tmp_path (the socket is bound through its directory's descriptor and haproxy
reaches it by a path relative to its working directory)."""

from __future__ import annotations

import os
import uuid

import pytest
import pytest_twisted
import treq

from tests.helpers import free_port
from tests.listener_support import kill_listeners
from tests.logs_support import TCPReceiver, http_config, remove_dir, short_dir, wait_for


@pytest.fixture(params=["short", "long"])
def run_dir(request, tmp_path):
    if request.param == "long":
        yield str(tmp_path / "agent" / ("long-run-dir-" * 4))
        return
    path = short_dir()
    yield path
    remove_dir(path)


@pytest_twisted.async_yield_fixture
async def receiver():
    r = TCPReceiver()
    r.listen("::1")
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def agent_config_extra(run_dir, receiver):
    return {"agent": {"run_dir": run_dir}, "haproxy": {"stop_timeout": "3", "start_timeout": "5"},
            "logs": {"forward": f"tcp://[::1]:{receiver.number}"}}


async def _call(client, method, url, data=None):
    response = await client.request(method, url, data=data)
    return response.code, await response.content()


async def _get(port: int, path: str) -> None:
    response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
    assert response.code == 200
    await response.content()


@pytest_twisted.ensureDeferred
async def test_logs_through_the_api(agent, listeners, receiver, client, url):
    lid = str(uuid.uuid4())
    port = free_port()
    base = f"{url}/v0.1/listeners/{lid}"
    code, body = await _call(client, "PUT", base + "/haproxy", http_config(port).encode())
    assert code == 201, body
    code, body = await _call(client, "PUT", base + "/start")
    assert code == 202, body
    sock = agent.logs.socket_path(lid)
    assert os.path.exists(sock)
    assert (len(sock) > 107) == ("long-run-dir" in sock)

    for i in range(4):
        await _get(port, f"/api/{i}")
    await wait_for(lambda: agent.logs.tail(lid, 100).count(b"GET /api/") == 4, what="4 lines in the file")
    sd = f'listener_id="{lid}"'.encode()
    await wait_for(lambda: len([m for m in receiver.messages if sd in m and b"GET /api/" in m]) == 4,
                   what="4 lines forwarded")

    response = await client.get(base + "/logs?lines=2")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain"]
    assert response.headers.getRawHeaders(b"x-log-file-dropped") == [b"0"]
    assert response.headers.getRawHeaders(b"x-log-forward-lost") == [b"0"]
    lines = (await response.content()).splitlines()
    assert lines == agent.logs.tail(lid, 2).splitlines()  # the last two of the file
    assert len(lines) == 2 and all(b"GET /api/" in line for line in lines)
    code, body = await _call(client, "GET", base + "/logs")
    assert body.count(b"GET /api/") == 4  # default: 100 lines
    for bad in ("0", "1001", "abc", "-1", "1e3", "", "5&lines=6"):
        response = await client.get(f"{base}/logs?lines={bad}")
        assert response.code == 400, bad
        assert "lines" in (await response.json())["details"]
    code, _ = await _call(client, "GET", f"{url}/v0.1/listeners/{uuid.uuid4()}/logs")
    assert code == 404
    code, _ = await _call(client, "GET", f"{url}/v0.1/listeners/not-a-uuid/logs")
    assert code == 400

    await _get(port, "/api/last")
    code, body = await _call(client, "DELETE", base)
    assert code == 200, body
    assert [m for m in receiver.messages if sd in m and b"GET /api/last" in m], "last line not forwarded"
    assert not os.path.exists(sock)
    assert not os.path.exists(agent.logs.log_path(lid))
    code, _ = await _call(client, "GET", base + "/logs")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_logs_continue_across_an_agent_restart(agent_config, receiver, client, run_dir):
    """haproxy outlives the agent; the next agent binds the same socket and the lines keep coming."""
    from twisted.internet import reactor

    from amphora.agent import build_agent

    agents = []
    port = free_port()
    lid = str(uuid.uuid4())
    try:
        first = build_agent(agent_config, reactor)
        agents.append(first)
        first.privilegedStartService()
        first.startService()
        await first.when_ready()
        base = f"https://127.0.0.1:{first.api_port}/v0.1/listeners/{lid}"
        assert (await _call(client, "PUT", base + "/haproxy", http_config(port).encode()))[0] == 201
        assert (await _call(client, "PUT", base + "/start"))[0] == 202
        await _get(port, "/first")
        await wait_for(lambda: b"GET /first" in first.logs.tail(lid, 10), what="first agent's line")
        await first.stopService()

        second = build_agent(agent_config, reactor)
        agents.append(second)
        second.privilegedStartService()
        second.startService()
        await second.when_ready()
        assert second.logs.collecting(lid)
        await _get(port, "/second")
        await wait_for(lambda: b"GET /second" in second.logs.tail(lid, 10), what="second agent's line")
        assert b"GET /first" in second.logs.tail(lid, 10)  # same file, appended
        sd = f'listener_id="{lid}"'.encode()
        await wait_for(lambda: [m for m in receiver.messages if sd in m and b"GET /second" in m],
                       what="forwarded by the second agent")
        base = f"https://127.0.0.1:{second.api_port}/v0.1/listeners/{lid}"
        assert (await _call(client, "DELETE", base))[0] == 200
    finally:
        pids = [p.pid for a in agents for p in a.listeners._procs.values() if p.pid]
        for a in agents:
            for proc in a.listeners._procs.values():
                proc.detach()
            if a.running:
                await a.stopService()
        kill_listeners(run_dir, pids)
