"""``POST /v0.1/topology`` -> ``TopologySpec``, or one 400 naming every bad field at once.

``ha_ip`` and the VRRP ``peers`` obey the address rule of plugging
(``address_problem`` in amphora.netspec); peers may be link-local.
"""

from __future__ import annotations

import ipaddress
import re

from amphora.api.requests.values import integer
from amphora.errors import InvalidRequest
from amphora.keepalived import VRRPSettings, auth_pass
from amphora.netspec import address_problem
from amphora.topology import ACTIVE_STANDBY, ROLES, TOPOLOGIES, TopologySpec

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
