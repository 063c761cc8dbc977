"""Unit tests of the amphora-wide calls' domain: server certificate validation and swap
(amphora.servercert), agent configuration updates (amphora.agentconf), live heartbeat
reconfiguration, the controller VRRP helpers and ownership rule (amphora.vrrp), and the
interface lookup (amphora.addrlookup)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from types import SimpleNamespace

import pytest
from twisted.internet import defer

from amphora import devpki
from amphora.addrlookup import AddressLookup
from amphora.agentconf import AgentConfigUpdates, load_saved, parse_octavia_config
from amphora.config import HeartbeatSection
from amphora.errors import InvalidRequest, NotFound
from amphora.heartbeat import envelope
from amphora.netlink import Interface
from amphora.servercert import ContextHolder, ServerCertificate, parse_server_pem
from amphora.vrrp import ControllerVRRP, KeepalivedOwned, virtual_addresses
from tests.heartbeat_support import FakeReactor

AMP = "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce"


# -- server certificate --------------------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return devpki.make_ca("unit CA")


def test_a_good_certificate_with_its_chain_and_key(ca):
    inter = devpki.make_ca("unit intermediate", issuer=ca)
    leaf = devpki.issue(inter, AMP, server=True, dns=(AMP,))
    pem = parse_server_pem(leaf.cert_pem + inter.cert_pem + leaf.key_pem)
    assert pem.leaf.serial_number == leaf.cert.serial_number
    assert pem.chain == leaf.cert_pem + inter.cert_pem and pem.key == leaf.key_pem


@pytest.mark.parametrize("case, why", [
    ("empty", "no PEM block"),
    ("garbage", "no PEM block"),
    ("no_key", "exactly one private key"),
    ("two_keys", "exactly one private key"),
    ("other_key", "does not match"),
    ("broken_chain", "chain is broken"),
    ("expired", "not valid now"),
    ("bad_base64", "does not parse"),
    ("trailing_text", "outside PEM blocks"),
])
def test_refusals(ca, case, why):
    leaf = devpki.issue(ca, AMP, server=True)
    other = devpki.issue(ca, "other", server=True)
    stranger = devpki.make_ca("stranger")
    now = datetime.datetime.now(datetime.timezone.utc)
    old = devpki.issue(ca, AMP, server=True, not_before=now - datetime.timedelta(days=9),
                       not_after=now - datetime.timedelta(days=1))
    bodies = {
        "empty": b"", "garbage": b"hello",
        "no_key": leaf.cert_pem, "two_keys": leaf.cert_pem + leaf.key_pem + other.key_pem,
        "other_key": leaf.cert_pem + other.key_pem,
        "broken_chain": leaf.cert_pem + stranger.cert_pem + leaf.key_pem,
        "expired": old.cert_pem + old.key_pem,
        "bad_base64": b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n" + leaf.key_pem,
        "trailing_text": leaf.cert_pem + leaf.key_pem + b"more\n",
    }
    with pytest.raises(InvalidRequest) as e:
        parse_server_pem(bodies[case])
    assert e.value.status == 400 and why in str(e.value)


def test_rotation_stores_then_swaps_and_a_refusal_changes_nothing(ca, tmp_path):
    first = devpki.issue(ca, AMP, server=True, dns=(AMP,))
    cert_path = tmp_path / "server.pem"
    cert_path.write_bytes(first.cert_pem + first.key_pem)
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    built = []

    def build(section):  # what ServerContextFactory gets: the scratch copies
        built.append((open(section.server_cert, "rb").read(), open(section.server_key, "rb").read()))
        return SimpleNamespace(getContext=lambda: ("context", len(built)))

    @dataclasses.dataclass(frozen=True)
    class TLS:
        server_cert: str
        server_key: str
        client_ca: str

    tls = TLS(str(cert_path), "", str(tmp_path / "ca.pem"))
    holder = ContextHolder(SimpleNamespace(getContext=lambda: "old"))
    rotation = ServerCertificate(tls, holder, AMP, str(scratch), build=build)
    with pytest.raises(InvalidRequest):
        rotation.rotate(b"nope")
    assert holder.getContext() == "old" and cert_path.read_bytes() == first.cert_pem + first.key_pem
    second = devpki.issue(ca, AMP, server=True, dns=(AMP,))
    rotation.rotate(second.cert_pem + second.key_pem)
    assert built == [(second.cert_pem, second.key_pem)]
    assert holder.getContext() == ("context", 1)
    assert cert_path.read_bytes() == second.cert_pem + second.key_pem
    assert os.stat(cert_path).st_mode & 0o777 == 0o600
    assert os.listdir(scratch) == []  # the scratch copy of the key is gone
    # With [tls] server_key set, the key goes there and the chain alone to server_cert.
    key_path = tmp_path / "server-key.pem"
    rotation.tls = TLS(str(cert_path), str(key_path), tls.client_ca)
    third = devpki.issue(ca, AMP, server=True, dns=(AMP,))
    rotation.rotate(third.cert_pem + third.key_pem)
    assert cert_path.read_bytes() == third.cert_pem and key_path.read_bytes() == third.key_pem


# -- agent configuration -----------------------------------------------------------------

BODY = f"""[DEFAULT]
debug = False

[haproxy_amphora]
base_path = /var/lib/octavia

[health_manager]
controller_ip_port_list = 192.0.2.1:5555, 2001:db8::7:5555
heartbeat_interval = 3
heartbeat_key = new-key

[amphora_agent]
amphora_id = {AMP}

[controller_worker]
loadbalancer_topology = ACTIVE_STANDBY
""".encode()


def test_octavia_body_is_mapped():
    update = parse_octavia_config(BODY, AMP)
    assert update.controllers == (("192.0.2.1", 5555), ("2001:db8::7", 5555))
    assert update.interval == 3.0 and update.key == "new-key" and update.topology == "ACTIVE_STANDBY"
    assert update.recorded == {"DEFAULT.debug": "False", "haproxy_amphora.base_path": "/var/lib/octavia"}


@pytest.mark.parametrize("body, why", [
    (b"[health_manager\n", "section header"),
    (b"no section\n", "section header"),
    (b"[health_manager]\ncontroller_ip_port_list = 192.0.2.1\n", "expected host:port"),
    (b"[health_manager]\nheartbeat_interval = soon\n", "heartbeat_interval"),
    (b"[health_manager]\nheartbeat_interval = 0\n", "heartbeat_interval"),
    (b"[health_manager]\nheartbeat_key =\n", "heartbeat_key is empty"),
    (b"[controller_worker]\nloadbalancer_topology = ACTIVE_ACTIVE\n", "loadbalancer_topology"),
    (b"[amphora_agent]\namphora_id = 11111111-2222-3333-4444-555555555555\n", "is not this amphora"),
    (b"[a]\nx = 1\n[a]\nx = 2\n", "already exists"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_malformed_bodies_are_400(body, why):
    with pytest.raises(InvalidRequest) as e:
        parse_octavia_config(body, AMP)
    assert why in str(e.value)


class _Heartbeat:
    def __init__(self):
        self.calls = []

    def reconfigure(self, controllers, interval, key):
        self.calls.append((controllers, interval, key))


@dataclasses.dataclass(frozen=True)
class _Config:
    agent: object
    heartbeat: HeartbeatSection


def _config(tmp_path, controllers=(), key=""):
    return _Config(SimpleNamespace(amphora_id=AMP, state_dir=str(tmp_path)),
                   HeartbeatSection(controllers=controllers, interval=10.0, key=key))


def test_update_applies_live_saves_and_is_laid_over_at_start(tmp_path):
    config = _config(tmp_path, (("127.0.0.1", 1),), "old")
    heartbeat = _Heartbeat()
    updates = AgentConfigUpdates(config, heartbeat)
    updates.update(BODY)
    assert heartbeat.calls == [((("192.0.2.1", 5555), ("2001:db8::7", 5555)), 3.0, "new-key")]
    assert updates.topology == "ACTIVE_STANDBY"
    saved = tmp_path / "octavia-agent-config.json"
    assert os.stat(saved).st_mode & 0o777 == 0o600
    # A later body naming only the interval keeps the rest of the previous update.
    updates.update(b"[health_manager]\nheartbeat_interval = 7\n")
    assert heartbeat.calls[-1] == ((("192.0.2.1", 5555), ("2001:db8::7", 5555)), 7.0, "new-key")
    # A refused body changes nothing, not even the saved file.
    before = saved.read_bytes()
    with pytest.raises(InvalidRequest):
        updates.update(b"[health_manager]\nheartbeat_interval = -1\n")
    assert saved.read_bytes() == before and len(heartbeat.calls) == 2


def test_saved_update_is_laid_over_the_configuration_at_start(tmp_path):
    config = _config(tmp_path, (("127.0.0.1", 1),), "old")
    assert load_saved(config) == (config, None)
    AgentConfigUpdates(config, _Heartbeat()).update(BODY)
    merged, saved = load_saved(config)
    assert merged.heartbeat.controllers == (("192.0.2.1", 5555), ("2001:db8::7", 5555))
    assert merged.heartbeat.interval == 3.0 and merged.heartbeat.key == "new-key"
    assert saved.topology == "ACTIVE_STANDBY"
    # A controller list without any key is refused.
    no_key = _Config(config.agent, HeartbeatSection())
    (tmp_path / "octavia-agent-config.json").unlink()
    with pytest.raises(InvalidRequest):
        AgentConfigUpdates(no_key, _Heartbeat()).update(b"[health_manager]\ncontroller_ip_port_list = 192.0.2.1:1\n")


def test_heartbeat_reconfigure_sends_at_once_to_the_new_address_with_the_new_key(tmp_path):
    from amphora.heartbeat.emitter import HeartbeatService

    reactor = FakeReactor()
    config = SimpleNamespace(agent=SimpleNamespace(amphora_id=AMP, state_dir=str(tmp_path)),
                             heartbeat=HeartbeatSection(controllers=(("127.0.0.1", 1),), interval=10.0, key="old"))
    from amphora.testing import FakeKeepalived, FakeListeners

    service = HeartbeatService(reactor, config.heartbeat, amphora_id=AMP, state_dir=str(tmp_path),
                               listeners=FakeListeners(), keepalived=FakeKeepalived(),
                               topology=SimpleNamespace(topology=None, role=None, status=None))
    service.startService()
    assert [to for _, to in reactor.sent] == [("127.0.0.1", 1)]
    service.reconfigure((("127.0.0.1", 2),), 2.0, "new")
    reactor.advance(2.0)
    sent = reactor.sent[1:]
    assert [to for _, to in sent] == [("127.0.0.1", 2)] * 2  # at once, then after the new interval
    assert all(envelope.unwrap(data, "new")["id"] == AMP for data, _ in sent)
    service.reconfigure((), 2.0, "new")
    reactor.advance(10)
    assert len(reactor.sent) == 3
    service.stopService()


# -- controller VRRP ---------------------------------------------------------------------

OCTAVIA_KEEPALIVED = """vrrp_script check_script {
    script /var/lib/octavia/vrrp/check_script.sh
    interval 5
}

vrrp_instance 0123abcd {
    interface eth1
    virtual_router_id 1
    virtual_ipaddress {
        203.0.113.10
    }
    virtual_ipaddress_excluded {
        2001:db8::10
    }
}
"""


def test_virtual_addresses_of_the_controllers_configuration():
    assert virtual_addresses(OCTAVIA_KEEPALIVED) == ("203.0.113.10", "2001:db8::10")


def _vrrp(tmp_path, topology="SINGLE", status="OK"):
    config = SimpleNamespace(octavia=SimpleNamespace(base_path=str(tmp_path / "octavia")),
                             agent=SimpleNamespace(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path)))
    keepalived = SimpleNamespace(paths=SimpleNamespace(fifo="/run/x/notify.fifo", config=str(tmp_path / "k.conf")),
                                 vrrp_state=None)
    topo = SimpleNamespace(topology=topology, status=status, hostname="h", amphora_id=AMP)
    return ControllerVRRP(config, None, keepalived, topo)


def test_live_text_adds_global_defs_for_the_notify_fifo(tmp_path):
    live = _vrrp(tmp_path)._live_text(OCTAVIA_KEEPALIVED)
    head = live.split("vrrp_script")[0]
    assert "script_user root" in head and "notify_fifo /run/x/notify.fifo" in head
    assert live.endswith(OCTAVIA_KEEPALIVED)
    merged = _vrrp(tmp_path)._live_text("global_defs {\n    router_id x\n}\n" + OCTAVIA_KEEPALIVED)
    assert merged.count("global_defs") == 1 and "notify_fifo" in merged


def test_one_owner_of_keepalived(tmp_path):
    vrrp = _vrrp(tmp_path, topology="ACTIVE-STANDBY")
    with pytest.raises(KeepalivedOwned) as e:
        vrrp.action("start")
    assert e.value.status == 409
    with pytest.raises(KeepalivedOwned):
        vrrp.upload(b"")
    with pytest.raises(KeepalivedOwned):
        _vrrp(tmp_path, status="TOPOLOGY-CHANGE").action("stop")
    free = _vrrp(tmp_path)
    free.check_v0_1()  # nobody drives keepalived through /1.0
    assert free.topology_document() is None
    free.owned, free.vips = True, ("203.0.113.10",)
    with pytest.raises(KeepalivedOwned):
        free.check_v0_1()
    free.keepalived.vrrp_state = "MASTER"
    assert free.topology_document() == {"hostname": "h", "uuid": AMP, "topology": "ACTIVE-STANDBY",
                                        "role": "ACTIVE", "ha_ip": "203.0.113.10", "topology_status": "OK"}
    free.keepalived.vrrp_state = "FAULT"
    assert free.topology_document()["role"] == "STANDBY"


def test_actions(tmp_path):
    vrrp = _vrrp(tmp_path)
    with pytest.raises(InvalidRequest) as e:
        vrrp.action("restart")
    assert e.value.message == "Unknown action"
    with pytest.raises(InvalidRequest) as e:
        vrrp.action("START")  # case-insensitive, but nothing was uploaded
    assert "vrrp/upload first" in str(e.value)


# -- interface lookup ---------------------------------------------------------------------

class _Netlink:
    def interfaces(self, namespace, name=None):
        return defer.succeed([
            Interface("lo", 1, True, (ipaddress.ip_interface("127.0.0.1/8"),)),
            Interface("eth1", 2, False, (ipaddress.ip_interface("2001:db8::5/64"),
                                         ipaddress.ip_interface("203.0.113.5/24")))])


@pytest.mark.parametrize("raw, answer", [
    ("203.0.113.5", "eth1"), ("2001:0db8:0:0:0:0:0:5", "eth1"), ("2001:DB8::5", "eth1"), ("127.0.0.1", "lo"),
])
def test_interface_lookup(raw, answer):
    found = []
    defer.ensureDeferred(AddressLookup(None, "ns", netlink=_Netlink()).interface_of(raw)).addCallback(found.append)
    assert found == [answer]


@pytest.mark.parametrize("raw, error, message", [
    ("203.0.113.6", NotFound, "Error interface not found for IP address"),
    ("fe80::1%eth1", InvalidRequest, "Invalid IP address"),
    ("300.1.1.1", InvalidRequest, "Invalid IP address"),
])
def test_interface_lookup_errors(raw, error, message):
    failures = []
    defer.ensureDeferred(AddressLookup(None, "ns", netlink=_Netlink()).interface_of(raw)).addErrback(failures.append)
    assert failures[0].check(error) and failures[0].value.message == message


def test_who_holds_the_plugged_vips():
    from amphora.vrrp import VipOwnership

    topology = SimpleNamespace(keepalived_owns_vips=False)
    vrrp = SimpleNamespace(owned=False)
    conf = SimpleNamespace(topology=None)
    owner = VipOwnership(topology, vrrp, conf)
    assert not owner.keepalived_owns_vips  # SINGLE: the agent configures the VIPs
    conf.topology = "ACTIVE_STANDBY"  # the controller's configuration, as Octavia's agent reads it
    assert owner.keepalived_owns_vips
    conf.topology, vrrp.owned = "SINGLE", True  # the controller drives keepalived
    assert owner.keepalived_owns_vips
    vrrp.owned, topology.keepalived_owns_vips = False, True  # /v0.1/topology ACTIVE-STANDBY
    assert owner.keepalived_owns_vips


def test_a_topology_change_in_the_configuration_hands_the_vips_over(tmp_path):
    synced = []
    network = SimpleNamespace(sync_vips=lambda: synced.append(1) or defer.succeed(None))
    updates = AgentConfigUpdates(_config(tmp_path), _Heartbeat(), network=network)
    updates.update(b"[controller_worker]\nloadbalancer_topology = ACTIVE_STANDBY\n")
    updates.update(b"[controller_worker]\nloadbalancer_topology = ACTIVE_STANDBY\n")
    assert synced == [1]
