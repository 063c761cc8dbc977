"""A listener inside a network namespace ([network] namespace): haproxy and the bind check run there."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.helpers import free_port
from tests.listener_support import eventually, http_config, kill_listeners, new_id

NS = f"amp3-{uuid.uuid4().hex[:8]}"


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _in_ns(*argv, timeout=10):
    return subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, timeout=timeout)


@pytest.fixture
def namespace():
    _ip("netns", "add", NS)
    try:
        _ip("-n", NS, "link", "set", "lo", "up")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "delete", NS], capture_output=True, timeout=10)


@pytest.fixture
def agent_config_extra(run_dir, namespace):
    return {"agent": {"run_dir": run_dir}, "network": {"namespace": namespace}}


@pytest_twisted.ensureDeferred
async def test_listener_runs_in_the_namespace(agent, client, url, run_dir):
    manager = agent.listeners
    try:
        # A backend inside the namespace: a python one-liner HTTP server.
        backend_port = free_port()
        server = subprocess.Popen(["ip", "netns", "exec", NS, "python3", "-m", "http.server", "--bind",
                                   "127.0.0.1", str(backend_port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, cwd=run_dir)
        try:
            # the backend serves before haproxy is asked to reach it (on a busy machine python's
            # start-up took long enough for the first request to get haproxy's 503)
            probe = f"import socket; socket.create_connection(('127.0.0.1', {backend_port}), timeout=1)"
            await eventually(lambda: deferToThread(lambda: _in_ns("python3", "-c", probe).returncode == 0),
                             timeout=20, message="the backend in the namespace listens")
            lid, port = new_id(), free_port()
            text = http_config(lid, port, new_id(), [(new_id(), backend_port)])
            response = await client.put(f"{url}/v0.1/listeners/{lid}/haproxy", data=text.encode())
            assert response.code == 201
            response = await client.put(f"{url}/v0.1/listeners/{lid}/start")
            assert response.code == 202, await response.text()
            # served inside the namespace, not outside
            result = await deferToThread(_in_ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                         f"http://127.0.0.1:{port}/")
            assert result.stdout == b"200", result
            assert not await deferToThread(lambda: os.system(f"curl -s -m 1 http://127.0.0.1:{port}/ >/dev/null") == 0)
            # the bind check looks inside the namespace: the backend's port is taken there
            clash = http_config(lid, port, new_id(), [(new_id(), backend_port)]).replace(
                f"bind 127.0.0.1:{port}", f"bind 127.0.0.1:{port}\n    bind 127.0.0.1:{backend_port}")
            assert (await client.put(f"{url}/v0.1/listeners/{lid}/haproxy", data=clash.encode())).code == 201
            response = await client.put(f"{url}/v0.1/listeners/{lid}/reload")
            body = await response.json()
            assert response.code == 500 and "already in use" in body["details"], body
            response = await client.get(f"{url}/v0.1/listeners/{lid}")
            assert (await response.json())["status"] == "ACTIVE"
            assert (await client.delete(f"{url}/v0.1/listeners/{lid}")).code == 200
        finally:
            server.kill()
            server.wait()
    finally:
        pids = [p.pid for p in manager._procs.values() if p.pid]
        for proc in manager._procs.values():
            proc.detach()
        kill_listeners(run_dir, pids)
