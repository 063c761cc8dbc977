"""The one netlink / network-namespace adapter.

Everything in the agent that asks the kernel about links, addresses and
routes, or runs code inside a named network namespace, goes through here:
network plugging (``amphora.network``), the host sampler's interface counters
(``amphora.host``), keepalived's address checks (``amphora.keepalived``) and
the listener bind check (``amphora.listeners.haproxy``). Programs that must
*live* in a namespace (haproxy, keepalived) are spawned through
``amphora.netns.exec_argv`` instead.

Two layers:

- Blocking functions (``in_namespace``, ``iproute``, the queries): they run
  in a thread, never in the reactor thread.
- ``NetlinkQueries``: the reactor-side face; every call goes to a thread pool
  (``deferToThreadPool``) and returns a Deferred.

Namespaces without forking: pyroute2 0.9 opens a socket in another namespace
(``IPRoute(netns=...)``) and creates namespaces (``netns.create``) by forking
a helper process, which is fragile in a multi-threaded process (the reactor
plus its thread pool). Here ``in_namespace`` runs the work in a short-lived
thread that did ``setns(2)`` (or ``unshare(2)``); a netlink socket stays
bound to the namespace it was created in, and the thread's namespace dies
with the thread, so no pooled thread is ever left in the wrong namespace and
no process is forked.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from twisted.internet.threads import deferToThreadPool

from amphora import pyroute2lean
from amphora.netns import CLONE_NEWNET, NETNS_RUN_DIR, enter

IFF_UP = 0x1
IFF_LOOPBACK = 0x8


class NetlinkFailure(Exception):
    """A netlink step failed; ``str()`` names the step and the kernel's error."""

    def __init__(self, step: str, error: BaseException):
        code = getattr(error, "code", None) or getattr(error, "errno", None)
        if isinstance(error, OSError) and error.strerror:
            reason = error.strerror
        elif isinstance(code, int) and code > 0:
            reason = os.strerror(code)
        else:
            reason = str(error)
        super().__init__(f"{step}: {reason}" + (f" (errno {code})" if isinstance(code, int) else ""))
        self.step = step
        self.code = code


def namespace_path(namespace: str) -> str:
    return os.path.join(NETNS_RUN_DIR, namespace)


def _in_fresh_thread(fn):
    """Run ``fn`` in a new thread and return its result (or raise its error).

    For namespace switching: the thread's network namespace dies with it.
    """
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=run, name="amphora-netns", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def in_namespace(namespace: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` inside network namespace ``namespace`` ("" = the caller's own).

    Blocking: call it from a thread. For a named namespace, ``fn`` runs in a
    fresh thread that entered it (sockets it opens belong to that namespace;
    ``/proc/thread-self/net`` shows it). OSError if the namespace is missing.
    """
    if not namespace:
        return fn(*args, **kwargs)

    def inside():
        enter(namespace)
        return fn(*args, **kwargs)

    return _in_fresh_thread(inside)


def netlink_socket(namespace: str = "") -> socket.socket:
    """A NETLINK_ROUTE socket bound to ``namespace`` ("" = the caller's own)."""
    return in_namespace(namespace, socket.socket, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)


@contextmanager
def iproute(namespace: str = ""):
    """An IPRoute on a socket in ``namespace``, opened and closed around one operation."""
    IPRoute = pyroute2lean.part("iproute.linux").IPRoute  # noqa: N806 - the class

    sock = netlink_socket(namespace)
    try:
        ipr = IPRoute(use_socket=sock)
        try:
            yield ipr
        finally:
            ipr.close()
    finally:
        sock.close()


# Per-namespace sysctls; a thread that entered the namespace sees that namespace's values.
NONLOCAL_BIND = ("/proc/sys/net/ipv4/ip_nonlocal_bind", "/proc/sys/net/ipv6/ip_nonlocal_bind")


def _set_nonlocal_bind() -> list[str]:
    changed = []
    for path in NONLOCAL_BIND:
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    continue
            with open(path, "w") as f:
                f.write("1\n")
        except FileNotFoundError:  # IPv6 disabled in this kernel
            continue
        changed.append(path)
    return changed


def allow_nonlocal_bind(namespace: str) -> list[str]:
    """Let programs in ``namespace`` bind addresses no interface carries (yet); the paths changed.

    In ACTIVE-STANDBY keepalived puts the VIP on the MASTER only, while Octavia's
    haproxy configurations bind ``<VIP>:<port>`` on both amphorae: without this the
    STANDBY's haproxy cannot start, its VRRP check fails and it never takes over.
    A listener restored at boot before keepalived became MASTER would fail the same
    way. Octavia's amphora image sets the same two sysctls.
    """
    return in_namespace(namespace, _set_nonlocal_bind)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def create_namespace(namespace: str) -> bool:
    """Create the named namespace if missing (as ``ip netns add`` does); True if created."""
    pr_netns = pyroute2lean.part("netns")

    if namespace in pr_netns.listnetns():
        return False

    def create():
        libc = _libc()
        if libc.unshare(CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"unshare: {os.strerror(code)}")
        # pyroute2's own create() forks; attach() does the same mount dance
        # for an existing namespace -- this thread's.
        pr_netns.attach(namespace, "thread-self", libc=libc)

    try:
        _in_fresh_thread(create)
    except OSError as e:
        if e.errno == errno.EEXIST:  # created meanwhile by someone else
            return False
        raise
    return True


# -- queries ------------------------------------------------------------------------

@dataclass(frozen=True)
class Interface:
    """One link and its addresses, as the address checks need it."""

    name: str
    index: int
    loopback: bool
    addresses: tuple = ()  # ipaddress.IPv4Interface / IPv6Interface

    def holds(self, address) -> bool:
        """``address`` (text or ipaddress object) is configured here; compared as an address."""
        wanted = ipaddress.ip_address(address)
        return any(a.ip == wanted for a in self.addresses)


def interfaces(namespace: str = "", name: str | None = None) -> list[Interface]:
    """Blocking: every link of ``namespace`` (or only ``name``) with its addresses."""
    with iproute(namespace) as ipr:
        links = ipr.get_links()
        addresses: dict[int, list] = {}
        for msg in ipr.get_addr():
            local = msg.get("local") or msg.get("address")
            if local:
                addresses.setdefault(msg["index"], []).append(
                    ipaddress.ip_interface(f"{local}/{msg['prefixlen']}"))
    result = []
    for msg in links:
        ifname = msg.get("ifname") or ""
        if name is not None and ifname != name:
            continue
        result.append(Interface(ifname, msg["index"], bool(msg["flags"] & IFF_LOOPBACK),
                                tuple(addresses.get(msg["index"], ()))))
    return result


def default_route_devices(namespace: str = "", version: int = 4) -> list[str]:
    """Blocking: the interface names the default routes of IP ``version`` leave through."""
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    with iproute(namespace) as ipr:
        names = {msg["index"]: msg.get("ifname") for msg in ipr.get_links()}
        oifs = [msg.get("oif") for msg in ipr.get_default_routes(family=family)]
    return [names[oif] for oif in oifs if oif in names]


def remove_address(namespace: str, ifname: str, address: str, prefixlen: int | None = None) -> bool:
    """Blocking: delete ``address/prefixlen`` (default: a host prefix) from ``ifname``; False if absent."""
    NetlinkError = pyroute2lean.part("netlink.exceptions").NetlinkError  # noqa: N806 - the class

    ip = ipaddress.ip_address(address)
    prefixlen = ip.max_prefixlen if prefixlen is None else prefixlen
    with iproute(namespace) as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            return False
        try:
            ipr.addr("del", index=index[0], address=str(ip), prefixlen=prefixlen)
        except NetlinkError as e:
            if e.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return False
            raise
    return True


def link_counters(links) -> dict:
    """``{ifname: (ifindex, tx_bytes, rx_bytes)}`` from an RTM_NEWLINK dump."""
    result = {}
    for link in links:
        name = link.get_attr("IFLA_IFNAME")
        stats = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
        if name and stats:
            result[name] = (link["index"], stats["tx_bytes"], stats["rx_bytes"])
    return result


class NetlinkQueries:
    """The reactor-side face of this module: each call runs in a thread pool, returns a Deferred.

    A query opens one netlink socket (in a named namespace: one short-lived
    thread's ``setns``), dumps, closes: milliseconds, bounded by the size of
    the dump, never by the network. ``threadpool`` defaults to the reactor's.
    """

    def __init__(self, reactor, threadpool=None):
        self.reactor = reactor
        self.threadpool = threadpool

    def run(self, namespace: str, fn, *args, **kwargs):
        """``in_namespace(namespace, fn, ...)`` off the reactor thread: Deferred of its result."""
        if self.threadpool is None:
            self.threadpool = self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, self.threadpool, in_namespace, namespace, fn, *args, **kwargs)

    def _blocking(self, fn, *args):
        if self.threadpool is None:
            self.threadpool = self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, self.threadpool, fn, *args)

    def interfaces(self, namespace: str, name: str | None = None):
        return self._blocking(interfaces, namespace, name)

    def default_route_devices(self, namespace: str, version: int):
        return self._blocking(default_route_devices, namespace, version)

    def remove_address(self, namespace: str, ifname: str, address: str):
        return self._blocking(remove_address, namespace, ifname, address)
