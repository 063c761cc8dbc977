"""amphora-ctl plug vip / plug network: happy paths on real netlink in namespaces and veths
this test creates (prefix amp9, removed afterwards), error paths, --json validated
against docs/openapi.yaml. The agent's Netlink is pointed at a test namespace
("home"), so the host's own interfaces are never touched."""

import secrets

import pytest
import pytest_twisted
from twisted.internet import reactor

from amphora import ctl as ctl_module
from amphora.agent import build_agent
from amphora.network import Netlink
from tests.ctl_support import ctl, ctl_env
from tests.network_support import NetLab
from tests.openapi_support import contract


@pytest.fixture
def lab():
    lab = NetLab(prefix="amp9")
    try:
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def home(lab):
    return lab.namespace("h")


@pytest.fixture
def agent_ns(lab):
    return lab.namespace("a", lo_up=False)


@pytest.fixture
def peer(lab):
    return lab.namespace("p")


@pytest.fixture
def agent_config_extra(agent_ns):
    return {"network": {"namespace": agent_ns}}


@pytest_twisted.async_yield_fixture
async def agent(agent_config, home):
    service = build_agent(agent_config, reactor)
    service.network.netlink = Netlink(agent_config.network.namespace, home=home)
    service.privilegedStartService()
    service.startService()
    try:
        await service.when_ready()
        yield service
    finally:
        await service.stopService()


def ok(result):
    assert result.code == 0, (result.code, result.out, result.err)
    return result


@pytest_twisted.ensureDeferred
async def test_plug_vip_and_network_through_ctl(lab, agent, agent_ns, peer, url, pki):
    env = ctl_env(pki, url)
    n = secrets.randbelow(250) + 1
    vip, cidr, gateway = f"10.79.{n}.10", f"10.79.{n}.0/24", f"10.79.{n}.1"
    port, _ = lab.veth(agent_ns, peer)
    mac = lab.mac(agent_ns, port)
    result = ok(await ctl(env, "--json", "plug", "vip", vip, "--mac", mac, "--subnet-cidr", cidr,
                          "--gateway", gateway, "--mtu", "1400"))
    body = result.json()
    contract()._validate("/components/schemas/OK", body, "plug vip")
    assert body["details"] == f"VIP {vip} plugged on interface {port}"
    assert lab.addresses(agent_ns, port) == [f"{vip}/24"]
    assert lab.link(agent_ns, port)["up"] and lab.link(agent_ns, port)["mtu"] == 1400

    net_port, _ = lab.veth(agent_ns, peer)
    fixed = f"10.80.{n}.7"
    human = ok(await ctl(env, "plug", "network", "--mac", lab.mac(agent_ns, net_port),
                         "--fixed-ip", f"{fixed},10.80.{n}.0/24"))
    assert human.out.strip() == f"OK: Plugged interface {net_port}"
    assert lab.addresses(agent_ns, net_port) == [f"{fixed}/24"]

    # nothing left to plug: the agent's 404 with its message, exit 4
    result = await ctl(env, "plug", "network")
    assert result.code == ctl_module.EXIT_CLIENT_ERROR
    assert "404 No suitable network interface found" in result.err


@pytest_twisted.ensureDeferred
async def test_plug_errors_through_ctl(agent, url, pki):
    env = ctl_env(pki, url)
    result = await ctl(env, "--json", "plug", "vip", "300.1.1.1")
    assert result.code == ctl_module.EXIT_CLIENT_ERROR
    assert result.json()["message"] == "Invalid VIP"
    result = await ctl(env, "plug", "network", "--fixed-ip", "10.0.0.500")
    assert result.code == ctl_module.EXIT_CLIENT_ERROR and "fixed_ips" in result.err
