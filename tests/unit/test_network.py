"""Unit tests of amphora.network: the spec, interface selection, the plugger with a fake netlink."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from types import SimpleNamespace

import pytest
from twisted.internet.defer import maybeDeferred

from amphora.api.requests import parse_network_body, parse_vip_body
from amphora.errors import InvalidRequest, NotFound, OperationFailed
from amphora.netspec import PlugSpec, Route
from amphora.network import Link, NetlinkFailure, NetworkPlugger, choose_interface, free_name, is_candidate

MAC1 = "fa:16:3e:00:00:01"
MAC2 = "fa:16:3e:00:00:02"
MAC3 = "fa:16:3e:00:00:03"


# -- the spec (parsers: tests/unit/test_requests.py) --------------------------------

def test_state_entries_with_unusable_addresses_are_skipped(tmp_path):
    """plugged.json written by an agent that still accepted 0.0.0.0 is not re-applied at start."""
    (tmp_path / "plugged.json").write_text(json.dumps({"interfaces": [
        {"mac": MAC1, "addresses": ["0.0.0.0/32"], "vips": ["0.0.0.0"], "name": "eth1"},
        {"mac": MAC2, "addresses": ["10.0.0.6/24"], "vips": [], "name": "eth2",
         "host_routes": [{"destination": "1.0.0.0/8", "nexthop": "127.0.0.1"}]},
        {"mac": MAC3, "addresses": ["10.0.0.5/24"], "vips": ["10.0.0.5"], "name": "eth3"}]}))
    plugger, _ = make(tmp_path, [])
    assert [e["mac"] for e in plugger.plugged()["interfaces"]] == [MAC3]


def test_merge_replaces_prefix_and_never_duplicates():
    a = PlugSpec(mac=MAC1, addresses=("10.0.0.5/32",), vips=("10.0.0.5",), routes=(Route("1.0.0.0/8", "10.0.0.1"),))
    b = PlugSpec(addresses=("10.0.0.5/24", "10.0.0.6/24"), vips=("10.0.0.5",), mtu=1400, gateway="10.0.0.1",
                 routes=(Route("1.0.0.0/8", "10.0.0.2"),))
    m = a.merged(b)
    assert m == PlugSpec(mac=MAC1, addresses=("10.0.0.5/24", "10.0.0.6/24"), vips=("10.0.0.5",), mtu=1400,
                         gateway="10.0.0.1", routes=(Route("1.0.0.0/8", "10.0.0.2"),))
    assert PlugSpec.from_json(json.loads(json.dumps(m.to_json("eth1")))) == m


# -- selection ---------------------------------------------------------------------

LO = Link(1, "lo", "00:00:00:00:00:00", up=True, loopback=True, ether=False)
ETH0 = Link(2, "eth0", "fa:16:3e:00:00:00", up=True)


def down(index, name, mac, **kw):
    return Link(index, name, mac, **kw)


def test_the_single_down_port_is_chosen():
    eth1 = down(3, "eth1", MAC1)
    assert choose_interface([LO, ETH0, eth1], set()) == eth1


@pytest.mark.parametrize("link", [
    down(3, "eth1", MAC1, up=True),
    down(3, "lo2", MAC1, loopback=True),
    down(3, "ifb0", MAC1, kind="ifb"),
    down(3, "br0", MAC1, kind="bridge"),
    down(3, "tunl0", MAC1, ether=False),
    down(3, "eth1", MAC1, master=7),
])
def test_not_candidates(link):
    assert not is_candidate(link, set())
    with pytest.raises(NotFound) as e:
        choose_interface([LO, ETH0, link], set())
    assert e.value.message == "No suitable network interface found"


def test_plugged_links_are_not_candidates():
    eth1, eth2 = down(3, "eth1", MAC1), down(4, "eth2", MAC2)
    assert choose_interface([eth1, eth2], {MAC1}) == eth2


def test_several_candidates_are_named():
    links = [LO, down(4, "eth2", MAC2), down(3, "eth1", MAC1, kind="veth")]
    with pytest.raises(NotFound) as e:
        choose_interface(links, set())
    assert e.value.message == "No suitable network interface found"
    assert f"eth1 ({MAC1})" in e.value.details and f"eth2 ({MAC2})" in e.value.details


def test_mac_chooses_exactly_whatever_the_state():
    links = [LO, ETH0, down(3, "eth1", MAC1), down(4, "eth2", MAC2, up=True)]
    assert choose_interface(links, set(), mac=MAC2).name == "eth2"
    with pytest.raises(NotFound) as e:
        choose_interface(links, set(), mac=MAC3)
    assert MAC3 in e.value.details


def test_candidates_in_the_target_namespace_win():
    home = down(3, "eth1", MAC1)
    inside = down(3, "eth2", MAC2, namespace="amphora-haproxy")
    assert choose_interface([home, inside], set(), "amphora-haproxy") == inside
    assert choose_interface([home], set(), "amphora-haproxy") == home
    same_mac_inside = replace(home, namespace="amphora-haproxy", index=9)
    assert choose_interface([home, same_mac_inside], set(), "amphora-haproxy", mac=MAC1) == same_mac_inside


# -- the plugger, with a fake netlink -------------------------------------------------

class FakeNetlink:
    """Links in memory; ``apply`` records specs; ``fail`` makes the next apply fail."""

    def __init__(self, links, namespace=""):
        self.namespace = namespace
        self.links_ = list(links)
        self.applied = []
        self.fail = None
        self.ensured = 0

    def ensure_namespace(self):
        self.ensured += 1

    def links(self):
        return list(self.links_)

    def find(self, mac):
        return next((l for l in self.links_ if l.mac == mac), None)

    def apply(self, link, spec):
        if self.fail:
            error, self.fail = self.fail, None
            raise error
        moved = replace(link, up=True, namespace=self.namespace)
        self.links_ = [moved if l.mac == link.mac else l for l in self.links_]
        self.applied.append((link.name, spec))
        return moved

    def withdraw(self, link, addresses):
        self.applied.append((link.name, "withdraw", tuple(addresses)))


def make(tmp_path, links, namespace="", vip_owner=None):
    config = SimpleNamespace(network=SimpleNamespace(namespace=namespace),
                             agent=SimpleNamespace(state_dir=str(tmp_path)))
    fake = FakeNetlink(links, namespace)
    plugger = NetworkPlugger(config, reactor=None, netlink=fake,
                             run_blocking=lambda fn, *a: maybeDeferred(fn, *a), vip_owner=vip_owner)
    return plugger, fake


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_plug_vip_persists_and_is_idempotent(tmp_path):
    plugger, fake = make(tmp_path, [LO, ETH0, down(3, "eth1", MAC1)])
    spec = parse_vip_body("203.0.113.2", None)
    assert result(plugger.plug_vip("203.0.113.2", spec)) == "VIP 203.0.113.2 plugged on interface eth1"
    assert fake.applied == [("eth1", replace(spec, mac=MAC1))]
    doc = json.loads((tmp_path / "plugged.json").read_text())
    assert doc["interfaces"] == [{"mac": MAC1, "name": "eth1", "vips": ["203.0.113.2"],
                                  "addresses": ["203.0.113.2/32"], "mtu": None, "gateway": None,
                                  "host_routes": []}]
    assert plugger.plugged()["interfaces"] == doc["interfaces"]
    assert plugger.vip_interface("203.0.113.2") == "eth1"
    # again: found by the record, re-applied (a no-op for real netlink), said so
    assert result(plugger.plug_vip("203.0.113.2", spec)) == "VIP 203.0.113.2 already plugged on interface eth1"
    assert len(fake.applied) == 2 and fake.applied[1][1].addresses == ("203.0.113.2/32",)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_second_vip_by_mac_joins_the_interface(tmp_path):
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1)])
    result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", {"mac_address": MAC1})))
    details = result(plugger.plug_vip("2001:db8::5", parse_vip_body("2001:db8::5", {"mac_address": MAC1})))
    assert details == "VIP 2001:db8::5 plugged on interface eth1"
    (entry,) = plugger.plugged()["interfaces"]
    assert entry["vips"] == ["203.0.113.2", "2001:db8::5"]
    assert entry["addresses"] == ["203.0.113.2/32", "2001:db8::5/128"]


def test_vip_on_another_mac_is_refused(tmp_path):
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1), down(4, "eth2", MAC2)])
    result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", {"mac_address": MAC1})))
    with pytest.raises(InvalidRequest) as e:
        result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", {"mac_address": MAC2})))
    assert "already plugged on interface eth1" in e.value.details
    assert len(fake.applied) == 1


def test_plug_network(tmp_path):
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1), down(4, "eth2", MAC2)])
    with pytest.raises(NotFound):
        result(plugger.plug_network(parse_network_body(None)))
    body = {"mac_address": MAC2, "fixed_ips": [{"ip_address": "10.0.0.5", "subnet_cidr": "10.0.0.0/24"}]}
    assert result(plugger.plug_network(parse_network_body(body))) == "Plugged interface eth2"
    assert result(plugger.plug_network(parse_network_body(body))) == "Interface eth2 already plugged"
    # eth2 is plugged now, so eth1 is the one new port
    assert result(plugger.plug_network(parse_network_body(None))) == "Plugged interface eth1"
    assert [e["mac"] for e in plugger.plugged()["interfaces"]] == [MAC1, MAC2]


def test_netlink_failure_is_a_500_and_nothing_is_recorded(tmp_path):
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1)])
    fake.fail = NetlinkFailure("adding address 203.0.113.2/32 on eth1", OSError(17, "File exists"))
    with pytest.raises(OperationFailed) as e:
        result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", None)))
    assert e.value.message == "Error plugging VIP"
    assert "adding address 203.0.113.2/32 on eth1: File exists (errno 17)" == e.value.details
    assert plugger.plugged()["interfaces"] == []
    assert not (tmp_path / "plugged.json").exists()
    fake.fail = RuntimeError("surprise")
    with pytest.raises(OperationFailed) as e:
        result(plugger.plug_network(parse_network_body(None)))
    assert e.value.message == "Error plugging Port" and "surprise" in e.value.details


def test_a_low_mtu_merged_with_plugged_ipv6_is_refused_before_netlink(tmp_path):
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1), down(4, "eth2", MAC2)])
    result(plugger.plug_vip("2001:db8::5", parse_vip_body("2001:db8::5", {"mac_address": MAC1})))
    body = {"mac_address": MAC1, "mtu": 1200, "fixed_ips": [{"ip_address": "10.0.0.5"}]}
    with pytest.raises(InvalidRequest) as e:
        result(plugger.plug_network(parse_network_body(body)))  # valid alone, not with what is plugged
    assert "1280" in e.value.details and "2001:db8::5/128" in e.value.details
    with pytest.raises(InvalidRequest):
        result(plugger.plug_vip("10.0.0.6", parse_vip_body("10.0.0.6", {"mac_address": MAC1, "mtu": 1000})))
    assert len(fake.applied) == 1 and plugger.plugged()["interfaces"][0]["mtu"] is None
    # an interface without IPv6 takes a low MTU
    body = {"mac_address": MAC2, "mtu": 1200, "fixed_ips": [{"ip_address": "10.0.1.5"}]}
    assert result(plugger.plug_network(parse_network_body(body))) == "Plugged interface eth2"
    assert result(plugger.plug_network(parse_network_body(body))) == "Interface eth2 already plugged"


def test_restore_finds_by_mac_and_records_new_names(tmp_path):
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1), down(4, "eth2", MAC2)], namespace="ns1")
    result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", {"mac_address": MAC1, "mtu": 1400})))
    result(plugger.plug_network(parse_network_body({"mac_address": MAC2})))
    # "reboot": names changed, one port vanished
    again, fake2 = make(tmp_path, [down(7, "eth5", MAC1)], namespace="ns1")
    assert again.vip_interface("203.0.113.2") == "eth1"
    assert result(again.restore()) is None
    assert fake2.ensured == 1
    assert fake2.applied == [("eth5", PlugSpec(mac=MAC1, addresses=("203.0.113.2/32",), vips=("203.0.113.2",),
                                               mtu=1400))]
    assert again.vip_interface("203.0.113.2") == "eth5"
    assert [e["mac"] for e in again.plugged()["interfaces"]] == [MAC1, MAC2]  # the missing one stays on record
    assert json.loads((tmp_path / "plugged.json").read_text())["interfaces"][0]["name"] == "eth5"


def test_restore_never_fails(tmp_path):
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1)])
    result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", None)))
    fake.fail = NetlinkFailure("bringing up eth1", OSError(1, "Operation not permitted"))
    assert result(plugger.restore()) is None


def test_unusable_state_entries_are_skipped(tmp_path):
    (tmp_path / "plugged.json").write_text(json.dumps({"interfaces": [
        {"mac": "nonsense"}, {"mac": MAC1, "addresses": ["10.0.0.5/24"], "vips": [], "name": "eth1"}, 5]}))
    plugger, _ = make(tmp_path, [])
    assert [e["mac"] for e in plugger.plugged()["interfaces"]] == [MAC1]


def test_bad_namespace_name_is_refused(tmp_path):
    from amphora.config import ConfigError

    with pytest.raises(ConfigError, match="network.namespace"):
        make(tmp_path, [], namespace="../etc")


def test_bare_replug_keeps_the_recorded_prefix(tmp_path):
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1)])
    body = {"mac_address": MAC1, "subnet_cidr": "203.0.113.0/24"}
    result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", body)))
    assert result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", None))) == \
        "VIP 203.0.113.2 already plugged on interface eth1"
    assert fake.applied[-1][1].addresses == ("203.0.113.2/24",)
    assert plugger.plugged()["interfaces"][0]["addresses"] == ["203.0.113.2/24"]


def test_plugs_are_serialised(tmp_path):
    """A second plug does not start its netlink work before the first has finished."""
    from twisted.internet.defer import Deferred

    config = SimpleNamespace(network=SimpleNamespace(namespace=""), agent=SimpleNamespace(state_dir=str(tmp_path)))
    fake = FakeNetlink([down(3, "eth1", MAC1), down(4, "eth2", MAC2)])
    pending = []

    def run_later(fn, *args):
        d = Deferred()
        pending.append((d, fn, args))
        return d

    plugger = NetworkPlugger(config, reactor=None, netlink=fake, run_blocking=run_later)
    first = plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", {"mac_address": MAC1}))
    second = plugger.plug_network(parse_network_body(None))
    assert len(pending) == 1, "the second plug waits for the lock"
    d, fn, args = pending.pop()
    d.callback(fn(*args))
    assert result(first) == "VIP 203.0.113.2 plugged on interface eth1"
    assert len(pending) == 1
    d, fn, args = pending.pop()
    d.callback(fn(*args))
    # it saw the first plug's record: eth1 is no candidate any more
    assert result(second) == "Plugged interface eth2"


def test_netlink_failure_text():
    from pyroute2 import NetlinkError

    assert str(NetlinkFailure("adding route x", NetlinkError(101, "Network is unreachable"))) == \
        "adding route x: Network is unreachable (errno 101)"
    assert str(NetlinkFailure("moving eth1", OSError(17, "an interface with that name exists there"))) == \
        "moving eth1: an interface with that name exists there (errno 17)"


@pytest.mark.parametrize("name, taken, expected", [
    ("eth1", {"lo", "eth1"}, "eth2"),
    ("eth1", {"lo", "eth1", "eth2", "eth4"}, "eth3"),
    ("eth3", {"eth3"}, "eth1"),
    ("ens3", {"ens3", "ens1"}, "ens2"),
    ("veth", {"veth"}, "veth1"),
    ("abcdefghijklmn7", {"abcdefghijklmn7", "abcdefghijklmn1"}, "abcdefghijklmn2"),
    ("abcdefghijklmn9", {"abcdefghijklmn9"} | {f"abcdefghijklmn{i}" for i in range(1, 10)}, "abcdefghijklm10"),
])
def test_free_name(name, taken, expected):
    assert free_name(name, taken) == expected
    assert len(expected) <= 15


# -- who configures the VIPs: the agent (SINGLE, ACTIVE-ACTIVE) or keepalived (ACTIVE-STANDBY) --

VRRP_BODY = {"mac_address": MAC1, "subnet_cidr": "203.0.113.0/24", "vrrp_ip": "203.0.113.9"}


def test_single_topology_configures_the_vip_even_with_a_vrrp_ip(tmp_path):
    """Every controller since 2016 sends vrrp_ip for every amphora: a SINGLE one still needs its VIP."""
    owner = SimpleNamespace(keepalived_owns_vips=False)
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1)], vip_owner=owner)
    result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", VRRP_BODY)))
    assert fake.applied[-1][1].addresses == ("203.0.113.9/24", "203.0.113.2/32")
    # what is recorded is the request, not the topology's reading of it
    assert plugger.plugged()["interfaces"][0]["addresses"] == ["203.0.113.9/24"]
    assert plugger.vip_interface("203.0.113.2") == "eth1"


def test_active_standby_leaves_the_vip_to_keepalived(tmp_path):
    owner = SimpleNamespace(keepalived_owns_vips=True)
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1)], vip_owner=owner)
    result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", VRRP_BODY)))
    assert fake.applied[-1][1].addresses == ("203.0.113.9/24",)
    # without vrrp_ip the VIP is the port's own address: configured whoever owns VIPs
    result(plugger.plug_vip("2001:db8::5", parse_vip_body("2001:db8::5", {"mac_address": MAC1})))
    assert fake.applied[-1][1].addresses == ("203.0.113.9/24", "2001:db8::5/128")


def test_sync_hands_the_vips_over_and_restore_follows_the_topology(tmp_path):
    owner = SimpleNamespace(keepalived_owns_vips=False)
    plugger, fake = make(tmp_path, [down(3, "eth1", MAC1), down(4, "eth2", MAC2)], vip_owner=owner)
    result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", VRRP_BODY)))
    result(plugger.plug_network(parse_network_body({"mac_address": MAC2})))  # no VIPs: never touched
    owner.keepalived_owns_vips = True
    assert result(plugger.sync_vips()) is None
    assert fake.applied[-1] == ("eth1", "withdraw", ("203.0.113.2/32",))
    owner.keepalived_owns_vips = False
    result(plugger.sync_vips())
    assert fake.applied[-1][0] == "eth1" and fake.applied[-1][1].addresses == ("203.0.113.9/24", "203.0.113.2/32")
    assert len(fake.applied) == 4
    fake.fail = NetlinkFailure("adding address 203.0.113.2/32 on eth1", OSError(1, "Operation not permitted"))
    assert result(plugger.sync_vips()) is None  # logged, never raised: the topology change goes on
    again, fake2 = make(tmp_path, [down(7, "eth1", MAC1)], vip_owner=SimpleNamespace(keepalived_owns_vips=True))
    result(again.restore())
    assert fake2.applied == [("eth1", PlugSpec(mac=MAC1, addresses=("203.0.113.9/24",), vips=("203.0.113.2",)))]


def test_no_interface_says_so_in_details_too(tmp_path):
    """Controllers retry a 404 only when its details hold the text (a NIC can appear late)."""
    plugger, _ = make(tmp_path, [])
    with pytest.raises(NotFound) as e:
        result(plugger.plug_vip("203.0.113.2", parse_vip_body("203.0.113.2", {"mac_address": MAC1})))
    assert e.value.message == "No suitable network interface found"
    assert e.value.details == f"No suitable network interface found: no interface with MAC address {MAC1}"

