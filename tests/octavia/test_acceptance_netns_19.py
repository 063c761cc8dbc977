"""Acceptance in network namespaces: Octavia 19.0.0's driver plugs the VIP and a member
network with the bodies it builds from its own network data models, then a SINGLE load
balancer rendered by its template serves a client in a peer namespace through the VIP.

Layout (tests/integration/test_network.py's): ``home`` stands in for the amphora's root
namespace, ``agent_ns`` is the agent's [network] namespace, ``peer`` the outside world."""

from __future__ import annotations

import secrets

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.test_network import (PORT, agent, agent_ns, fetch, home, peer,  # noqa: F401 - fixtures
                                            serve_backend, subnet)
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
    cidr, gateway, vip, _ = subnet(4)
    prefix = cidr.rsplit(".", 1)[0]
    vrrp_ip = f"{prefix}.11"
    port, outside = netlab.veth(agent_ns, peer)
    netlab.add_address(peer, outside, f"{gateway}/24")
    token = secrets.token_hex(8)
    (tmp_path / "hello.txt").write_text(token)
    backend = serve_backend(netlab, agent_ns, str(tmp_path))
    spec = {"id": new_id(), "vip": vip, "listeners": [
        {"id": new_id(), "protocol": "HTTP", "port": PORT,
         "pool": {"id": new_id(), "protocol": "HTTP",
                  "members": [{"id": new_id(), "address": "127.0.0.1", "port": backend}]}}]}
    work = str(tmp_path / "ctl")
    try:
        results = await run_driver(controller_params(
            pki, agent, work, VERSION, "plug_1_0", lb=spec,
            plug={"vip": vip, "vrrp_ip": vrrp_ip, "vip_cidr": cidr, "vip_gateway": gateway,
                  "vip_mac": netlab.mac(agent_ns, port)}))
        print(summary(VERSION, results))
        assert_passed(results, ["post_vip_plug"])
        # SINGLE: the agent holds the VIP itself, beside the amphora's own vrrp_ip.
        addresses = netlab.addresses(agent_ns, port)
        assert f"{vip}/32" in addresses or f"{vip}/24" in addresses, addresses
        assert f"{vrrp_ip}/24" in addresses, addresses

        results = await run_driver(controller_params(pki, agent, work, VERSION, "lb_update", lb=spec))
        assert_passed(results, ["update_amphora_listeners"])
        code, text = await deferToThread(fetch, netlab, peer, vip, "hello.txt")
        assert (code, text) == (0, token)
    finally:
        kill_haproxies_under(agent.config.octavia.base_path, run_dir, agent.config.agent.state_dir)
