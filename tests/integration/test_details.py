"""GET /v0.1/details against the running in-process agent: every field, right types, real figures."""

from __future__ import annotations

import os
import subprocess

import pytest_twisted

from amphora import __version__
from tests.details_support import get_details, poll, start_fast_agent


@pytest_twisted.async_yield_fixture
async def agent(agent_config):
    service = await start_fast_agent(agent_config)
    try:
        yield service
    finally:
        await service.stopService()


def installed_versions() -> dict:
    """The truth about packages, straight from dpkg (independent of the agent's code)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n",
                          "haproxy", "keepalived", "openssl", "iproute2"],
                         capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.split()[2][1] == "i"}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest_twisted.ensureDeferred
async def test_every_field_present_with_the_right_type(agent, client, url, pki):
    # Packages are refreshed once the API serves; wait for that answer.
    async def packages_known():
        doc = await get_details(client, url)
        return doc if len(doc["packages"]) > 1 else None
    doc = await poll(packages_known)

    assert doc["hostname"] == agent.facts.hostname and isinstance(doc["hostname"], str)
    assert doc["uuid"] == pki.amphora_id
    assert doc["haproxy_version"] == agent.facts.haproxy_version and doc["haproxy_version"][0].isdigit()
    assert doc["api_version"] == "0.1"
    assert doc["active"] is True
    assert doc["haproxy_count"] == 0 and type(doc["haproxy_count"]) is int
    assert doc["topology"] == "SINGLE" and doc["topology_status"] == "OK"
    assert doc["listeners"] == []

    assert type(doc["network_tx"]) is int and type(doc["network_rx"]) is int
    assert isinstance(doc["networks"], dict) and "lo" in doc["networks"]
    for name, rates in doc["networks"].items():
        assert set(rates) == {"network_tx", "network_rx"}, name
        assert all(type(v) is int and v >= 0 for v in rates.values()), name
    assert doc["network_tx"] == sum(r["network_tx"] for r in doc["networks"].values())
    assert doc["network_rx"] == sum(r["network_rx"] for r in doc["networks"].values())

    assert set(doc["cpu"]) == {"total", "user", "system", "soft_irq"}
    assert all(is_number(v) and 0 <= v <= 100 for v in doc["cpu"].values())
    assert doc["cpu"]["total"] >= max(doc["cpu"]["user"], doc["cpu"]["system"], doc["cpu"]["soft_irq"])

    memory = doc["memory"]
    assert set(memory) == {"total", "free", "available", "buffers", "cached", "swap_used", "shared",
                           "slab", "committed_as"}
    assert all(type(v) is int and v >= 0 for v in memory.values())
    with open("/proc/meminfo") as f:
        mem_total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    assert memory["total"] == mem_total_kb
    assert 0 < memory["available"] <= memory["total"] and memory["free"] <= memory["total"]

    st = os.statvfs("/")
    assert set(doc["disk"]) == {"used", "available"}
    assert all(type(v) is int for v in doc["disk"].values())
    total_kb = st.f_blocks * st.f_frsize // 1024
    assert 0 < doc["disk"]["used"] <= total_kb and 0 < doc["disk"]["available"] <= total_kb
    # Same figures as df, give or take what was written meanwhile (16 MiB).
    assert abs(doc["disk"]["available"] - st.f_bavail * st.f_frsize // 1024) < 16 * 1024

    assert isinstance(doc["load"], list) and len(doc["load"]) == 3 and all(map(is_number, doc["load"]))

    packages = doc["packages"]
    assert all(isinstance(p, dict) and len(p) == 1 for p in packages)
    flat = {k: v for p in packages for k, v in p.items()}
    assert flat["amphora-agent"] == __version__
    assert {k: v for k, v in flat.items() if k != "amphora-agent"} == installed_versions()
    assert [next(iter(p)) for p in packages][:5] == ["haproxy", "keepalived", "openssl", "iproute2",
                                                     "amphora-agent"]


@pytest_twisted.ensureDeferred
async def test_loopback_rate_rises_with_our_own_requests(agent, client, url):
    # The API traffic of this test goes over lo: its rate must become visible.
    async def lo_busy():
        doc = await get_details(client, url)
        lo = doc["networks"]["lo"]
        return doc if lo["network_tx"] > 1000 and lo["network_rx"] > 1000 else None
    doc = await poll(lo_busy, timeout=10.0, step=0.02)
    assert doc["network_tx"] >= doc["networks"]["lo"]["network_tx"]
