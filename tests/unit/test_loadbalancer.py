"""1.0 load balancers as haproxy instances: pure helpers, the registry's domain API with a fake check,
and the heartbeat's per-frontend entries."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from amphora.errors import InvalidRequest, ListenerNotFound, LoadBalancerNotFound
from amphora.heartbeat import message as msg
from amphora.listeners.cfgtext import frontends, global_setting
from amphora.listeners.loadbalancer import connection_limits, needs_relaxed_limits, parse_show_info, peer_name
from amphora.listeners.stats import parse_show_stat
from tests.heartbeat_support import HEADER, backend_line, frontend_line, server_line

AMP = "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce"
LB = "8d2c0f6e-3b4a-4c1d-9e8f-0a1b2c3d4e5f"
L1 = "e2dfddc0-5b9e-11e4-8ed6-0800200c9a66"
L2 = "5c1a2f7e-0000-4000-8000-000000000002"
L3 = "5c1a2f7e-0000-4000-8000-000000000003"
P1 = "399bbf4b-5f6c-4370-a61e-ed2ff2fc9387"
P2 = "c2f0ad6e-64a2-4a1f-8d3c-6a4a0f61f6a1"
M1 = "73f6d278-ae1c-4248-ad02-0bfd50d69aab"
M2 = "2edca57c-5890-4bcb-ae67-4ef75776cc67"

CONFIG = f"""# Configuration for loadbalancer {LB}
global
    daemon
    user nobody
    log /run/rsyslog/octavia/log local0
    maxconn 375000
    stats socket /var/lib/octavia/{LB}.sock mode 0666 level user
    server-state-file /var/lib/octavia/{LB}/servers-state

defaults
    log global
    mode http

frontend {L1}
    maxconn 50000
    bind 203.0.113.5:80
    default_backend {P1}:{L1}

frontend {L2}
    mode tcp
    bind 203.0.113.5:3306
    default_backend {P2}:{L2}

frontend {L3}
    bind 203.0.113.5:443 ssl crt-list /var/lib/octavia/certs/{LB}/{L3}.pem
    default_backend {P1}:{L1}

frontend prometheus-exporter-internal-endpoint
    bind 127.0.0.1:9102
"""


def octavia_peer_name(amphora_id: str) -> str:
    """Octavia's formula, written independently: '+' -> '_', '/' -> '-', no '=', leading '-' -> 'x'."""
    text = base64.b64encode(hashlib.sha1(amphora_id.encode()).digest()).decode()
    text = text.replace("+", "_").replace("/", "-").rstrip("=")
    return "x" + text[1:] if text.startswith("-") else text


@pytest.mark.parametrize("amphora_id", [AMP, "amp-1", "amp-15"])
def test_peer_name_is_octavias(amphora_id):
    assert peer_name(amphora_id) == octavia_peer_name(amphora_id)
    assert not peer_name(amphora_id).startswith("-") and "=" not in peer_name(amphora_id)


def test_peer_name_replaces_a_leading_dash():
    assert peer_name("amp-15") == "xqM7NCQuX3rO0nveval4-xw2l7o"


def test_frontends_and_their_types():
    assert frontends(CONFIG) == [(L1, "HTTP"), (L2, "TCP"), (L3, "TERMINATED_HTTPS")]
    assert global_setting(CONFIG, "server-state-file") == f"/var/lib/octavia/{LB}/servers-state"
    assert global_setting(CONFIG, "maxconn") == "375000"
    assert global_setting(CONFIG, "nbthread") is None


def test_limits():
    assert needs_relaxed_limits(CONFIG, 20000)
    assert not needs_relaxed_limits(CONFIG, 1048576)
    assert not needs_relaxed_limits(CONFIG, -1)  # unlimited
    assert not needs_relaxed_limits("global\n    daemon\n", 1024)  # haproxy sizes maxconn itself
    info = parse_show_info(b"Name: HAProxy\nUlimit-n: 20000\nMaxsock: 750029\nMaxconn: 375000\n")
    assert connection_limits(info) == {"maxconn": 375000, "fd_limit": 20000, "effective_maxconn": 9985}
    assert connection_limits({"Maxconn": "100", "Maxsock": "229", "Ulimit-n": "229"})["effective_maxconn"] == 100
    assert connection_limits({"Maxconn": "x"}) is None


# -- heartbeat ---------------------------------------------------------------------------------

ROWS = "\n".join([
    HEADER,
    frontend_line(L1, scur=2, stot=10, bin=100, bout=200),
    frontend_line(L2, scur=1, stot=5, bin=10, bout=20, status="FULL"),
    frontend_line("prometheus-exporter-internal-endpoint", stot=99),
    server_line(f"{P1}:{L1}", M1, "UP", 0),
    backend_line(f"{P1}:{L1}", "UP"),
    server_line(f"{P2}:{L2}", M2, "DOWN", 1),
    backend_line(f"{P2}:{L2}", "DOWN"),
]) + "\n"


def test_heartbeat_has_one_entry_per_frontend_and_octavias_pool_keys():
    composed = msg.compose(AMP, 7, {LB: parse_show_stat(ROWS)}, {}, {}, {}, "key", 65000,
                           frontends={LB: [L1, L2]})
    message = composed.message
    assert set(message["listeners"]) == {L1, L2}
    assert message["listeners"][L1] == {"status": "OPEN", "stats": {"tx": 200, "rx": 100, "conns": 2,
                                                                     "totconns": 10, "ereq": 0}}
    assert message["listeners"][L2]["status"] == "FULL"
    assert message["pools"] == {f"{P1}:{L1}": {"status": "UP", "members": {M1: "DRAIN"}},
                                f"{P2}:{L2}": {"status": "DOWN", "members": {M2: "DOWN"}}}
    # the next beat without an answer keeps every frontend with its last status and pools
    last_pools = {k: s.pools for k, s in composed.samples.items() if s is not None}
    again = msg.compose(AMP, 8, {LB: None}, composed.records, last_pools, {}, "key", 65000,
                        frontends={LB: [L1, L2]}).message
    assert set(again["listeners"]) == {L1, L2} and again["listeners"][L2]["status"] == "FULL"
    assert again["pools"] == message["pools"]


def test_no_load_balancer_is_an_empty_listeners_map():
    assert msg.compose(AMP, 1, {}, {}, {}, {}, "key", 65000, frontends={}).message["listeners"] == {}


def test_load_balancer_without_frontends_reports_none():
    rows = parse_show_stat("\n".join([HEADER, backend_line(f"{P1}:{L1}", "UP")]) + "\n")
    message = msg.compose(AMP, 1, {LB: rows}, {}, {}, {}, "key", 65000, frontends={LB: []}).message
    assert message["listeners"] == {} and message["pools"] == {}


# -- the registry's domain API, with a fake haproxy -c ------------------------------------------------

@pytest.fixture
def registry(pki, tmp_path):
    from amphora.config import load_config
    from amphora.listeners.manager import ListenerManager
    from tests.helpers import write_config

    base = tmp_path / "octavia"
    config = load_config(write_config(pki, str(tmp_path / "a"), 0, {
        "agent": {"run_dir": str(tmp_path / "r"), "amphora_id": AMP},
        "octavia": {"base_path": str(base), "base_cert_dir": str(base / "certs")}}))
    manager = ListenerManager(config, Clock())
    manager.checks = []

    def check(config_path, fragment, cwd=None, timeout=None, extra=()):
        with open(config_path, "rb") as f:
            data = f.read()
        manager.checks.append((data, list(extra), timeout))
        if b"bad" in data:
            return succeed((False, "[ALERT] parsing: unknown keyword 'bad'"))
        return succeed((True, "Configuration file is valid"))

    manager.haproxy.check = check
    manager.base = base
    return manager


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_upload_stores_checks_with_peer_name_and_is_idempotent(registry):
    assert result_of(registry.upload_loadbalancer(LB, AMP, CONFIG.encode())) is None
    assert result_of(registry.upload_loadbalancer(LB, AMP, CONFIG.encode())) is None  # a re-send
    assert [extra for _, extra, _ in registry.checks] == [["-L", peer_name(AMP)]] * 2
    assert registry.checks[0][2] == registry.lb_check_timeout == 120.0  # [haproxy] check_timeout
    inst = registry._instances[LB]  # ~25 s checks and loads (tune.ssl.cachesize) fit every bound
    assert min(inst.check_timeout(), inst.start_timeout(), inst.reload_timeout()) >= 120.0
    assert registry.check_timeout == registry.config.haproxy.start_timeout == 10.0  # v0.1 unchanged
    assert registry.kind(LB) == "loadbalancer" and registry.get_config(LB) == CONFIG.encode()
    assert os.path.isdir(registry.base / LB) and os.path.isdir(registry.base / "certs" / LB)
    assert oct(os.stat(registry.base / "certs" / LB).st_mode & 0o777) == "0o700"
    # the load balancer is the agent's: -L and the strict-limits fragment on the run too
    frag = open(registry.lb_store.files(LB).fragment_path).read()
    assert "no strict-limits" in frag or not needs_relaxed_limits(CONFIG, 10 ** 9)
    assert registry.frontends() == [{"status": "ACTIVE", "uuid": L1, "type": "HTTP"},
                                    {"status": "ACTIVE", "uuid": L2, "type": "TCP"},
                                    {"status": "ACTIVE", "uuid": L3, "type": "TERMINATED_HTTPS"}]
    assert registry.all_listener_ids() == sorted([L1, L2, L3])
    assert registry.heartbeat_frontends(LB) == [L1, L2, L3] and registry.heartbeat_frontends(L1) is None


def test_refused_upload_is_400_with_haproxys_words_and_leaves_nothing(registry):
    with pytest.raises(InvalidRequest) as e:
        result_of(registry.upload_loadbalancer(LB, AMP, b"bad\n"))
    assert e.value.message == "Invalid request" and "unknown keyword 'bad'" in e.value.details
    assert registry.kind(LB) is None and LB not in registry._locks
    assert not os.path.exists(registry.lb_store.files(LB).state_dir) and not os.path.exists(registry.base / LB)
    # a refused re-upload keeps the last good one
    result_of(registry.upload_loadbalancer(LB, AMP, CONFIG.encode()))
    with pytest.raises(InvalidRequest):
        result_of(registry.upload_loadbalancer(LB, AMP, b"bad\n"))
    assert registry.get_config(LB) == CONFIG.encode()


def test_v01_sees_only_listeners(registry):
    result_of(registry.upload_loadbalancer(LB, AMP, CONFIG.encode()))
    assert not registry.exists(LB) and registry.listener_ids() == [] and registry.status_list() == []
    for call in (lambda: registry.action(LB, "start"), lambda: registry.delete(LB, kind="listener"),
                 lambda: registry.get_config(LB, kind="listener"), lambda: result_of(registry.status(LB)),
                 lambda: result_of(registry.upload(LB, b"x"))):
        with pytest.raises(ListenerNotFound):
            call()
    # and the 1.0 face does not see v0.1 listeners
    result_of(registry.upload(L1, b"frontend f\n"))
    assert registry.kind(L1) == "listener"
    with pytest.raises(LoadBalancerNotFound):
        result_of(registry.loadbalancer_action(L1, "reload"))
    with pytest.raises(InvalidRequest):
        result_of(registry.upload_loadbalancer(L1, AMP, CONFIG.encode()))


def test_action_errors_unknown_action_first(registry):
    with pytest.raises(InvalidRequest) as e:
        result_of(registry.loadbalancer_action(LB, "restart"))  # LB does not exist either
    assert (e.value.message, e.value.details) == ("Invalid Request", "Unknown action: restart")
    with pytest.raises(LoadBalancerNotFound) as e:
        result_of(registry.loadbalancer_action(LB, "RELOAD"))
    assert e.value.status == 404
    assert e.value.body() == {"message": "Loadbalancer Not Found", "details": f"No loadbalancer with UUID: {LB}"}


def test_delete_of_a_stopped_load_balancer_removes_its_files(registry):
    result_of(registry.upload_loadbalancer(LB, AMP, CONFIG.encode()))
    (registry.base / "certs" / LB / f"{L3}.pem").write_text("/x/y.pem\n")
    (registry.base / f"{LB}.sock").write_text("")
    files = registry.lb_store.files(LB)
    result_of(registry.delete(LB))
    for path in (files.state_dir, files.run_dir, registry.base / LB, registry.base / "certs" / LB,
                 registry.base / f"{LB}.sock"):
        assert not os.path.exists(path), path
    assert registry.kind(LB) is None and registry.frontends() == []
    with pytest.raises(ListenerNotFound):
        registry.delete(LB)  # the 1.0 face answers 200 for this
