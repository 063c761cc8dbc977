"""Plugging never poisons an interface (issue 17 part 3), against real namespaces and veths.

- an IPv6 VIP in ::/96 (the kernel reports ::3:1 as ::0.3.0.1) replugs and
  restores like any other;
- an MTU below 1280 on an interface that carries IPv6 (what is plugged plus
  the request) is a 400 before anything changes;
- a plug that fails at any step leaves the interface exactly as it was: every
  netlink step of ``Netlink.apply`` is made to fail in turn.

Layout as in test_network.py: ``home`` stands in for the amphora's root
namespace, ``agent_ns`` is ``[network] namespace``, ``peer`` the outside world.
"""

from __future__ import annotations

import errno
import ipaddress

import pytest
import pytest_twisted

from amphora.netlink import NetlinkFailure
from amphora.network import Netlink, PlugSpec, Route
from tests.integration.test_network import (agent, agent_config_extra, agent_ns, home, peer,  # noqa: F401
                                            post, start_agent, subnet)
from tests.network_support import netlab  # noqa: F401 - the fixture


def addresses(netlab, namespace, port):
    return sorted(ipaddress.ip_interface(a) for a in netlab.addresses(namespace, port))


def interface_state(netlab, mac, namespaces):
    """Everything a plug may change: where the interface is, its name, MTU, state, addresses,
    and the routes of every namespace involved."""
    namespace, name = netlab.where(mac)
    link = netlab.link(namespace, name)
    return {"namespace": namespace, "name": name, "mtu": link["mtu"], "up": link["up"],
            "addresses": addresses(netlab, namespace, name),
            "routes": {ns: sorted(netlab.routes(ns), key=str) for ns in namespaces}}


# -- IPv6 in ::/96 ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_ipv6_vip_in_the_ipv4_compatible_range_replugs_also_after_a_restart(netlab, agent_config, agent_ns,
                                                                                  home, peer, client):
    vip = "::3:1"  # the kernel and pyroute2 write it ::0.3.0.1
    port, _ = netlab.veth(agent_ns, peer)
    mac = netlab.mac(agent_ns, port)
    first = await start_agent(agent_config, home)
    try:
        url = f"https://127.0.0.1:{first.api_port}"
        code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", {"mac_address": mac})
        assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {port}")
        for again in ({"mac_address": mac}, None):
            code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", again)
            assert (code, answer["details"]) == (202, f"VIP {vip} already plugged on interface {port}")
        assert addresses(netlab, agent_ns, port) == [ipaddress.ip_interface("::3:1/128")]
    finally:
        await client.pool.closeCachedConnections()
        await first.stopService()

    second = await start_agent(agent_config, home)  # restore re-applies it over the live address
    try:
        url = f"https://127.0.0.1:{second.api_port}"
        code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", {"mac_address": mac})
        assert (code, answer["details"]) == (202, f"VIP {vip} already plugged on interface {port}")
        # the interface is not poisoned: another VIP on it plugs
        code, answer = await post(client, url, "/v0.1/plug/vip/::3:2", {"mac_address": mac})
        assert (code, answer["details"]) == (202, f"VIP ::3:2 plugged on interface {port}")
        assert addresses(netlab, agent_ns, port) == sorted(
            ipaddress.ip_interface(a) for a in ("::3:1/128", "::3:2/128"))
    finally:
        await client.pool.closeCachedConnections()
        await second.stopService()


# -- MTU below 1280 with IPv6 -------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_mtu_below_1280_on_an_interface_with_ipv6_is_refused_before_any_change(netlab, agent, agent_ns,
                                                                                      peer, client, url):
    cidr, gateway, vip, routed = subnet(6)
    port, _ = netlab.veth(agent_ns, peer)
    mac = netlab.mac(agent_ns, port)
    body = {"mac_address": mac, "subnet_cidr": cidr, "gateway": gateway, "mtu": 1400,
            "host_routes": [{"destination": routed, "nexthop": gateway}]}
    assert (await post(client, url, f"/v0.1/plug/vip/{vip}", body))[0] == 202
    before, plugged = interface_state(netlab, mac, [agent_ns]), agent.network.plugged()

    # the request alone is IPv4 and valid; merged with what is plugged it is not
    code, answer = await post(client, url, "/v0.1/plug/network", {
        "mac_address": mac, "mtu": 1200, "fixed_ips": [{"ip_address": "10.97.0.5", "subnet_cidr": "10.97.0.0/24"}]})
    assert (code, answer["message"]) == (400, "Invalid request"), answer
    assert "1280" in answer["details"] and vip in answer["details"], answer
    code, answer = await post(client, url, "/v0.1/plug/vip/10.97.0.6", {"mac_address": mac, "mtu": 1000})
    assert (code, answer["message"]) == (400, "Invalid request"), answer

    assert interface_state(netlab, mac, [agent_ns]) == before
    assert agent.network.plugged() == plugged
    # and the interface still works: a valid replug goes through
    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", body)
    assert (code, answer["details"]) == (202, f"VIP {vip} already plugged on interface {port}")


# -- a failure at any step leaves the interface as it was -----------------------------------

class FailingNetlink(Netlink):
    """The real Netlink whose ``fail_at``-th step (1-based) fails like the kernel would."""

    def __init__(self, namespace, home, fail_at):
        super().__init__(namespace, home=home)
        self.fail_at = fail_at
        self.steps = []

    def _step(self, step, fn, *args, **kwargs):
        self.steps.append(step)
        if len(self.steps) == self.fail_at:
            raise NetlinkFailure(step, OSError(errno.EIO, "injected failure"))
        return super()._step(step, fn, *args, **kwargs)


def fail_at_every_step(netlab, setup, spec_for):
    """For k = 1, 2, ...: a fresh interface from ``setup() -> (mac, agent_ns, home)`` (namespaces of
    its own), ``apply`` failing at step k, the interface compared with its state before; until
    ``apply`` has fewer than k steps. Returns the step names of the complete run."""
    for k in range(1, 60):
        mac, agent_ns, home = setup()
        namespaces = [agent_ns, home]
        netlink = FailingNetlink(agent_ns, home, 0)
        link = netlink.find(mac)
        before = interface_state(netlab, mac, namespaces)
        netlink.fail_at = k  # counting apply's steps only
        netlink.steps.clear()
        try:
            netlink.apply(link, spec_for(mac))
        except NetlinkFailure as e:
            assert "injected failure" in str(e)
            after = interface_state(netlab, mac, namespaces)
            assert after == before, f"failing at step {k} ({netlink.steps[-1]}) changed the interface"
            continue
        assert k > 1, "apply ran without a single step"
        return netlink.steps
    raise AssertionError("apply never completed")


def test_a_new_port_moved_in_and_configured_is_left_as_it_was_at_every_failing_step(netlab, peer):
    cidr, gateway, vip, routed = subnet(4)
    prefixlen = int(cidr.split("/")[1])

    def setup():
        agent_ns, home = netlab.namespace("a"), netlab.namespace("h")
        port, _ = netlab.veth(home, peer)
        return netlab.mac(home, port), agent_ns, home

    def spec_for(mac):
        return PlugSpec(mac=mac, addresses=(f"{vip}/{prefixlen}",), vips=(vip,), mtu=1400, gateway=gateway,
                        routes=(Route(routed, gateway),))

    steps = fail_at_every_step(netlab, setup, spec_for)
    assert any(s.startswith("moving") for s in steps) and any(s.startswith("setting MTU") for s in steps)
    assert any(s.startswith("adding route") for s in steps) and any(s.startswith("bringing up") for s in steps)


@pytest.mark.parametrize("version", [4, 6])
def test_a_plugged_port_reconfigured_is_left_as_it_was_at_every_failing_step(version, netlab, peer):
    """Replacing a prefix, the default route and the MTU of a live interface, failing at each step."""
    cidr, gateway, vip, routed = subnet(version)
    network = ipaddress.ip_network(cidr)
    old_gateway, new_gateway = str(network[1]), str(network[2])
    narrow = network.prefixlen + 4  # the interface holds the VIP with a longer prefix first

    def setup():
        agent_ns, home = netlab.namespace("a"), netlab.namespace("h")
        port, _ = netlab.veth(agent_ns, peer, up_a=True)
        netlab.add_address(agent_ns, port, f"{vip}/{narrow}")
        netlab.add_address(agent_ns, port, f"{network[20]}/{network.prefixlen}")  # another address, kept
        netlab.add_route(agent_ns, port, "0.0.0.0/0" if version == 4 else "::/0", old_gateway)
        return netlab.mac(agent_ns, port), agent_ns, home

    def spec_for(mac):
        return PlugSpec(mac=mac, addresses=(f"{vip}/{network.prefixlen}",), vips=(vip,), mtu=1400,
                        gateway=new_gateway, routes=(Route(routed, new_gateway),))

    steps = fail_at_every_step(netlab, setup, spec_for)
    assert any(s.startswith("removing") for s in steps) and any(s.startswith("setting default route")
                                                                for s in steps)


def test_a_port_whose_last_address_is_replaced_gets_its_routes_back(netlab, peer):
    """Removing the only IPv4 address of a link makes the kernel flush the link's routes: a failure
    after that step must bring them back too."""
    cidr, gateway, vip, routed = subnet(4)
    network = ipaddress.ip_network(cidr)

    def setup():
        agent_ns, home = netlab.namespace("a"), netlab.namespace("h")
        port, _ = netlab.veth(agent_ns, peer, up_a=True)
        netlab.add_address(agent_ns, port, f"{vip}/{network.prefixlen + 4}")
        netlab.add_route(agent_ns, port, "0.0.0.0/0", str(network[1]))
        netlab.add_route(agent_ns, port, routed, str(network[1]))
        return netlab.mac(agent_ns, port), agent_ns, home

    def spec_for(mac):
        return PlugSpec(mac=mac, addresses=(f"{vip}/{network.prefixlen}",), vips=(vip,))

    fail_at_every_step(netlab, setup, spec_for)
