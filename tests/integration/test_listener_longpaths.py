"""A deep run_dir (pytest's own tmp_path, the default of the shared ``agent`` fixture) works:
haproxy names its sockets relative to the listener's run directory, and the agent reaches
sockets whose absolute path exceeds the UNIX limit through the directory's descriptor."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.helpers import free_port
from tests.listener_support import Backend, http_config, http_get, kill_listeners, new_id, reloaded_to


@pytest_twisted.ensureDeferred
async def test_deep_run_dir(agent, client, url):
    manager = agent.listeners
    lid, port, pool, member = new_id(), free_port(), new_id(), new_id()
    assert len(manager.stats_socket(lid).encode()) > 107, "the test needs a path beyond sun_path"
    try:
        with Backend("A") as a, Backend("B") as b:
            text = http_config(lid, port, pool, [(member, a.port)])
            assert (await client.put(f"{url}/v0.1/listeners/{lid}/haproxy", data=text.encode())).code == 201
            response = await client.put(f"{url}/v0.1/listeners/{lid}/start")
            assert response.code == 202, await response.text()
            assert await deferToThread(http_get, port) == (200, "A")
            body = await (await client.get(f"{url}/v0.1/listeners/{lid}")).json()
            assert body["pools"] == [{"uuid": pool, "status": "UP", "members": [{member: "NO_CHECK"}]}]
            text = http_config(lid, port, pool, [(member, b.port)])
            assert (await client.put(f"{url}/v0.1/listeners/{lid}/haproxy", data=text.encode())).code == 201
            response = await client.put(f"{url}/v0.1/listeners/{lid}/reload")
            assert response.code == 202, await response.text()
            await reloaded_to(port, "B", manager._procs[lid].pid)
            # after the reload the re-executed master re-bound its sockets in the same place
            body = await (await client.get(f"{url}/v0.1/listeners/{lid}")).json()
            assert body["status"] == "ACTIVE" and body["pools"][0]["members"] == [{member: "NO_CHECK"}]
            assert b"Name: HAProxy" in await manager.runtime(lid, "show info")
            assert (await client.delete(f"{url}/v0.1/listeners/{lid}")).code == 200
    finally:
        pids = [p.pid for p in manager._procs.values() if p.pid]
        for proc in manager._procs.values():
            proc.detach()
        kill_listeners(agent.config.agent.run_dir, pids)
