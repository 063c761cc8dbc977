"""Host details from fed samples: rates over the window, wraps and resets, CPU
percentages, kB conversions, the sampler service on a Clock, the document."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from amphora.host import (
    CounterWindow,
    HostSampler,
    bytes_to_kb,
    counter_delta,
    cpu_percentages,
    disk_kb,
    memory_kb,
    parse_meminfo,
)
from amphora.testing import FakeListeners

CPU = namedtuple("CPU", "user nice system idle iowait irq softirq steal guest guest_nice")
StatVFS = namedtuple("StatVFS", "f_bsize f_frsize f_blocks f_bfree f_bavail")


def cpu(user=0.0, nice=0.0, system=0.0, idle=0.0, iowait=0.0, irq=0.0, softirq=0.0, steal=0.0):
    return CPU(user, nice, system, idle, iowait, irq, softirq, steal, 0.0, 0.0)


# -- counters -----------------------------------------------------------------

def test_counter_delta_forward():
    assert counter_delta(100, 1100) == 1000
    assert counter_delta(5, 5) == 0


def test_counter_delta_32bit_wrap():
    assert counter_delta(2**32 - 100, 50) == 150


def test_counter_delta_64bit_wrap():
    assert counter_delta(2**64 - 10, 20) == 30


def test_counter_delta_reset_counts_from_zero():
    # A 64-bit counter far from its top that went back: the counter restarted.
    assert counter_delta(10 * 2**32, 700) == 700
    # A small 32-bit value that went back is not a wrap either (would be > 2 GiB).
    assert counter_delta(1000, 10) == 10


def test_rate_over_the_window_with_steady_traffic():
    w = CounterWindow(30.0)
    for i in range(10):  # 45 s of 1000 B/s out, 250 B/s in, sampled every 5 s
        w.add(i * 5.0, {"eth0": (2, 1000 * 5 * i, 250 * 5 * i)})
    assert w.rates() == {"eth0": (1000.0, 250.0)}
    # The ring only keeps what covers the last 30 s: 7 readings 5 s apart.
    assert len(w.samples) == 7
    assert w.samples[-1][0] - w.samples[0][0] == 30.0


def test_rate_covers_only_the_last_window():
    w = CounterWindow(30.0)
    total = 0
    for i in range(7):  # 30 s at 10 kB/s ...
        w.add(i * 5.0, {"eth0": (2, total, total)})
        total += 50_000
    assert w.rates()["eth0"] == (10_000.0, 10_000.0)
    for i in range(7, 14):  # ... then 35 s idle: the burst has left the window
        w.add(i * 5.0, {"eth0": (2, total, total)})
    assert w.rates()["eth0"] == (0.0, 0.0)


def test_rate_partial_window_uses_the_time_observed():
    w = CounterWindow(30.0)
    w.add(0.0, {"eth0": (2, 0, 0)})
    assert w.rates() == {"eth0": (0.0, 0.0)}  # one reading: no rate yet, but reported
    w.add(2.0, {"eth0": (2, 4000, 2000)})
    assert w.rates() == {"eth0": (2000.0, 1000.0)}


def test_wrap_in_the_middle_of_the_window():
    w = CounterWindow(30.0)
    base = 2**32 - 3000
    w.add(0.0, {"eth0": (2, base, 0)})
    w.add(5.0, {"eth0": (2, base + 2000, 0)})
    w.add(10.0, {"eth0": (2, 1000, 0)})  # wrapped: 2000 more bytes
    assert w.rates()["eth0"] == (400.0, 0.0)


def test_recreated_interface_counts_from_zero_and_never_goes_negative():
    w = CounterWindow(30.0)
    w.add(0.0, {"veth0": (7, 10_000_000, 10_000_000)})
    w.add(5.0, {"veth0": (7, 10_005_000, 10_005_000)})
    # Deleted and created again with the same name: new ifindex, counters from 0.
    w.add(10.0, {"veth0": (9, 5_000, 2_500)})
    tx, rx = w.rates()["veth0"]
    assert (tx, rx) == (1000.0, 750.0)


def test_reset_without_index_change_is_not_a_huge_rate():
    w = CounterWindow(30.0)
    w.add(0.0, {"eth0": (None, 50 * 2**32, 50 * 2**32)})
    w.add(5.0, {"eth0": (None, 500, 500)})
    assert w.rates()["eth0"] == (100.0, 100.0)


def test_interface_that_appears_mid_window_is_rated_over_its_own_span():
    w = CounterWindow(30.0)
    w.add(0.0, {"eth0": (2, 0, 0)})
    w.add(5.0, {"eth0": (2, 0, 0), "eth1": (3, 100, 100)})
    w.add(10.0, {"eth0": (2, 0, 0), "eth1": (3, 600, 1100)})
    assert w.rates()["eth1"] == (100.0, 200.0)


def test_vanished_interface_is_not_reported():
    w = CounterWindow(30.0)
    w.add(0.0, {"eth0": (2, 0, 0), "eth1": (3, 0, 0)})
    w.add(5.0, {"eth0": (2, 0, 0)})
    assert set(w.rates()) == {"eth0"}


def test_clock_going_back_restarts_the_window():
    w = CounterWindow(30.0)
    w.add(100.0, {"eth0": (2, 0, 0)})
    w.add(105.0, {"eth0": (2, 5000, 5000)})
    w.add(50.0, {"eth0": (2, 6000, 6000)})
    assert w.rates()["eth0"] == (0.0, 0.0)
    assert len(w.samples) == 1


# -- cpu, memory, disk -------------------------------------------------------

def test_cpu_percentages():
    before = cpu(user=100, nice=10, system=50, idle=800, iowait=20, softirq=5, irq=5, steal=10)
    after = cpu(user=130, nice=10, system=60, idle=850, iowait=30, softirq=10, irq=5, steal=10)
    p = cpu_percentages(before, after)
    assert set(p) == {"total", "user", "system", "soft_irq"}
    elapsed = 30 + 10 + 50 + 10 + 5  # user, system, idle, iowait, softirq
    assert p["user"] == round(100 * 30 / elapsed, 2)
    assert p["system"] == round(100 * 10 / elapsed, 2)
    assert p["soft_irq"] == round(100 * 5 / elapsed, 2)
    assert p["total"] == round(100 * (elapsed - 50 - 10) / elapsed, 2)
    assert all(isinstance(v, float) for v in p.values())


def test_cpu_percentages_count_nice_as_user_and_clamp():
    p = cpu_percentages(cpu(nice=0, idle=0), cpu(nice=50, idle=50))
    assert p["user"] == 50.0 and p["total"] == 50.0
    # No time passed (or counters went back): zeros, never negative or a division by zero.
    assert cpu_percentages(cpu(user=10, idle=10), cpu(user=10, idle=10))["total"] == 0.0
    assert cpu_percentages(cpu(user=10, idle=10), cpu(user=5, idle=5))["total"] == 0.0


MEMINFO = """\
MemTotal:        2030592 kB
MemFree:          123456 kB
MemAvailable:    1500000 kB
Buffers:           20480 kB
Cached:           400000 kB
SwapCached:            0 kB
SwapTotal:       1048576 kB
SwapFree:         948576 kB
Shmem:              8192 kB
Slab:              65536 kB
Committed_AS:     900000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def test_memory_from_meminfo_in_kb():
    memory = memory_kb(parse_meminfo(MEMINFO))
    assert memory == {
        "total": 2030592, "free": 123456, "available": 1500000, "buffers": 20480, "cached": 400000,
        "swap_used": 100000, "shared": 8192, "slab": 65536, "committed_as": 900000,
    }
    assert all(type(v) is int for v in memory.values())


def test_memory_missing_fields_are_zero_not_absent():
    memory = memory_kb(parse_meminfo("MemTotal: 1000 kB\n"))
    assert memory["total"] == 1000 and memory["available"] == 0 and memory["swap_used"] == 0
    assert len(memory) == 9


def test_real_meminfo_parses():
    with open("/proc/meminfo") as f:
        info = parse_meminfo(f.read())
    assert info["MemTotal"] > 0 and "Committed_AS" in info


def test_disk_in_kb():
    st = StatVFS(f_bsize=4096, f_frsize=4096, f_blocks=1000, f_bfree=400, f_bavail=300)
    assert disk_kb(st) == {"used": 600 * 4, "available": 300 * 4}
    assert bytes_to_kb(2048) == 2 and bytes_to_kb(1023) == 0


def test_disk_of_root_is_consistent_with_statvfs():
    st = os.statvfs("/")
    disk = disk_kb(st)
    assert disk["used"] + disk["available"] <= st.f_blocks * st.f_frsize // 1024
    assert disk["available"] > 0


# -- the sampler service ------------------------------------------------------

class FakeProbe:
    """Feeds the sampler: tests move these figures between clock advances."""

    def __init__(self):
        self.cpu = cpu(user=0, idle=0)
        self.counters = {"lo": (1, 0, 0), "eth0": (2, 0, 0)}
        self.meminfo_figures = parse_meminfo(MEMINFO)
        self.statvfs = StatVFS(4096, 4096, 1000, 400, 300)
        self.loadavg = (0.5, 0.25, 0.125)
        self.broken: set[str] = set()
        self.calls = 0

    def _check(self, what):
        if what in self.broken:
            raise OSError(f"{what} is broken")

    def cpu_times(self):
        self.calls += 1
        self._check("cpu")
        return self.cpu

    def net_counters(self):
        self._check("network")
        return dict(self.counters)

    def meminfo(self):
        self._check("memory")
        return self.meminfo_figures

    def disk(self):
        self._check("disk")
        return self.statvfs

    def load(self):
        self._check("load")
        return self.loadavg


class FakeNamespace:
    """A namespace reader whose answers the test controls (Deferreds fire on demand)."""

    def __init__(self):
        self.pending: list[Deferred] = []

    def read(self):
        d = Deferred()
        self.pending.append(d)
        return d

    def answer(self, counters):
        d = self.pending.pop(0)
        d.callback(counters)

    def fail(self, error):
        self.pending.pop(0).errback(error)

    def close(self):
        pass


@pytest.fixture
def clock():
    return Clock()


def make_sampler(clock, **kwargs):
    probe = FakeProbe()
    sampler = HostSampler(clock, interval=5.0, window=30.0, probe=probe, now=clock.seconds, **kwargs)
    return sampler, probe


def test_sampler_samples_at_start_and_on_every_interval(clock):
    sampler, probe = make_sampler(clock)
    sampler.startService()
    try:
        assert sampler.samples == 1
        assert sampler.memory["total"] == 2030592
        assert sampler.disk == {"used": 2400, "available": 1200}
        assert sampler.load == [0.5, 0.25, 0.12]
        clock.advance(1.0)  # the warm-up sample
        assert sampler.samples == 2
        clock.advance(4.0)
        assert sampler.samples == 3
        clock.advance(5.0)
        assert sampler.samples == 4
    finally:
        sampler.stopService()
    clock.advance(60)
    assert sampler.samples == 4 and not clock.getDelayedCalls()


def test_sampler_publishes_rates_and_cpu(clock):
    sampler, probe = make_sampler(clock)
    sampler.startService()
    try:
        clock.advance(1.0)
        for step in range(1, 8):
            probe.counters = {"lo": (1, 0, 0), "eth0": (2, 2000 * 5 * step, 500 * 5 * step)}
            probe.cpu = cpu(user=10 * step, system=5 * step, idle=85 * step)
            clock.advance(5.0)
        assert sampler.networks["eth0"] == {"network_tx": 2000, "network_rx": 500}
        assert sampler.networks["lo"] == {"network_tx": 0, "network_rx": 0}
        assert sampler.network_tx == 2000 and sampler.network_rx == 500
        assert sampler.cpu == {"total": 15.0, "user": 10.0, "system": 5.0, "soft_irq": 0.0}
    finally:
        sampler.stopService()


def test_a_broken_reader_does_not_stop_the_others(clock):
    sampler, probe = make_sampler(clock)
    probe.broken = {"cpu", "disk"}
    sampler.startService()
    try:
        probe.loadavg = (3.0, 2.0, 1.0)
        clock.advance(5.0)
        assert sampler.load == [3.0, 2.0, 1.0]
        assert sampler.disk == {"used": 0, "available": 0}
        probe.broken = set()
        clock.advance(5.0)
        assert sampler.disk["used"] == 2400
        assert sampler._loop.running
    finally:
        sampler.stopService()


def test_namespace_interfaces_are_prefixed_and_summed(clock):
    ns = FakeNamespace()
    sampler, probe = make_sampler(clock, namespace="amphora-haproxy", namespace_reader=ns)
    sampler.startService()
    try:
        ns.answer({"lo": (1, 0, 0), "eth1": (2, 0, 0)})
        assert set(sampler.networks) == {"lo", "eth0", "amphora-haproxy/lo", "amphora-haproxy/eth1"}
        clock.advance(1.0)
        # A read still in flight is not stacked up by the next tick.
        clock.advance(4.0)
        ns.answer({"lo": (1, 0, 0), "eth1": (2, 0, 0)})
        assert len(ns.pending) == 0
        clock.advance(5.0)
        ns.answer({"lo": (1, 0, 0), "eth1": (2, 50_000, 100_000)})
        # Readings at t=0, 5 and 10 (stamped when they arrive): 10 s of traffic.
        assert sampler.networks["amphora-haproxy/eth1"] == {"network_tx": 5_000, "network_rx": 10_000}
        assert sampler.network_tx == 5_000 and sampler.network_rx == 10_000
    finally:
        sampler.stopService()


def test_namespace_missing_or_failing_reports_host_interfaces_only(clock):
    ns = FakeNamespace()
    sampler, probe = make_sampler(clock, namespace="gone", namespace_reader=ns)
    sampler.startService()
    try:
        ns.answer({"eth1": (2, 0, 0)})
        assert "gone/eth1" in sampler.networks
        clock.advance(5.0)
        ns.answer(None)  # namespace deleted
        assert set(sampler.networks) == {"lo", "eth0"}
        clock.advance(5.0)
        ns.fail(OSError("netlink went away"))
        assert set(sampler.networks) == {"lo", "eth0"}
        clock.advance(5.0)
        ns.answer({"eth1": (5, 0, 0)})  # back again
        assert "gone/eth1" in sampler.networks
    finally:
        sampler.stopService()


class FakeTopology:
    topology = "ACTIVE-STANDBY"
    status = "OK"
    active = 0  # falsy, not a bool: the document must still carry a JSON boolean


TWO_RUNNING = ["0a6a3a4e-1111-4e0e-9a5e-2b2b2b2b2b2b", "f6c8e1a2-2222-4e0e-9a5e-2b2b2b2b2b2b"]


class FakeFacts:
    hostname = "amphora-1"
    amphora_id = "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce"
    haproxy_version = "2.6.12"


EXPECTED_TYPES = {
    "hostname": str, "uuid": str, "haproxy_version": str, "api_version": str,
    "network_tx": int, "network_rx": int, "networks": dict, "active": bool, "haproxy_count": int,
    "cpu": dict, "memory": dict, "disk": dict, "load": list, "topology": str,
    "topology_status": str, "listeners": list, "packages": list,
}


def test_document_shape_without_listeners(clock):
    sampler, _ = make_sampler(clock)
    doc = json.loads(json.dumps(sampler.document(FakeFacts(), FakeTopology(), FakeListeners())))  # before any sample, too
    assert {k: type(v) for k, v in doc.items()} == EXPECTED_TYPES
    assert doc["active"] is False and doc["haproxy_count"] == 0 and doc["listeners"] == []
    sampler.startService()
    try:
        clock.advance(5.0)
        later = json.loads(json.dumps(sampler.document(FakeFacts(), FakeTopology(), FakeListeners())))
        assert {k: type(v) for k, v in later.items()} == EXPECTED_TYPES
        assert set(later["cpu"]) == {"total", "user", "system", "soft_irq"}
        assert set(later["memory"]) == {"total", "free", "available", "buffers", "cached", "swap_used",
                                        "shared", "slab", "committed_as"}
        assert set(later["disk"]) == {"used", "available"}
        assert len(later["load"]) == 3
    finally:
        sampler.stopService()


def test_document_with_listeners(clock):
    sampler, _ = make_sampler(clock)
    doc = sampler.document(FakeFacts(), FakeTopology(), FakeListeners(running=TWO_RUNNING))
    assert doc["haproxy_count"] == 2
    assert doc["listeners"] == FakeListeners(running=TWO_RUNNING).listener_ids()
    assert doc["topology"] == "ACTIVE-STANDBY"


def test_details_route_with_stub_treq(pki, tmp_path):
    from treq.testing import StubTreq
    from twisted.internet.testing import MemoryReactorClock

    from amphora.agent import build_agent
    from amphora.config import load_config
    from tests.helpers import write_config

    agent = build_agent(load_config(write_config(pki, str(tmp_path))), MemoryReactorClock())
    agent.sampler.sample()
    stub = StubTreq(agent.api.app.resource())
    response = stub.get("https://amphora/v0.1/details")
    stub.flush()
    result = []
    response.addCallback(lambda r: r.json().addCallback(lambda body: result.append((r.code, body))))
    stub.flush()
    code, body = result[0]
    assert code == 200
    assert {k: type(v) for k, v in body.items()} == EXPECTED_TYPES
    assert body["uuid"] == pki.amphora_id
    assert body["packages"] == [{"amphora-agent": __import__("amphora").__version__}]
    assert "lo" in body["networks"]


def test_hung_namespace_read_stops_reporting_stale_figures(clock):
    ns = FakeNamespace()
    sampler, _ = make_sampler(clock, namespace="slow", namespace_reader=ns)
    sampler.startService()
    try:
        ns.answer({"eth1": (2, 0, 0)})
        clock.advance(1.0)
        ns.answer({"eth1": (2, 1000, 1000)})
        assert "slow/eth1" in sampler.networks
        clock.advance(4.0)  # this read never answers
        for _ in range(6):
            clock.advance(5.0)
            assert len(ns.pending) == 1  # not stacked up behind the hung one
        clock.advance(5.0)  # more than a window without an answer
        assert "slow/eth1" not in sampler.networks
        ns.answer({"eth1": (2, 2000, 2000)})  # it finally answers: reported again
        assert "slow/eth1" in sampler.networks
    finally:
        sampler.stopService()


def test_namespace_reader_raising_synchronously_does_not_stop_sampling(clock):
    class Exploding(FakeNamespace):
        def read(self):
            raise RuntimeError("no thread for you")

    sampler, _ = make_sampler(clock, namespace="x", namespace_reader=Exploding())
    sampler.startService()
    try:
        clock.advance(10.0)
        assert sampler.samples == 3 and sampler._loop.running
        assert set(sampler.networks) == {"lo", "eth0"}
    finally:
        sampler.stopService()
