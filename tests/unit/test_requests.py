"""Unit tests of amphora.api.requests (and the field parsers of amphora.netspec it uses):
every parser with good, malformed and hostile values; errors name the field."""

from __future__ import annotations

import ipaddress

import pytest

from amphora.api.requests import (integer, parse_lines, parse_network_body, parse_topology, parse_vip,
                                  parse_vip_body)
from amphora.errors import InvalidRequest, InvalidVIP
from amphora.keepalived import auth_pass
from amphora.netspec import PlugSpec, Route
from amphora.topology import ACTIVE_STANDBY, TopologySpec

MAC1 = "fa:16:3e:00:00:01"
MAC2 = "fa:16:3e:00:00:02"
SECRET = "b20e06cf1abcf29c708d3b437f4a29892a0921d0"
AS_ACTIVE = {"topology": "ACTIVE-STANDBY", "role": "ACTIVE", "ha_ip": " 203.0.113.2", "secret": SECRET}


# -- plug VIP / plug network ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("203.0.113.2", "203.0.113.2"),
    ("2001:DB8::0:5", "2001:db8::5"),
    ("240.0.0.5", "240.0.0.5"),  # reserved, but Linux configures it like any unicast address
    ("100.64.0.5", "100.64.0.5"),  # shared address space (carrier-grade NAT) is a real network
    ("10.0.0.255", "10.0.0.255"),  # a broadcast only within a subnet (see the body tests)
])
def test_parse_vip_normalises(raw, expected):
    assert parse_vip(raw) == expected


@pytest.mark.parametrize("raw", ["", "300.1.1.1", "10.0.0", "10.0.0.1/24", "abc", "2001:db8::g", " 10.0.0.1",
                                 "10.0.0.1%eth0",
                                 "fe80::1%eth0"])
def test_parse_vip_rejects(raw):
    with pytest.raises(InvalidRequest) as e:
        parse_vip(raw)
    assert e.value.message == "Invalid VIP"
    assert repr(raw) in e.value.details


# Addresses that are no VIP and no port address, with the reason the details give.
UNUSABLE = [
    ("0.0.0.0", "the unspecified address"),
    ("::", "the unspecified address"),
    ("0.1.2.3", "in 0.0.0.0/8 (this network)"),
    ("127.0.0.5", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("::1", "a loopback address"),
    ("224.0.0.1", "a multicast address"),
    ("239.1.2.3", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("ff0e::1234", "a multicast address"),
    ("255.255.255.255", "the broadcast address"),
    ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("::ffff:10.0.0.1", "an IPv4-mapped IPv6 address"),
    ("::ffff:127.0.0.1", "an IPv4-mapped IPv6 address"),
]


@pytest.mark.parametrize("raw, reason", UNUSABLE)
def test_parse_vip_rejects_addresses_that_are_no_vip(raw, reason):
    with pytest.raises(InvalidRequest) as e:
        parse_vip(raw)
    assert (e.value.status, e.value.message) == (400, "Invalid VIP")
    assert e.value.details.startswith(f"{ipaddress.ip_address(raw)} is {reason};"), e.value.details


@pytest.mark.parametrize("raw, reason", UNUSABLE)
def test_parse_vip_body_rejects_them_too(raw, reason):
    """The body parser does not rely on parse_vip having run first."""
    with pytest.raises(InvalidRequest) as e:
        parse_vip_body(raw, None)
    assert e.value.message == "Invalid VIP" and reason in e.value.details


@pytest.mark.parametrize("raw, reason", UNUSABLE)
def test_port_addresses_are_checked_like_vips(raw, reason):
    v6 = ipaddress.ip_address(raw).version == 6
    with pytest.raises(InvalidRequest) as e:
        parse_network_body({"fixed_ips": [{"ip_address": "2001:db8::5" if v6 else "10.0.0.5"},
                                          {"ip_address": raw}]})
    assert e.value.message == "Invalid request"
    assert e.value.details == f"fixed_ips[1].ip_address: {ipaddress.ip_address(raw)} is {reason}"
    vip = "2001:db8::5" if v6 else "203.0.113.2"
    with pytest.raises(InvalidRequest) as e:
        parse_vip_body(vip, {"vrrp_ip": raw})
    assert e.value.details == f"vrrp_ip: {ipaddress.ip_address(raw)} is {reason}"


@pytest.mark.parametrize("raw, reason", [(r, why) for r, why in UNUSABLE if why != "a link-local address"])
def test_next_hops_and_gateways_are_checked(raw, reason):
    v6 = ipaddress.ip_address(raw).version == 6
    destination = "2001:db8:1::/64" if v6 else "198.51.100.0/24"
    vip, subnet = ("2001:db8::5", "2001:db8::/64") if v6 else ("203.0.113.2", "203.0.113.0/24")
    with pytest.raises(InvalidRequest) as e:
        parse_vip_body(vip, {"host_routes": [{"destination": destination, "nexthop": raw}]})
    assert e.value.details == f"host_routes[0].nexthop: {ipaddress.ip_address(raw)} is {reason}"
    with pytest.raises(InvalidRequest) as e:
        parse_network_body({"fixed_ips": [{"ip_address": vip, "host_routes": [
            {"destination": destination, "nexthop": raw}]}]})
    assert e.value.details == f"fixed_ips[0].host_routes[0].nexthop: {ipaddress.ip_address(raw)} is {reason}"
    with pytest.raises(InvalidRequest) as e:
        parse_vip_body(vip, {"subnet_cidr": subnet, "gateway": raw})
    assert e.value.details == f"gateway: {ipaddress.ip_address(raw)} is {reason}"


def test_link_local_next_hops_are_fine():
    """An IPv6 router advertises its fe80:: address: a normal next hop on the port's link."""
    spec = parse_vip_body("2001:db8::5", {"host_routes": [{"destination": "2001:db8:1::/64",
                                                           "nexthop": "fe80::1"}]})
    assert spec.routes == (Route("2001:db8:1::/64", "fe80::1"),)
    with pytest.raises(InvalidRequest, match="gateway: fe80::1 is not in subnet_cidr"):
        parse_vip_body("2001:db8::5", {"subnet_cidr": "2001:db8::/64", "gateway": "fe80::1"})
    with pytest.raises(InvalidRequest, match="nexthop: an address with a scope"):
        parse_vip_body("2001:db8::5", {"host_routes": [{"destination": "2001:db8:1::/64",
                                                        "nexthop": "fe80::1%eth0"}]})


@pytest.mark.parametrize("subnet, address, what", [
    ("10.0.0.0/24", "10.0.0.255", "broadcast"),
    ("10.0.0.0/24", "10.0.0.0", "network"),
    ("10.0.0.0/30", "10.0.0.3", "broadcast"),
])
def test_the_subnets_own_network_and_broadcast_addresses_are_refused(subnet, address, what):
    expected = f"{address} is the {what} address of subnet_cidr {subnet}"
    with pytest.raises(InvalidRequest) as e:
        parse_vip_body(address, {"subnet_cidr": subnet})
    assert (e.value.message, e.value.details) == ("Invalid VIP", expected)
    with pytest.raises(InvalidRequest) as e:
        parse_vip_body("10.0.0.1", {"subnet_cidr": subnet, "vrrp_ip": address})
    assert e.value.details == "vrrp_ip: " + expected
    with pytest.raises(InvalidRequest) as e:
        parse_vip_body("10.0.0.1", {"subnet_cidr": subnet, "gateway": address})
    assert e.value.details == "gateway: " + expected
    with pytest.raises(InvalidRequest) as e:
        parse_network_body({"fixed_ips": [{"ip_address": address, "subnet_cidr": subnet}]})
    assert e.value.details == "fixed_ips[0].ip_address: " + expected


def test_point_to_point_subnets_have_no_broadcast_address():
    assert parse_vip_body("10.0.0.1", {"subnet_cidr": "10.0.0.0/31"}).addresses == ("10.0.0.1/31",)
    assert parse_vip_body("10.0.0.0", {"subnet_cidr": "10.0.0.0/31"}).addresses == ("10.0.0.0/31",)
    assert parse_vip_body("2001:db8::", {"subnet_cidr": "2001:db8::/64"}).addresses == ("2001:db8::/64",)


def test_vip_without_body_is_a_host_address():
    assert parse_vip_body("203.0.113.2", None) == PlugSpec(addresses=("203.0.113.2/32",), vips=("203.0.113.2",))
    assert parse_vip_body("2001:db8::5", {}).addresses == ("2001:db8::5/128",)


def test_vip_body_complete():
    spec = parse_vip_body("203.0.113.2", {
        "mac_address": "FA:16:3E:00:00:01", "subnet_cidr": "203.0.113.0/24", "gateway": "203.0.113.1",
        "mtu": 1450, "host_routes": [{"destination": "198.51.100.0/24", "nexthop": "203.0.113.254"}],
        "additional_vips": [], "is_sriov": False,  # unknown keys are ignored (newer controllers send more)
    })
    assert spec == PlugSpec(mac=MAC1, addresses=("203.0.113.2/24",), vips=("203.0.113.2",), mtu=1450,
                            gateway="203.0.113.1", routes=(Route("198.51.100.0/24", "203.0.113.254"),))


def test_vip_body_with_vrrp_ip_leaves_the_vip_to_keepalived():
    spec = parse_vip_body("203.0.113.2", {"subnet_cidr": "203.0.113.0/24", "vrrp_ip": "203.0.113.9"})
    assert spec.addresses == ("203.0.113.9/24",) and spec.vips == ("203.0.113.2",)


def test_vip_body_nulls_are_absent():
    assert parse_vip_body("203.0.113.2", {"mac_address": None, "mtu": None, "host_routes": None}) == \
        parse_vip_body("203.0.113.2", None)


@pytest.mark.parametrize("vip, body, field", [
    ("203.0.113.2", {"mac_address": "fa:16:3e:00:00"}, "mac_address"),
    ("203.0.113.2", {"mac_address": 12}, "mac_address"),
    ("203.0.113.2", {"subnet_cidr": "203.0.113.0"}, "subnet_cidr"),
    ("203.0.113.2", {"subnet_cidr": "203.0.113.0/33"}, "subnet_cidr"),
    ("203.0.113.2", {"subnet_cidr": "198.51.100.0/24"}, "subnet_cidr"),
    ("203.0.113.2", {"subnet_cidr": "2001:db8::/64"}, "subnet_cidr"),
    ("203.0.113.2", {"subnet_cidr": "203.0.113.0/24", "gateway": "nope"}, "gateway"),
    ("203.0.113.2", {"subnet_cidr": "203.0.113.0/24", "gateway": "198.51.100.1"}, "gateway"),
    ("203.0.113.2", {"subnet_cidr": "203.0.113.0/24", "gateway": "2001:db8::1"}, "gateway"),
    ("203.0.113.2", {"gateway": "203.0.113.1"}, "gateway"),
    ("203.0.113.2", {"mtu": "1500"}, "mtu"),
    ("203.0.113.2", {"mtu": True}, "mtu"),
    ("203.0.113.2", {"mtu": 10}, "mtu"),
    ("203.0.113.2", {"mtu": 70000}, "mtu"),
    ("2001:db8::5", {"mtu": 1000}, "mtu"),
    ("203.0.113.2", {"host_routes": {}}, "host_routes"),
    ("203.0.113.2", {"vrrp_ip": "x"}, "vrrp_ip"),
    ("203.0.113.2", {"vrrp_ip": "2001:db8::9"}, "vrrp_ip"),
    ("203.0.113.2", {"vrrp_ip": "203.0.113.2"}, "vrrp_ip"),
    ("203.0.113.2", {"subnet_cidr": "203.0.113.0/24", "vrrp_ip": "198.51.100.9"}, "vrrp_ip"),
    ("203.0.113.2", {"host_routes": ["x"]}, "host_routes[0]"),
    ("203.0.113.2", {"host_routes": [{"destination": "10.0.0.0/8"}]}, "host_routes[0].nexthop"),
    ("203.0.113.2", {"host_routes": [{"destination": "10.0.0.0", "nexthop": "10.0.0.1"}]},
     "host_routes[0].destination"),
    ("203.0.113.2", {"host_routes": [{"destination": "10.0.0.0/8", "nexthop": "2001:db8::1"}]},
     "host_routes[0].nexthop"),
    ("203.0.113.2", {"host_routes": [{"destination": "2001:db8::/64", "nexthop": "2001:db8::1"}]},
     "host_routes[0]"),
])
def test_vip_body_errors_name_the_field(vip, body, field):
    with pytest.raises(InvalidRequest) as e:
        parse_vip_body(vip, body)
    assert e.value.status == 400
    assert e.value.details.startswith(field + ":"), e.value.details


def test_vip_body_must_be_an_object():
    with pytest.raises(InvalidRequest):
        parse_vip_body("203.0.113.2", ["mac_address"])


def test_network_body():
    spec = parse_network_body({"mac_address": MAC2, "mtu": 1400, "fixed_ips": [
        {"ip_address": "10.0.0.5", "subnet_cidr": "10.0.0.0/24",
         "host_routes": [{"destination": "192.0.2.0/24", "nexthop": "10.0.0.1"}]},
        {"ip_address": "2001:db8::5", "subnet_cidr": "2001:db8::/64"},
        {"ip_address": "10.1.0.5"},
    ]})
    assert spec == PlugSpec(mac=MAC2, addresses=("10.0.0.5/24", "2001:db8::5/64", "10.1.0.5/32"), mtu=1400,
                            routes=(Route("192.0.2.0/24", "10.0.0.1"),))
    assert parse_network_body(None) == PlugSpec()


@pytest.mark.parametrize("body, field", [
    ({"fixed_ips": "10.0.0.5"}, "fixed_ips"),
    ({"fixed_ips": [1]}, "fixed_ips[0]"),
    ({"fixed_ips": [{"subnet_cidr": "10.0.0.0/24"}]}, "fixed_ips[0].ip_address"),
    ({"fixed_ips": [{"ip_address": "10.0.0.5", "subnet_cidr": "10.1.0.0/24"}]}, "fixed_ips[0].subnet_cidr"),
    ({"fixed_ips": [{"ip_address": "10.0.0.5"}, {"ip_address": "x"}]}, "fixed_ips[1].ip_address"),
    ({"fixed_ips": [{"ip_address": "2001:db8::5"}], "mtu": 1279}, "mtu"),
    ({"mac_address": "zz:16:3e:00:00:01"}, "mac_address"),
])
def test_network_body_errors_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as e:
        parse_network_body(body)
    assert e.value.details.startswith(field + ":"), e.value.details


# -- topology ------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ({}, ["topology: required"]),
    ({"topology": "BAD_TEST_DATA"}, ["Unknown topology: BAD_TEST_DATA"]),
    ({"topology": "SINGLE", "role": "ACTIVE"}, ["role: only applicable to ACTIVE-STANDBY"]),
    ({"topology": "ACTIVE-ACTIVE", "ha_ip": "10.0.0.1", "secret": "x"},
     ["ha_ip: only applicable", "secret: only applicable"]),
    ({"topology": "ACTIVE-STANDBY"},
     ["role: required", "ha_ip: required", "secret: required"]),
    (dict(AS_ACTIVE, role="MASTER"), ["Unknown role: MASTER"]),
    (dict(AS_ACTIVE, ha_ip="300.1.1.1"), ["ha_ip: not an IP address"]),
    (dict(AS_ACTIVE, ha_ip="224.0.0.18"), ["ha_ip: not usable"]),
    (dict(AS_ACTIVE, ha_ip=17), ["ha_ip: not an IP address"]),
    (dict(AS_ACTIVE, secret=""), ["secret: required"]),
    (dict(AS_ACTIVE, secret=12345678), ["secret: must be a printable string"]),
    (dict(AS_ACTIVE, peers="10.0.0.1"), ["peers: must be a list"]),
    (dict(AS_ACTIVE, peers=["203.0.113.3", "nope", 7, "2001:db8::1", "203.0.113.3", "203.0.113.2"]),
     ["peers[1]: not an IP address", "peers[2]: not an IP address", "peers[3]: IPv6 peer",
      "peers[4]: duplicate", "peers[5]: is the ha_ip"]),
    (dict(AS_ACTIVE, interface="../etc"), ["interface: not an interface name"]),
    (dict(AS_ACTIVE, interface="a" * 16), ["interface: not an interface name"]),
    (dict(AS_ACTIVE, virtual_router_id=0), ["virtual_router_id: must be an integer from 1 to 255"]),
    (dict(AS_ACTIVE, virtual_router_id=True), ["virtual_router_id: must be an integer"]),
    (dict(AS_ACTIVE, priority=255), ["priority: must be an integer from 1 to 254"]),
    (dict(AS_ACTIVE, colour="blue"), ["Unknown field: colour"]),
    ({"topology": "ACTIVE-STANDBY", "role": "BOSS", "ha_ip": "x", "secret": "", "peers": ["y"],
      "priority": -1},
     ["Unknown role: BOSS", "ha_ip: not an IP address", "secret: required", "peers[0]", "priority:"]),
])
def test_validation_names_every_bad_field(body, expected):
    with pytest.raises(InvalidRequest) as info:
        parse_topology(body)
    assert info.value.message == "Invalid request"
    for text in expected:
        assert text in info.value.details, (text, info.value.details)


def test_validation_never_echoes_the_secret():
    with pytest.raises(InvalidRequest) as info:
        parse_topology(dict(AS_ACTIVE, secret="bad\nsecret-value-xyz", ha_ip="nope"))
    assert "secret-value-xyz" not in info.value.details


def test_valid_request_yields_settings():
    spec = parse_topology(dict(AS_ACTIVE, peers=[" 203.0.113.3"], interface="eth1",
                               virtual_router_id=7, priority=120))
    topology, settings = spec.topology, spec.vrrp
    assert topology == ACTIVE_STANDBY
    assert settings.ha_ip == "203.0.113.2" and settings.peers == ("203.0.113.3",)
    assert settings.interface == "eth1" and settings.effective_router_id == 7
    assert settings.effective_priority == 120 and settings.auth == auth_pass(SECRET)
    assert parse_topology({"topology": "SINGLE", "role": None, "ha_ip": ""}) == TopologySpec("SINGLE", None)


# The one rule: ha_ip and VRRP peers are refused exactly where plugging refuses an address.
# (Before, ha_ip took 255.255.255.255 and 0.0.0.0/8, and peers those plus IPv4-mapped ones.)
@pytest.mark.parametrize("raw, reason", UNUSABLE)
def test_ha_ip_obeys_the_address_rule_of_plugging(raw, reason):
    with pytest.raises(InvalidVIP):
        parse_vip(raw)  # plugging refuses it ...
    with pytest.raises(InvalidRequest) as info:
        parse_topology(dict(AS_ACTIVE, ha_ip=raw))  # ... and so does the topology
    assert info.value.message == "Invalid request"
    assert info.value.details == f"ha_ip: not usable as a virtual address: {ipaddress.ip_address(raw)}"


@pytest.mark.parametrize("raw", ["255.255.255.255", "0.0.0.0", "0.1.2.3", "::ffff:203.0.113.3",
                                 "127.0.0.1", "224.0.0.18", "2001:db8::3%eth0"])
def test_vrrp_peers_obey_the_address_rule_too(raw):
    with pytest.raises(InvalidRequest) as info:
        parse_topology(dict(AS_ACTIVE, peers=[raw]))
    assert info.value.details.startswith("peers[0]: not usable as a VRRP peer: "), info.value.details


def test_scoped_ha_ip_is_refused_and_link_local_peers_are_fine():
    with pytest.raises(InvalidRequest, match="ha_ip: not usable"):
        parse_topology(dict(AS_ACTIVE, ha_ip="2001:db8::2%eth0"))
    spec = parse_topology(dict(AS_ACTIVE, ha_ip="2001:db8::2", peers=["fe80::3"]))
    assert spec.vrrp.peers == ("fe80::3",) and spec.vrrp.ha_ip == "2001:db8::2"


@pytest.mark.parametrize("body", [
    {"topology": ["SINGLE"]}, {"topology": None}, {"topology": "single"},
    dict(AS_ACTIVE, ha_ip={"a": 1}), dict(AS_ACTIVE, ha_ip="1" * 10000), dict(AS_ACTIVE, ha_ip="10.0.0.1\n"),
    dict(AS_ACTIVE, peers=["203.0.113.3"] * 17), dict(AS_ACTIVE, peers=[None]), dict(AS_ACTIVE, peers={"a": 1}),
    dict(AS_ACTIVE, secret="x" * 1025), dict(AS_ACTIVE, secret="a\x00b"), dict(AS_ACTIVE, role=["ACTIVE"]),
    dict(AS_ACTIVE, interface=5), dict(AS_ACTIVE, interface="eth0\n"), dict(AS_ACTIVE, priority=1.5),
    dict(AS_ACTIVE, virtual_router_id="7"), dict(AS_ACTIVE, virtual_router_id=2 ** 64),
])
def test_hostile_topology_bodies_are_400(body):
    if body.get("ha_ip") == "10.0.0.1\n":  # whitespace around ha_ip is tolerated (stripped), as before
        assert parse_topology(body).vrrp.ha_ip == "10.0.0.1"
        return
    with pytest.raises(InvalidRequest) as info:
        parse_topology(body)
    assert info.value.status == 400 and SECRET not in info.value.details


def test_topology_errors_are_invalid_request_not_a_subclass():
    with pytest.raises(InvalidRequest) as info:
        parse_topology({"topology": "SINGLE", "ha_ip": "10.0.0.1"})
    assert type(info.value) is InvalidRequest


# -- bounded integers -------------------------------------------------------------------

@pytest.mark.parametrize("raw", [0, 11, -1, True, False, 1.0, "5", None, [5], 2 ** 70])
def test_integer_refuses_what_is_no_integer_in_range(raw):
    with pytest.raises(InvalidRequest) as info:
        integer(raw, "count", 1, 10)
    assert info.value.details == f"count: must be an integer from 1 to 10, got {raw!r}"


def test_integer_accepts_the_bounds():
    assert integer(1, "count", 1, 10) == 1 and integer(10, "count", 1, 10) == 10


@pytest.mark.parametrize("args, expected", [({}, 100), ({b"lines": [b"1"]}, 1), ({b"lines": [b"1000"]}, 1000),
                                            ({b"lines": [b"0042"]}, 42)])
def test_lines(args, expected):
    assert parse_lines(args) == expected


@pytest.mark.parametrize("values", [[b"0"], [b"1001"], [b"-1"], [b"+5"], [b" 5"], [b"5x"], [b""], [b"1e3"],
                                    [b"\xd9\xa3"], [b"1", b"2"], [b"9" * 5000]])
def test_lines_refuses(values):
    with pytest.raises(InvalidRequest) as info:
        parse_lines({b"lines": values})
    assert info.value.details.startswith("lines must be an integer from 1 to 1000, got ")


# -- hostile plug bodies -------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["10.0.0.1\x00", "10.0.0.1\n", "１０.0.0.1", "0x0a000001", "167772161", "10.1",
                                 "010.0.0.1", "::ffff:0:10.0.0.1x", "[2001:db8::1]", "2001:db8::1/128",
                                 "a" * 100000, "203.0.113.2 ", "%2F..%2F"])
def test_hostile_vips_are_invalid_vip(raw):
    with pytest.raises(InvalidVIP) as info:
        parse_vip(raw)
    assert (info.value.status, info.value.message) == (400, "Invalid VIP")


@pytest.mark.parametrize("body, field", [
    ({"mtu": 1e3}, "mtu"), ({"mtu": 2 ** 63}, "mtu"), ({"mtu": -1}, "mtu"), ({"mtu": [1500]}, "mtu"),
    ({"host_routes": [{"destination": "10.0.0.0/8", "nexthop": None}]}, "host_routes[0].nexthop"),
    ({"host_routes": [{"destination": ["10.0.0.0/8"], "nexthop": "203.0.113.1"}]}, "host_routes[0].destination"),
    ({"host_routes": [{"destination": "10.0.0.0/8\n", "nexthop": "203.0.113.1"}]}, "host_routes[0].destination"),
    ({"host_routes": [[]] * 3}, "host_routes[0]"), ({"host_routes": "x"}, "host_routes"),
    ({"subnet_cidr": {"cidr": "203.0.113.0/24"}}, "subnet_cidr"), ({"subnet_cidr": "203.0.113.0/24/1"}, "subnet_cidr"),
    ({"mac_address": "fa:16:3e:00:00:01\n"}, "mac_address"), ({"mac_address": "fa-16-3e-00-00-01"}, "mac_address"),
    ({"vrrp_ip": 3405803785}, "vrrp_ip"), ({"vrrp_ip": ["203.0.113.9"]}, "vrrp_ip"),
])
def test_hostile_vip_bodies_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as info:
        parse_vip_body("203.0.113.2", body)
    assert info.value.status == 400 and info.value.details.startswith(field + ":"), info.value.details


@pytest.mark.parametrize("body, field", [
    ({"fixed_ips": [{"ip_address": ["10.0.0.5"]}]}, "fixed_ips[0].ip_address"),
    ({"fixed_ips": [{"ip_address": "10.0.0.5", "subnet_cidr": 24}]}, "fixed_ips[0].subnet_cidr"),
    ({"fixed_ips": [{"ip_address": "10.0.0.5", "host_routes": {}}]}, "fixed_ips[0].host_routes"),
    ({"fixed_ips": {"ip_address": "10.0.0.5"}}, "fixed_ips"),
    ({"fixed_ips": [None]}, "fixed_ips[0]"),
    ({"mtu": "9000"}, "mtu"),
])
def test_hostile_network_bodies_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as info:
        parse_network_body(body)
    assert info.value.details.startswith(field + ":"), info.value.details


def test_plug_without_a_body_is_the_host_vip_spec():
    """The plugger tells a bare replug by this equality (amphora.network)."""
    assert parse_vip_body("203.0.113.2", None) == PlugSpec.host_vip("203.0.113.2")
    assert parse_vip_body("2001:DB8::5", None) == PlugSpec.host_vip("2001:db8::5")
