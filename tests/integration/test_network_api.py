"""The plug routes over real mTLS: validation (400), the topology gate (503), methods -- no interface is touched.

The requests here are refused before any netlink call, except the 404 for an
unknown MAC, which only lists links.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from amphora.topology import STATUS_CHANGE


async def post(client, url, path, raw=b""):
    response = await client.post(url + path, data=raw)
    return response.code, json.loads(await response.content())


@pytest.mark.parametrize("ip", ["300.1.1.1", "not-an-ip", "10.0.0.1%20", "2001:db8::g", "10.0.0", "fe80::1%25eth0"])
@pytest_twisted.ensureDeferred
async def test_invalid_vip_is_400(agent, client, url, ip):
    code, body = await post(client, url, f"/v0.1/plug/vip/{ip}")
    assert code == 400 and body["message"] == "Invalid VIP", body


@pytest.mark.parametrize("ip, why", [
    ("0.0.0.0", "the unspecified address"), ("::", "the unspecified address"),
    ("127.0.0.5", "a loopback address"), ("::1", "a loopback address"),
    ("224.0.0.1", "a multicast address"), ("ff02::1", "a multicast address"),
    ("255.255.255.255", "the broadcast address"), ("169.254.1.1", "a link-local address"),
])
@pytest_twisted.ensureDeferred
async def test_an_address_that_is_no_vip_is_400_and_nothing_is_plugged(agent, client, url, ip, why):
    # The body names a MAC no interface has: should validation ever let such a VIP through, the
    # request ends in a 404 instead of touching an interface of this shared machine.
    code, body = await post(client, url, f"/v0.1/plug/vip/{ip}", b'{"mac_address": "fa:16:3e:77:77:7d"}')
    assert (code, body["message"]) == (400, "Invalid VIP"), body
    assert body["details"].startswith(f"{ip} is {why};"), body
    assert agent.network.plugged()["interfaces"] == []


@pytest.mark.parametrize("path", ["/v0.1/plug/vip/..%2F..%2Fetc", "/v0.1/plug/vip/..%2F..%2Fetc/",
                                  "/v0.1/plug/vip/10.0.0.1%2F24", "/v0.1/plug/vip/%2F",
                                  "/v0.1/plug/vip/"])
@pytest_twisted.ensureDeferred
async def test_one_segment_with_an_encoded_slash_is_an_invalid_vip(agent, client, url, path):
    code, body = await post(client, url, path)
    assert (code, body["message"]) == (400, "Invalid VIP"), body
    assert "is not an IPv4 or IPv6 address" in body["details"], body


@pytest_twisted.ensureDeferred
async def test_more_segments_after_the_vip_are_no_route(agent, client, url):
    code, body = await post(client, url, "/v0.1/plug/vip/203.0.113.2/more")
    assert code == 404 and body["details"].startswith("No route"), body


@pytest.mark.parametrize("path, raw, field", [
    ("/v0.1/plug/vip/203.0.113.2", {"mac_address": "nope"}, "mac_address"),
    ("/v0.1/plug/vip/203.0.113.2", {"subnet_cidr": "198.51.100.0/24"}, "subnet_cidr"),
    ("/v0.1/plug/vip/203.0.113.2", {"subnet_cidr": "203.0.113.0/24", "gateway": "10.0.0.1"}, "gateway"),
    ("/v0.1/plug/vip/203.0.113.2", {"mtu": "9000"}, "mtu"),
    ("/v0.1/plug/vip/203.0.113.2", {"host_routes": [{"destination": "x", "nexthop": "10.0.0.1"}]},
     "host_routes[0].destination"),
    ("/v0.1/plug/network", {"fixed_ips": [{"ip_address": "10.0.0.500"}]}, "fixed_ips[0].ip_address"),
    ("/v0.1/plug/network/", {"mtu": 0}, "mtu"),
    ("/v0.1/plug/network", {"fixed_ips": [{"ip_address": "0.0.0.0"}]}, "fixed_ips[0].ip_address"),
    ("/v0.1/plug/network", {"fixed_ips": [{"ip_address": "ff02::1"}]}, "fixed_ips[0].ip_address"),
    ("/v0.1/plug/vip/203.0.113.2", {"subnet_cidr": "203.0.113.0/24", "gateway": "203.0.113.255"}, "gateway"),
    ("/v0.1/plug/vip/203.0.113.2", {"host_routes": [{"destination": "10.0.0.0/8", "nexthop": "127.0.0.1"}]},
     "host_routes[0].nexthop"),
])
@pytest_twisted.ensureDeferred
async def test_malformed_body_is_400_naming_the_field(agent, client, url, path, raw, field):
    code, body = await post(client, url, path, json.dumps(raw).encode())
    assert code == 400 and body["details"].startswith(field + ":"), body


@pytest.mark.parametrize("raw", [b"{", b"[1]", b"\xff"])
@pytest_twisted.ensureDeferred
async def test_body_that_is_not_a_json_object_is_400(agent, client, url, raw):
    for path in ("/v0.1/plug/vip/203.0.113.2", "/v0.1/plug/network"):
        code, body = await post(client, url, path, raw)
        assert code == 400, body


@pytest_twisted.ensureDeferred
async def test_unknown_mac_is_404_on_both_spellings(agent, client, url):
    for path in ("/v0.1/plug/network", "/v0.1/plug/network/"):
        code, body = await post(client, url, path, b'{"mac_address": "fa:16:3e:77:77:7e"}')
        assert (code, body["message"]) == (404, "No suitable network interface found"), body
    assert agent.network.plugged()["interfaces"] == []


@pytest_twisted.ensureDeferred
async def test_topology_transition_gate_is_503(agent, client, url):
    agent.topology.status = STATUS_CHANGE
    try:
        for path in ("/v0.1/plug/vip/203.0.113.2", "/v0.1/plug/vip/bad", "/v0.1/plug/vip/..%2Fx",
                     "/v0.1/plug/network",
                     "/v0.1/plug/network/"):
            code, body = await post(client, url, path)
            assert (code, body["message"]) == (503, "Topology transition in progress"), path
    finally:
        agent.topology.status = "OK"


@pytest_twisted.ensureDeferred
async def test_only_post(agent, client, url):
    response = await client.get(url + "/v0.1/plug/network")
    assert response.code == 405
    await response.content()
