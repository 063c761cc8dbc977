"""Plug requests -> ``PlugSpec`` (amphora.netspec), per API face.

``parse_vip_request(face, ip, body)`` and ``parse_network_request(face, body)`` are
what the routes of every face call; ``parse_vip`` / ``parse_vip_body`` /
``parse_network_body`` are the v0.1 (and 0.5) parsers they build on. Every
error is a 400 whose ``details`` start with the field (``fixed_ips[1].ip_address: ...``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

from amphora.errors import InvalidRequest, InvalidVIP
from amphora.netspec import (DEFAULT_ROUTE, PlugSpec, Route, address_problem, parse_cidr, parse_ip, parse_mac,
                             parse_mtu, parse_routes, subnet_problem)

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


def _on_subnet(gw, subnet, field: str):
    """A gateway ``gw`` (field ``field``) must be a host address of ``subnet``; returns it."""
    if subnet is None:
        raise InvalidRequest(f"{field}: needs subnet_cidr (the gateway must be on the subnet)"
                             if field != "gateway" else
                             "gateway: needs subnet_cidr (the gateway must be on the VIP's subnet)")
    if gw not in subnet:
        raise InvalidRequest(f"{field}: {gw} is not in subnet_cidr {subnet}")
    _host_of(gw, subnet, field)
    return gw


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
        gateway = str(_on_subnet(gw, subnet, "gateway"))
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

# -- the faces: the same parsers, each face's words --------------------------------------
#
# The 0.5 face is the v0.1 routes, so it parses like v0.1. The 1.0 face (Octavia 12 and
# later) sends more (additional_vips, is_sriov, fixed_ips[].gateway, vip_net_info),
# requires what Octavia's agent requires and uses its words for the errors.

V0_1 = "v0.1"
V0_5 = "0.5"
V1_0 = "1.0"
FACES = (V0_1, V0_5, V1_0)

SUBNET_INFORMATION = "Invalid subnet information"
VRRP_ADDRESS = "Invalid VRRP Address"
PORT_INFORMATION = "Invalid port information"
NETWORK_PORT = "Invalid network port"

# 1.0: the message of a malformed field (by the first name in its details); others get the default.
_VIP_FIELDS = {"vrrp_ip": VRRP_ADDRESS, "mac_address": SUBNET_INFORMATION, "mtu": InvalidRequest.message,
               "is_sriov": InvalidRequest.message}
_PORT_FIELDS = {"mac_address": PORT_INFORMATION, "mtu": InvalidRequest.message, "is_sriov": InvalidRequest.message}


def _face(face: str) -> str:
    if face not in FACES:
        raise ValueError(f"unknown API face {face!r}")  # a programming error, not the client's
    return face


def _relabel(error: InvalidRequest, messages: dict, default: str, prefix: str = "") -> InvalidRequest:
    """``error`` with the message its field has on the 1.0 face (``details`` start with the field)."""
    details = str(error.details)
    message = messages.get(re.split(r"[.\[:]", details, maxsplit=1)[0], default)
    kind = InvalidVIP if message == InvalidVIP.message else InvalidRequest
    return kind(prefix + details, message=message)


def _boolean(body: dict, name: str) -> None:
    if name in body and not isinstance(body[name], bool):
        raise InvalidRequest(f"{name}: expected true or false, got {body[name]!r}")


def parse_vip_request(face: str, ip: str, body) -> PlugSpec:
    """``POST /<face>/plug/vip/<ip>`` -> PlugSpec; 400 with that face's message, details naming the field.

    v0.1 and 0.5: ``parse_vip`` + ``parse_vip_body`` (the body is optional, unknown keys ignored).
    1.0: ``subnet_cidr``, ``gateway`` (may be null) and ``mac_address`` are required ("Invalid
    subnet information"); ``additional_vips`` are VIPs too (host addresses; their subnets on the
    link, their gateways the default route of a further address family, their host routes); a
    bad VIP, subnet, gateway or route is "Invalid VIP", a bad ``vrrp_ip`` "Invalid VRRP Address";
    ``is_sriov`` must be a boolean (nothing here depends on it).
    """
    if _face(face) != V1_0:
        return parse_vip_body(parse_vip(ip), body)
    return _vip_1_0(parse_vip(ip), body, "")


def _vip_1_0(vip: str, body, prefix: str) -> PlugSpec:
    """A 1.0 plug-VIP body; ``prefix`` says where it sits in the request (``vip_net_info.``)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"{prefix or 'body'}: expected a JSON object with subnet_cidr, gateway and "
                             "mac_address", message=SUBNET_INFORMATION)
    missing = [k for k in ("subnet_cidr", "gateway", "mac_address")
               if k not in body or (body[k] is None and k != "gateway")]
    if missing:
        raise InvalidRequest(f"{prefix}{', '.join(missing)}: required", message=SUBNET_INFORMATION)
    try:
        _boolean(body, "is_sriov")
        spec = parse_vip_body(vip, body)
        vips, routes, links = _additional_vips(body.get("additional_vips"), spec)
    except InvalidRequest as e:
        raise _relabel(e, _VIP_FIELDS, InvalidVIP.message, prefix) from None
    return replace(spec, vips=spec.vips + vips, routes=spec.routes + routes, links=links)


def _additional_vips(raw, spec: PlugSpec):
    """1.0 ``additional_vips`` of the VIP ``spec`` -> (VIPs, routes, on-link subnets)."""
    name = "additional_vips"
    if raw is None:
        return (), (), ()
    if not isinstance(raw, list):
        raise InvalidRequest(f"{name}: expected a list of {{ip_address, subnet_cidr, gateway, host_routes}}")
    vips, routes, links = list(spec.vips), [], []
    on_link = {ipaddress.ip_interface(a).network for a in spec.addresses}
    families = {ipaddress.ip_address(spec.gateway).version} if spec.gateway else set()
    for i, item in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: expected an object with ip_address and subnet_cidr")
        ip = parse_ip(item.get("ip_address"), f"{where}.ip_address", usable=True)
        subnet = parse_cidr(item.get("subnet_cidr"), f"{where}.subnet_cidr")
        if ip not in subnet:
            raise InvalidRequest(f"{where}.subnet_cidr: {ip} is not in {subnet}")
        _host_of(ip, subnet, f"{where}.ip_address")
        if str(ip) in vips:
            raise InvalidRequest(f"{where}.ip_address: {ip} is listed twice")
        vips.append(str(ip))
        if subnet not in on_link:
            on_link.add(subnet)
            links.append(str(subnet))
        if item.get("gateway") is not None:
            gw = _on_subnet(parse_ip(item["gateway"], f"{where}.gateway", usable=True, link_local=True),
                            subnet, f"{where}.gateway")
            if gw.version not in families:  # the first gateway of a family is its default route
                families.add(gw.version)
                routes.append(Route(DEFAULT_ROUTE[gw.version], str(gw)))
        routes.extend(parse_routes(item.get("host_routes") or [], f"{where}.host_routes", ip.version))
    return tuple(vips[len(spec.vips):]), tuple(routes), tuple(links)


def parse_network_request(face: str, body) -> PlugSpec:
    """``POST /<face>/plug/network`` -> PlugSpec; 400 with that face's message, details naming the field.

    v0.1 and 0.5: ``parse_network_body``. 1.0: ``mac_address`` is required ("Invalid port
    information"); a bad fixed IP, subnet, gateway or route is "Invalid network port";
    ``fixed_ips[].gateway`` must be on its subnet and becomes a default route only with
    ``vip_net_info`` -- the port is then the amphora's VRRP port (a further subnet on the VIP
    network): that dict is a plug-VIP body with its ``vip``, parsed as such and merged in.
    """
    if _face(face) != V1_0:
        return parse_network_body(body)
    if not isinstance(body, dict) or body.get("mac_address") is None:
        raise InvalidRequest("mac_address: required (a JSON object with mac_address and fixed_ips)",
                             message=PORT_INFORMATION)
    try:
        _boolean(body, "is_sriov")
        spec = parse_network_body(body)
        gateways = _fixed_ip_gateways(body.get("fixed_ips") or [])
    except InvalidRequest as e:
        raise _relabel(e, _PORT_FIELDS, NETWORK_PORT) from None
    info = body.get("vip_net_info")
    if info is None:
        return spec
    if not isinstance(info, dict):
        raise InvalidRequest("vip_net_info: expected a JSON object like a plug-VIP body with its vip",
                             message=SUBNET_INFORMATION)
    try:
        vip = parse_vip(info.get("vip"))
    except InvalidVIP as e:
        raise InvalidVIP(f"vip_net_info.vip: {e.details}") from None
    vip_spec = _vip_1_0(vip, info, "vip_net_info.")
    if vip_spec.mac != spec.mac:
        raise InvalidRequest(f"vip_net_info.mac_address: {vip_spec.mac} is not this port's {spec.mac}",
                             message=SUBNET_INFORMATION)
    families = {ipaddress.ip_network(r.destination).version for r in vip_spec.routes
                if r.destination in DEFAULT_ROUTE.values()}
    families |= {ipaddress.ip_address(vip_spec.gateway).version} if vip_spec.gateway else set()
    defaults = tuple(Route(DEFAULT_ROUTE[g.version], str(g)) for g in gateways if g.version not in families)
    return replace(vip_spec, addresses=tuple(dict.fromkeys(vip_spec.addresses + spec.addresses)),
                   mtu=spec.mtu if spec.mtu is not None else vip_spec.mtu,
                   routes=vip_spec.routes + defaults + spec.routes)


def _fixed_ip_gateways(fixed_ips: list) -> list:
    """The 1.0 ``fixed_ips[].gateway`` values, checked (on the item's subnet); the first of each family."""
    gateways, families = [], set()
    for i, item in enumerate(fixed_ips):
        if item.get("gateway") is None:
            continue
        where = f"fixed_ips[{i}]"
        subnet = parse_cidr(item["subnet_cidr"], f"{where}.subnet_cidr") if item.get("subnet_cidr") else None
        gw = _on_subnet(parse_ip(item["gateway"], f"{where}.gateway", usable=True, link_local=True), subnet,
                        f"{where}.gateway")
        if gw.version not in families:
            families.add(gw.version)
            gateways.append(gw)
    return gateways
