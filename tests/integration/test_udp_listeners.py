"""UDP/SCTP listeners (``/1.0/listeners/<amphora>/<listener>/udp_listener``) driven by
Octavia 19.0.0's own driver: its LVS template renders the keepalived configuration,
``update_amphora_listeners`` uploads it and reloads the listener, ``delete`` removes it.

- Without the kernel's IP virtual server support (this machine: /proc/net/ip_vs is
  absent; forced absent elsewhere) the upload is a 503 naming ip_vs and nothing is
  written; /1.0/details says ip_vs is false.
- With ip_vs reported present, the real ``keepalived -t`` checks Octavia's rendered
  configuration, the agent stores and serves it, and reload/start/delete reach the
  listener's (here fake) keepalived process; delete leaves no file behind.
- End to end (UDP from a peer namespace through the virtual server to a member) only
  where the kernel has ip_vs: skipped, saying why, where it has not.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import succeed

from amphora.lvs import IP_VS_PROC
from tests.listener_support import new_id
from tests.network_support import NetLab, wait_for
from tests.octavia.support import assert_passed, by_call, controller_params, run_driver

VERSION = "19.0.0"


def udp_lb(vip: str = "10.18.2.1", member: str = "10.18.3.2", port: int = 5353) -> dict:
    return {"id": new_id(), "vip": vip, "listeners": [
        {"id": new_id(), "protocol": "UDP", "port": port,
         "pool": {"id": new_id(), "protocol": "UDP",
                  "members": [{"id": new_id(), "address": member, "port": port}]}}]}


def lvs_files(agent) -> list[str]:
    found = []
    for root in (agent.udp_listeners.directory, agent.udp_listeners.run_dir):
        for path, _dirs, files in os.walk(root):
            found += [os.path.join(path, f) for f in files]
    return found


async def details(client, url) -> dict:
    response = await client.get(url + "/1.0/details")
    assert response.code == 200
    return json.loads(await response.content())


class FakeKeepalived:
    """Stands in for the listener's keepalived where the kernel cannot run it."""

    def __init__(self, listener_id):
        self.listener_id, self.running, self.calls = listener_id, False, []

    def start(self):  # as SupervisedProcess: a no-op on a running one
        if not self.running:
            self.calls.append("start")
            self.running = True
        return succeed(4242)

    def stop(self):
        self.calls.append("stop")
        self.running = False
        return succeed(None)


@pytest_twisted.ensureDeferred
async def test_without_ip_vs_the_upload_is_503_naming_it_and_nothing_is_written(agent, pki, client, url, tmp_path):
    udp = agent.udp_listeners
    udp._probe, udp.ipvs = (lambda: False), False  # what this machine's kernel says anyway
    spec = udp_lb()
    results = await run_driver(controller_params(pki, agent, str(tmp_path / "ctl"), VERSION, "optional_1_0",
                                                 lb=spec))
    calls = by_call(results)
    assert calls["build_lvs_config"]["ok"], calls
    update = calls["update_amphora_listeners"]
    assert not update["ok"] and "ServiceUnavailable" in update["error"], update
    assert any("503" in a and "ip_vs" in a for a in update["answers"]), update["answers"]
    assert "reload_listener" in calls and not calls["reload_listener"]["ok"]  # nothing to reload: 404
    assert_passed(results, ["delete"])  # DELETE of an unknown id is 200
    assert lvs_files(agent) == []
    document = await details(client, url)
    assert document["ip_vs"] is False and document["lvs_listener_process_count"] == 0
    assert spec["listeners"][0]["id"] not in document["listeners"]


@pytest_twisted.ensureDeferred
async def test_with_ip_vs_octavias_configuration_is_checked_stored_run_and_removed(agent, pki, client, url,
                                                                                    tmp_path):
    udp = agent.udp_listeners
    udp._probe, udp.ipvs = (lambda: True), True  # pretend: keepalived itself is faked below
    fakes = {}
    udp._process_factory = lambda lid: fakes.setdefault(lid, FakeKeepalived(lid))
    spec = udp_lb()
    lid = spec["listeners"][0]["id"]
    results = await run_driver(controller_params(pki, agent, str(tmp_path / "ctl"), VERSION, "optional_1_0",
                                                 lb=spec))
    assert_passed(results, ["build_lvs_config", "update_amphora_listeners", "reload_listener",
                            "start_listener", "delete"])
    rendered = by_call(results)["build_lvs_config"]["result"]
    assert "virtual_server" in rendered and "10.18.3.2" in rendered
    # update: upload + reload (start); reload restarts; start on a running one keeps it; delete stops.
    assert fakes[lid].calls == ["start", "stop", "start", "stop"], fakes[lid].calls
    assert lvs_files(agent) == [] and not udp.knows(lid)

    # The same configuration through our client: stored as sent, served back, counted in details.
    body = rendered.encode()
    response = await client.put(f"{url}/1.0/listeners/{agent.config.agent.amphora_id}/{lid}/udp_listener",
                                data=body)
    assert response.code == 200, await response.content()
    response = await client.get(f"{url}/1.0/listeners/{lid}/udp_listener")
    assert response.code == 200 and await response.content() == body
    # What runs is the same without Octavia's net_namespace line (keepalived starts in the agent's).
    assert b"net_namespace amphora-haproxy" in body
    with open(udp._runnable(lid), "rb") as f:
        assert f.read() == body.replace(b"net_namespace amphora-haproxy\n", b"")
    response = await client.put(f"{url}/1.0/loadbalancer/{lid}/start")
    assert response.code == 202
    document = await details(client, url)
    assert document["ip_vs"] is True and document["lvs_listener_process_count"] == 1
    assert lid in document["listeners"]

    # keepalived -t refuses a broken one: 400 with its output, the stored one kept.
    response = await client.put(f"{url}/1.0/listeners/{agent.config.agent.amphora_id}/{lid}/udp_listener",
                                data=b"virtual_server group nope {\n  lb_algo rr\n}\nbogus_keyword 1\n")
    answer = json.loads(await response.content())
    assert response.code == 400 and "bogus_keyword" in answer["details"], answer
    assert udp.get_config(lid) == body
    response = await client.delete(f"{url}/1.0/listeners/{lid}")
    assert response.code == 200 and lvs_files(agent) == []
    response = await client.get(f"{url}/1.0/listeners/{lid}/udp_listener")
    assert response.code == 404 and json.loads(await response.content())["message"] == "UDP Listener Not Found"


@pytest.mark.parametrize("path, code", [
    ("/1.0/listeners/{amp}/not-a-uuid/udp_listener", 400),
    ("/1.0/listeners/00000000-0000-0000-0000-000000000000/{lid}/udp_listener", 400),  # another amphora
])
@pytest_twisted.ensureDeferred
async def test_bad_ids_are_400_before_anything_else(agent, client, url, path, code):
    path = path.format(amp=agent.config.agent.amphora_id, lid=new_id())
    response = await client.put(url + path, data=b"")
    assert response.code == code
    assert lvs_files(agent) == []


# -- end to end, where the kernel can -----------------------------------------------------

_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048); s.sendto(b"member:" + data, peer)
"""

_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(2048)[0].decode())
except OSError:
    sys.exit(1)
"""


@pytest.fixture
def lvs_lab():
    if not os.path.exists(IP_VS_PROC):
        pytest.skip(f"this kernel has no IP virtual server support ({IP_VS_PROC} is absent): "
                    "UDP through keepalived LVS cannot run here; storage and refusal are tested above")
    lab = NetLab(prefix="o18u")
    try:
        agent_ns, peer_ns, member_ns = lab.namespace("a"), lab.namespace("p"), lab.namespace("m")
        a, p = lab.veth(agent_ns, peer_ns, up_a=True, up_b=True)
        am, m = lab.veth(agent_ns, member_ns, up_a=True, up_b=True)
        lab.add_address(agent_ns, a, "10.18.2.1/24")
        lab.add_address(peer_ns, p, "10.18.2.2/24")
        lab.add_address(agent_ns, am, "10.18.3.1/24")
        lab.add_address(member_ns, m, "10.18.3.2/24")
        assert lab.run(member_ns, ["ip", "route", "add", "default", "via", "10.18.3.1"]).returncode == 0
        assert lab.run(agent_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]).returncode == 0
        lab.spawn(member_ns, [sys.executable, "-c", _ECHO, "10.18.3.2", "5353"])
        lab.agent_ns, lab.peer_ns = agent_ns, peer_ns
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def agent_config_extra(request):
    if "lvs_lab" in request.fixturenames:
        return {"network": {"namespace": request.getfixturevalue("lvs_lab").agent_ns}}
    return {}


@pytest_twisted.ensureDeferred
async def test_udp_through_the_virtual_server_end_to_end(lvs_lab, agent, pki, tmp_path):
    from twisted.internet.threads import deferToThread

    spec = udp_lb()
    lid = spec["listeners"][0]["id"]
    results = await run_driver(controller_params(pki, agent, str(tmp_path / "ctl"), VERSION, "optional_1_0",
                                                 lb=spec, keep_udp=True))
    assert_passed(results, ["update_amphora_listeners"])
    try:
        def ask():
            return lvs_lab.run(lvs_lab.peer_ns, [sys.executable, "-c", _ASK, "10.18.2.1", "5353"])

        answer = await deferToThread(wait_for, lambda: ask().returncode == 0, 20.0)
        assert answer, "no UDP answer through the virtual server"
        assert ask().stdout.decode().strip() == "member:ping"
    finally:
        await agent.udp_listeners.delete(lid)
    assert lvs_files(agent) == []


@pytest_twisted.ensureDeferred
async def test_a_large_configuration_gets_the_configuration_cap_not_the_json_one(agent, client, url):
    agent.udp_listeners._probe, agent.udp_listeners.ipvs = (lambda: False), False
    body = b"# member\n" * 20000  # 200 kB: above the front door's 64 kB JSON cap, below max_config_bytes
    response = await client.put(f"{url}/1.0/listeners/{agent.config.agent.amphora_id}/{new_id()}/udp_listener",
                                data=body)
    answer = json.loads(await response.content())
    assert response.code == 503 and "ip_vs" in answer["details"], answer
    assert lvs_files(agent) == []
