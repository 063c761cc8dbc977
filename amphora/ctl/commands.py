"""The command table: amphora-ctl's arguments (``build_parser``) and the request
each command makes (``plan``). No network I/O here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote

from amphora.ctl.common import DEFAULT_URL, V, LocalError, UsageError
from amphora.ctl.render import show_document, show_listener, show_listeners, show_ok

# -- what to ask ---------------------------------------------------------------

@dataclass
class Call:
    """One HTTP request and how to show its answer to a human."""

    method: str
    path: str
    body: bytes | None = None
    json_body: object = None
    params: dict | None = None
    show: Callable[[object], str] | None = None   # renders a successful JSON body


def _segment(value: str) -> str:
    """A URL path segment: nothing a user types can add segments or a query."""
    return quote(value, safe="")


def _read_file(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise LocalError(f"cannot read {path}: {e.strerror}") from None


def _pair(raw: str, first: str, second: str, second_required: bool = True) -> dict:
    a, sep, b = raw.partition(",")
    if not a or (second_required and not b):
        raise UsageError(f"expected {first.upper()},{second.upper()}, got {raw!r}")
    result = {first: a.strip()}
    if b:
        result[second] = b.strip()
    return result


def plan(args) -> Call:
    """Maps parsed arguments to the request; no I/O except reading input files."""
    cmd = args.command
    if cmd == "info":
        return Call("GET", "/info", show=show_document)
    if cmd == "details":
        return Call("GET", V + "/details", show=show_document)
    if cmd == "openapi":
        return Call("GET", V + "/openapi.json", show=lambda doc: json.dumps(doc, indent=2))
    if cmd == "topology":
        if args.topology_cmd != "set":
            return Call("GET", V + "/topology", show=show_document)
        body: dict = {"topology": args.topology}
        secret = args.secret
        if args.secret_file:
            secret = _read_file(args.secret_file).decode().strip()
        if secret is None:
            secret = os.environ.get("AMPHORA_VRRP_SECRET")
        for key, value in (("role", args.role), ("ha_ip", args.ha_ip), ("secret", secret),
                           ("interface", args.interface), ("virtual_router_id", args.virtual_router_id),
                           ("priority", args.priority)):
            if value is not None:
                body[key] = value
        if args.peer:
            body["peers"] = args.peer
        return Call("POST", V + "/topology", json_body=body, show=show_ok)
    if cmd == "listeners":
        return Call("GET", V + "/listeners", show=show_listeners)
    if cmd == "listener":
        base = f"{V}/listeners/{_segment(args.listener)}"
        action = args.action
        if action == "show":
            return Call("GET", base, show=show_listener)
        if action == "config":
            return Call("GET", base + "/haproxy")
        if action == "logs":
            return Call("GET", base + "/logs", params={"lines": str(args.lines)} if args.lines is not None else None)
        if action == "upload":
            return Call("PUT", base + "/haproxy", body=_read_file(args.file), show=show_ok)
        if action == "delete":
            return Call("DELETE", base, show=show_ok)
        return Call("PUT", f"{base}/{action}", show=show_ok)  # start, stop, reload
    if cmd == "cert":
        base = f"{V}/listeners/{_segment(args.listener)}/certificates"
        if args.action == "put":
            name = args.name or os.path.basename(args.file)
            if not name or args.file == "-" and not args.name:
                raise UsageError("--name is required when the PEM comes from stdin")
            return Call("PUT", f"{base}/{_segment(name)}", body=_read_file(args.file), show=show_ok)
        if args.action == "md5":
            return Call("GET", f"{base}/{_segment(args.name)}", show=lambda doc: doc.get("md5sum", ""))
        return Call("DELETE", f"{base}/{_segment(args.name)}", show=show_ok)
    if cmd == "plug":
        if args.what == "vip":
            body = {}
            for key, value in (("mac_address", args.mac), ("subnet_cidr", args.subnet_cidr),
                               ("gateway", args.gateway), ("mtu", args.mtu)):
                if value is not None:
                    body[key] = value
            if args.host_route:
                body["host_routes"] = [_pair(r, "destination", "nexthop") for r in args.host_route]
            return Call("POST", f"{V}/plug/vip/{_segment(args.ip)}", json_body=body or None, show=show_ok)
        body = {}
        if args.mac is not None:
            body["mac_address"] = args.mac
        if args.fixed_ip:
            body["fixed_ips"] = [_pair(f, "ip_address", "subnet_cidr", second_required=False)
                                 for f in args.fixed_ip]
        if args.mtu is not None:
            body["mtu"] = args.mtu
        return Call("POST", V + "/plug/network", json_body=body or None, show=show_ok)
    raise UsageError(f"unknown command {cmd!r}")  # pragma: no cover - argparse prevents it


# -- the command line ----------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="amphora-ctl",
        description="Drive one amphora agent over mutual TLS.",
        epilog="Exit status: 0 2xx, 4 4xx, 5 5xx, 3 agent unreachable, 2 usage, 1 local error.")
    p.add_argument("--url", default=env("AMPHORA_URL", DEFAULT_URL), help="agent URL (AMPHORA_URL)")
    p.add_argument("--cert", default=env("AMPHORA_CERT"), help="client certificate PEM (AMPHORA_CERT)")
    p.add_argument("--key", default=env("AMPHORA_KEY"), help="client key PEM, if not in --cert (AMPHORA_KEY)")
    p.add_argument("--ca", default=env("AMPHORA_CA"), help="CA of the agent's certificate (AMPHORA_CA)")
    p.add_argument("--server-name", default=env("AMPHORA_SERVER_NAME"),
                   help="name to verify in the agent's certificate (default: the URL's host)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer (120)")
    p.add_argument("--json", action="store_true", help="print the agent's JSON as it came")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("info", help="GET /info")
    sub.add_parser("details", help="GET /v0.1/details")
    sub.add_parser("openapi", help="GET /v0.1/openapi.json (the API contract)")

    topo = sub.add_parser("topology", help="show the topology, or `topology set ...`")
    topo_sub = topo.add_subparsers(dest="topology_cmd", metavar="set")
    tset = topo_sub.add_parser("set", help="POST /v0.1/topology")
    tset.add_argument("topology", help="SINGLE, ACTIVE-STANDBY or ACTIVE-ACTIVE")
    tset.add_argument("--role", help="ACTIVE or STANDBY (ACTIVE-STANDBY)")
    tset.add_argument("--ha-ip", help="highly-available IP of the pair (ACTIVE-STANDBY)")
    secret = tset.add_mutually_exclusive_group()
    secret.add_argument("--secret-file", help="file holding the VRRP secret (or env AMPHORA_VRRP_SECRET)")
    secret.add_argument("--secret", help="the VRRP secret (visible in the process list: prefer --secret-file)")
    tset.add_argument("--peer", action="append", help="unicast VRRP peer address (repeatable)")
    tset.add_argument("--interface", help="interface that carries the ha_ip")
    tset.add_argument("--virtual-router-id", type=int)
    tset.add_argument("--priority", type=int)

    sub.add_parser("listeners", help="GET /v0.1/listeners")

    lst = sub.add_parser("listener", help="one listener: show|config|logs|upload|start|stop|reload|delete")
    lst_sub = lst.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("show", "status with pools and members"), ("config", "the uploaded haproxy.cfg"),
                         ("start", "start haproxy"), ("stop", "stop haproxy gracefully"),
                         ("reload", "hitless reload"), ("delete", "stop and remove everything")):
        lst_sub.add_parser(action, help=text).add_argument("listener", help="listener UUID")
    logs = lst_sub.add_parser("logs", help="the last haproxy log lines")
    logs.add_argument("listener", help="listener UUID")
    logs.add_argument("--lines", type=int, help="how many (1..1000, default 100)")
    upload = lst_sub.add_parser("upload", help="upload a haproxy configuration (FILE or - for stdin)")
    upload.add_argument("listener", help="listener UUID")
    upload.add_argument("file")

    cert = sub.add_parser("cert", help="listener certificates: put|md5|delete")
    cert_sub = cert.add_subparsers(dest="action", required=True, metavar="ACTION")
    put = cert_sub.add_parser("put", help="upload a PEM (key, certificate, chain)")
    put.add_argument("listener", help="listener UUID")
    put.add_argument("file", help="PEM file, or - for stdin (then --name)")
    put.add_argument("--name", help="file name on the amphora (default: the file's base name)")
    for action, text in (("md5", "md5sum of the stored PEM"), ("delete", "delete the PEM")):
        c = cert_sub.add_parser(action, help=text)
        c.add_argument("listener", help="listener UUID")
        c.add_argument("name", help="file name, e.g. www.example.com.pem")

    plug = sub.add_parser("plug", help="plug vip IP | plug network")
    plug_sub = plug.add_subparsers(dest="what", required=True, metavar="vip|network")
    vip = plug_sub.add_parser("vip", help="POST /v0.1/plug/vip/IP")
    vip.add_argument("ip")
    vip.add_argument("--mac", help="MAC address of the interface to use")
    vip.add_argument("--subnet-cidr", help="the VIP subnet (gives the prefix length)")
    vip.add_argument("--gateway", help="default gateway of the VIP subnet")
    vip.add_argument("--mtu", type=int)
    vip.add_argument("--host-route", action="append", metavar="DEST,NEXTHOP", help="repeatable")
    net = plug_sub.add_parser("network", help="POST /v0.1/plug/network")
    net.add_argument("--mac", help="MAC address of the interface to use")
    net.add_argument("--fixed-ip", action="append", metavar="IP[,SUBNET_CIDR]", help="repeatable")
    net.add_argument("--mtu", type=int)

    hb = sub.add_parser("heartbeats", help="receive and print heartbeats (controller side)")
    hb.add_argument("--bind", required=True, help="HOST:PORT or [V6]:PORT to listen on (UDP)")
    key = hb.add_mutually_exclusive_group()
    key.add_argument("--key-file", help="file holding the HMAC key (or env AMPHORA_HEARTBEAT_KEY)")
    key.add_argument("--key", help="the HMAC key (visible in the process list: prefer --key-file)")
    hb.add_argument("--count", type=int, default=0, help="exit after this many accepted beats")
    hb.add_argument("--wait", type=float, default=0,
                    help="give up (exit 3) when --count beats have not arrived within this many seconds")
    return p
