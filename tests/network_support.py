"""Network namespaces, veth pairs and processes inside them, for tests -- with guaranteed cleanup.

``NetLab`` gives everything it creates a unique name (``<prefix><tag><random>``,
at most 15 characters so it also fits an interface name), records it *before*
creating it, and ``cleanup()`` removes all of it even after a partial failure:
processes first (they would keep a namespace alive), then veths left in the
root namespace, then the namespaces (which destroys every interface inside).

Checks go through pyroute2's own namespace support (``IPRoute(netns=...)``),
which is independent of amphora.network's thread-based sockets, so a bug in
the code under test cannot hide itself behind the same bug in the checks.

Use the ``netlab`` fixture (import it into a test module), or a ``NetLab()``
in a ``try/finally``. Needs root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import pytest
from pyroute2 import IPRoute, NetlinkError, netns

from amphora.netns import exec_argv

IFA_F_NODAD = 0x02
IFF_UP = 0x1
_LIBC = ctypes.CDLL(None, use_errno=True)  # passed to pyroute2 so its forked helper never looks it up


class NetLab:
    def __init__(self, prefix: str = "amp7"):
        self.prefix = prefix
        self.namespaces: list[str] = []
        self.root_links: list[str] = []
        self.processes: list[subprocess.Popen] = []

    # -- naming -----------------------------------------------------------------

    def name(self, tag: str = "") -> str:
        name = f"{self.prefix}{tag}{secrets.token_hex(3)}"
        assert len(name) <= 15, f"{name!r} is too long for an interface name"
        return name

    # -- creation -----------------------------------------------------------------

    def namespace(self, tag: str = "n", create: bool = True, lo_up: bool = True) -> str:
        """A unique namespace name, recorded for cleanup; created unless ``create`` is False
        (for code under test that must create it itself)."""
        name = self.name(tag)
        self.namespaces.append(name)
        if create:
            netns.create(name, libc=_LIBC)
            if lo_up:
                self.set_up(name, "lo")
        return name

    def veth(self, ns_a: str = "", ns_b: str = "", up_a: bool = False, up_b: bool = True,
             mac_a: str | None = None, tag: str = "v") -> tuple[str, str]:
        """A veth pair with end a in ``ns_a`` and end b in ``ns_b`` ("" = root namespace).

        End a is the "newly attached port" (down by default), end b the
        outside world (up by default).
        """
        base = self.name(tag)
        a, b = base + "a", base + "b"
        self.root_links.append(a)  # deleting one end deletes both
        with IPRoute() as ipr:
            ipr.link("add", ifname=a, kind="veth", peer=b)
            if mac_a:
                ipr.link("set", index=ipr.link_lookup(ifname=a)[0], address=mac_a)
            for end, ns in ((a, ns_a), (b, ns_b)):
                if ns:
                    ipr.link("set", index=ipr.link_lookup(ifname=end)[0], net_ns_fd=ns)
        if up_a:
            self.set_up(ns_a, a)
        if up_b:
            self.set_up(ns_b, b)
        return a, b

    def spawn(self, namespace: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """A process inside ``namespace`` started through amphora.netns.exec_argv; killed in cleanup."""
        proc = subprocess.Popen(exec_argv(namespace, argv), start_new_session=True, **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, namespace: str, argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess:
        return subprocess.run(exec_argv(namespace, argv), capture_output=True, timeout=timeout)

    # -- inspection and manipulation (pyroute2's own netns support) ---------------

    @contextlib.contextmanager
    def ipr(self, namespace: str = ""):
        ipr = IPRoute(netns=namespace, libc=_LIBC) if namespace else IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    def index(self, namespace: str, ifname: str) -> int:
        with self.ipr(namespace) as ipr:
            found = ipr.link_lookup(ifname=ifname)
        assert found, f"no interface {ifname} in namespace {namespace or 'root'}"
        return found[0]

    def link(self, namespace: str, ifname: str) -> dict | None:
        """{index, name, mac, up, mtu} of the interface, or None if it is not there."""
        with self.ipr(namespace) as ipr:
            for msg in ipr.get_links():
                if msg.get("ifname") == ifname:
                    return {"index": msg["index"], "name": ifname, "mac": msg.get("address"),
                            "up": bool(msg["flags"] & IFF_UP), "mtu": msg.get("mtu")}
        return None

    def inode(self, namespace: str) -> int:
        """The namespace's identity (compare with ``os.stat(f"/proc/{pid}/ns/net").st_ino``)."""
        return os.stat(os.path.join("/var/run/netns", namespace)).st_ino

    def mac(self, namespace: str, ifname: str) -> str:
        return self.link(namespace, ifname)["mac"]

    def addresses(self, namespace: str, ifname: str) -> list[str]:
        """``ip/prefixlen`` of the interface, link-local addresses left out; duplicates kept."""
        index = self.index(namespace, ifname)
        with self.ipr(namespace) as ipr:
            return [f"{m.get('address')}/{m['prefixlen']}" for m in ipr.get_addr(index=index)
                    if not m.get("address", "").startswith("fe80:")]

    def routes(self, namespace: str) -> list[tuple[str, str | None, int | None]]:
        """(destination/len, gateway, oif) of the main table, both families."""
        with self.ipr(namespace) as ipr:
            msgs = list(ipr.get_routes(family=socket.AF_INET, table=254))
            msgs += list(ipr.get_routes(family=socket.AF_INET6, table=254))
        result = []
        for m in msgs:
            dst = m.get("dst") or ("::" if m["family"] == socket.AF_INET6 else "0.0.0.0")
            result.append((f"{dst}/{m['dst_len']}", m.get("gateway"), m.get("oif")))
        return result

    def set_up(self, namespace: str, ifname: str) -> None:
        with self.ipr(namespace) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")

    def add_address(self, namespace: str, ifname: str, cidr: str) -> None:
        ip, _, prefixlen = cidr.partition("/")
        extra = {"flags": IFA_F_NODAD} if ":" in ip else {}
        with self.ipr(namespace) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=ip, prefixlen=int(prefixlen),
                     **extra)

    def add_route(self, namespace: str, ifname: str, dst: str, gateway: str | None = None) -> None:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        extra = {"gateway": gateway} if gateway else {}
        with self.ipr(namespace) as ipr:
            ipr.route("add", dst=dst, oif=ipr.link_lookup(ifname=ifname)[0], family=family, **extra)

    def flush(self, namespace: str, ifname: str) -> None:
        """What a reboot does to a plugged port: no addresses, link down, default MTU."""
        with self.ipr(namespace) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=index, state="down", mtu=1500)
            for m in list(ipr.get_addr(index=index)):
                ipr.addr("del", index=index, address=m.get("address"), prefixlen=m["prefixlen"])

    def where(self, mac: str) -> tuple[str, str] | None:
        """(namespace, ifname) of the interface with ``mac`` among root and this lab's namespaces."""
        for ns in ["", *self.namespaces]:
            if ns and ns not in netns.listnetns():
                continue
            with self.ipr(ns) as ipr:
                for msg in ipr.get_links():
                    if msg.get("address") == mac:
                        return ns, msg.get("ifname")
        return None

    # -- cleanup --------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove everything this lab created; raise at the end if anything resisted."""
        problems = []
        for proc in reversed(self.processes):
            try:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(5)
            except (OSError, subprocess.TimeoutExpired) as e:
                problems.append(f"process {proc.pid}: {e}")
        self.processes.clear()
        with IPRoute() as ipr:
            for name in self.root_links:
                try:
                    found = ipr.link_lookup(ifname=name)
                    if found:
                        ipr.link("del", index=found[0])
                except NetlinkError as e:
                    if e.code != 19:  # ENODEV: went with its peer
                        problems.append(f"veth {name}: {e}")
        self.root_links.clear()
        existing = set(netns.listnetns())
        for name in self.namespaces:
            if name in existing:
                try:
                    netns.remove(name, libc=_LIBC)
                except OSError as e:
                    problems.append(f"namespace {name}: {e}")
        self.namespaces.clear()
        if problems:
            raise AssertionError("network lab cleanup failed: " + "; ".join(problems))


@pytest.fixture
def netlab():
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.cleanup()


def wait_for(check, timeout: float = 5.0, interval: float = 0.05):
    """Poll ``check()`` (blocking; for use outside the reactor or in setup) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


PYTHON = sys.executable
