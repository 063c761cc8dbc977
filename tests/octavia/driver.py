"""Drives a real amphora agent with an Octavia release's own controller code.

Run by the acceptance tests as a child process, with one release's directory
(``.venv/octavia/<version>``, see the Makefile's ``octavia`` target) on
PYTHONPATH, so the controller code under test is Octavia's, not ours::

    python tests/octavia/driver.py PARAMS.json

``PARAMS.json``: ``version`` (19.0.0, 4.0.0, 0.5.2), ``scenario`` (a function
below), ``port``, ``amphora_id``, ``ca`` (the agent's CA), ``client_pem`` (the
controller's certificate and key in one file), ``base_path`` / ``base_cert_dir``
(the agent's ``[octavia]`` paths), ``work`` (a scratch directory) and what the
scenario needs. One JSON line per controller call goes to stdout:
``{"call": ..., "ok": true|false, "error": ..., "result": ...}``.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings

warnings.simplefilter("ignore")

PARAMS = json.load(open(sys.argv[1]))
VERSION = PARAMS["version"]


# The agent's last answers, shown with a failed call (Octavia only logs error bodies).
_ANSWERS: list[str] = []


def _record_answers() -> None:
    import requests

    original = requests.Session.request

    def request(self, method, url, *args, **kwargs):
        response = original(self, method, url, *args, **kwargs)
        _ANSWERS.append(f"{method.upper()} {url} -> {response.status_code} {response.content[:600]!r}")
        del _ANSWERS[:-4]
        return response

    requests.Session.request = request


def emit(call: str, ok: bool, **fields) -> None:
    sys.stdout.write(json.dumps({"call": call, "ok": ok, **fields}, default=str) + "\n")
    sys.stdout.flush()


def attempt(call: str, fn, *args, **kwargs):
    """One controller call; its outcome is reported, never raised."""
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # the controller's exception is the finding
        emit(call, False, error=f"{type(e).__module__}.{type(e).__name__}: {e}",
             trace=traceback.format_exc(limit=4)[-1500:], answers=list(_ANSWERS))
        return None
    emit(call, True, result=_plain(result))
    return result


def _plain(value):
    if hasattr(value, "status_code"):  # a requests.Response
        return {"status": value.status_code}
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)[:300]


# -- Octavia's configuration, as a controller's octavia.conf would set it --------

def configure():
    from oslo_config import cfg

    if VERSION == "0.5.2":
        import octavia.common.config  # noqa: F401  registers the options
    else:
        from octavia.common import config  # noqa: F401
    conf = cfg.CONF
    conf([], project="octavia", default_config_files=[])
    overrides = {
        "haproxy_amphora": {
            "client_cert": PARAMS["client_pem"],
            "server_ca": PARAMS["ca"],
            "bind_port": PARAMS["port"],
            "connection_max_retries": PARAMS.get("retries", 3),
            "connection_retry_interval": PARAMS.get("retry_interval", 0.2),
            "base_path": PARAMS["base_path"],
            "base_cert_dir": PARAMS["base_cert_dir"],
        },
        "certificates": {"cert_manager": "local_cert_manager",
                         "storage_path": __import__("os").path.join(PARAMS["work"], "certs")},
    }
    if VERSION != "0.5.2":
        overrides["haproxy_amphora"].update(rest_request_conn_timeout=5, rest_request_read_timeout=120)
    for group, values in overrides.items():
        for name, value in values.items():
            try:
                conf.set_override(name, value, group)
            except cfg.NoSuchOptError:
                pass
    return conf


def amphora(**extra):
    from octavia.common import data_models as dm

    amp = dm.Amphora(id=PARAMS["amphora_id"], lb_network_ip="127.0.0.1", status="ALLOCATED",
                     vrrp_ip=PARAMS.get("vrrp_ip"), ha_ip=PARAMS.get("vip"), **extra)
    return amp


# -- scenarios -------------------------------------------------------------------

def routes_1_0():
    """Every method of Octavia 19's AmphoraAPIClient1_0 once (the route list), plus
    version discovery; no load balancer is built here."""
    from octavia.amphorae.drivers.haproxy import rest_api_driver as rad

    amp = amphora()
    base = rad.AmphoraAPIClientBase()
    client = rad.AmphoraAPIClient1_0()
    discovered = attempt("get_api_version", base.get_api_version, amp)
    amp.api_version = (discovered or {}).get("api_version", "1.0")
    lb_id = PARAMS["lb_id"]
    pem = b"-----BEGIN CERTIFICATE-----\nnot checked by a 1.0 store\n-----END CERTIFICATE-----\n"
    attempt("get_info", client.get_info, amp)
    attempt("get_details", client.get_details, amp)
    attempt("get_all_listeners", client.get_all_listeners, amp)
    attempt("get_cert_md5sum(absent, 404 ignored)", client.get_cert_md5sum, amp, lb_id, "abc.pem",
            ignore=(404,))
    attempt("upload_cert_pem", client.upload_cert_pem, amp, lb_id, "abc.pem", pem)
    attempt("get_cert_md5sum", client.get_cert_md5sum, amp, lb_id, "abc.pem")
    attempt("delete_cert_pem", client.delete_cert_pem, amp, lb_id, "abc.pem")
    attempt("delete_listener(unknown)", client.delete_listener, amp, PARAMS["unknown_id"])
    attempt("upload_config", client.upload_config, amp, lb_id, PARAMS.get("config", "global\n").encode())
    attempt("reload_listener", client.reload_listener, amp, lb_id)
    attempt("start_listener", client.start_listener, amp, lb_id)
    attempt("delete_listener", client.delete_listener, amp, lb_id)
    attempt("get_listener_status", client.get_listener_status, amp, lb_id)
    net = {"subnet_cidr": "203.0.113.0/24", "gateway": None, "mac_address": "fa:16:3e:00:00:01",
           "vrrp_ip": "203.0.113.5", "mtu": 1500, "host_routes": [], "additional_vips": [], "is_sriov": False}
    attempt("plug_vip", client.plug_vip, amp, "203.0.113.10", net)
    attempt("plug_network", client.plug_network, amp, {
        "mac_address": "fa:16:3e:00:00:02", "fixed_ips": [], "mtu": 1500, "is_sriov": False})
    attempt("get_interface", client.get_interface, amp, "127.0.0.1")
    attempt("set_interface_rules", client.set_interface_rules, amp, "127.0.0.1", [])
    attempt("upload_vrrp_config", client.upload_vrrp_config, amp, b"vrrp_instance x {}\n")
    attempt("start_vrrp", client.start_vrrp, amp)
    attempt("stop_vrrp", client.stop_vrrp, amp)
    attempt("reload_vrrp", client.reload_vrrp, amp)
    attempt("upload_udp_config", client.upload_udp_config, amp, lb_id, b"")
    attempt("update_agent_config", client.update_agent_config, amp, b"[DEFAULT]\n")
    attempt("update_cert_for_rotation", client.update_cert_for_rotation, amp, b"")


def host_1_0():
    """What every controller task and listener update does first, through Octavia
    19's driver: discovery, the boot wait (get_info), details."""
    from octavia.amphorae.drivers.haproxy import rest_api_driver as rad

    driver = rad.HaproxyAmphoraLoadBalancerDriver()
    amp = amphora()
    attempt("check (GET //)", driver.check, amp)
    emit("api_version", amp.api_version == "1.0", result=amp.api_version)
    info = attempt("get_info", driver.get_info, amp)
    if info is not None:
        emit("haproxy_versions", True, result=driver._get_haproxy_versions(amp))
    if PARAMS.get("details", True):  # what update_amphora_listeners reads before rendering
        attempt("get_details", driver.clients[amp.api_version].get_details, amp)


def heartbeat_1_0():
    """Receives the agent's heartbeats and decodes them with Octavia 19's own code."""
    import socket

    from octavia.amphorae.backends.health_daemon import status_message

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", PARAMS["heartbeat_port"]))
        sock.settimeout(PARAMS.get("heartbeat_timeout", 10))
        for _ in range(PARAMS.get("beats", 1)):
            data, _addr = sock.recvfrom(65535)
            attempt("unwrap_envelope", status_message.unwrap_envelope, data, PARAMS["heartbeat_key"])


# -- a load balancer built with Octavia 19's data models -------------------------
#
# PARAMS["lb"] describes it: {"id", "vip", "listeners": [{"id", "protocol", "port",
# "pool": {"id", "protocol", "members": [{"id", "address", "port"}], "monitor": bool},
# "certificates": [{"cert", "key", "chain"}] (TERMINATED_HTTPS: default, then SNI)}]}.
# Certificates go through Octavia's LocalCertManager, as a deployment's Barbican would
# hand them to the driver.
# Each scenario rebuilds the same objects (the controller loads them from its
# database for every task) and runs one controller flow.

def load_balancer():
    from octavia.common import constants as c
    from octavia.common import data_models as dm

    spec = PARAMS["lb"]
    amp = amphora(role=c.ROLE_STANDALONE, load_balancer_id=spec["id"])
    lb = dm.LoadBalancer(id=spec["id"], project_id=PARAMS.get("project_id", "test-project"), enabled=True,
                         topology=c.TOPOLOGY_SINGLE,
                         provisioning_status=c.ACTIVE, operating_status=c.ONLINE,
                         vip=dm.Vip(load_balancer_id=spec["id"], ip_address=spec["vip"]),
                         amphorae=[amp], listeners=[], pools=[], additional_vips=[])
    for entry in spec["listeners"]:
        pool_spec = entry["pool"]
        pool = dm.Pool(id=pool_spec["id"], protocol=pool_spec["protocol"], lb_algorithm=c.LB_ALGORITHM_ROUND_ROBIN,
                       enabled=True, load_balancer_id=lb.id, load_balancer=lb, members=[], listeners=[],
                       provisioning_status=c.ACTIVE, operating_status=c.ONLINE, tls_enabled=False)
        for m in pool_spec["members"]:
            pool.members.append(dm.Member(id=m["id"], pool_id=pool.id, ip_address=m["address"],
                                          protocol_port=m["port"], weight=1, backup=False, enabled=True,
                                          operating_status=c.ONLINE, provisioning_status=c.ACTIVE, pool=pool))
        if pool_spec.get("monitor"):
            http = pool_spec["protocol"] == c.PROTOCOL_HTTP
            pool.health_monitor = dm.HealthMonitor(
                id=pool_spec["monitor_id"], pool_id=pool.id, type=c.HEALTH_MONITOR_HTTP if http else c.HEALTH_MONITOR_TCP,
                delay=1, timeout=1, fall_threshold=2, rise_threshold=1, enabled=True,
                http_method="GET" if http else None, url_path="/" if http else None,
                expected_codes="200" if http else None, provisioning_status=c.ACTIVE, pool=pool)
        listener = dm.Listener(id=entry["id"], protocol=entry["protocol"], protocol_port=entry["port"],
                               enabled=True, load_balancer_id=lb.id, load_balancer=lb, default_pool=pool,
                               default_pool_id=pool.id, pools=[pool], l7policies=[], sni_containers=[],
                               insert_headers={}, provisioning_status=c.ACTIVE, operating_status=c.ONLINE,
                               connection_limit=entry.get("connection_limit"),
                               timeout_client_data=50000, timeout_member_connect=5000,
                               timeout_member_data=50000, timeout_tcp_inspect=0)
        refs = [_store_certificate(cert) for cert in entry.get("certificates", ())]
        if refs:
            listener.tls_certificate_id = refs[0]
            listener.sni_containers = [dm.SNI(listener_id=listener.id, position=i, tls_container_id=ref)
                                       for i, ref in enumerate(refs[1:])]
        pool.listeners.append(listener)
        lb.listeners.append(listener)
        lb.pools.append(pool)
    return lb, amp


def _store_certificate(cert: dict) -> str:
    """A certificate stored through Octavia's LocalCertManager; its reference. (A new
    reference per run: the amphora's file names come from the content, not the reference.)"""
    import os

    from octavia.certificates.manager.local import LocalCertManager

    os.makedirs(os.path.join(PARAMS["work"], "certs"), exist_ok=True)
    return LocalCertManager.store_cert(None, cert["cert"], cert["key"],
                                       intermediates="".join(cert["chain"]) or None)


def _driver():
    from octavia.amphorae.drivers.haproxy import rest_api_driver as rad

    return rad.HaproxyAmphoraLoadBalancerDriver()


def lb_update():
    """Listener create/update (update_amphora_listeners: info, details, upload, reload)."""
    lb, amp = load_balancer()
    attempt("update_amphora_listeners", _driver().update_amphora_listeners, lb, amp)


def lb_failover_calls():
    """The load balancer failover flow's ListenersStart, then the amphora failover's reload."""
    lb, amp = load_balancer()
    driver = _driver()
    attempt("start", driver.start, lb, amp)
    attempt("reload", driver.reload, lb, amp)


def lb_delete_listener():
    """Listener delete (driver.delete): its certificates, then an update, or DELETE
    /1.0/listeners/<lb> when it was the last one."""
    lb, amp = load_balancer()
    listener = next(li for li in lb.listeners if li.id == PARAMS["delete"])
    attempt("delete", _driver().delete, listener)


def plug_1_0():
    """Plug VIP and plug network with the bodies Octavia 19's driver builds from its
    network data models (post_vip_plug, post_network_plug). PARAMS["plug"]: {"vip",
    "vrrp_ip", "vip_cidr", "vip_gateway", "vip_mac", "member_mac", "member_ip",
    "member_cidr", "topology"}."""
    from octavia.common import constants as c
    from octavia.common import data_models as dm
    from octavia.network import data_models as ndm

    plug = PARAMS["plug"]
    amp = amphora(vrrp_port_id="vrrp-port", role=c.ROLE_STANDALONE)
    amp.vrrp_ip = plug["vrrp_ip"]
    amp.ha_ip = plug["vip"]
    lb = dm.LoadBalancer(id=PARAMS["lb"]["id"] if "lb" in PARAMS else "lb", topology=plug.get("topology", "SINGLE"),
                         vip=dm.Vip(ip_address=plug["vip"], vnic_type=c.VNIC_TYPE_NORMAL), amphorae=[amp])
    vip_subnet = ndm.Subnet(id="vip-subnet", cidr=plug["vip_cidr"], gateway_ip=plug.get("vip_gateway"),
                            host_routes=[], ip_version=4)
    vrrp_port = ndm.Port(id="vrrp-port", mac_address=plug["vip_mac"], network=ndm.Network(id="vip-net", mtu=1500),
                         fixed_ips=[ndm.FixedIP(subnet_id=vip_subnet.id, ip_address=plug["vrrp_ip"], subnet=vip_subnet)])
    driver = _driver()
    attempt("post_vip_plug", driver.post_vip_plug, amp, lb, {}, vrrp_port, vip_subnet, additional_vip_data=[])
    if plug.get("member_mac"):
        member_subnet = ndm.Subnet(id="member-subnet", cidr=plug["member_cidr"], gateway_ip=None, host_routes=[],
                                   ip_version=4)
        port = ndm.Port(id="member-port", mac_address=plug["member_mac"], network=ndm.Network(id="m", mtu=1500),
                        fixed_ips=[ndm.FixedIP(subnet_id=member_subnet.id, ip_address=plug["member_ip"],
                                               subnet=member_subnet)])
        attempt("post_network_plug", driver.post_network_plug, amp, port, {})


def render_1_0():
    """Only the configuration Octavia 19's template renders for PARAMS["lb"] (printed)."""
    lb, amp = load_balancer()
    driver = _driver()
    amp.api_version = "1.0"
    config = driver.jinja_combo.build_config(host_amphora=amp, listeners=lb.listeners, tls_certs={},
                                             haproxy_versions=["2", "6"], amp_details={})
    emit("build_config", True, result=config)


def optional_1_0():
    """The optional 1.0 calls (spec 4.14, 4.15) as Octavia 19's controller makes them:
    interface rules through the driver (set_interface_rules, a 404 would become
    AmpDriverNotImplementedError), then a UDP listener of PARAMS["lb"]: its keepalived
    configuration rendered by Octavia's LVS template (emitted as build_lvs_config),
    update_amphora_listeners (upload_udp_config + reload_listener), the client's
    reload_listener and start_listener again, and the driver's delete of that listener."""
    from octavia.common import constants as c

    driver = _driver()
    amp = amphora()
    if PARAMS.get("rules") is not None:
        attempt("set_interface_rules", driver.set_interface_rules, amp, PARAMS["rules_ip"], PARAMS["rules"])
    if "lb" not in PARAMS:
        return
    lb, amp = load_balancer()
    listener = next(li for li in lb.listeners if li.protocol in c.LVS_PROTOCOLS)
    emit("build_lvs_config", True, result=driver.lvs_jinja.build_config(listener=listener))
    attempt("update_amphora_listeners", driver.update_amphora_listeners, lb, amp)
    if PARAMS.get("keep_udp"):
        return
    amp.api_version = "1.0"
    client = driver.clients["1.0"]
    attempt("reload_listener", client.reload_listener, amp, listener.id)
    attempt("start_listener", client.start_listener, amp, listener.id)
    attempt("delete", driver.delete, listener)


def routes_0_5():
    """Every method of the release's AmphoraAPIClient (API 0.5) once: 4.0.0's or 0.5.2's."""
    from octavia.amphorae.drivers.haproxy import rest_api_driver as rad

    amp = amphora()
    client = rad.AmphoraAPIClient()
    lid = PARAMS["listener_id"]
    config = PARAMS["config"].encode()
    pem = PARAMS["pem"].encode()
    attempt("get_info", client.get_info, amp)
    attempt("get_details", client.get_details, amp)
    attempt("get_all_listeners", client.get_all_listeners, amp)
    if VERSION == "0.5.2":
        attempt("upload_config", client.upload_config, amp, lid, config)
    else:
        attempt("upload_config", client.upload_config, amp, lid, config)
    attempt("start_listener", client.start_listener, amp, lid)
    attempt("get_listener_status", client.get_listener_status, amp, lid)
    attempt("reload_listener", client.reload_listener, amp, lid)
    attempt("stop_listener", client.stop_listener, amp, lid)
    attempt("upload_cert_pem", client.upload_cert_pem, amp, lid, "www.example.com.pem", pem)
    attempt("get_cert_md5sum", client.get_cert_md5sum, amp, lid, "www.example.com.pem")
    attempt("delete_cert_pem", client.delete_cert_pem, amp, lid, "www.example.com.pem")
    attempt("delete_listener", client.delete_listener, amp, lid)
    net = {"subnet_cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "mac_address": PARAMS["mac"]}
    attempt("plug_vip", client.plug_vip, amp, PARAMS["vip"], net)
    attempt("plug_network", client.plug_network, amp, {"mac_address": PARAMS["member_mac"]})
    if VERSION != "0.5.2":
        attempt("update_cert_for_rotation", client.update_cert_for_rotation, amp, b"")
        attempt("upload_vrrp_config", client.upload_vrrp_config, amp, b"")
        attempt("start_vrrp", client.start_vrrp, amp)
        attempt("stop_vrrp", client.stop_vrrp, amp)
        attempt("reload_vrrp", client.reload_vrrp, amp)
        attempt("get_interface", client.get_interface, amp, "127.0.0.1")
        attempt("upload_udp_config", client.upload_udp_config, amp, lid, b"")
        attempt("update_agent_config", client.update_agent_config, amp, b"[DEFAULT]\n")


# -- amphora-wide calls (certificate, config, vrrp, interface) --------------------
#
# PARAMS["steps"]: [{"call": <client method>, "args": [...], "file": path (bytes argument),
# "fresh": true (a new client object, i.e. a new connection)}], run in order with the
# release's client (19.0.0: AmphoraAPIClient1_0; 4.0.0: AmphoraAPIClient at /0.5).

def _client():
    from octavia.amphorae.drivers.haproxy import rest_api_driver as rad

    return rad.AmphoraAPIClient1_0() if VERSION == "19.0.0" else rad.AmphoraAPIClient()


def amphora_calls():
    amp = amphora()
    if VERSION == "19.0.0":
        amp.api_version = "1.0"
    client = _client()
    for step in PARAMS["steps"]:
        if step.get("fresh"):
            client = _client()
        args = list(step.get("args", []))
        if "file" in step:
            with open(step["file"], "rb") as f:
                args.append(f.read())
        attempt(step.get("label", step["call"]), getattr(client, step["call"]), amp, *args)


def vrrp_19():
    """The ACTIVE_STANDBY VRRP subflow of Octavia 19 on one amphora of a pair: GET
    interface/<vrrp_ip> (the name goes into the configuration), update_vrrp_conf
    (Octavia's template rendered by its driver, then vrrp/upload), start_vrrp_service.
    PARAMS: "vrrp_ip", "peer_ip", "priority", "vip", "cidr", "lb_id", "auth_pass"."""
    from octavia.common import constants as c
    from octavia.common import data_models as dm

    driver = _driver()
    amp = amphora(role=c.ROLE_MASTER if PARAMS["priority"] == 100 else c.ROLE_BACKUP, vrrp_id=1,
                  vrrp_priority=PARAMS["priority"], load_balancer_id=PARAMS["lb_id"])
    peer = dm.Amphora(id=PARAMS["amphora_id"], status="ALLOCATED", vrrp_ip=PARAMS["peer_ip"])
    lb = dm.LoadBalancer(id=PARAMS["lb_id"], topology=c.TOPOLOGY_ACTIVE_STANDBY, amphorae=[amp, peer],
                         vip=dm.Vip(load_balancer_id=PARAMS["lb_id"], ip_address=PARAMS["vip"]),
                         additional_vips=[])
    lb.vrrp_group = dm.VRRPGroup(load_balancer_id=lb.id, vrrp_group_name=lb.id.replace("-", ""),
                                 vrrp_auth_type="PASS", vrrp_auth_pass=PARAMS["auth_pass"], advert_int=1)
    attempt("check (GET //)", driver.check, amp)
    found = attempt("get_interface", driver.clients["1.0"].get_interface, amp, amp.vrrp_ip)
    amp.vrrp_interface = (found or {}).get("interface")
    net = {amp.id: {"vip_subnet": {"cidr": PARAMS["cidr"], "gateway_ip": None, "host_routes": []},
                    "additional_vip_data": []}}
    attempt("update_vrrp_conf", driver.update_vrrp_conf, lb, net, amp)
    attempt("start_vrrp_service", driver.start_vrrp_service, amp)

def main() -> int:
    configure()
    _record_answers()
    scenario = globals()[PARAMS["scenario"]]
    scenario()
    return 0


if __name__ == "__main__":
    sys.exit(main())
