"""``PUT /1.0/interface/<ip>/rules`` on real nftables: the agent's namespace holds one end
of a veth, a peer namespace the other; TCP servers listen in the agent's namespace.
What the rules allow connects from the peer, the rest is dropped, and the table's
counters say which rule took each packet. Replacing the rules replaces the set; a bad
body changes nothing; the stored rules come back after the table is lost (a reboot).
"""

from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.network_support import NetLab, wait_for

AGENT_IP, PEER_IP = "10.18.0.1", "10.18.0.2"
NFT = "/usr/sbin/nft"


@pytest.fixture
def lab():
    lab = NetLab(prefix="o18")
    agent_ns, peer_ns = lab.namespace("a"), lab.namespace("p")
    a, b = lab.veth(agent_ns, peer_ns, up_a=True, up_b=True)
    lab.add_address(agent_ns, a, AGENT_IP + "/24")
    lab.add_address(peer_ns, b, PEER_IP + "/24")
    lab.agent_ns, lab.peer_ns, lab.vip_if = agent_ns, peer_ns, a
    for port in (8080, 8081):  # listeners in the agent's namespace
        lab.spawn(agent_ns, [sys.executable, "-c", _SERVER, AGENT_IP, str(port)])
    try:
        assert wait_for(lambda: all(_connects(lab, agent_ns, AGENT_IP, p) for p in (8080, 8081))), \
            "test listeners did not come up"
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def agent_config_extra(lab):
    return {"network": {"namespace": lab.agent_ns}}


_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()
"""

_CONNECT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0)
    sys.exit(0 if c.recv(5) == b"hello" else 2)
except OSError:
    sys.exit(1)
"""


def _connects(lab: NetLab, namespace: str, ip: str, port: int) -> bool:
    return lab.run(namespace, [sys.executable, "-c", _CONNECT, ip, str(port)]).returncode == 0


def table(lab: NetLab) -> str:
    result = lab.run(lab.agent_ns, [NFT, "list", "table", "inet", "amphora_table"])
    return result.stdout.decode() if result.returncode == 0 else ""


def counters(lab: NetLab) -> dict[str, int]:
    """Packets per rule of the VIP chain, keyed by the rule's text without its counter."""
    result = lab.run(lab.agent_ns, [NFT, "-j", "list", "table", "inet", "amphora_table"])
    assert result.returncode == 0, result.stderr
    found = {}
    for item in json.loads(result.stdout)["nftables"]:
        rule = item.get("rule")
        if not rule or not rule["chain"].startswith("vip_"):
            continue
        packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        matches = [e["match"] for e in rule["expr"] if "match" in e and "payload" in e["match"]["left"]]
        key = " ".join(f"{m['left']['payload']['field']}={_value(m['right'])}" for m in matches) or "drop"
        found[key] = packets
    return found


def _value(right) -> str:
    return right["prefix"]["addr"] if isinstance(right, dict) else str(right)


async def put_rules(client, url, ip, raw):
    response = await client.put(f"{url}/1.0/interface/{ip}/rules", data=raw,
                                headers={b"content-type": [b"application/json"]})
    return response.code, json.loads(await response.content())


def reach(lab: NetLab, port: int):
    return deferToThread(_connects, lab, lab.peer_ns, AGENT_IP, port)


@pytest_twisted.ensureDeferred
async def test_rules_allow_what_they_name_and_drop_the_rest(agent, client, url, lab):
    rules = [{"protocol": "TCP", "cidr": None, "port": 8080},
             {"protocol": "TCP", "cidr": "192.0.2.0/24", "port": 8081},  # not the peer's network
             {"protocol": "VRRP", "cidr": "10.18.0.0/24", "port": 112}]
    assert await reach(lab, 8080) and await reach(lab, 8081)  # no table yet
    code, body = await put_rules(client, url, AGENT_IP, json.dumps(rules).encode())
    assert (code, body) == (200, {"message": "OK"})
    assert await reach(lab, 8080)
    assert not await reach(lab, 8081)
    seen = counters(lab)
    assert seen["dport=8080"] > 0, seen
    assert seen["saddr=192.0.2.0 dport=8081"] == 0, seen
    assert seen["drop"] > 0, seen  # the SYNs to 8081
    assert f'iifname "{lab.vip_if}" goto vip_0' in table(lab)

    # Replacing the rules replaces the set: now only 8081, from the peer's network.
    replacement = [{"protocol": "TCP", "cidr": "10.18.0.0/24", "port": 8081}]
    code, body = await put_rules(client, url, AGENT_IP, json.dumps(replacement).encode())
    assert code == 200, body
    assert await reach(lab, 8081)
    assert not await reach(lab, 8080)
    seen = counters(lab)
    assert set(seen) == {"saddr=10.18.0.0 dport=8081", "drop"}, seen
    assert seen["saddr=10.18.0.0 dport=8081"] > 0 and seen["drop"] > 0, seen
    assert json.load(open(agent.interface_rules.state)) == {lab.vip_if: replacement}


@pytest.mark.parametrize("raw, why", [
    (b"{", "not JSON"),
    (b'{"protocol": "TCP", "cidr": null, "port": 80}', "JSON array"),
    (b'[{"protocol": "ICMP", "cidr": null, "port": 80}]', "protocol"),
    (b'[{"protocol": "TCP", "cidr": null, "port": 0}]', "port"),
    (b'[{"protocol": "TCP", "cidr": null, "port": 65536}]', "port"),
    (b'[{"protocol": "TCP", "cidr": null, "port": true}]', "port"),
    (b'[{"protocol": "TCP", "cidr": null}]', "missing port"),
    (b'[{"protocol": "TCP", "cidr": null, "port": 80, "action": "drop"}]', "unknown action"),
    (b'[{"protocol": "TCP", "cidr": "10.0.0.0/33", "port": 80}]', "cidr"),
    (b'[{"protocol": "TCP", "cidr": "10.0.0.0/8; flush ruleset", "port": 80}]', "cidr"),
    (b'[{"protocol": "TCP", "cidr": 10, "port": 80}]', "cidr"),
])
@pytest_twisted.ensureDeferred
async def test_a_bad_body_is_400_and_changes_nothing(agent, client, url, lab, raw, why):
    good = [{"protocol": "TCP", "cidr": None, "port": 8080}]
    assert (await put_rules(client, url, AGENT_IP, json.dumps(good).encode()))[0] == 200
    before, stored = table(lab), open(agent.interface_rules.state).read()
    code, body = await put_rules(client, url, AGENT_IP, raw)
    assert code == 400 and why in body["details"], body
    assert table(lab) == before and open(agent.interface_rules.state).read() == stored
    assert await reach(lab, 8080) and not await reach(lab, 8081)


@pytest.mark.parametrize("ip, code, message", [
    ("10.18.0.9", 404, "Error interface not found for IP address"),  # nobody holds it
    (PEER_IP, 404, "Error interface not found for IP address"),      # the peer's, not ours
    ("not-an-ip", 400, "Invalid IP address"),
    ("10.18.0.300", 400, "Invalid IP address"),
])
@pytest_twisted.ensureDeferred
async def test_the_interface_is_looked_up_by_address(agent, client, url, lab, ip, code, message):
    answer = await put_rules(client, url, ip, b'[{"protocol": "TCP", "cidr": null, "port": 80}]')
    assert (answer[0], answer[1]["message"]) == (code, message), answer
    assert table(lab) == ""  # nothing applied


@pytest_twisted.ensureDeferred
async def test_stored_rules_come_back_at_agent_start(agent, client, url, lab):
    from twisted.internet import reactor

    from amphora.nftables import InterfaceRules

    rules = [{"protocol": "TCP", "cidr": None, "port": 8081}]
    assert (await put_rules(client, url, AGENT_IP, json.dumps(rules).encode()))[0] == 200
    result = lab.run(lab.agent_ns, [NFT, "delete", "table", "inet", "amphora_table"])  # as after a reboot
    assert result.returncode == 0 and table(lab) == ""
    assert await reach(lab, 8080)
    await InterfaceRules(agent.config, reactor).restore()  # what the agent's start-up runs
    assert await reach(lab, 8081) and not await reach(lab, 8080)


@pytest_twisted.ensureDeferred
async def test_octavia_19_driver_sets_the_rules(agent, pki, lab, tmp_path):
    from tests.octavia.support import assert_passed, controller_params, run_driver

    rules = [{"protocol": "TCP", "cidr": "10.18.0.0/24", "port": 8081},
             {"protocol": "VRRP", "cidr": None, "port": 112}]
    params = controller_params(pki, agent, str(tmp_path / "ctl"), "19.0.0", "optional_1_0",
                               rules=rules, rules_ip=AGENT_IP)
    assert_passed(await run_driver(params), ["set_interface_rules"])
    assert await reach(lab, 8081) and not await reach(lab, 8080)
    assert "meta l4proto vrrp" in table(lab)
    # An address no interface holds: Octavia's driver turns the 404 into "not implemented".
    params = dict(params, rules_ip="10.18.0.77")
    results = await run_driver(params)
    assert "AmpDriverNotImplementedError" in results[-1]["error"], results
