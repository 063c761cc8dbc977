"""``networks`` includes the interfaces of [network] namespace, and their rates follow real traffic.

Two namespaces of our own joined by a veth pair: the agent's [network]
namespace holds one end, a peer namespace the other. A child in the peer
namespace sends UDP datagrams across; the agent-side interface's receive rate
must rise while it does, and fall back once the traffic has left the window.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.details_support import FAST_WINDOW, VethPair, get_details, poll, start_fast_agent
from tests.helpers import REPO

# Sends ~2 MB/s of 1000-byte datagrams for `seconds` (paced, so a 2-core box stays usable).
SENDER = r"""
import socket, sys, time
dst, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * 1000
end = time.monotonic() + seconds
sent = 0
while time.monotonic() < end:
    for _ in range(40):
        try:
            s.sendto(payload, (dst, 9))
            sent += 1
        except OSError:  # ICMP port unreachable reported back on the socket: keep going
            pass
    time.sleep(0.02)
print(sent)
"""


@pytest.fixture
def veth():
    pair = VethPair()
    pair.create()
    try:
        yield pair
    finally:
        pair.delete()
    assert not os.path.exists(f"/var/run/netns/{pair.a}")


@pytest.fixture
def agent_config_extra(veth):
    return {"network": {"namespace": veth.a}}


@pytest_twisted.async_yield_fixture
async def agent(agent_config):
    service = await start_fast_agent(agent_config)
    try:
        yield service
    finally:
        await service.stopService()
    # The namespace reader's thread is stopped with the agent.
    assert not reader_threads()


def reader_threads() -> list:
    return [t for t in threading.enumerate() if "amphora-netns-stats-" in t.name]


def send_traffic(veth: VethPair, seconds: float):
    """The sender as a child inside the peer namespace (amphora.netns enters it)."""
    argv = ["-m", "amphora.netns", veth.b, "--", sys.executable, "-c", SENDER, veth.a_ip, str(seconds)]
    env = {"PYTHONPATH": REPO, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return getProcessOutputAndValue(sys.executable, argv, env=env, reactor=reactor)


@pytest_twisted.ensureDeferred
async def test_namespace_interfaces_and_their_rates(agent, client, url, veth):
    key = f"{veth.a}/{veth.a_if}"

    async def listed():
        doc = await get_details(client, url)
        return doc if key in doc["networks"] else None
    doc = await poll(listed, timeout=10.0)
    assert f"{veth.a}/lo" in doc["networks"]
    assert len(reader_threads()) == 1 and reader_threads()[0].daemon  # read off the reactor thread
    assert "lo" in doc["networks"]  # the agent's own interfaces are still there
    idle_rx = doc["networks"][key]["network_rx"]
    assert idle_rx < 50_000

    sending = send_traffic(veth, seconds=3.0)
    peak = {"rx": 0, "total_rx": 0}
    try:
        async def rising():
            doc = await get_details(client, url)
            rates = doc["networks"][key]
            if rates["network_rx"] > peak["rx"]:
                peak["rx"] = rates["network_rx"]
                peak["total_rx"] = doc["network_rx"]
            return rates["network_rx"] > 200_000
        await poll(rising, timeout=8.0, step=0.1)
    finally:
        out, err, code = await sending
    assert code == 0, err
    assert int(out) > 1000  # the sender really sent
    assert peak["rx"] > 200_000
    assert peak["total_rx"] >= peak["rx"]  # the totals include the namespace's interfaces

    # Once the burst has left the window, the rate falls back.
    async def quiet():
        doc = await get_details(client, url)
        return doc["networks"][key]["network_rx"] < 50_000
    await poll(quiet, timeout=FAST_WINDOW + 8.0, step=0.2)


@pytest_twisted.ensureDeferred
async def test_namespace_deleted_while_running(agent, client, url, veth):
    key = f"{veth.a}/{veth.a_if}"

    async def listed():
        doc = await get_details(client, url)
        return key in doc["networks"]
    await poll(listed, timeout=10.0)
    veth.delete()

    async def gone():
        doc = await get_details(client, url)
        return not any(name.startswith(veth.a + "/") for name in doc["networks"])
    await poll(gone, timeout=10.0)
    # Recreated under the same name: the sampler sees the new namespace, not the pinned old one.
    veth.create()

    async def back():
        doc = await get_details(client, url)
        return key in doc["networks"]
    await poll(back, timeout=10.0)
