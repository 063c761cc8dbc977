"""Facts and figures about this host that the API reports.

``HostFacts.load()`` learns what does not change while the agent runs (the
haproxy version) once, at start, through a child process, so no request ever
waits on it (``GET /info``).

``HostSampler`` is the timer service behind ``GET /v0.1/details``: it samples
CPU, memory, disk, load and interface counters every few seconds and keeps
the results in memory, so the request handler only reads them. The package
inventory lives in ``amphora.packages``.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections import deque

import psutil
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from amphora import API_VERSION, pyroute2lean
from amphora.logonce import LogOnce
from amphora.netlink import link_counters, netlink_socket
from amphora.netns import NETNS_RUN_DIR
from amphora.packages import PackageInventory

log = Logger()

_VERSION = re.compile(rb"(?:HA-Proxy|HAProxy) version (\S+)")


def parse_haproxy_version(output: bytes) -> str | None:
    match = _VERSION.search(output)
    return match.group(1).decode("ascii", "replace") if match else None


class HostFacts:
    def __init__(self, config, reactor):
        self.config = config
        self.reactor = reactor
        self.hostname = config.hostname
        self.amphora_id = config.agent.amphora_id
        self.haproxy_version = "unknown"

    @inlineCallbacks
    def load(self):
        from amphora.process import run_bounded

        try:
            out, err, code = yield run_bounded(self.reactor, [self.config.haproxy.binary, "-v"],
                                               env=dict(os.environ), timeout=10.0)
        except Exception as e:  # a hung or missing binary must not stop the agent's start
            out, err, code = b"", str(e).encode(), -1
        version = parse_haproxy_version(out + err)
        if code != 0 or version is None:
            log.error("cannot learn the haproxy version from {binary} -v (exit {code})",
                      binary=self.config.haproxy.binary, code=code)
        else:
            self.haproxy_version = version
            log.info("haproxy version {version}", version=version)


# =============================================================================
# GET /v0.1/details: figures sampled by a timer, served from memory.
#
# The request handler only reads what the sampler published last; sampling
# (procfs reads, statvfs, a netlink dump in the data-plane namespace) happens
# on a timer, the namespace part in a dedicated thread because a netlink
# socket in another namespace is opened by a thread that enters it.
# =============================================================================

_WRAP32 = 1 << 32
_WRAP64 = 1 << 64


def counter_delta(prev: int, cur: int) -> int:
    """Bytes counted between two readings of one interface byte counter.

    A counter that went backwards either wrapped or was reset (driver reset,
    interface recreated under the same name without us noticing the index
    change). A value that fits in 32 bits and wrapped by less than 2 GiB is
    taken as a 32-bit wrap (old drivers, IFLA_STATS); a value in the top half
    of the 64-bit range as a 64-bit wrap. Anything else is a reset: the
    counter restarted from zero after ``prev`` was read, so ``cur`` bytes went
    through since then.
    """
    if cur >= prev:
        return cur - prev
    if prev >= _WRAP64 >> 1:
        return _WRAP64 - prev + cur
    if prev < _WRAP32 and _WRAP32 - prev + cur < _WRAP32 >> 1:
        return _WRAP32 - prev + cur
    return cur


class CounterWindow:
    """Byte counters of a set of interfaces over a sliding time window.

    ``add(t, counters)`` takes one reading, ``counters`` mapping an interface
    key to ``(ifindex, tx_bytes, rx_bytes)``; ``rates()`` gives bytes/second
    per interface of the latest reading, over the readings that cover the
    last ``window`` seconds (the oldest one kept is the last reading at or
    before ``t - window``, so a full window is really ``window`` seconds).
    Deltas are summed pair by pair, so a wrap or reset in the middle of the
    window costs at most one interval's accuracy, never a negative or huge
    rate. A changed ifindex means the interface was recreated: its counters
    restarted from zero.
    """

    def __init__(self, window: float = 30.0):
        self.window = window
        self.samples: deque = deque()

    def clear(self) -> None:
        self.samples.clear()

    def add(self, t: float, counters: dict) -> None:
        if self.samples and t <= self.samples[-1][0]:
            # The clock stood still or went back: no interval to measure over.
            self.samples.clear()
        self.samples.append((t, counters))
        while len(self.samples) > 2 and self.samples[1][0] <= t - self.window:
            self.samples.popleft()

    def rates(self) -> dict:
        """``{key: (tx_bytes_per_s, rx_bytes_per_s)}`` for every interface of the latest reading."""
        if not self.samples:
            return {}
        last_t, last = self.samples[-1]
        totals = {key: [0, 0, None] for key in last}  # tx bytes, rx bytes, first t
        previous = None
        for t, counters in self.samples:
            if previous is not None:
                prev_t, prev_counters = previous
                for key, acc in totals.items():
                    if key not in counters or key not in prev_counters:
                        continue
                    index0, tx0, rx0 = prev_counters[key]
                    index1, tx1, rx1 = counters[key]
                    if index0 is not None and index1 is not None and index0 != index1:
                        dtx, drx = tx1, rx1  # recreated: counted from zero since
                    else:
                        dtx, drx = counter_delta(tx0, tx1), counter_delta(rx0, rx1)
                    if acc[2] is None:
                        acc[2] = prev_t
                    acc[0] += dtx
                    acc[1] += drx
            previous = (t, counters)
        result = {}
        for key, (tx, rx, first_t) in totals.items():
            span = last_t - first_t if first_t is not None else 0.0
            result[key] = (tx / span, rx / span) if span > 0 else (0.0, 0.0)
        return result


def cpu_percentages(prev, cur) -> dict:
    """CPU use between two ``psutil.cpu_times()`` readings, in percent of all CPUs.

    ``total`` is everything but idle and iowait; ``user`` includes nice time
    (user-mode work at any priority); ``soft_irq`` is softirq time, where
    most of a load balancer's packet processing shows up. On Linux guest time
    is already inside user/nice, so it is not added again.
    """
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    delta = {name: max(getattr(cur, name, 0.0) - getattr(prev, name, 0.0), 0.0) for name in names}
    elapsed = sum(delta.values())
    if elapsed <= 0:
        return {"total": 0.0, "user": 0.0, "system": 0.0, "soft_irq": 0.0}

    def percent(value: float) -> float:
        return round(min(max(100.0 * value / elapsed, 0.0), 100.0), 2)

    return {
        "total": percent(elapsed - delta["idle"] - delta["iowait"]),
        "user": percent(delta["user"] + delta["nice"]),
        "system": percent(delta["system"]),
        "soft_irq": percent(delta["softirq"]),
    }


MEMORY_FIELDS = {
    "total": "MemTotal",
    "free": "MemFree",
    "available": "MemAvailable",
    "buffers": "Buffers",
    "cached": "Cached",
    "shared": "Shmem",
    "slab": "Slab",
    "committed_as": "Committed_AS",
}


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as ``{field: kB}`` (fields the kernel gives in bytes are converted)."""
    result = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        unit = parts[1].lower() if len(parts) > 1 else ""
        if unit == "kb":
            result[name.strip()] = value
        elif unit == "":
            result[name.strip()] = value  # counts (HugePages_*), kept as they are
    return result


def memory_kb(meminfo: dict[str, int]) -> dict[str, int]:
    """The spec's memory figures (kB) from parsed ``/proc/meminfo``."""
    memory = {key: int(meminfo.get(field, 0)) for key, field in MEMORY_FIELDS.items()}
    memory["swap_used"] = max(int(meminfo.get("SwapTotal", 0)) - int(meminfo.get("SwapFree", 0)), 0)
    return memory


def bytes_to_kb(value: int) -> int:
    return int(value) // 1024


def disk_kb(statvfs) -> dict[str, int]:
    """Used and available kB of a file system, as ``df`` counts them.

    ``used`` is blocks in use (total - free); ``available`` is what an
    unprivileged writer may still use (the root reserve excluded).
    """
    size = statvfs.f_frsize or statvfs.f_bsize
    return {
        "used": bytes_to_kb((statvfs.f_blocks - statvfs.f_bfree) * size),
        "available": bytes_to_kb(statvfs.f_bavail * size),
    }


class SystemProbe:
    """The real readers: procfs through psutil and plain files, statvfs, getloadavg.

    Every read is a small procfs/statvfs call that does not block; they run
    in the reactor thread on the sampler's timer. Tests replace the probe.
    """

    def __init__(self, disk_path: str = "/"):
        self.disk_path = disk_path

    def cpu_times(self):
        return psutil.cpu_times()

    def net_counters(self) -> dict:
        """``{ifname: (ifindex, tx_bytes, rx_bytes)}`` of the agent's own namespace."""
        indexes = {name: index for index, name in socket.if_nameindex()}
        # nowrap=False: wraps and resets are handled here, per window, not by a
        # process-wide psutil cache that would hide an interface's recreation.
        counters = psutil.net_io_counters(pernic=True, nowrap=False)
        return {name: (indexes.get(name), c.bytes_sent, c.bytes_recv) for name, c in counters.items()}

    def meminfo(self) -> dict[str, int]:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            return parse_meminfo(f.read())

    def disk(self):
        return os.statvfs(self.disk_path)

    def load(self) -> tuple[float, float, float]:
        return os.getloadavg()


class _DaemonThreadPool(ThreadPool):
    """A ThreadPool whose thread never keeps a dying process alive (it is stopped on service stop)."""

    def threadFactory(self, *args, **kwargs):
        thread = threading.Thread(*args, **kwargs)
        thread.daemon = True
        return thread


class NamespaceCounters:
    """Interface byte counters of one named network namespace, via the netlink adapter.

    Opening a socket inside another namespace (``amphora.netlink``) takes a
    short-lived thread; so every read runs in one dedicated thread (pyroute2
    objects are thread-bound) and hands back a Deferred. The socket
    is kept between reads and reopened when the namespace is recreated (a
    socket pins the namespace it was made in: without the check we would
    report a dead namespace forever). A missing namespace reads as ``None``.
    """

    def __init__(self, reactor, namespace: str, netns_dir: str = NETNS_RUN_DIR):
        self.reactor = reactor
        self.namespace = namespace
        self.path = os.path.join(netns_dir, namespace)
        self._pool: ThreadPool | None = None
        self._ipr = None
        self._sock = None
        self._identity = None

    def read(self) -> Deferred:
        """Fires with ``{ifname: (ifindex, tx_bytes, rx_bytes)}``, or None if the namespace is absent."""
        if self._pool is None:
            self._pool = _DaemonThreadPool(1, 1, name=f"amphora-netns-stats-{self.namespace}")
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, self._read)

    def _read(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._close_socket()
            return None
        identity = (st.st_dev, st.st_ino)
        if self._ipr is None or identity != self._identity:
            self._close_socket()
            # A socket opened inside the namespace by a short-lived thread: unlike
            # IPRoute(netns=...), this forks no helper process from the threaded agent.
            self._sock = netlink_socket(self.namespace)
            self._ipr = pyroute2lean.part("iproute.linux").IPRoute(use_socket=self._sock)
            self._identity = identity
        try:
            links = self._ipr.get_links()
        except Exception:
            self._close_socket()
            raise
        return link_counters(links)

    def _close_socket(self) -> None:
        ipr, self._ipr, self._identity = self._ipr, None, None
        sock, self._sock = self._sock, None
        for closable in (ipr, sock):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # closing a broken socket: nothing left to do
                    pass

    def close(self) -> None:
        """Close the socket in its own thread and stop that thread (joins it)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.callInThread(self._close_socket)
            pool.stop()


_ZERO_CPU = {"total": 0.0, "user": 0.0, "system": 0.0, "soft_irq": 0.0}


class HostSampler(MultiService):
    """Samples host figures on a timer; ``document(...)`` builds /v0.1/details from them.

    Every ``interval`` seconds (and once more shortly after start, so rates
    exist within a second): CPU times, the byte counters of the agent's own
    interfaces, /proc/meminfo, statvfs of ``disk_path`` and the load average,
    all in the reactor thread (procfs reads, no waiting); the interfaces of
    ``namespace`` through ``NamespaceCounters`` off the reactor thread. The
    published figures are replaced, never mutated, so a request only reads
    references. Network rates cover the last ``window`` seconds; CPU
    percentages the last interval.

    The package inventory (``packages``) is a child service, so it starts
    and stops with the sampler. ``interval``, ``window``, ``probe``,
    ``namespace_reader`` and ``now`` are knobs for tests and benchmarks; set
    ``interval``/``window`` before the service starts.
    """

    name = "host-sampler"

    def __init__(self, reactor, *, namespace: str = "", interval: float = 5.0, window: float = 30.0,
                 probe=None, namespace_reader=None, packages=None, now=None):
        super().__init__()
        self.clock = reactor
        self.namespace = namespace
        self.interval = interval
        self.window = window
        self.probe = probe if probe is not None else SystemProbe()
        if namespace_reader is None and namespace:
            namespace_reader = NamespaceCounters(reactor, namespace)
        self.namespace_reader = namespace_reader
        self._now = now if now is not None else reactor.seconds
        self.packages = packages
        if packages is not None:
            packages.setServiceParent(self)
        self.host_window = CounterWindow(window)
        self.namespace_window = CounterWindow(window)
        self._cpu_prev = None
        self._loop: LoopingCall | None = None
        self._warmup = None
        self._namespace_busy = False
        self._namespace_started = 0.0
        self._once = LogOnce(log)  # failing readers, a missing namespace: logged once each
        self.samples = 0
        # Published figures (replaced as a whole on every sample).
        self.cpu = dict(_ZERO_CPU)
        self.memory = memory_kb({})
        self.disk = {"used": 0, "available": 0}
        self.load = [0.0, 0.0, 0.0]
        self.networks: dict = {}
        self.network_tx = 0
        self.network_rx = 0
        self._host_rates: dict = {}
        self._namespace_rates: dict = {}

    @classmethod
    def from_config(cls, config, reactor, ready) -> "HostSampler":
        """The production sampler (monotonic time; packages refreshed once ``ready()`` fires)."""
        packages = PackageInventory(reactor, config.agent.state_dir, config.agent.packages,
                                    config.agent.packages_max_age, ready=ready)
        # Monotonic time: a wall-clock step must not turn into a bogus rate.
        return cls(reactor, namespace=config.network.namespace, packages=packages, now=time.monotonic)

    # -- life cycle -----------------------------------------------------------

    def startService(self):
        super().startService()
        self.host_window = CounterWindow(self.window)
        self.namespace_window = CounterWindow(self.window)
        self._cpu_prev = None
        self._loop = LoopingCall(self.sample)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("host sampler stopped", f))
        self._warmup = self.clock.callLater(min(1.0, self.interval / 2), self.sample)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._warmup is not None and self._warmup.active():
            self._warmup.cancel()
        self._warmup = None
        if self.namespace_reader is not None:
            self.namespace_reader.close()
        return super().stopService()

    # -- sampling -------------------------------------------------------------

    def sample(self) -> None:
        """Take one sample; never raises (a failing reader is logged once, the rest go on)."""
        self.samples += 1
        t = self._now()
        cpu = self._guard("cpu", self.probe.cpu_times)
        if cpu is not None:
            if self._cpu_prev is not None:
                self.cpu = cpu_percentages(self._cpu_prev, cpu)
            self._cpu_prev = cpu
        counters = self._guard("network", self.probe.net_counters)
        if counters is not None:
            self.host_window.add(t, counters)
            self._host_rates = self.host_window.rates()
        meminfo = self._guard("memory", self.probe.meminfo)
        if meminfo is not None:
            self.memory = memory_kb(meminfo)
        statvfs = self._guard("disk", self.probe.disk)
        if statvfs is not None:
            self.disk = disk_kb(statvfs)
        load = self._guard("load", self.probe.load)
        if load is not None:
            self.load = [round(float(x), 2) for x in load]
        if self.namespace_reader is not None:
            if not self._namespace_busy:
                self._namespace_busy = True
                self._namespace_started = t
                d = maybeDeferred(self.namespace_reader.read)
                d.addCallback(self._namespace_read)
                d.addErrback(self._namespace_failed)
                d.addBoth(self._namespace_done)
            elif t - self._namespace_started > self.window and self._namespace_rates:
                # A read hung for a whole window: stop reporting figures that are now stale.
                log.warn("reading network namespace {namespace} takes more than {window}s; its "
                         "interfaces are not reported until it answers", namespace=self.namespace,
                         window=self.window)
                self.namespace_window.clear()
                self._namespace_rates = {}
        self._publish_networks()

    def _guard(self, what: str, reader):
        try:
            value = reader()
        except Exception as e:
            self._once.fail(what, "cannot sample {what}: {error}", what=what, error=e)
            return None
        self._once.recover(what, "sampling {what} works again", what=what)
        return value

    def _namespace_read(self, counters) -> None:
        if counters is None:
            # Normal before the first plug creates it: information, not a warning.
            self._once.fail("namespace missing", "network namespace {namespace} does not exist (yet); its "
                            "interfaces are reported once it does", level="info", namespace=self.namespace)
            self.namespace_window.clear()
            self._namespace_rates = {}
        else:
            self._once.recover("namespace " + self.namespace)
            self._once.recover("namespace missing", "network namespace {namespace} is there: reporting its "
                               "interfaces", namespace=self.namespace)
            prefix = self.namespace + "/"
            self.namespace_window.add(self._now(), {prefix + name: value for name, value in counters.items()})
            self._namespace_rates = self.namespace_window.rates()
        self._publish_networks()

    def _namespace_failed(self, failure) -> None:
        self._once.fail("namespace " + self.namespace, "cannot read the interfaces of network namespace "
                        "{namespace}: {error}", namespace=self.namespace, error=failure.getErrorMessage())
        self.namespace_window.clear()
        self._namespace_rates = {}
        self._publish_networks()

    def _namespace_done(self, _) -> None:
        self._namespace_busy = False

    def _publish_networks(self) -> None:
        networks = {}
        tx_total = rx_total = 0
        for rates in (self._host_rates, self._namespace_rates):
            for key, (tx, rx) in rates.items():
                tx, rx = int(round(tx)), int(round(rx))
                networks[key] = {"network_tx": tx, "network_rx": rx}
                tx_total += tx
                rx_total += rx
        self.networks = networks
        self.network_tx = tx_total
        self.network_rx = rx_total

    # -- the document ---------------------------------------------------------

    def document(self, facts: HostFacts, topology, listeners) -> dict:
        """GET /v0.1/details: the spec's fields, from published samples only (no I/O here),
        with ``facts``, the ``topology`` and the listener registry's counts."""
        return {
            "hostname": facts.hostname,
            "uuid": facts.amphora_id,
            "haproxy_version": facts.haproxy_version,
            "api_version": API_VERSION,
            "network_tx": self.network_tx,
            "network_rx": self.network_rx,
            "networks": self.networks,
            "active": bool(topology.active),
            "haproxy_count": int(listeners.running_count()),
            "cpu": self.cpu,
            "memory": self.memory,
            "disk": self.disk,
            "load": self.load,
            "topology": topology.topology,
            "topology_status": topology.status,
            "listeners": list(listeners.all_listener_ids()),
            "packages": self.packages.document() if self.packages is not None else [],
        }
