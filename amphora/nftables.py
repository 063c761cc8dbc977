"""Interface rules for SR-IOV VIPs (``PUT /1.0/interface/<ip>/rules``, spec §4.14).

The controller sends, per VIP interface, the list of what may reach it
(protocol, source CIDR, port). ``InterfaceRules`` keeps one map ``{interface:
rules}`` and renders all of it as one nftables table, ``inet amphora_table``:
an input chain with policy drop (established/related, loopback on ``lo``,
ICMP unreachable, ICMPv6 neighbour discovery and packet-too-big, DHCP replies
accepted) that sends traffic arriving on each interface to its own chain with
one counted accept per rule and a counted drop at the end.

Applying is one ``nft -f`` transaction inside the agent's namespace
(``[network] namespace``): the file first creates the table (so a first apply
works), deletes it and declares it again, so the kernel swaps the whole table
or changes nothing. The map is written (atomically) only once nft accepted the
new table; at agent start the stored map is applied again.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re

from twisted.internet.defer import DeferredLock, inlineCallbacks
from twisted.logger import Logger

from amphora.errors import AgentError, InvalidRequest, NotFound, OperationFailed
from amphora.fsutil import atomic_write, atomic_write_json, ensure_dir, read_json, remove_file
from amphora.netlink import NetlinkQueries
from amphora.netns import exec_argv
from amphora.process import run_bounded

log = Logger()

TABLE = "inet amphora_table"
PROTOCOLS = ("TCP", "UDP", "SCTP", "VRRP")
KEYS = {"protocol", "cidr", "port"}
NFT_TIMEOUT = 30.0
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
# Interface names as nft may quote them (a kernel name may hold almost anything).
_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


class RulesUnavailable(AgentError):
    """The agent cannot filter here (no namespace of its own to filter in)."""

    status = 503
    message = "Service Unavailable"


def invalid_ip(raw: str) -> InvalidRequest:
    shown = raw if len(raw) <= 100 else raw[:100] + "..."
    return InvalidRequest(f"{shown!r} is not an IP address", message="Invalid IP address")


def parse_ip(raw: str):
    try:
        return ipaddress.ip_address(raw)
    except ValueError:
        raise invalid_ip(raw) from None


def parse_rules(body: bytes) -> list[dict]:
    """The request body as a list of ``{protocol, cidr, port}`` (cidr a network or None);
    InvalidRequest naming the first thing the schema refuses."""
    try:
        rules = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"body is not JSON: {e}") from None
    if not isinstance(rules, list):
        raise InvalidRequest("body must be a JSON array of {protocol, cidr, port} rules")
    return [_parse_rule(i, rule) for i, rule in enumerate(rules)]


def _parse_rule(i: int, rule) -> dict:
    where = f"rule {i}"
    if not isinstance(rule, dict):
        raise InvalidRequest(f"{where}: must be an object with protocol, cidr and port")
    if set(rule) != KEYS:
        missing, extra = sorted(KEYS - set(rule)), sorted(set(rule) - KEYS)
        raise InvalidRequest(f"{where}: " + "; ".join(
            part for part in (missing and f"missing {', '.join(missing)}",
                              extra and f"unknown {', '.join(map(str, extra))}") if part))
    protocol, cidr, port = rule["protocol"], rule["cidr"], rule["port"]
    if protocol not in PROTOCOLS:
        raise InvalidRequest(f"{where}: protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if isinstance(port, bool) or not isinstance(port, (int, float)) or port != int(port) \
            or not 1 <= port <= 65535:
        raise InvalidRequest(f"{where}: port must be a number from 1 to 65535, got {port!r}")
    network = None
    if cidr is not None:
        if not isinstance(cidr, str):
            raise InvalidRequest(f"{where}: cidr must be a string or null, got {cidr!r}")
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidRequest(f"{where}: cidr {cidr[:100]!r} is not an IP network") from None
    return {"protocol": protocol, "cidr": None if network is None else str(network), "port": int(port)}


def _rule_line(rule: dict) -> str:
    parts = []
    cidr = rule["cidr"]
    if cidr is not None and ipaddress.ip_network(cidr).prefixlen > 0:
        parts.append(f"{'ip6' if ':' in cidr else 'ip'} saddr {cidr}")
    if rule["protocol"] == "VRRP":
        parts.append("meta l4proto vrrp")
    else:
        parts.append(f"{rule['protocol'].lower()} dport {rule['port']}")
    return " ".join(parts) + " counter accept"


def render(table: dict[str, list[dict]]) -> str:
    """The nft script that replaces ``inet amphora_table`` with the rules of ``table``."""
    lines = [f"table {TABLE}", f"delete table {TABLE}", f"table {TABLE} {{"]
    jumps = []
    for n, ifname in enumerate(sorted(table)):
        chain = f"vip_{n}"
        jumps.append(f'        iifname "{ifname}" goto {chain}')
        lines.append(f"    chain {chain} {{")
        lines.extend(f"        {_rule_line(rule)}" for rule in table[ifname])
        lines += ["        counter drop", "    }"]
    lines += [
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        "        ct state vmap { established : accept, related : accept, invalid : drop }",
        '        iifname "lo" accept',
        "        ip daddr 127.0.0.0/8 drop",
        "        ip6 daddr ::1 drop",
        "        icmp type { destination-unreachable, time-exceeded } accept",
        "        icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, nd-router-advert,"
        " nd-neighbor-solicit, nd-neighbor-advert } accept",
        "        udp sport 67 udp dport 68 accept",
        "        udp sport 547 udp dport 546 accept",
        *jumps,
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class InterfaceRules:
    """The rules of each VIP interface: parse, apply (one nft transaction), store, restore."""

    def __init__(self, config, reactor, *, netlink=None, runner=run_bounded, binary: str = "/usr/sbin/nft"):
        self.reactor = reactor
        self.namespace = config.network.namespace
        self.directory = os.path.join(config.agent.state_dir, "nftables")
        self.state = os.path.join(self.directory, "rules.json")
        self.script = os.path.join(self.directory, "amphora_table.nft")
        self.netlink = netlink or NetlinkQueries(reactor)
        self._run = runner
        self.binary = binary
        self._lock = DeferredLock()

    def stored(self) -> dict[str, list[dict]]:
        return read_json(self.state, {}) or {}

    @inlineCallbacks
    def find_interface(self, raw_ip: str):
        """The name of the (non-loopback) interface of the namespace holding ``raw_ip``."""
        ip = parse_ip(raw_ip)
        links = yield self.netlink.interfaces(self.namespace)
        for link in links:
            if not link.loopback and link.holds(ip):
                return link.name
        raise NotFound(f"no interface holds {ip}", message="Error interface not found for IP address")

    @inlineCallbacks
    def put(self, raw_ip: str, body: bytes):
        """Replace the rules of the interface holding ``raw_ip``; the new table is live on return."""
        if not self.namespace:
            raise RulesUnavailable("interface rules need [network] namespace: an input policy of drop in the "
                                   "agent's own namespace would also cut its API")
        parse_ip(raw_ip)
        rules = parse_rules(body)  # 400 before anything is looked up or changed
        ifname = yield self.find_interface(raw_ip)
        if not _IFNAME.fullmatch(ifname):
            raise OperationFailed(f"interface name {ifname!r} cannot be named in an nftables rule")
        yield self._lock.run(self._replace, ifname, rules)
        return ifname

    @inlineCallbacks
    def _replace(self, ifname: str, rules: list[dict]):
        table = dict(self.stored())
        table[ifname] = rules
        yield self._apply(table)
        atomic_write_json(self.state, table)
        log.info("nftables: {count} rules on {ifname}", count=len(rules), ifname=ifname)

    @inlineCallbacks
    def _apply(self, table: dict):
        """One ``nft -f`` of the whole table; the script file is replaced only once nft took it."""
        ensure_dir(self.directory, 0o700)
        candidate = self.script + ".new"
        atomic_write(candidate, render(table).encode(), 0o600)
        try:
            out, err, code = yield self._run(self.reactor, exec_argv(self.namespace, [self.binary, "-f", candidate]),
                                             env=ENV, timeout=NFT_TIMEOUT)
        except Exception as e:
            remove_file(candidate)
            raise OperationFailed(f"cannot run {self.binary}: {e}", message="Error applying interface rules") \
                from None
        if code != 0:
            remove_file(candidate)
            text = (err or out).decode("utf-8", "replace").strip()[-2000:]
            raise OperationFailed(f"nft refused the table (exit {code}): {text}",
                                  message="Error applying interface rules")
        os.replace(candidate, self.script)

    @inlineCallbacks
    def restore(self):
        """At agent start: the stored rules again (a reboot or a new namespace has none)."""
        table = self.stored()
        if not table or not self.namespace:
            return
        try:
            yield self._lock.run(self._apply, table)
        except AgentError as e:
            log.error("nftables: restoring the interface rules failed: {error}", error=e.details)
            return
        log.info("nftables: interface rules restored for {names}", names=", ".join(sorted(table)))
