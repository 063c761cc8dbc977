"""Heartbeats from the real listener manager: listeners created and started through the mTLS API.

The agent runs two real haproxy listeners it supervises itself; the receiver
must see both in every beat, with the deltas of real HTTP traffic, and a
stopped listener must leave the beats.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from amphora.listeners.stats import parse_show_stat
from tests.heartbeat_support import heartbeat_receiver
from tests.helpers import free_port

from tests.listener_support import Backend, eventually, http_config, http_get, kill_listeners, new_id

KEY = "listeners-heartbeat-key"


@pytest.fixture
def receiver():
    yield from heartbeat_receiver(KEY)


@pytest.fixture
def agent_config_extra(receiver, run_dir):
    return {"agent": {"run_dir": run_dir},
            "heartbeat": {"controllers": f"127.0.0.1:{receiver.port}", "key": KEY, "interval": "0.3"}}


@pytest.fixture
def backend():
    with Backend("amp6-backend") as b:
        yield b


def totals(beats, lid):
    out = {"rx": 0, "tx": 0, "totconns": 0, "ereq": 0}
    for b in beats:
        stats = b.body["listeners"].get(lid, {}).get("stats", {})
        for k in out:
            out[k] += stats.get(k, 0)
    return out


@pytest_twisted.ensureDeferred
async def test_beats_follow_the_real_listeners(agent, client, url, receiver, backend, run_dir):
    api = url + "/v0.1"
    made = []
    try:
        for _ in range(2):
            lid, pool, member, port = new_id(), new_id(), new_id(), free_port()
            text = http_config(lid, port, pool, [(member, backend.port)], check=True)
            for method, path, body in (("PUT", f"/listeners/{lid}/haproxy", text.encode()),
                                       ("PUT", f"/listeners/{lid}/start", None)):
                response = await client.request(method, api + path, data=body)
                await response.content()
                assert response.code in (200, 201, 202), (path, response.code)
            made.append((lid, pool, member, port))
        ids = {m[0] for m in made}
        await eventually(lambda: receiver.beats and set(receiver.beats[-1].body["listeners"]) == ids
                         and all(receiver.beats[-1].body["pools"].get(f"{p}:{l}", {}).get("members") == {m: "UP"}
                                 for l, p, m, _ in made), message="both listeners with their UP member")
        lid, pool, member, port = made[0]
        for _ in range(4):
            status, _ = await deferToThread(http_get, port)
            assert status == 200

        async def reported():
            rows = parse_show_stat(await agent.listeners.runtime(lid, "show stat"))
            front = next(r for r in rows if r["svname"] == "FRONTEND")
            return totals(receiver.beats, lid)["totconns"] == int(front["stot"]) >= 4

        await eventually(reported, message="deltas of the traffic")
        # Stopping a listener takes it out of the beats.
        response = await client.request("PUT", api + f"/listeners/{made[1][0]}/stop")
        await response.content()
        mark = len(receiver.beats)
        await eventually(lambda: any(set(b.body["listeners"]) == {lid} for b in receiver.beats[mark:]),
                         message="the stopped listener to leave the beats")
        assert sum(receiver.rejected.values()) == 0
    finally:
        pids = [p.pid for p in agent.listeners._procs.values() if p.pid]
        for proc in agent.listeners._procs.values():
            proc.detach()
        kill_listeners(run_dir, pids)
