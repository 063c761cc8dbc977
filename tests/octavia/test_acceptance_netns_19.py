"""Acceptance in network namespaces: Octavia 19.0.0's driver plugs the VIP and a member
network with the bodies it builds from its own network data models, then a SINGLE load
balancer rendered by its template serves a client in a peer namespace through the VIP,
from a member in a third namespace reached over the plugged member port.

Layout (tests/integration/test_network.py's): ``home`` stands in for the amphora's root
namespace, ``agent_ns`` is the agent's [network] namespace, ``peer`` the outside world,
``member_ns`` the member's network."""

from __future__ import annotations

import secrets

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.test_network import PORT, agent, agent_ns, fetch, home, peer, subnet  # noqa: F401
from tests.integration.test_network_vips import serve_token
from tests.listener_support import new_id
from tests.network_support import netlab  # noqa: F401 - the fixture
from tests.octavia.support import assert_passed, controller_params, kill_haproxies_under, run_driver, summary

VERSION = "19.0.0"


@pytest.fixture
def agent_config_extra(agent_ns, run_dir):
    from tests.listener_support import short_dir

    return {"agent": {"run_dir": run_dir}, "network": {"namespace": agent_ns},
            "octavia": {"base_path": short_dir("oct")}}


@pytest_twisted.ensureDeferred
async def test_single_plug_and_traffic_from_a_peer_namespace(netlab, agent, agent_ns, peer, pki, tmp_path,  # noqa: F811
                                                             run_dir):
    """SINGLE: create-LB's plug VIP (with vrrp_ip), the member flow's plug network, the listener
    create's update; then traffic peer -> VIP -> haproxy -> member port -> member."""
    cidr, gateway, vip, _ = subnet(4)
    vrrp_ip = vip.rsplit(".", 1)[0] + ".11"
    port, outside = netlab.veth(agent_ns, peer)
    netlab.add_address(peer, outside, f"{gateway}/24")
    # The member's network: its own namespace behind a second port of the amphora.
    n = secrets.randbelow(250) + 1
    member_ns = netlab.namespace("m")
    member_port, member_outside = netlab.veth(agent_ns, member_ns)
    netlab.add_address(member_ns, member_outside, f"10.78.{n}.20/24")
    token = serve_token(netlab, member_ns, f"10.78.{n}.20")
    spec = {"id": new_id(), "vip": vip, "listeners": [
        {"id": new_id(), "protocol": "HTTP", "port": PORT,
         "pool": {"id": new_id(), "protocol": "HTTP", "monitor": True, "monitor_id": new_id(),
                  "members": [{"id": new_id(), "address": f"10.78.{n}.20", "port": PORT}]}}]}
    work = str(tmp_path / "ctl")
    try:
        results = await run_driver(controller_params(
            pki, agent, work, VERSION, "plug_1_0", lb=spec,
            plug={"vip": vip, "vrrp_ip": vrrp_ip, "vip_cidr": cidr, "vip_gateway": gateway,
                  "vip_mac": netlab.mac(agent_ns, port), "member_mac": netlab.mac(agent_ns, member_port),
                  "member_ip": f"10.78.{n}.5", "member_cidr": f"10.78.{n}.0/24"}))
        print(summary(VERSION, results))
        assert_passed(results, ["post_vip_plug", "post_network_plug"])
        assert f"10.78.{n}.5/24" in netlab.addresses(agent_ns, member_port)
        # SINGLE: the agent holds the VIP itself, beside the amphora's own vrrp_ip.
        addresses = netlab.addresses(agent_ns, port)
        assert f"{vip}/32" in addresses or f"{vip}/24" in addresses, addresses
        assert f"{vrrp_ip}/24" in addresses, addresses

        results = await run_driver(controller_params(pki, agent, work, VERSION, "lb_update", lb=spec))
        assert_passed(results, ["update_amphora_listeners"])
        code, text = await deferToThread(fetch, netlab, peer, vip, "token.txt")
        assert (code, text) == (0, token)
    finally:
        kill_haproxies_under(agent.config.octavia.base_path, run_dir, agent.config.agent.state_dir)
