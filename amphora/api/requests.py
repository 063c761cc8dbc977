"""Request parsers: what a client sent -> a domain spec, or a 400 naming the field.

Every value a route takes from a URL, a query or a JSON body is checked here,
before anything is touched, and turned into what the domain works with:

- ``parse_vip``, ``parse_vip_body``, ``parse_network_body`` -> ``PlugSpec``
  (amphora.netspec) for the plugger;
- ``parse_topology`` -> ``TopologySpec`` (amphora.topology);
- ``parse_lines`` and ``integer``: bounded integers.

Addresses obey one rule wherever they come from (``address_problem`` in
amphora.netspec, with the field parsers shared with the plugger's state file).
Errors are ``InvalidRequest`` / ``InvalidVIP`` with the spec's message and the
field in ``details``. Pure functions: no I/O, no HTTP objects except the
query arguments ``parse_lines`` reads.
"""

from __future__ import annotations

import ipaddress
import re

from amphora.errors import InvalidRequest, InvalidVIP
from amphora.keepalived import VRRPSettings, auth_pass
from amphora.netspec import (PlugSpec, address_problem, parse_cidr, parse_ip, parse_mac, parse_mtu,
                             parse_routes, subnet_problem)
from amphora.topology import ACTIVE_STANDBY, ROLES, TOPOLOGIES, TopologySpec

# -- bounded integers -------------------------------------------------------------


def integer(raw, name: str, low: int, high: int) -> int:
    """A JSON integer from ``low`` to ``high`` (a boolean is no integer)."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise InvalidRequest(f"{name}: must be an integer from {low} to {high}, got {raw!r}")
    return raw


MAX_LOG_LINES = 1000


def parse_lines(args: dict, default: int = 100) -> int:
    """``?lines=N`` of the logs route: one decimal from 1 to MAX_LOG_LINES."""
    values = args.get(b"lines") or [str(default).encode()]
    raw = values[-1].decode("ascii", "replace")
    # Leading zeros are fine; thousands of digits must not reach int() (it refuses above 4300).
    digits = raw.lstrip("0") if raw.isascii() and raw.isdigit() else None
    if len(values) != 1 or digits is None or len(digits) > 4 or not 1 <= int(digits or 0) <= MAX_LOG_LINES:
        raise InvalidRequest(f"lines must be an integer from 1 to {MAX_LOG_LINES}, got {raw!r}")
    return int(digits)


# -- plug VIP / plug network --------------------------------------------------------

def parse_vip(raw: str) -> str:
    """The VIP from the URL, normalised; 400 "Invalid VIP" unless a usable unicast address.

    See ``address_problem`` for what is refused and why.
    """
    try:
        address = ipaddress.ip_address(raw)
    except (ValueError, TypeError):
        address = None
    if address is None or getattr(address, "scope_id", None):  # fe80::1%eth0 is no VIP
        raise InvalidVIP(f"{raw!r} is not an IPv4 or IPv6 address")
    problem = address_problem(address)
    if problem:
        raise InvalidVIP(f"{address} is {problem}; a VIP must be a unicast address its clients can reach")
    return str(address)


def _body(body, known: tuple[str, ...]) -> dict:
    # Unknown keys are ignored on purpose: newer controllers send more (vrrp_ip,
    # additional_vips, is_sriov, ...) and must not be refused for it.
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return {k: body[k] for k in known if body.get(k) is not None}


def _host_of(ip, subnet, field: str | None, error=InvalidRequest) -> None:
    """Refuse ``ip`` when it is ``subnet``'s IPv4 network or broadcast address."""
    problem = subnet_problem(ip, subnet)
    if problem:
        raise error(f"{field}: {ip} is {problem}" if field else f"{ip} is {problem}")


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
        subnet = parse_cidr(b["subnet_cidr"], "subnet_cidr")
        if subnet.version != address.version:
            raise InvalidRequest(f"subnet_cidr: IPv{subnet.version} subnet for an IPv{address.version} VIP")
        if address not in subnet:
            raise InvalidRequest(f"subnet_cidr: VIP {vip} is not in {subnet}")
        _host_of(address, subnet, None, InvalidVIP)
        prefixlen = subnet.prefixlen
    gateway = None
    if "gateway" in b:
        # link-local passes here and is then refused as not in subnet_cidr (which cannot be link-local)
        gw = parse_ip(b["gateway"], "gateway", usable=True, link_local=True)
        if gw.version != address.version:
            raise InvalidRequest(f"gateway: IPv{gw.version} gateway for an IPv{address.version} VIP")
        if subnet is None:
            raise InvalidRequest("gateway: needs subnet_cidr (the gateway must be on the VIP's subnet)")
        if gw not in subnet:
            raise InvalidRequest(f"gateway: {gw} is not in subnet_cidr {subnet}")
        _host_of(gw, subnet, "gateway")
        gateway = str(gw)
    mtu = parse_mtu(b["mtu"], "mtu", address.version == 6) if "mtu" in b else None
    routes = parse_routes(b.get("host_routes", []), "host_routes", address.version)
    on_link = address
    if "vrrp_ip" in b:
        on_link = parse_ip(b["vrrp_ip"], "vrrp_ip", usable=True)
        if on_link.version != address.version:
            raise InvalidRequest(f"vrrp_ip: IPv{on_link.version} address for an IPv{address.version} VIP")
        if subnet is not None and on_link not in subnet:
            raise InvalidRequest(f"vrrp_ip: {on_link} is not in subnet_cidr {subnet}")
        _host_of(on_link, subnet, "vrrp_ip")
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
        ip = parse_ip(item.get("ip_address"), f"{where}.ip_address", usable=True)
        prefixlen = ip.max_prefixlen
        if item.get("subnet_cidr") is not None:
            subnet = parse_cidr(item["subnet_cidr"], f"{where}.subnet_cidr")
            if ip not in subnet:
                raise InvalidRequest(f"{where}.subnet_cidr: {ip} is not in {subnet}")
            _host_of(ip, subnet, f"{where}.ip_address")
            prefixlen = subnet.prefixlen
        if item.get("host_routes") is not None:
            routes.extend(parse_routes(item["host_routes"], f"{where}.host_routes", ip.version))
        ipv6 = ipv6 or ip.version == 6
        addresses.append(f"{ip}/{prefixlen}")
    mtu = parse_mtu(b["mtu"], "mtu", ipv6) if "mtu" in b else None
    return PlugSpec(mac=mac, addresses=tuple(dict.fromkeys(addresses)), mtu=mtu, routes=tuple(routes))


# -- topology -----------------------------------------------------------------------

_FIELDS = ("topology", "role", "ha_ip", "secret", "peers", "interface", "virtual_router_id", "priority")
_VRRP_ONLY = ("role", "ha_ip", "secret", "peers", "interface", "virtual_router_id", "priority")
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,14}")
MAX_SECRET = 1024
MAX_PEERS = 16


def _given(value) -> bool:
    return value is not None and value != "" and value != []


def _unusable(address, link_local: bool = False) -> bool:
    """The one address rule (``address_problem``); a scoped address (%zone) is never usable either."""
    return bool(getattr(address, "scope_id", None)) or address_problem(address, link_local) is not None


def _optional_integer(body, name, low, high, problems) -> int:
    if body.get(name) is None:
        return 0
    try:
        return integer(body[name], name, low, high)
    except InvalidRequest as e:
        problems.append(e.details)
        return 0


def _loose_ip(raw):
    """An address from a string, surrounding blanks allowed (the topology's habit); None if it is none."""
    try:
        return ipaddress.ip_address(raw.strip()) if isinstance(raw, str) else None
    except ValueError:
        return None


def _ha_ip(ha_ip, problems):
    if not _given(ha_ip):
        problems.append("ha_ip: required for ACTIVE-STANDBY")
        return None
    address = _loose_ip(ha_ip)
    if address is None:
        problems.append(f"ha_ip: not an IP address: {ha_ip!r}")
    elif _unusable(address):
        problems.append(f"ha_ip: not usable as a virtual address: {address}")
        address = None
    return address


def _peers(peers, address, problems) -> tuple[str, ...]:
    parsed: list[str] = []
    if peers is None:
        return ()
    if not isinstance(peers, list) or len(peers) > MAX_PEERS:
        problems.append(f"peers: must be a list of at most {MAX_PEERS} IP addresses")
        return ()
    for i, peer in enumerate(peers):
        ip = _loose_ip(peer)
        if ip is None:
            problems.append(f"peers[{i}]: not an IP address: {peer!r}")
        elif _unusable(ip, link_local=True):
            problems.append(f"peers[{i}]: not usable as a VRRP peer: {ip}")
        elif address is not None and ip.version != address.version:
            problems.append(f"peers[{i}]: IPv{ip.version} peer for an IPv{address.version} ha_ip")
        elif address is not None and ip == address:
            problems.append(f"peers[{i}]: is the ha_ip itself")
        elif str(ip) in parsed:
            problems.append(f"peers[{i}]: duplicate peer {ip}")
        else:
            parsed.append(str(ip))
    return tuple(parsed)


def parse_topology(body: dict) -> TopologySpec:
    """``POST /v0.1/topology`` -> TopologySpec, or InvalidRequest naming every bad field at once."""
    problems: list[str] = []
    for key in sorted(body):
        if key not in _FIELDS:
            problems.append(f"Unknown field: {key}")
    topology = body.get("topology")
    if topology is None:
        problems.append("topology: required (one of SINGLE, ACTIVE-STANDBY, ACTIVE-ACTIVE)")
    elif topology not in TOPOLOGIES:
        problems.append(f"Unknown topology: {topology}")
    if topology != ACTIVE_STANDBY:
        for key in _VRRP_ONLY:
            if _given(body.get(key)) and topology in TOPOLOGIES:
                problems.append(f"{key}: only applicable to ACTIVE-STANDBY, not {topology}")
        if problems:
            raise InvalidRequest("; ".join(problems))
        return TopologySpec(topology)

    role = body.get("role")
    if role is None:
        problems.append("role: required for ACTIVE-STANDBY (ACTIVE or STANDBY)")
    elif role not in ROLES:
        problems.append(f"Unknown role: {role}")
    address = _ha_ip(body.get("ha_ip"), problems)

    secret = body.get("secret")
    if not _given(secret):
        problems.append("secret: required for ACTIVE-STANDBY")
    elif not isinstance(secret, str) or len(secret) > MAX_SECRET or not secret.isprintable():
        # Never echo the secret back, not even a bad one.
        problems.append(f"secret: must be a printable string of at most {MAX_SECRET} characters")

    peers = _peers(body.get("peers"), address, problems)
    interface = body.get("interface")
    if interface is not None and (not isinstance(interface, str) or not _IFNAME.fullmatch(interface)):
        problems.append(f"interface: not an interface name: {interface!r}")
    router_id = _optional_integer(body, "virtual_router_id", 1, 255, problems)
    priority = _optional_integer(body, "priority", 1, 254, problems)
    if problems:
        raise InvalidRequest("; ".join(problems))
    return TopologySpec(ACTIVE_STANDBY, VRRPSettings(
        role=role, ha_ip=str(address), auth=auth_pass(secret), interface=interface or "", peers=peers,
        virtual_router_id=router_id, priority=priority))
