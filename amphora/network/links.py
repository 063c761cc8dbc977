"""Which interface to plug (``choose_interface``: a pure function over ``Link``
records) and ``Netlink``, the plugging operations on top of the netlink
adapter (``amphora.netlink``): blocking, run in a thread by the plugger.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, replace

from twisted.logger import Logger

from amphora import pyroute2lean
from amphora.errors import NoSuitableInterface
from amphora.netlink import (IFF_LOOPBACK, IFF_UP, NetlinkFailure, allow_nonlocal_bind, create_namespace,
                             iproute, namespace_path)
from amphora.network.linkstate import IFA_F_NODAD, LinkState, address_of
from amphora.netspec import PlugSpec

log = Logger()

RT_SCOPE_LINK = 253

ARPHRD_ETHER = 1
# Interfaces a Neutron port can appear as: a NIC (virtio, SR-IOV VF: no link
# kind) or a veth (containers, tests). Bridges, bonds, VLANs, dummies, ifb and
# tunnel fallback devices (tunl0, sit0: not Ethernet anyway) are never ports,
# even when they are down.
PORT_KINDS = (None, "veth")

IFNAMSIZ = 16  # with the terminating NUL: names have at most 15 characters


# -- interface selection --------------------------------------------------------

@dataclass(frozen=True)
class Link:
    """What selection needs to know about one interface (from an RTM_NEWLINK dump)."""

    index: int
    name: str
    mac: str
    up: bool = False
    loopback: bool = False
    ether: bool = True
    kind: str | None = None
    master: int | None = None
    namespace: str = ""  # "" = the agent's own namespace

    def describe(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.name} ({self.mac}){where}"


def is_candidate(link: Link, plugged_macs) -> bool:
    """A newly attached port: down, an Ethernet NIC or veth, not enslaved, not plugged yet."""
    return (not link.up and not link.loopback and link.ether and link.kind in PORT_KINDS
            and link.master is None and link.mac not in plugged_macs)


def choose_interface(links: list[Link], plugged_macs, namespace: str = "", mac: str | None = None) -> Link:
    """The link to plug, or 404.

    With a MAC the choice is exact (the link's state does not matter). Without
    one, the single candidate; candidates already in the target namespace win
    over those still in the agent's own namespace (someone put them there for
    us), and several candidates with nothing to choose by is a 404 naming them.
    """
    if mac is not None:
        matches = [l for l in links if l.mac == mac and not l.loopback]
        if not matches:
            raise NoSuitableInterface(f"no interface with MAC address {mac}")
        matches.sort(key=lambda l: l.namespace != namespace)  # the one in the target namespace first
        return matches[0]
    candidates = [l for l in links if is_candidate(l, plugged_macs)]
    if namespace:
        inside = [l for l in candidates if l.namespace == namespace]
        candidates = inside or candidates
    if not candidates:
        raise NoSuitableInterface("no interface is down and unplugged")
    if len(candidates) > 1:
        names = ", ".join(l.describe() for l in sorted(candidates, key=lambda l: (l.namespace, l.name)))
        raise NoSuitableInterface(f"several candidate interfaces and no mac_address to choose by: {names}")
    return candidates[0]


def link_from_msg(msg, namespace: str) -> Link:
    flags = msg["flags"]
    return Link(
        index=msg["index"],
        name=msg.get("ifname"),
        mac=(msg.get("address") or "").lower(),
        up=bool(flags & IFF_UP),
        loopback=bool(flags & IFF_LOOPBACK),
        ether=msg["ifi_type"] == ARPHRD_ETHER,
        kind=msg.get(("linkinfo", "kind")),
        master=msg.get("master"),
        namespace=namespace,
    )


def free_name(name: str, taken) -> str:
    """A name like ``name`` not in ``taken``: eth1 -> eth2 (the lowest free ethN, from 1)."""
    match = re.fullmatch(r"(.*?)(\d+)", name)
    prefix = match.group(1) if match and match.group(1) else name
    for n in range(1, 100000):
        candidate = prefix[:IFNAMSIZ - 1 - len(str(n))] + str(n)
        if candidate not in taken:
            return candidate
    raise ValueError(f"no free interface name like {name}")  # pragma: no cover - 100000 interfaces


class Netlink:
    """Blocking pyroute2 operations for one agent (own namespace + ``namespace``).

    ``home`` names the namespace where new ports appear and the agent lives
    ("" = the calling process's own); tests point it at a namespace of their
    own so they never touch the host's interfaces. Link records keep saying
    "" for it.
    """

    def __init__(self, namespace: str = "", home: str = ""):
        self.namespace = namespace
        self.home = home

    def _ns(self, tag: str) -> str:
        return tag or self.home

    def _step(self, step: str, fn, *args, **kwargs):
        NetlinkError = pyroute2lean.part("netlink.exceptions").NetlinkError  # noqa: N806 - the class

        try:
            return fn(*args, **kwargs)
        except (NetlinkError, OSError) as e:
            raise NetlinkFailure(step, e) from None

    def ensure_namespace(self) -> None:
        """The target namespace exists, its loopback is up (haproxy health checks, stats) and
        non-local binds are allowed in it (``allow_nonlocal_bind``)."""
        if not self.namespace:
            return
        if self._step(f"creating namespace {self.namespace}", create_namespace, self.namespace):
            log.info("created network namespace {namespace}", namespace=self.namespace)
        with iproute(self._ns(self.namespace)) as ipr:
            for msg in ipr.get_links():
                if msg["flags"] & IFF_LOOPBACK and not msg["flags"] & IFF_UP:
                    self._step("bringing up lo", ipr.link, "set", index=msg["index"], state="up")
        for path in self._step(f"allowing non-local binds in namespace {self.namespace}",
                               allow_nonlocal_bind, self.namespace):
            log.info("network namespace {namespace}: {path} = 1 (listeners bind VIPs they do not hold yet)",
                     namespace=self.namespace, path=path)

    def links(self) -> list[Link]:
        """Every link of the agent's namespace and of the target namespace."""
        result = []
        for ns in dict.fromkeys(("", self.namespace)):
            with iproute(self._ns(ns)) as ipr:
                result.extend(link_from_msg(m, ns) for m in self._step("listing links", ipr.get_links))
        return result

    def find(self, mac: str) -> Link | None:
        matches = [l for l in self.links() if l.mac == mac and not l.loopback]
        matches.sort(key=lambda l: l.namespace != self.namespace)
        return matches[0] if matches else None

    def apply(self, link: Link, spec: PlugSpec) -> Link:
        """Move ``link`` into the target namespace if needed and configure it per ``spec``.

        Idempotent: addresses already present (compared as addresses) are kept,
        routes are replaced. On any failure the link is put back exactly as it
        was (namespace, name, MTU, state, addresses, routes: ``LinkState``) and
        the error is raised.
        """
        with iproute(self._ns(link.namespace)) as ipr:
            before = self._step(f"reading the state of {link.name}", LinkState.read, ipr, link.index)
        original = link
        try:
            if link.namespace != self.namespace:
                link = self._move(link)
            with iproute(self._ns(self.namespace)) as ipr:
                self._configure(ipr, link, spec)
        except Exception:
            self._roll_back(before, original)
            raise
        return replace(link, up=True)

    def _configure(self, ipr, link: Link, spec: PlugSpec) -> None:
        if spec.mtu is not None:
            self._step(f"setting MTU {spec.mtu} on {link.name}", ipr.link, "set", index=link.index, mtu=spec.mtu)
        present: dict = {}
        for msg in self._step(f"listing addresses of {link.name}", ipr.get_addr, index=link.index):
            iface = address_of(msg)  # as an address: the kernel writes ::3:1 as ::0.3.0.1
            present.setdefault(iface.ip, []).append(iface.network.prefixlen)
        for cidr in spec.addresses:
            iface = ipaddress.ip_interface(cidr)
            ip, prefixlen = str(iface.ip), iface.network.prefixlen
            if prefixlen in present.get(iface.ip, ()):
                continue
            for other in present.get(iface.ip, ()):  # same address, other prefix: replace it
                self._step(f"removing {ip}/{other} from {link.name}", ipr.addr, "del",
                           index=link.index, address=ip, prefixlen=other)
            extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
            # NODAD: the VIP belongs to this port (Neutron guarantees it); a
            # tentative address would make haproxy's bind fail for a second or two.
            self._step(f"adding address {cidr} on {link.name}", ipr.addr, "add",
                       index=link.index, address=ip, prefixlen=prefixlen, **extra)
        if not link.up:
            self._step(f"bringing up {link.name}", ipr.link, "set", index=link.index, state="up")
        on_port = {ipaddress.ip_interface(a).network for a in spec.addresses}
        for subnet in spec.links:  # an additional VIP's subnet, reached on this link
            if ipaddress.ip_network(subnet) in on_port:
                continue  # the kernel's own prefix route is there: keep it (and its src)
            family = socket.AF_INET6 if ":" in subnet else socket.AF_INET
            self._step(f"adding on-link route {subnet}", ipr.route, "replace", dst=subnet, oif=link.index,
                       family=family, scope=RT_SCOPE_LINK)
        if spec.gateway:
            family = socket.AF_INET6 if ":" in spec.gateway else socket.AF_INET
            dst = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
            self._step(f"setting default route via {spec.gateway}", ipr.route, "replace",
                       dst=dst, gateway=spec.gateway, oif=link.index, family=family)
        for route in spec.routes:
            family = socket.AF_INET6 if ":" in route.nexthop else socket.AF_INET
            self._step(f"adding route {route.destination} via {route.nexthop}", ipr.route,
                       "replace", dst=route.destination, gateway=route.nexthop, oif=link.index,
                       family=family)

    def withdraw(self, link: Link, addresses) -> None:
        """Remove ``addresses`` ("ip/prefixlen") from ``link`` where present: the VIP host
        addresses the agent configured, when keepalived takes the VIPs over."""
        with iproute(self._ns(self.namespace)) as ipr:
            present = {address_of(m) for m in self._step(f"listing addresses of {link.name}", ipr.get_addr,
                                                         index=link.index)}
            for cidr in addresses:
                iface = ipaddress.ip_interface(cidr)
                if iface in present:
                    self._step(f"removing {cidr} from {link.name}", ipr.addr, "del", index=link.index,
                               address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def _roll_back(self, before: LinkState, original: Link) -> None:
        """Best effort: the link back where and as it was (``original``'s namespace and name, in
        state ``before``); never raises, the plug's own error matters."""
        mac = original.mac
        try:
            where = self.find(mac)
            if where is None:
                log.warn("rolling back: interface {mac} is gone", mac=mac)
                return
            if where.namespace != original.namespace:
                where = self._move(where, original.namespace, original.name)
            with iproute(self._ns(where.namespace)) as ipr:
                before.restore(ipr, where.index, where.name)
        except Exception as e:  # noqa: BLE001
            log.warn("rolling back interface {mac}: {error}", mac=mac, error=e)

    def _move(self, link: Link, target: str | None = None, name: str | None = None) -> Link:
        """Move ``link`` into namespace ``target`` (default: the target one); the moved Link.

        The kernel names a hot-plugged NIC with the lowest free ``ethN`` of the
        namespace it appears in, so the second port is often ``eth1`` again
        while the first ``eth1`` already sits in the target namespace: such a
        port is renamed to the next free name there as it moves (as Octavia does).
        ``name`` asks for a name (a rollback moving a port back under its own).
        """
        target = self.namespace if target is None else target
        label = target or "of the agent"
        with iproute(self._ns(target)) as ipr:
            taken = {m.get("ifname") for m in self._step("listing links", ipr.get_links)}
        wanted = name or link.name
        name = wanted if wanted not in taken else free_name(wanted, taken)
        path = namespace_path(self._ns(target)) if self._ns(target) else "/proc/self/ns/net"
        fd = self._step(f"opening namespace {label}", os.open, path, os.O_RDONLY)
        try:
            with iproute(self._ns(link.namespace)) as ipr:
                rename = {"ifname": name} if name != link.name else {}
                self._step(f"moving {link.name} into namespace {label}", ipr.link, "set",
                           index=link.index, net_ns_fd=fd, **rename)
        finally:
            os.close(fd)
        with iproute(self._ns(target)) as ipr:
            for msg in ipr.get_links():
                moved = link_from_msg(msg, target)
                if moved.mac == link.mac and not moved.loopback:
                    return moved
        raise NetlinkFailure(f"moving {link.name} into namespace {label}",
                             OSError(errno.ENODEV, "interface not found after the move"))
