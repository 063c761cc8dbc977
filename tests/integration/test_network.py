"""Plug VIP / plug network against real netlink, in namespaces and veths these tests create.

Layout of every test (all names unique, removed by the ``netlab`` fixture):

- ``home``: a namespace standing in for the amphora's root namespace, where
  new ports appear (the agent's Netlink is pointed at it, so no test ever
  touches the host's own interfaces -- except the one test of the real
  own-namespace path, which only uses a veth it created);
- ``agent_ns``: the agent's ``[network] namespace``, where haproxy runs;
- ``peer``: the other end of each veth, the "outside world" (clients, gateway).
"""

from __future__ import annotations

import json
import os
import secrets
import textwrap
import threading

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from amphora.agent import build_agent
from amphora.config import load_config
from amphora.network import Netlink
from tests.helpers import write_config
from tests.listener_support import eventually, http_config, kill_listeners, new_id
from tests.network_support import PYTHON, netlab  # noqa: F401 - the fixture

PORT = 8080  # inside namespaces of our own: no clash possible


@pytest.fixture
def home(netlab):
    return netlab.namespace("h")


@pytest.fixture
def agent_ns(netlab):
    # lo stays down: the agent must bring it up itself
    return netlab.namespace("a", lo_up=False)


@pytest.fixture
def peer(netlab):
    return netlab.namespace("p")


@pytest.fixture
def agent_config_extra(agent_ns):
    return {"network": {"namespace": agent_ns}}


async def start_agent(config, home):
    service = build_agent(config, reactor)
    service.network.netlink = Netlink(config.network.namespace, home=home)
    service.privilegedStartService()
    service.startService()
    try:
        await service.when_ready()
    except BaseException:
        await service.stopService()
        raise
    return service


@pytest_twisted.async_yield_fixture
async def agent(agent_config, home):
    """The conftest agent, with its new ports appearing in ``home``."""
    service = await start_agent(agent_config, home)
    try:
        yield service
    finally:
        await service.stopService()


async def post(client, url, path, body=None, raw=None):
    kwargs = {}
    if body is not None:
        kwargs = {"data": json.dumps(body).encode(), "headers": {b"content-type": [b"application/json"]}}
    if raw is not None:
        kwargs = {"data": raw}
    response = await client.post(url + path, **kwargs)
    return response.code, json.loads(await response.content())


def subnet(version):
    """A private subnet unique to this call: (cidr, gateway, vip, peer-route-destination)."""
    n = secrets.randbelow(250) + 1
    if version == 4:
        return f"10.77.{n}.0/24", f"10.77.{n}.1", f"10.77.{n}.10", "192.0.2.0/24"
    return f"fd77:7:{n:x}::/64", f"fd77:7:{n:x}::1", f"fd77:7:{n:x}::10", "2001:db8:77::/48"


CLIENT = textwrap.dedent("""
    import sys, time, urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + float(sys.argv[2])
    while True:
        try:
            sys.stdout.write(opener.open(sys.argv[1], timeout=1).read().decode())
            break
        except Exception as e:
            if time.monotonic() > deadline:
                sys.stdout.write(f"FAILED: {e}")
                sys.exit(1)
            time.sleep(0.05)
""")


def serve_backend(lab, namespace, directory, port=8081):
    """A tiny backend inside ``namespace``: http.server on 127.0.0.1 serving ``directory``."""
    lab.spawn(namespace, [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", directory],
              stdout=open(os.devnull, "wb"), stderr=open(os.devnull, "wb"))
    return port


def fetch(lab, namespace, vip, path):
    host = f"[{vip}]" if ":" in vip else vip
    result = lab.run(namespace, [PYTHON, "-c", CLIENT, f"http://{host}:{PORT}/{path}", "5"], timeout=15)
    return result.returncode, result.stdout.decode()


# -- plug VIP -------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
@pytest_twisted.ensureDeferred
async def test_plug_vip_with_body_serves_traffic(version, netlab, agent, agent_ns, peer, client, url, tmp_path):
    cidr, gateway, vip, routed = subnet(version)
    prefixlen = cidr.split("/")[1]
    port, outside = netlab.veth(agent_ns, peer)
    netlab.add_address(peer, outside, f"{gateway}/{prefixlen}")
    mac = netlab.mac(agent_ns, port)
    body = {"mac_address": mac, "subnet_cidr": cidr, "gateway": gateway, "mtu": 1400,
            "host_routes": [{"destination": routed, "nexthop": gateway}]}

    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", body)

    assert (code, answer) == (202, {"message": "OK", "details": f"VIP {vip} plugged on interface {port}"})
    link = netlab.link(agent_ns, port)
    assert link["up"] and link["mtu"] == 1400
    assert netlab.addresses(agent_ns, port) == [f"{vip}/{prefixlen}"]
    routes = netlab.routes(agent_ns)
    default = "0.0.0.0/0" if version == 4 else "::/0"
    assert (default, gateway, link["index"]) in routes
    assert (routed, gateway, link["index"]) in routes
    assert netlab.link(agent_ns, "lo")["up"], "the agent brings up lo in its namespace"

    # a real listener through the listener API: its haproxy runs inside the namespace
    token = secrets.token_hex(8)
    (tmp_path / "hello.txt").write_text(token)
    backend = serve_backend(netlab, agent_ns, str(tmp_path))
    lid, pool, member = new_id(), new_id(), new_id()
    config = http_config(lid, PORT, pool, [(member, backend)], bind_ip=f"[{vip}]" if version == 6 else vip)
    try:
        response = await client.put(f"{url}/v0.1/listeners/{lid}/haproxy", data=config.encode())
        assert response.code == 201, await response.content()
        response = await client.put(f"{url}/v0.1/listeners/{lid}/start")
        assert response.code == 202, await response.content()
        code, text = await deferToThread(fetch, netlab, peer, vip, "hello.txt")
        assert (code, text) == (0, token)
        (pid,) = listener_pids(agent)
        assert netlab.inode(agent_ns) == os.stat(f"/proc/{pid}/ns/net").st_ino, "haproxy runs in the namespace"
        response = await client.put(f"{url}/v0.1/listeners/{lid}/stop")
        assert response.code == 202, await response.content()
    finally:
        drop_listeners(agent)


@pytest.mark.parametrize("version, path_suffix", [(4, ""), (6, "/")])
@pytest_twisted.ensureDeferred
async def test_plug_vip_without_body(version, path_suffix, netlab, agent, agent_ns, peer, client, url):
    _, _, vip, _ = subnet(version)
    port, _ = netlab.veth(agent_ns, peer)

    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}{path_suffix}")

    assert (code, answer) == (202, {"message": "OK", "details": f"VIP {vip} plugged on interface {port}"})
    assert netlab.link(agent_ns, port)["up"]
    assert netlab.addresses(agent_ns, port) == [f"{vip}/{32 if version == 4 else 128}"]
    state = json.load(open(os.path.join(agent.config.agent.state_dir, "plugged.json")))
    assert [(i["name"], i["vips"]) for i in state["interfaces"]] == [(port, [vip])]
    assert agent.network.vip_interface(vip) == port


@pytest_twisted.ensureDeferred
async def test_plug_vip_with_vrrp_ip_in_single_topology_carries_both(netlab, agent, agent_ns, peer, client, url):
    """SINGLE: the VIP is the agent's to configure even when vrrp_ip comes along (as every controller
    since 2016 sends it); ACTIVE-STANDBY leaves it to keepalived (tests/integration/test_network_vips.py)."""
    cidr, gateway, vip, _ = subnet(4)
    vrrp_ip = vip.rsplit(".", 1)[0] + ".11"
    port, _ = netlab.veth(agent_ns, peer)
    body = {"mac_address": netlab.mac(agent_ns, port), "subnet_cidr": cidr, "gateway": gateway,
            "vrrp_ip": vrrp_ip}
    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", body)
    assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {port}")
    assert netlab.addresses(agent_ns, port) == [f"{vrrp_ip}/24", f"{vip}/32"]
    assert agent.network.vip_interface(vip) == port


# -- plug network ---------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_plug_network_with_and_without_fixed_ips(netlab, agent, agent_ns, peer, client, url):
    cidr4, _, ip4, _ = subnet(4)
    cidr6, _, ip6, _ = subnet(6)
    port, _ = netlab.veth(agent_ns, peer)
    body = {"mac_address": netlab.mac(agent_ns, port), "mtu": 1450,
            "fixed_ips": [{"ip_address": ip4, "subnet_cidr": cidr4}, {"ip_address": ip6, "subnet_cidr": cidr6}]}

    code, answer = await post(client, url, "/v0.1/plug/network/", body)

    assert (code, answer) == (202, {"message": "OK", "details": f"Plugged interface {port}"})
    link = netlab.link(agent_ns, port)
    assert link["up"] and link["mtu"] == 1450
    assert sorted(netlab.addresses(agent_ns, port)) == sorted([f"{ip4}/24", f"{ip6}/64"])

    bare, _ = netlab.veth(agent_ns, peer)
    code, answer = await post(client, url, "/v0.1/plug/network")
    assert (code, answer) == (202, {"message": "OK", "details": f"Plugged interface {bare}"})
    assert netlab.link(agent_ns, bare)["up"]
    assert netlab.addresses(agent_ns, bare) == []


# -- selection, idempotence, errors --------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_mac_selects_among_several_down_links(netlab, agent, agent_ns, peer, client, url):
    ports = [netlab.veth(agent_ns, peer)[0] for _ in range(3)]
    _, _, vip, _ = subnet(4)

    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}")
    assert code == 404 and answer["message"] == "No suitable network interface found"
    for port in ports:
        assert port in answer["details"]
    assert not any(netlab.link(agent_ns, p)["up"] for p in ports), "a 404 changes nothing"

    chosen = ports[1]
    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}",
                              {"mac_address": netlab.mac(agent_ns, chosen).upper()})
    assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {chosen}")
    assert netlab.addresses(agent_ns, chosen) == [f"{vip}/32"]
    for other in (ports[0], ports[2]):
        assert not netlab.link(agent_ns, other)["up"] and netlab.addresses(agent_ns, other) == []


@pytest_twisted.ensureDeferred
async def test_replug_is_idempotent(netlab, agent, agent_ns, peer, client, url):
    cidr, gateway, vip, routed = subnet(4)
    port, _ = netlab.veth(agent_ns, peer)
    mac = netlab.mac(agent_ns, port)
    body = {"mac_address": mac, "subnet_cidr": cidr, "gateway": gateway,
            "host_routes": [{"destination": routed, "nexthop": gateway}]}
    assert (await post(client, url, f"/v0.1/plug/vip/{vip}", body))[0] == 202
    routes = sorted(netlab.routes(agent_ns), key=str)

    for again in (body, None):
        code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", again)
        assert (code, answer["details"]) == (202, f"VIP {vip} already plugged on interface {port}")
        assert netlab.addresses(agent_ns, port) == [f"{vip}/24"]
        assert sorted(netlab.routes(agent_ns), key=str) == routes

    net_port, _ = netlab.veth(agent_ns, peer)
    net_body = {"mac_address": netlab.mac(agent_ns, net_port), "fixed_ips": [{"ip_address": "10.99.0.5"}]}
    assert (await post(client, url, "/v0.1/plug/network", net_body))[1]["details"] == f"Plugged interface {net_port}"
    code, answer = await post(client, url, "/v0.1/plug/network", net_body)
    assert (code, answer["details"]) == (202, f"Interface {net_port} already plugged")
    assert netlab.addresses(agent_ns, net_port) == ["10.99.0.5/32"]
    assert len(agent.network.plugged()["interfaces"]) == 2


@pytest_twisted.ensureDeferred
async def test_no_candidate_is_404(netlab, agent, agent_ns, home, peer, client, url):
    netlab.veth(home, peer, up_a=True)  # up: in use, not a new port
    code, answer = await post(client, url, "/v0.1/plug/vip/10.77.0.10")
    assert (code, answer["message"]) == (404, "No suitable network interface found")
    code, answer = await post(client, url, "/v0.1/plug/network/")
    assert (code, answer["message"]) == (404, "No suitable network interface found")
    code, answer = await post(client, url, "/v0.1/plug/network", {"mac_address": "fa:16:3e:77:77:77"})
    assert code == 404 and "fa:16:3e:77:77:77" in answer["details"]
    assert agent.network.plugged()["interfaces"] == []


@pytest_twisted.ensureDeferred
async def test_netlink_failure_is_500_and_rolled_back(netlab, agent, agent_ns, peer, client, url):
    cidr, gateway, vip, routed = subnet(4)
    port, _ = netlab.veth(agent_ns, peer)
    mac = netlab.mac(agent_ns, port)
    # the next hop is valid but not reachable from the VIP's subnet: the kernel refuses the route
    body = {"mac_address": mac, "subnet_cidr": cidr, "host_routes": [{"destination": routed,
                                                                      "nexthop": "172.31.77.1"}]}
    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", body)
    assert (code, answer["message"]) == (500, "Error plugging VIP")
    assert "172.31.77.1" in answer["details"] and "unreachable" in answer["details"], answer
    assert netlab.addresses(agent_ns, port) == [] and not netlab.link(agent_ns, port)["up"], "rolled back"
    assert agent.network.plugged()["interfaces"] == []
    # still the new port: a corrected request plugs it
    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}")
    assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {port}")


# -- restart -------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_fresh_agent_restores_a_flushed_link(netlab, agent_config, agent_ns, home, peer, client):
    cidr, gateway, vip, routed = subnet(4)
    vip_port, _ = netlab.veth(agent_ns, peer)
    net_port, _ = netlab.veth(home, peer)  # starts outside: restore must find it by MAC inside
    first = await start_agent(agent_config, home)
    try:
        url = f"https://127.0.0.1:{first.api_port}"
        body = {"mac_address": netlab.mac(agent_ns, vip_port), "subnet_cidr": cidr, "gateway": gateway,
                "mtu": 1400, "host_routes": [{"destination": routed, "nexthop": gateway}]}
        assert (await post(client, url, f"/v0.1/plug/vip/{vip}", body))[0] == 202
        net_body = {"mac_address": netlab.mac(home, net_port), "fixed_ips": [{"ip_address": "10.98.0.5",
                                                                              "subnet_cidr": "10.98.0.0/16"}]}
        assert (await post(client, url, "/v0.1/plug/network", net_body))[0] == 202
    finally:
        await client.pool.closeCachedConnections()
        await first.stopService()
    # what a reboot does
    for port in (vip_port, net_port):
        netlab.flush(agent_ns, port)
        assert not netlab.link(agent_ns, port)["up"] and netlab.addresses(agent_ns, port) == []
    assert not any(r[1] == gateway for r in netlab.routes(agent_ns))

    second = await start_agent(agent_config, home)
    try:
        # restored before the API accepted: no request needed
        link = netlab.link(agent_ns, vip_port)
        assert link["up"] and link["mtu"] == 1400
        assert netlab.addresses(agent_ns, vip_port) == [f"{vip}/24"]
        routes = netlab.routes(agent_ns)
        assert ("0.0.0.0/0", gateway, link["index"]) in routes
        assert (routed, gateway, link["index"]) in routes
        assert netlab.link(agent_ns, net_port)["up"]
        assert netlab.addresses(agent_ns, net_port) == ["10.98.0.5/16"]
    finally:
        await second.stopService()


def listener_pids(service):
    return [p.pid for p in service.listeners._procs.values() if p.pid]


def drop_listeners(service):
    """Test clean-up: forget and SIGKILL the agent's haproxy processes (they outlive the agent on purpose)."""
    pids = listener_pids(service)
    for proc in service.listeners._procs.values():
        proc.detach()
    kill_listeners(service.config.agent.run_dir, pids)
    return pids


@pytest_twisted.ensureDeferred
async def test_after_a_reboot_the_vip_is_back_before_the_listener_binds_it(netlab, agent_config, agent_ns, home,
                                                                          peer, client, tmp_path):
    cidr, gateway, vip, _ = subnet(4)
    port, outside = netlab.veth(agent_ns, peer)
    netlab.add_address(peer, outside, f"{gateway}/24")
    token = secrets.token_hex(8)
    (tmp_path / "hello.txt").write_text(token)
    backend = serve_backend(netlab, agent_ns, str(tmp_path))
    lid = new_id()
    config = http_config(lid, PORT, new_id(), [(new_id(), backend)], bind_ip=vip)

    first = await start_agent(agent_config, home)
    pids = []
    try:
        url = f"https://127.0.0.1:{first.api_port}"
        body = {"mac_address": netlab.mac(agent_ns, port), "subnet_cidr": cidr, "gateway": gateway}
        assert (await post(client, url, f"/v0.1/plug/vip/{vip}", body))[0] == 202
        assert (await client.put(f"{url}/v0.1/listeners/{lid}/haproxy", data=config.encode())).code == 201
        assert (await client.put(f"{url}/v0.1/listeners/{lid}/start")).code == 202
        assert await deferToThread(fetch, netlab, peer, vip, "hello.txt") == (0, token)
    finally:
        await client.pool.closeCachedConnections()
        pids = drop_listeners(first)
        await first.stopService()
    # the reboot: haproxy gone, the port flushed
    await eventually(lambda: not any(psutil.pid_exists(p) for p in pids), message="haproxy still alive")
    netlab.flush(agent_ns, port)
    assert netlab.addresses(agent_ns, port) == []

    second = await start_agent(agent_config, home)
    try:
        # start-up restored the VIP, then started the listener, whose haproxy could bind it
        assert netlab.addresses(agent_ns, port) == [f"{vip}/24"]
        assert listener_pids(second) and not set(listener_pids(second)) & set(pids)
        assert await deferToThread(fetch, netlab, peer, vip, "hello.txt") == (0, token)
    finally:
        drop_listeners(second)
        await second.stopService()


# -- namespaces --------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_namespace_is_created_and_ports_moved_into_it(netlab, pki, tmp_path, home, peer, client):
    namespace = netlab.namespace("c", create=False)
    config = load_config(write_config(pki, str(tmp_path / "ns"), 0, {"network": {"namespace": namespace}}))
    port, outside = netlab.veth(home, peer)
    mac = netlab.mac(home, port)
    service = await start_agent(config, home)
    try:
        assert netlab.link(namespace, "lo")["up"], "created at start, with lo up"
        url = f"https://127.0.0.1:{service.api_port}"
        _, _, vip, _ = subnet(4)
        code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}")
        assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {port}")
        assert netlab.where(mac) == (namespace, port)
        assert netlab.link(home, port) is None
        assert netlab.addresses(namespace, port) == [f"{vip}/32"]
        # a program started through exec_argv (as haproxy and keepalived are) sees it
        seen = netlab.run(namespace, [PYTHON, "-c", "import socket; print([n for _, n in socket.if_nameindex()])"])
        assert port in seen.stdout.decode() and "lo" in seen.stdout.decode()
        # no helper process or namespace thread is left behind by the agent
        me = psutil.Process()
        assert [c for c in me.children() if c.cmdline() == me.cmdline()] == []  # forks of this process
        assert not [t for t in threading.enumerate() if t.name == "amphora-netns"]
    finally:
        await client.pool.closeCachedConnections()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_port_whose_name_is_taken_inside_is_renamed_as_it_moves(netlab, agent, agent_ns, home, peer,
                                                                         client, url):
    port, _ = netlab.veth(home, peer)
    mac = netlab.mac(home, port)
    with netlab.ipr(agent_ns) as ipr:
        # "eth1" plugged earlier, and the new port is called "eth1" again
        ipr.link("add", ifname=port, kind="veth", peer=port + "x")
    _, _, vip, _ = subnet(4)
    code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", {"mac_address": mac})
    assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {port}1")
    assert netlab.where(mac) == (agent_ns, f"{port}1")
    assert netlab.addresses(agent_ns, f"{port}1") == [f"{vip}/32"]
    assert agent.network.vip_interface(vip) == f"{port}1"


@pytest_twisted.ensureDeferred
async def test_without_namespace_everything_stays_home(netlab, pki, tmp_path, home, peer, client):
    config = load_config(write_config(pki, str(tmp_path / "own"), 0, {}))
    port, _ = netlab.veth(home, peer)
    cidr, gateway, vip, _ = subnet(4)
    service = await start_agent(config, home)
    try:
        url = f"https://127.0.0.1:{service.api_port}"
        body = {"mac_address": netlab.mac(home, port), "subnet_cidr": cidr, "gateway": gateway}
        code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", body)
        assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {port}")
        assert netlab.link(home, port)["up"]
        assert netlab.addresses(home, port) == [f"{vip}/24"]
        assert ("0.0.0.0/0", gateway, netlab.index(home, port)) in netlab.routes(home)
    finally:
        await client.pool.closeCachedConnections()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_real_own_namespace_path(netlab, pki, tmp_path, peer, client):
    """The production path: no home override. Only a veth this test made is touched (chosen by MAC)."""
    config = load_config(write_config(pki, str(tmp_path / "root"), 0, {}))
    port, _ = netlab.veth("", peer)
    _, _, vip, _ = subnet(4)
    service = build_agent(config, reactor)
    service.privilegedStartService()
    service.startService()
    try:
        await service.when_ready()
        url = f"https://127.0.0.1:{service.api_port}"
        code, answer = await post(client, url, f"/v0.1/plug/vip/{vip}", {"mac_address": netlab.mac("", port)})
        assert (code, answer["details"]) == (202, f"VIP {vip} plugged on interface {port}")
        assert netlab.link("", port)["up"]
        assert netlab.addresses("", port) == [f"{vip}/32"]
    finally:
        await client.pool.closeCachedConnections()
        await service.stopService()


# A bind to an address no interface of the namespace carries (yet): what a STANDBY's haproxy does
# with Octavia's configurations (`bind <VIP>:<port>`) while keepalived keeps the VIP on the MASTER.
BIND_ABSENT = "import socket, sys; socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)" \
              ".bind((sys.argv[1], 8080))"


@pytest_twisted.ensureDeferred
async def test_listeners_can_bind_a_vip_the_namespace_does_not_hold(pki, tmp_path, client):
    """ACTIVE-STANDBY: the VIP sits on the MASTER only, yet the STANDBY's haproxy must already
    listen on VIP:port, or its listener is in ERROR, its VRRP check fails and it can never take
    over. The agent allows non-local binds in its namespace (as Octavia's amphora image does)."""
    from tests.network_support import NetLab

    lab = NetLab("ampB")
    try:
        home = lab.namespace("h")
        namespace = lab.namespace("n", create=False)
        config = load_config(write_config(pki, str(tmp_path / "nl"), 0, {"network": {"namespace": namespace}}))
        service = await start_agent(config, home)
        try:
            assert lab.link(namespace, "lo")["up"]
            for address in ("203.0.113.77", "2001:db8:77::77"):
                bound = lab.run(namespace, [PYTHON, "-c", BIND_ABSENT, address])
                assert bound.returncode == 0, (address, bound.stderr.decode())
            # Only the agent's namespace: the host's own setting is left alone.
            assert lab.run(home, [PYTHON, "-c", BIND_ABSENT, "203.0.113.77"]).returncode != 0
            # The whole chain: the listener API's bind check and haproxy itself, in the namespace.
            url = f"https://127.0.0.1:{service.api_port}"
            lid, pool = new_id(), new_id()
            config = http_config(lid, PORT, pool, [(new_id(), 8081)], bind_ip="203.0.113.77")
            try:
                response = await client.put(f"{url}/v0.1/listeners/{lid}/haproxy", data=config.encode())
                assert response.code == 201, await response.content()
                response = await client.put(f"{url}/v0.1/listeners/{lid}/start")
                assert response.code == 202, await response.content()
                response = await client.get(f"{url}/v0.1/listeners/{lid}")
                assert (await response.json())["status"] == "ACTIVE"
            finally:
                drop_listeners(service)
        finally:
            await client.pool.closeCachedConnections()
            await service.stopService()
    finally:
        lab.cleanup()
