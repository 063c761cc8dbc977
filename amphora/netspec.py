"""What the network domain is asked to do, and the rules every address obeys.

``PlugSpec`` and ``Route`` are what one plugged interface should carry: the
unit the plugger (amphora.network) applies and persists. ``address_problem``
is the one rule for addresses: the same for VIPs, port addresses, next hops,
gateways, the topology's ``ha_ip`` and its VRRP peers. The field parsers
below turn one raw value into a checked one, or raise ``InvalidRequest``
naming the field; they are shared by the request parsers
(amphora.api.requests) and by the state the plugger reads back from
``plugged.json`` (a file on disk is input too). Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from amphora.errors import InvalidRequest

MIN_MTU = 68
MIN_MTU_IPV6 = 1280
MAX_MTU = 65535

_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_LIMITED_BROADCAST = ipaddress.ip_address("255.255.255.255")
DEFAULT_ROUTE = {4: "0.0.0.0/0", 6: "::/0"}


# -- the domain specs ---------------------------------------------------------

@dataclass(frozen=True)
class Route:
    destination: str  # network in CIDR form
    nexthop: str

    def to_json(self) -> dict:
        return {"destination": self.destination, "nexthop": self.nexthop}


def host_address(ip: str) -> str:
    """``ip`` as a host address: /32 or /128."""
    return f"{ip}/{ipaddress.ip_address(ip).max_prefixlen}"


@dataclass(frozen=True)
class PlugSpec:
    """What one interface should carry: the unit that is applied and persisted.

    ``addresses`` are always configured (port addresses, the VRRP address);
    ``vips`` are the load balancer's addresses. A VIP that is no port address
    is configured as a host address (``configured``) unless keepalived owns the
    VIPs (ACTIVE-STANDBY: it adds them on the MASTER alone). ``links`` are
    subnets reached on the link without an address of their own (an additional
    VIP's subnet); ``routes`` may hold default routes of further address families.
    """

    mac: str | None = None
    addresses: tuple[str, ...] = ()  # "ip/prefixlen"
    vips: tuple[str, ...] = ()
    mtu: int | None = None
    gateway: str | None = None
    routes: tuple[Route, ...] = ()
    links: tuple[str, ...] = ()  # subnets in CIDR form

    @classmethod
    def host_vip(cls, vip: str) -> "PlugSpec":
        """``vip`` as a host address (/32 or /128) on the newly attached link: a plug without a body."""
        return cls(addresses=(host_address(vip),), vips=(vip,))

    def vip_host_addresses(self) -> tuple[str, ...]:
        """The VIPs that are no port address, as host addresses: what the VIP owner adds."""
        on_port = {a.split("/")[0] for a in self.addresses}
        return tuple(host_address(v) for v in self.vips if v not in on_port)

    def configured(self, keepalived_owns_vips: bool) -> "PlugSpec":
        """What goes on the interface: the addresses, plus the VIPs as host addresses unless
        keepalived owns them. Not persisted: the topology decides at every apply."""
        if keepalived_owns_vips:
            return self
        return replace(self, addresses=self.addresses + self.vip_host_addresses())

    def merged(self, other: "PlugSpec") -> "PlugSpec":
        """This spec plus ``other``'s additions; ``other`` wins on MTU and gateway.

        An address already present with another prefix length is replaced
        (nothing is ever duplicated).
        """
        addresses = {a.split("/")[0]: a for a in self.addresses}
        for a in other.addresses:
            addresses[a.split("/")[0]] = a
        routes = {r.destination: r for r in self.routes}
        for r in other.routes:
            routes[r.destination] = r
        return PlugSpec(
            mac=self.mac or other.mac,
            addresses=tuple(addresses.values()),
            vips=self.vips + tuple(v for v in other.vips if v not in self.vips),
            mtu=other.mtu if other.mtu is not None else self.mtu,
            gateway=other.gateway or self.gateway,
            routes=tuple(routes.values()),
            links=self.links + tuple(n for n in other.links if n not in self.links),
        )

    def to_json(self, name: str) -> dict:
        doc = {
            "mac": self.mac,
            "name": name,
            "vips": list(self.vips),
            "addresses": list(self.addresses),
            "mtu": self.mtu,
            "gateway": self.gateway,
            "host_routes": [r.to_json() for r in self.routes],
        }
        if self.links:
            doc["links"] = list(self.links)
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "PlugSpec":
        """From plugged.json; re-validated, because a file on disk is input too."""
        mac = parse_mac(doc.get("mac"), "mac")
        addresses = []
        for i, cidr in enumerate(doc.get("addresses") or ()):
            iface = parse_interface(cidr, f"addresses[{i}]")
            problem = address_problem(iface.ip)
            if problem:  # e.g. recorded by an agent that did not refuse it yet
                raise InvalidRequest(f"addresses[{i}]: {iface.ip} is {problem}")
            addresses.append(f"{iface.ip}/{iface.network.prefixlen}")
        vips = tuple(str(parse_ip(v, f"vips[{i}]", usable=True)) for i, v in enumerate(doc.get("vips") or ()))
        mtu = parse_mtu(doc.get("mtu"), "mtu") if doc.get("mtu") is not None else None
        gateway = (str(parse_ip(doc["gateway"], "gateway", usable=True, link_local=True))
                   if doc.get("gateway") else None)
        routes = tuple(parse_routes(doc.get("host_routes") or [], "host_routes", None))
        links = tuple(str(parse_cidr(n, f"links[{i}]")) for i, n in enumerate(doc.get("links") or ()))
        return cls(mac=mac, addresses=tuple(addresses), vips=vips, mtu=mtu, gateway=gateway, routes=routes,
                   links=links)


# -- the one rule for addresses -------------------------------------------------

def address_problem(address, link_local: bool = False) -> str | None:
    """Why ``address`` cannot be configured on a port or used as a next hop (None: it can).

    Refused everywhere (VIPs, vrrp_ip, fixed_ips, gateways, next hops, ha_ip,
    VRRP peers): the unspecified address and the rest of 0.0.0.0/8 ("this
    network", never a destination), loopback (127.0.0.0/8, ::1: the kernel
    keeps those on lo), multicast (224.0.0.0/4, ff00::/8: no host address),
    the limited broadcast 255.255.255.255, and IPv4-mapped IPv6
    (::ffff:a.b.c.d: the IPv4 address is meant). Link-local (169.254.0.0/16,
    fe80::/10) is refused for addresses put on a port -- the kernel makes its
    own fe80:: address, 169.254.0.0/16 is where cloud metadata lives, and
    neither is reachable by a VIP's clients -- but allowed with ``link_local``
    for next hops, where an IPv6 router's fe80:: address is the normal case.
    Other reserved space (240.0.0.0/4) is left to the controller: Linux
    configures it like any unicast address.
    """
    if address.version == 6 and address.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.version == 4 and address in _THIS_NETWORK:
        return "in 0.0.0.0/8 (this network)"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address == _LIMITED_BROADCAST:
        return "the broadcast address"
    if address.is_link_local and not link_local:
        return "a link-local address"
    return None


def subnet_problem(address, subnet) -> str | None:
    """An IPv4 address that is its subnet's network or broadcast address (not for /31, /32)."""
    if address.version != 4 or subnet is None or subnet.prefixlen > 30:
        return None
    if address == subnet.network_address:
        return f"the network address of subnet_cidr {subnet}"
    if address == subnet.broadcast_address:
        return f"the broadcast address of subnet_cidr {subnet}"
    return None


# -- field parsers ----------------------------------------------------------------

def parse_mac(raw, name: str = "mac_address") -> str:
    if not isinstance(raw, str) or not _MAC.fullmatch(raw.lower()):
        raise InvalidRequest(f"{name}: expected a MAC address like fa:16:3e:00:00:01, got {raw!r}")
    return raw.lower()


def parse_ip(raw, name: str, usable: bool = False, link_local: bool = False):
    """An IP address from field ``name``; with ``usable``, one ``address_problem`` accepts."""
    if not isinstance(raw, str):
        raise InvalidRequest(f"{name}: expected an IP address string, got {raw!r}")
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: not an IP address: {raw!r}") from None
    if usable:
        if getattr(address, "scope_id", None):
            raise InvalidRequest(f"{name}: an address with a scope (%zone) is not accepted: {raw!r}")
        problem = address_problem(address, link_local)
        if problem:
            raise InvalidRequest(f"{name}: {address} is {problem}")
    return address


def parse_cidr(raw, name: str):
    """A network in CIDR form (host bits allowed: 10.0.0.5/24 is 10.0.0.0/24)."""
    if not isinstance(raw, str) or "/" not in raw:
        raise InvalidRequest(f"{name}: expected a network in CIDR form like 203.0.113.0/24, got {raw!r}")
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise InvalidRequest(f"{name}: not a network in CIDR form: {raw!r}") from None


def parse_interface(raw, name: str):
    """An address with its prefix length (``10.0.0.5/24``)."""
    if not isinstance(raw, str) or "/" not in raw:
        raise InvalidRequest(f"{name}: expected address/prefixlen, got {raw!r}")
    try:
        return ipaddress.ip_interface(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: not an address/prefixlen: {raw!r}") from None


def parse_mtu(raw, name: str = "mtu", ipv6: bool = False) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise InvalidRequest(f"{name}: expected an integer, got {raw!r}")
    low = MIN_MTU_IPV6 if ipv6 else MIN_MTU
    if not low <= raw <= MAX_MTU:
        raise InvalidRequest(f"{name}: must be between {low} and {MAX_MTU}{' for IPv6' if ipv6 else ''}, "
                             f"got {raw}")
    return raw


def parse_routes(raw, name: str, version: int | None) -> list[Route]:
    """A list of ``{destination, nexthop}``; ``version`` (4, 6 or None) is the subnet's."""
    if not isinstance(raw, list):
        raise InvalidRequest(f"{name}: expected a list of {{destination, nexthop}} objects")
    routes = []
    for i, item in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: expected an object with destination and nexthop")
        destination = parse_cidr(item.get("destination"), f"{where}.destination")
        nexthop = parse_ip(item.get("nexthop"), f"{where}.nexthop", usable=True, link_local=True)
        if destination.version != nexthop.version:
            raise InvalidRequest(f"{where}.nexthop: IPv{nexthop.version} next hop for an "
                                 f"IPv{destination.version} destination")
        if version is not None and nexthop.version != version:
            raise InvalidRequest(f"{where}: IPv{nexthop.version} route on an IPv{version} subnet")
        routes.append(Route(str(destination), str(nexthop)))
    return routes
