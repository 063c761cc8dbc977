"""The plug parsers per API face: v0.1 and 0.5 parse alike; 1.0 takes Octavia's bodies
(additional_vips, is_sriov, fixed_ips gateways, vip_net_info) and answers in its words."""

from __future__ import annotations

import pytest

from amphora.api.requests import FACES, parse_network_body, parse_network_request, parse_vip_body, \
    parse_vip_request
from amphora.errors import InvalidRequest, InvalidVIP
from amphora.netspec import PlugSpec, Route

MAC = "fa:16:3e:00:00:01"
VIP = "203.0.113.2"
# What Octavia 19's driver sends for an amphora with an IPv6 additional VIP (_build_net_info).
BODY = {"subnet_cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "mac_address": MAC,
        "vrrp_ip": "203.0.113.9", "mtu": 1450, "is_sriov": False,
        "host_routes": [{"destination": "198.51.100.0/24", "nexthop": "203.0.113.254"}],
        "additional_vips": [{"ip_address": "2001:db8::5", "subnet_cidr": "2001:db8::/64",
                             "gateway": "2001:db8::1",
                             "host_routes": [{"destination": "2001:db8:1::/64", "nexthop": "2001:db8::fe"}]}]}


def test_v01_and_05_parse_like_v01():
    for face in ("v0.1", "0.5"):
        assert parse_vip_request(face, VIP, BODY) == parse_vip_body(VIP, BODY)
        assert parse_network_request(face, {"fixed_ips": []}) == parse_network_body({"fixed_ips": []})
    assert parse_vip_request("v0.1", VIP, None) == PlugSpec.host_vip(VIP)  # the body stays optional


def test_unknown_face_is_a_programming_error():
    with pytest.raises(ValueError):
        parse_vip_request("2.0", VIP, BODY)
    assert FACES == ("v0.1", "0.5", "1.0")


def test_10_vip_body_complete():
    spec = parse_vip_request("1.0", VIP, BODY)
    assert spec == PlugSpec(
        mac=MAC, addresses=("203.0.113.9/24",), vips=(VIP, "2001:db8::5"), mtu=1450, gateway="203.0.113.1",
        routes=(Route("198.51.100.0/24", "203.0.113.254"), Route("::/0", "2001:db8::1"),
                Route("2001:db8:1::/64", "2001:db8::fe")),
        links=("2001:db8::/64",))
    # SINGLE: the agent adds every VIP as a host address; ACTIVE-STANDBY: keepalived does
    assert spec.configured(False).addresses == ("203.0.113.9/24", "203.0.113.2/32", "2001:db8::5/128")
    assert spec.configured(True).addresses == ("203.0.113.9/24",)


def test_10_gateway_may_be_null_and_a_second_gateway_of_the_same_family_is_no_default_route():
    body = dict(BODY, gateway=None, additional_vips=[
        {"ip_address": "198.51.100.7", "subnet_cidr": "198.51.100.0/24", "gateway": "198.51.100.1",
         "host_routes": []},
        {"ip_address": "198.51.100.8", "subnet_cidr": "198.51.100.0/24", "gateway": "198.51.100.254"}])
    spec = parse_vip_request("1.0", VIP, body)
    assert spec.gateway is None and spec.vips == (VIP, "198.51.100.7", "198.51.100.8")
    assert [r for r in spec.routes if r.destination == "0.0.0.0/0"] == [Route("0.0.0.0/0", "198.51.100.1")]
    assert spec.links == ("198.51.100.0/24",)
    spec = parse_vip_request("1.0", VIP, dict(body, gateway="203.0.113.1"))
    assert not [r for r in spec.routes if r.destination == "0.0.0.0/0"]  # the VIP's gateway wins


def test_10_additional_vip_on_the_vips_own_subnet_needs_no_link_route():
    body = dict(BODY, additional_vips=[{"ip_address": "203.0.113.3", "subnet_cidr": "203.0.113.0/24",
                                        "gateway": "203.0.113.1", "host_routes": []}])
    spec = parse_vip_request("1.0", VIP, body)
    assert spec.vips == (VIP, "203.0.113.3") and spec.links == ()


@pytest.mark.parametrize("body, message, field", [
    (None, "Invalid subnet information", "body"),
    ([1], "Invalid subnet information", "body"),
    ({k: v for k, v in BODY.items() if k != "mac_address"}, "Invalid subnet information", "mac_address"),
    ({k: v for k, v in BODY.items() if k != "gateway"}, "Invalid subnet information", "gateway"),
    (dict(BODY, subnet_cidr=None), "Invalid subnet information", "subnet_cidr"),
    (dict(BODY, mac_address="nope"), "Invalid subnet information", "mac_address"),
    (dict(BODY, subnet_cidr="198.51.100.0/24"), "Invalid VIP", "subnet_cidr"),
    (dict(BODY, subnet_cidr="203.0.113.0/33"), "Invalid VIP", "subnet_cidr"),
    (dict(BODY, gateway="198.51.100.1"), "Invalid VIP", "gateway"),
    (dict(BODY, host_routes=[{"destination": "x", "nexthop": "203.0.113.1"}]), "Invalid VIP", "host_routes[0]"),
    (dict(BODY, vrrp_ip="x"), "Invalid VRRP Address", "vrrp_ip"),
    (dict(BODY, vrrp_ip="203.0.113.255"), "Invalid VRRP Address", "vrrp_ip"),
    (dict(BODY, vrrp_ip=VIP), "Invalid VRRP Address", "vrrp_ip"),
    (dict(BODY, mtu=10), "Invalid request", "mtu"),
    (dict(BODY, is_sriov="no"), "Invalid request", "is_sriov"),
    (dict(BODY, additional_vips={}), "Invalid VIP", "additional_vips"),
    (dict(BODY, additional_vips=[None]), "Invalid VIP", "additional_vips[0]"),
    (dict(BODY, additional_vips=[{"ip_address": "2001:db8::5"}]), "Invalid VIP", "additional_vips[0].subnet_cidr"),
    (dict(BODY, additional_vips=[{"ip_address": "::1", "subnet_cidr": "::/0"}]), "Invalid VIP",
     "additional_vips[0].ip_address"),
    (dict(BODY, additional_vips=[{"ip_address": "2001:db8::5", "subnet_cidr": "2001:db9::/64"}]),
     "Invalid VIP", "additional_vips[0].subnet_cidr"),
    (dict(BODY, additional_vips=[{"ip_address": VIP, "subnet_cidr": "203.0.113.0/24"}]), "Invalid VIP",
     "additional_vips[0].ip_address"),
    (dict(BODY, additional_vips=[{"ip_address": "2001:db8::5", "subnet_cidr": "2001:db8::/64",
                                  "gateway": "2001:db9::1"}]), "Invalid VIP", "additional_vips[0].gateway"),
    (dict(BODY, additional_vips=[{"ip_address": "10.0.0.5", "subnet_cidr": "10.0.0.0/24",
                                  "host_routes": [{"destination": "::/0", "nexthop": "::2"}]}]),
     "Invalid VIP", "additional_vips[0].host_routes[0]"),
])
def test_10_vip_errors_in_octavias_words(body, message, field):
    with pytest.raises(InvalidRequest) as info:
        parse_vip_request("1.0", VIP, body)
    assert (info.value.status, info.value.message) == (400, message), info.value.details
    assert info.value.details.startswith(field), info.value.details
    assert isinstance(info.value, InvalidVIP) == (message == "Invalid VIP")


@pytest.mark.parametrize("ip", ["x", "0.0.0.0", "255.255.255.255", "fe80::1%eth0", "203.0.113.2/32", ""])
def test_10_bad_vip_in_the_url(ip):
    with pytest.raises(InvalidVIP):
        parse_vip_request("1.0", ip, BODY)


NET = {"mac_address": MAC, "mtu": 1400, "is_sriov": False, "fixed_ips": [
    {"ip_address": "10.0.0.5", "subnet_cidr": "10.0.0.0/24", "gateway": "10.0.0.1",
     "host_routes": [{"destination": "192.0.2.0/24", "nexthop": "10.0.0.254"}]},
    {"ip_address": "2001:db8:2::5", "subnet_cidr": "2001:db8:2::/64", "gateway": "2001:db8:2::1"}]}


def test_10_member_port_gateways_are_checked_and_never_become_default_routes():
    spec = parse_network_request("1.0", NET)
    assert spec == PlugSpec(mac=MAC, addresses=("10.0.0.5/24", "2001:db8:2::5/64"), mtu=1400,
                            routes=(Route("192.0.2.0/24", "10.0.0.254"),))


def test_10_vrrp_port_with_vip_net_info_is_a_vip_interface():
    info = dict(BODY, vip=VIP, additional_vips=[])
    spec = parse_network_request("1.0", dict(NET, vip_net_info=info))
    assert spec.mac == MAC and spec.vips == (VIP,) and spec.gateway == "203.0.113.1"
    assert spec.addresses == ("203.0.113.9/24", "10.0.0.5/24", "2001:db8:2::5/64")
    assert spec.mtu == 1400
    # the fixed IPs' gateways: only for a family the VIP has no default route for
    assert Route("::/0", "2001:db8:2::1") in spec.routes and Route("0.0.0.0/0", "10.0.0.1") not in spec.routes
    assert Route("192.0.2.0/24", "10.0.0.254") in spec.routes
    assert Route("198.51.100.0/24", "203.0.113.254") in spec.routes


@pytest.mark.parametrize("body, message, field", [
    (None, "Invalid port information", "mac_address"),
    ({"fixed_ips": []}, "Invalid port information", "mac_address"),
    (dict(NET, mac_address="zz"), "Invalid port information", "mac_address"),
    (dict(NET, fixed_ips=[{"ip_address": "x"}]), "Invalid network port", "fixed_ips[0].ip_address"),
    (dict(NET, fixed_ips="10.0.0.5"), "Invalid network port", "fixed_ips"),
    (dict(NET, fixed_ips=[{"ip_address": "10.0.0.5", "subnet_cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}]),
     "Invalid network port", "fixed_ips[0].gateway"),
    (dict(NET, fixed_ips=[{"ip_address": "10.0.0.5", "gateway": "10.0.0.1"}]), "Invalid network port",
     "fixed_ips[0].gateway"),
    (dict(NET, fixed_ips=[{"ip_address": "10.0.0.5", "subnet_cidr": "10.0.0.0/24", "gateway": "10.0.0.255"}]),
     "Invalid network port", "fixed_ips[0].gateway"),
    (dict(NET, mtu="1400"), "Invalid request", "mtu"),
    (dict(NET, is_sriov=1), "Invalid request", "is_sriov"),
    (dict(NET, vip_net_info="x"), "Invalid subnet information", "vip_net_info"),
    (dict(NET, vip_net_info=dict(BODY)), "Invalid VIP", "vip_net_info.vip"),
    (dict(NET, vip_net_info=dict(BODY, vip="127.0.0.1")), "Invalid VIP", "vip_net_info.vip"),
    (dict(NET, vip_net_info=dict(BODY, vip=VIP, vrrp_ip="nope")), "Invalid VRRP Address", "vip_net_info.vrrp_ip"),
    (dict(NET, vip_net_info=dict(BODY, vip=VIP, mac_address="fa:16:3e:00:00:09")), "Invalid subnet information",
     "vip_net_info.mac_address"),
    (dict(NET, vip_net_info={"vip": VIP}), "Invalid subnet information", "vip_net_info."),
])
def test_10_network_errors_in_octavias_words(body, message, field):
    with pytest.raises(InvalidRequest) as info:
        parse_network_request("1.0", body)
    assert (info.value.status, info.value.message) == (400, message), info.value.details
    assert info.value.details.startswith(field), info.value.details
