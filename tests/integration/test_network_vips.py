"""Who configures the VIPs, and the 1.0 plug bodies, against real netlink in namespaces and
veths these tests create (the layout of tests/integration/test_network.py, whose fixtures
are used here).

- SINGLE (and ACTIVE-ACTIVE): the agent puts every VIP on its interface, as a host address
  when the port carries ``vrrp_ip``; traffic from the peer reaches it.
- ACTIVE-STANDBY: keepalived adds the VIP on its MASTER alone; the agent withdraws its own
  copy before keepalived starts and puts it back once keepalived has stopped.
- 1.0 bodies (``parse_vip_request("1.0", ...)``): additional VIPs of another family, their
  subnet on the link, a default route per family, host routes, MTU.
"""

from __future__ import annotations

import secrets
import textwrap

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from amphora.api.requests import parse_network_request, parse_vip_request
from tests.integration.test_network import (PORT, agent, agent_ns, fetch, home, peer, post,  # noqa: F401
                                            subnet)
from tests.integration.test_topology import slow_keepalived  # noqa: F401 - the fixture
from tests.network_support import PYTHON, netlab, wait_for  # noqa: F401 - the fixture


@pytest.fixture
def agent_config_extra(agent_ns, slow_keepalived, request):
    binary = slow_keepalived if "slow_keepalived" in request.node.name else "/usr/sbin/keepalived"
    return {"network": {"namespace": agent_ns},
            "keepalived": {"binary": binary, "transition_timeout": "20", "advert_int": "1"}}


@pytest.fixture
def stop_keepalived(agent):
    """Whatever happens, the agent's keepalived (real or fake) does not outlive the test."""
    yield
    keepalived = agent.keepalived
    if keepalived.running:
        pytest_twisted.blockon(keepalived.stop())


# http.server would look its address up in DNS first (getfqdn), which hangs in a namespace
# whose default route leads to a peer without DNS: a bare socket answers instead.
SERVER = textwrap.dedent("""
    import socket, sys
    address, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(8)
    while True:
        c, _ = s.accept()
        c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\\r\\ncontent-length: %d\\r\\n\\r\\n%s" % (len(token), token))
        c.close()
""")


def serve_token(lab, namespace, address):
    """A server bound to ``address`` in ``namespace`` answering a fresh token; the token."""
    token = secrets.token_hex(8)
    lab.spawn(namespace, [PYTHON, "-c", SERVER, address, str(PORT), token],
              stdout=open("/dev/null", "wb"), stderr=open("/dev/null", "wb"))
    return token


def vrrp_plug(netlab, agent_ns, peer):
    """A VIP port as Octavia plugs it: the amphora's vrrp_ip on the VIP subnet, the gateway outside."""
    cidr, gateway, vip, _ = subnet(4)
    vrrp_ip = vip.rsplit(".", 1)[0] + ".11"
    port, outside = netlab.veth(agent_ns, peer)
    netlab.add_address(peer, outside, f"{gateway}/24")
    body = {"mac_address": netlab.mac(agent_ns, port), "subnet_cidr": cidr, "gateway": gateway,
            "vrrp_ip": vrrp_ip}
    return vip, vrrp_ip, port, body


# -- SINGLE ---------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_single_amphora_serves_its_vip_plugged_with_a_vrrp_ip(netlab, agent, agent_ns, peer, client, url):
    vip, vrrp_ip, port, body = vrrp_plug(netlab, agent_ns, peer)
    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", body)
    assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {port}")
    assert netlab.addresses(agent_ns, port) == [f"{vrrp_ip}/24", f"{vip}/32"]
    # non-local binds are allowed in the namespace: only a configured VIP answers the peer's ARP
    token = serve_token(netlab, agent_ns, vip)
    assert await deferToThread(fetch, netlab, peer, vip, "token.txt") == (0, token)


@pytest_twisted.ensureDeferred
async def test_no_interface_404_holds_the_retry_text_in_details(netlab, agent, agent_ns, peer, client, url):
    """Octavia's controllers retry a 404 only when its details hold the text: a NIC can appear late."""
    for path, body in ((f"/v0.1/plug/vip/{subnet(4)[2]}", {"mac_address": "fa:16:3e:77:77:01"}),
                       ("/v0.1/plug/network", None)):
        code, answer = await post(client, url, path, body)
        assert (code, answer["message"]) == (404, "No suitable network interface found"), answer
        assert "No suitable network interface found" in answer["details"], answer


# -- ACTIVE-STANDBY -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_vip_leaves_the_agent_before_slow_keepalived_starts_and_returns_on_rollback(
        netlab, agent, agent_ns, peer, client, url, stop_keepalived):
    vip, vrrp_ip, port, body = vrrp_plug(netlab, agent_ns, peer)
    assert (await post(client, url, f"/v0.1/plug/vip/{vip}", body))[0] == 202
    assert netlab.addresses(agent_ns, port) == [f"{vrrp_ip}/24", f"{vip}/32"]
    agent.topology.transition_timeout = 3.0  # this keepalived never reports: roll back soon
    code, _ = await post(client, url, "/v0.1/topology", {"topology": "ACTIVE-STANDBY", "role": "ACTIVE",
                                                           "ha_ip": vip, "secret": "s" * 20})
    assert code == 202
    # withdrawn while keepalived (which never adds it, being fake) starts
    assert await deferToThread(wait_for, lambda: netlab.addresses(agent_ns, port) == [f"{vrrp_ip}/24"], 5)
    assert (await (await client.get(url + "/v0.1/topology")).json())["topology_status"] == "TOPOLOGY-CHANGE"
    # a plug meanwhile is refused (503); after the rollback to SINGLE the agent holds the VIP again
    assert await deferToThread(wait_for, lambda: agent.topology.status == "OK", 10)
    assert agent.topology.topology == "SINGLE" and "no VRRP state" in agent.topology.last_error
    assert netlab.addresses(agent_ns, port) == [f"{vrrp_ip}/24", f"{vip}/32"]


@pytest_twisted.ensureDeferred
async def test_keepalived_holds_the_vip_in_active_standby_and_the_agent_takes_it_back(
        netlab, agent, agent_ns, peer, client, url, stop_keepalived):
    vip, vrrp_ip, port, body = vrrp_plug(netlab, agent_ns, peer)
    assert (await post(client, url, f"/v0.1/plug/vip/{vip}", body))[0] == 202
    code, _ = await post(client, url, "/v0.1/topology", {"topology": "ACTIVE-STANDBY", "role": "ACTIVE",
                                                           "ha_ip": vip, "secret": "s" * 20})
    assert code == 202
    assert await deferToThread(wait_for, lambda: agent.topology.status == "OK", 25)
    assert agent.topology.topology == "ACTIVE-STANDBY", agent.topology.last_error
    # alone on its link, keepalived becomes MASTER and adds the VIP itself
    assert await deferToThread(wait_for, lambda: agent.topology.vrrp_state == "MASTER", 15)
    assert await deferToThread(wait_for, lambda: f"{vip}/32" in netlab.addresses(agent_ns, port), 5)
    # a plug in ACTIVE-STANDBY never adds the VIP: keepalived's stays the only copy
    assert (await post(client, url, f"/v0.1/plug/vip/{vip}", body))[0] == 202
    assert sorted(netlab.addresses(agent_ns, port)) == sorted([f"{vrrp_ip}/24", f"{vip}/32"])

    code, _ = await post(client, url, "/v0.1/topology", {"topology": "SINGLE"})
    assert code == 202
    assert await deferToThread(wait_for, lambda: agent.topology.status == "OK", 25)
    assert agent.topology.topology == "SINGLE" and not agent.keepalived.running
    assert netlab.addresses(agent_ns, port) == [f"{vrrp_ip}/24", f"{vip}/32"]
    token = serve_token(netlab, agent_ns, vip)
    assert await deferToThread(fetch, netlab, peer, vip, "token.txt") == (0, token)


# -- 1.0 bodies -----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_10_vip_body_with_an_additional_ipv6_vip(netlab, agent, agent_ns, peer):
    cidr4, gw4, vip4, routed4 = subnet(4)
    cidr6, gw6, vip6, routed6 = subnet(6)
    vrrp_ip = vip4.rsplit(".", 1)[0] + ".11"
    port, outside = netlab.veth(agent_ns, peer)
    netlab.add_address(peer, outside, f"{gw4}/24")
    netlab.add_address(peer, outside, f"{gw6}/64")
    body = {"subnet_cidr": cidr4, "gateway": gw4, "mac_address": netlab.mac(agent_ns, port), "vrrp_ip": vrrp_ip,
            "mtu": 1450, "is_sriov": False, "host_routes": [{"destination": routed4, "nexthop": gw4}],
            "additional_vips": [{"ip_address": vip6, "subnet_cidr": cidr6, "gateway": gw6,
                                 "host_routes": [{"destination": routed6, "nexthop": gw6}]}]}

    details = await agent.network.plug_vip(vip4, parse_vip_request("1.0", vip4, body))

    assert details == f"VIP {vip4} plugged on interface {port}"
    link = netlab.link(agent_ns, port)
    assert link["up"] and link["mtu"] == 1450
    assert netlab.addresses(agent_ns, port) == [f"{vrrp_ip}/24", f"{vip4}/32", f"{vip6}/128"]
    routes = netlab.routes(agent_ns)
    index = link["index"]
    for route in (("0.0.0.0/0", gw4, index), (routed4, gw4, index), (cidr6, None, index),
                  ("::/0", gw6, index), (routed6, gw6, index)):
        assert route in routes, (route, routes)
    token = serve_token(netlab, agent_ns, vip6)
    assert await deferToThread(fetch, netlab, peer, vip6, "token.txt") == (0, token)


@pytest_twisted.ensureDeferred
async def test_10_member_port_gateways_are_no_default_routes(netlab, agent, agent_ns, peer):
    cidr, gateway, ip, routed = subnet(4)
    port, _ = netlab.veth(agent_ns, peer)
    body = {"mac_address": netlab.mac(agent_ns, port), "mtu": 1400, "is_sriov": False, "fixed_ips": [
        {"ip_address": ip, "subnet_cidr": cidr, "gateway": gateway,
         "host_routes": [{"destination": routed, "nexthop": gateway}]}]}

    details = await agent.network.plug_network(parse_network_request("1.0", body))

    assert details == f"Plugged interface {port}"
    assert netlab.addresses(agent_ns, port) == [f"{ip}/24"] and netlab.link(agent_ns, port)["mtu"] == 1400
    routes = netlab.routes(agent_ns)
    assert (routed, gateway, netlab.link(agent_ns, port)["index"]) in routes
    assert not [r for r in routes if r[0] == "0.0.0.0/0"], routes
