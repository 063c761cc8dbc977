"""What a plug may change on one link, read before it starts and put back when it fails.

``LinkState.read`` takes the MTU, the up/down state, the addresses (IPv6
link-local ones are the kernel's own) and the routes of the main table
through the link that are not the kernel's (prefix routes come and go with
their addresses); ``restore`` puts them back, comparing what is there now
with what was there, so it also repairs what the kernel did on its own (the
routes it flushes when a link loses its last IPv4 address or goes down, the
IPv6 addresses it drops on a link that goes down). Blocking; run by
``Netlink`` in a thread, best effort: a step that fails is logged and the
others go on.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from twisted.logger import Logger

log = Logger()

IFF_UP = 0x1
IFA_F_NODAD = 0x02
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTPROT_KERNEL = 2
RTPROT_RA = 9


def address_of(msg):
    """An RTM_NEWADDR message as an ``ipaddress`` interface (address/prefixlen)."""
    ip = ipaddress.ip_address(msg.get("address"))
    return ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}")


@dataclass(frozen=True)
class RouteKey:
    family: int
    dst: str | None  # None: the default route
    dst_len: int
    gateway: str | None
    priority: int | None
    proto: int

    def args(self) -> dict:
        """Keyword arguments of ``IPRoute.route`` for this route."""
        default = "::" if self.family == socket.AF_INET6 else "0.0.0.0"
        args = {"family": self.family, "dst": f"{self.dst or default}/{self.dst_len}", "table": RT_TABLE_MAIN,
                "proto": self.proto}
        if self.gateway:
            args["gateway"] = self.gateway
        if self.priority is not None:
            args["priority"] = self.priority
        return args


def addresses(ipr, index: int) -> set:
    """The addresses of link ``index`` (IPv6 link-local left out)."""
    result = set()
    for msg in ipr.get_addr(index=index):
        iface = address_of(msg)
        if not (iface.version == 6 and iface.ip.is_link_local):
            result.add(iface)
    return result


def routes(ipr, index: int) -> set:
    """The unicast routes of the main table through link ``index`` that are not the kernel's."""
    result = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
            if (msg.get("oif") != index or msg.get("table") != RT_TABLE_MAIN or msg["type"] != RTN_UNICAST
                    or msg["proto"] in (RTPROT_KERNEL, RTPROT_RA)):
                continue
            result.add(RouteKey(family, msg.get("dst"), msg["dst_len"], msg.get("gateway"), msg.get("priority"),
                                msg["proto"]))
    return result


@dataclass(frozen=True)
class LinkState:
    mtu: int | None
    up: bool
    addresses: frozenset
    routes: frozenset

    @classmethod
    def read(cls, ipr, index: int) -> "LinkState":
        (msg,) = ipr.get_links(index)
        return cls(msg.get("mtu"), bool(msg["flags"] & IFF_UP), frozenset(addresses(ipr, index)),
                   frozenset(routes(ipr, index)))

    def restore(self, ipr, index: int, name: str) -> None:
        """Put link ``index`` back to this state (best effort; failures are logged)."""
        now = LinkState.read(ipr, index)

        def attempt(what: str, fn, *args, **kwargs):
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - best effort, the plug's own error matters
                log.warn("rolling back {name}: cannot {what}: {error}", name=name, what=what, error=e)

        if self.mtu is not None and now.mtu != self.mtu:
            attempt(f"restore MTU {self.mtu}", ipr.link, "set", index=index, mtu=self.mtu)
        if now.up != self.up:
            attempt("restore the link state", ipr.link, "set", index=index, state="up" if self.up else "down")
        current = addresses(ipr, index)  # after a state change: the kernel may have dropped some
        for iface in sorted(current - self.addresses, key=str):
            attempt(f"remove {iface}", ipr.addr, "del", index=index, address=str(iface.ip),
                    prefixlen=iface.network.prefixlen)
        for iface in sorted(self.addresses - current, key=str):
            extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
            attempt(f"restore {iface}", ipr.addr, "add", index=index, address=str(iface.ip),
                    prefixlen=iface.network.prefixlen, **extra)
        current = routes(ipr, index)
        for route in sorted(current - self.routes, key=str):
            attempt(f"remove route {route.args()['dst']}", ipr.route, "del", oif=index, **route.args())
        for route in sorted(self.routes - current, key=str):
            attempt(f"restore route {route.args()['dst']}", ipr.route, "add", oif=index, **route.args())
