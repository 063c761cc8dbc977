"""What a plug request asks for: ``PlugSpec`` (and ``Route``), and the validation
of what the client sent (``parse_vip`` / ``parse_vip_body`` / ``parse_network_body``:
400 naming the field); pure functions.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from amphora.errors import InvalidRequest

MIN_MTU = 68
MIN_MTU_IPV6 = 1280
MAX_MTU = 65535

_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")

# -- validation (the edge) ----------------------------------------------------

@dataclass(frozen=True)
class Route:
    destination: str  # network in CIDR form
    nexthop: str

    def to_json(self) -> dict:
        return {"destination": self.destination, "nexthop": self.nexthop}


@dataclass(frozen=True)
class PlugSpec:
    """What one interface should carry: the unit that is applied and persisted."""

    mac: str | None = None
    addresses: tuple[str, ...] = ()  # "ip/prefixlen"
    vips: tuple[str, ...] = ()
    mtu: int | None = None
    gateway: str | None = None
    routes: tuple[Route, ...] = ()

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
        )

    def to_json(self, name: str) -> dict:
        return {
            "mac": self.mac,
            "name": name,
            "vips": list(self.vips),
            "addresses": list(self.addresses),
            "mtu": self.mtu,
            "gateway": self.gateway,
            "host_routes": [r.to_json() for r in self.routes],
        }

    @classmethod
    def from_json(cls, doc: dict) -> "PlugSpec":
        """From plugged.json; re-validated, because a file on disk is input too."""
        mac = parse_mac(doc.get("mac"), "mac")
        addresses = []
        for i, cidr in enumerate(doc.get("addresses") or ()):
            iface = _interface(cidr, f"addresses[{i}]")
            problem = address_problem(iface.ip)
            if problem:  # e.g. recorded by an agent that did not refuse it yet
                raise InvalidRequest(f"addresses[{i}]: {iface.ip} is {problem}")
            addresses.append(f"{iface.ip}/{iface.network.prefixlen}")
        vips = tuple(str(_ip(v, f"vips[{i}]", usable=True)) for i, v in enumerate(doc.get("vips") or ()))
        mtu = _mtu(doc.get("mtu"), "mtu") if doc.get("mtu") is not None else None
        gateway = (str(_ip(doc["gateway"], "gateway", usable=True, link_local=True))
                   if doc.get("gateway") else None)
        routes = tuple(_routes(doc.get("host_routes") or [], "host_routes", None))
        return cls(mac=mac, addresses=tuple(addresses), vips=vips, mtu=mtu, gateway=gateway, routes=routes)


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_LIMITED_BROADCAST = ipaddress.ip_address("255.255.255.255")


def address_problem(address, link_local: bool = False) -> str | None:
    """Why ``address`` cannot be configured on a port or used as a next hop (None: it can).

    Refused everywhere (VIPs, vrrp_ip, fixed_ips, gateways, next hops): the
    unspecified address and the rest of 0.0.0.0/8 ("this network", never a
    destination), loopback (127.0.0.0/8, ::1: the kernel keeps those on lo),
    multicast (224.0.0.0/4, ff00::/8: no host address), the limited broadcast
    255.255.255.255, and IPv4-mapped IPv6 (::ffff:a.b.c.d: the IPv4 address is
    meant). Link-local (169.254.0.0/16, fe80::/10) is refused for addresses put
    on a port -- the kernel makes its own fe80:: address, 169.254.0.0/16 is
    where cloud metadata lives, and neither is reachable by a VIP's clients --
    but allowed with ``link_local`` for next hops, where an IPv6 router's
    fe80:: address is the normal case. Other reserved space (240.0.0.0/4) is
    left to the controller: Linux configures it like any unicast address.
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


def _subnet_problem(address, subnet) -> str | None:
    """An IPv4 address that is its subnet's network or broadcast address (not for /31, /32)."""
    if address.version != 4 or subnet is None or subnet.prefixlen > 30:
        return None
    if address == subnet.network_address:
        return f"the network address of subnet_cidr {subnet}"
    if address == subnet.broadcast_address:
        return f"the broadcast address of subnet_cidr {subnet}"
    return None


def parse_vip(raw: str) -> str:
    """The VIP from the URL, normalised; 400 "Invalid VIP" unless a usable unicast address.

    See ``address_problem`` for what is refused and why.
    """
    try:
        address = ipaddress.ip_address(raw)
    except (ValueError, TypeError):
        address = None
    if address is None or getattr(address, "scope_id", None):  # fe80::1%eth0 is no VIP
        raise InvalidRequest(f"{raw!r} is not an IPv4 or IPv6 address", message="Invalid VIP")
    problem = address_problem(address)
    if problem:
        raise InvalidRequest(f"{address} is {problem}; a VIP must be a unicast address its clients "
                             "can reach", message="Invalid VIP")
    return str(address)


def parse_mac(raw, name: str = "mac_address") -> str:
    if not isinstance(raw, str) or not _MAC.fullmatch(raw.lower()):
        raise InvalidRequest(f"{name}: expected a MAC address like fa:16:3e:00:00:01, got {raw!r}")
    return raw.lower()


def _ip(raw, name: str, usable: bool = False, link_local: bool = False):
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


def _network(raw, name: str):
    if not isinstance(raw, str) or "/" not in raw:
        raise InvalidRequest(f"{name}: expected a network in CIDR form like 203.0.113.0/24, got {raw!r}")
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise InvalidRequest(f"{name}: not a network in CIDR form: {raw!r}") from None


def _interface(raw, name: str):
    if not isinstance(raw, str) or "/" not in raw:
        raise InvalidRequest(f"{name}: expected address/prefixlen, got {raw!r}")
    try:
        return ipaddress.ip_interface(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: not an address/prefixlen: {raw!r}") from None


def _mtu(raw, name: str = "mtu", ipv6: bool = False) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise InvalidRequest(f"{name}: expected an integer, got {raw!r}")
    low = MIN_MTU_IPV6 if ipv6 else MIN_MTU
    if not low <= raw <= MAX_MTU:
        raise InvalidRequest(f"{name}: must be between {low} and {MAX_MTU}{' for IPv6' if ipv6 else ''}, "
                             f"got {raw}")
    return raw


def _routes(raw, name: str, version: int | None) -> list[Route]:
    if not isinstance(raw, list):
        raise InvalidRequest(f"{name}: expected a list of {{destination, nexthop}} objects")
    routes = []
    for i, item in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: expected an object with destination and nexthop")
        destination = _network(item.get("destination"), f"{where}.destination")
        nexthop = _ip(item.get("nexthop"), f"{where}.nexthop", usable=True, link_local=True)
        if destination.version != nexthop.version:
            raise InvalidRequest(f"{where}.nexthop: IPv{nexthop.version} next hop for an "
                                 f"IPv{destination.version} destination")
        if version is not None and nexthop.version != version:
            raise InvalidRequest(f"{where}: IPv{nexthop.version} route on an IPv{version} subnet")
        routes.append(Route(str(destination), str(nexthop)))
    return routes


def _body(body, known: tuple[str, ...]) -> dict:
    # Unknown keys are ignored on purpose: newer controllers send more (vrrp_ip,
    # additional_vips, is_sriov, ...) and must not be refused for it.
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return {k: body[k] for k in known if body.get(k) is not None}


def parse_vip_body(vip: str, body: dict | None) -> PlugSpec:
    """The optional plug-VIP body -> what to apply; 400 naming the field when malformed.

    Without a body the VIP is a host address (/32 or /128) and the interface is
    the one newly attached link. With ``vrrp_ip`` (ACTIVE-STANDBY, as Octavia
    sends it) the interface carries that address instead and the VIP is only
    recorded: keepalived adds it on the MASTER alone -- a VIP configured
    statically on both amphorae would answer ARP/ND from both.
    """
    b = _body(body, ("mac_address", "subnet_cidr", "gateway", "mtu", "host_routes", "vrrp_ip"))
    vip = parse_vip(vip)
    address = ipaddress.ip_address(vip)
    prefixlen = address.max_prefixlen
    mac = parse_mac(b["mac_address"]) if "mac_address" in b else None
    subnet = None
    if "subnet_cidr" in b:
        subnet = _network(b["subnet_cidr"], "subnet_cidr")
        if subnet.version != address.version:
            raise InvalidRequest(f"subnet_cidr: IPv{subnet.version} subnet for an IPv{address.version} VIP")
        if address not in subnet:
            raise InvalidRequest(f"subnet_cidr: VIP {vip} is not in {subnet}")
        problem = _subnet_problem(address, subnet)
        if problem:
            raise InvalidRequest(f"{vip} is {problem}", message="Invalid VIP")
        prefixlen = subnet.prefixlen
    gateway = None
    if "gateway" in b:
        # link-local passes here and is then refused as not in subnet_cidr (which cannot be link-local)
        gw = _ip(b["gateway"], "gateway", usable=True, link_local=True)
        if gw.version != address.version:
            raise InvalidRequest(f"gateway: IPv{gw.version} gateway for an IPv{address.version} VIP")
        if subnet is None:
            raise InvalidRequest("gateway: needs subnet_cidr (the gateway must be on the VIP's subnet)")
        if gw not in subnet:
            raise InvalidRequest(f"gateway: {gw} is not in subnet_cidr {subnet}")
        problem = _subnet_problem(gw, subnet)
        if problem:
            raise InvalidRequest(f"gateway: {gw} is {problem}")
        gateway = str(gw)
    mtu = _mtu(b["mtu"], "mtu", address.version == 6) if "mtu" in b else None
    routes = _routes(b.get("host_routes", []), "host_routes", address.version)
    on_link = address
    if "vrrp_ip" in b:
        on_link = _ip(b["vrrp_ip"], "vrrp_ip", usable=True)
        if on_link.version != address.version:
            raise InvalidRequest(f"vrrp_ip: IPv{on_link.version} address for an IPv{address.version} VIP")
        if subnet is not None and on_link not in subnet:
            raise InvalidRequest(f"vrrp_ip: {on_link} is not in subnet_cidr {subnet}")
        problem = _subnet_problem(on_link, subnet)
        if problem:
            raise InvalidRequest(f"vrrp_ip: {on_link} is {problem}")
        if on_link == address:
            raise InvalidRequest("vrrp_ip: must differ from the VIP")
    return PlugSpec(mac=mac, addresses=(f"{on_link}/{prefixlen}",), vips=(vip,), mtu=mtu, gateway=gateway,
                    routes=tuple(routes))


def parse_network_body(body: dict | None) -> PlugSpec:
    """The optional plug-network body -> what to apply; 400 naming the field when malformed."""
    b = _body(body, ("mac_address", "fixed_ips", "mtu"))
    mac = parse_mac(b["mac_address"]) if "mac_address" in b else None
    fixed_ips = b.get("fixed_ips", [])
    if not isinstance(fixed_ips, list):
        raise InvalidRequest("fixed_ips: expected a list of {ip_address, subnet_cidr} objects")
    addresses, routes, ipv6 = [], [], False
    for i, item in enumerate(fixed_ips):
        where = f"fixed_ips[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: expected an object with ip_address and subnet_cidr")
        ip = _ip(item.get("ip_address"), f"{where}.ip_address", usable=True)
        prefixlen = ip.max_prefixlen
        if item.get("subnet_cidr") is not None:
            subnet = _network(item["subnet_cidr"], f"{where}.subnet_cidr")
            if ip not in subnet:
                raise InvalidRequest(f"{where}.subnet_cidr: {ip} is not in {subnet}")
            problem = _subnet_problem(ip, subnet)
            if problem:
                raise InvalidRequest(f"{where}.ip_address: {ip} is {problem}")
            prefixlen = subnet.prefixlen
        if item.get("host_routes") is not None:
            routes.extend(_routes(item["host_routes"], f"{where}.host_routes", ip.version))
        ipv6 = ipv6 or ip.version == 6
        addresses.append(f"{ip}/{prefixlen}")
    mtu = _mtu(b["mtu"], "mtu", ipv6) if "mtu" in b else None
    return PlugSpec(mac=mac, addresses=tuple(dict.fromkeys(addresses)), mtu=mtu, routes=tuple(routes))
