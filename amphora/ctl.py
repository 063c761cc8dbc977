"""amphora-ctl: drive one amphora agent from a shell or a script.

Talks to the agent's API over mutual TLS (treq on the Twisted reactor, run by
``twisted.internet.task.react``) with a client certificate, one request per
invocation. Human-readable output by default; ``--json`` prints the agent's
JSON as it came (errors too), for scripts.

Connection settings come from flags or the environment:

    --url    AMPHORA_URL    https://host:port of the agent (default https://localhost:9443)
    --cert   AMPHORA_CERT   client certificate (PEM; may also hold the key)
    --key    AMPHORA_KEY    client private key, when not in --cert
    --ca     AMPHORA_CA     CA that signed the agent's certificate
    --server-name AMPHORA_SERVER_NAME   name to verify in the agent's certificate
                            (default: the URL's host)

Exit status: 0 the agent answered 2xx; 4 it answered 4xx; 5 it answered 5xx;
3 it could not be reached (connection refused, TLS failure, timeout);
2 bad usage; 1 any other local problem (unreadable file, unexpected answer).
Errors are printed as the agent's message and details.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, urlsplit

EXIT_OK = 0
EXIT_LOCAL = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_CLIENT_ERROR = 4
EXIT_SERVER_ERROR = 5

DEFAULT_URL = "https://localhost:9443"
V = "/v0.1"


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


class LocalError(Exception):
    """A local problem such as an unreadable file (exit 1)."""


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


# -- how to show it ------------------------------------------------------------

def _scalar(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _flatten(prefix: str, value, rows: list) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, rows)
    elif isinstance(value, list):
        if all(isinstance(i, dict) and len(i) == 1 for i in value) and value:
            # [{name: version}, ...] (packages) and [{member: status}, ...]
            rows.append((prefix, ", ".join(f"{k}={_scalar(v)}" for i in value for k, v in i.items())))
        elif all(not isinstance(i, (dict, list)) for i in value):
            rows.append((prefix, ", ".join(_scalar(i) for i in value) or "-"))
        else:
            rows.append((prefix, json.dumps(value)))
    else:
        rows.append((prefix, _scalar(value) if not isinstance(value, dict) else "-"))


def table(rows: list[tuple], header: tuple | None = None) -> str:
    """Left-aligned columns, two spaces apart."""
    rows = [tuple(str(c) for c in r) for r in rows]
    if header:
        rows.insert(0, tuple(header))
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def show_document(doc) -> str:
    rows: list = []
    _flatten("", doc, rows)
    return table(rows)


def show_ok(doc) -> str:
    if not isinstance(doc, dict):
        return json.dumps(doc)
    text = doc.get("message", "OK")
    details = doc.get("details")
    if details not in (None, ""):
        text += ": " + (details if isinstance(details, str) else json.dumps(details))
    return text


def show_listeners(doc) -> str:
    if not doc:
        return "no listeners"
    return table([(i.get("uuid"), i.get("status"), i.get("type")) for i in doc], ("UUID", "STATUS", "TYPE"))


def show_listener(doc) -> str:
    head = table([("uuid", doc.get("uuid")), ("status", doc.get("status")), ("type", doc.get("type"))])
    rows = []
    for pool in doc.get("pools") or []:
        members = pool.get("members") or []
        if not members:
            rows.append((pool.get("uuid"), pool.get("status"), "-", "-"))
        for member in members:
            for member_id, status in member.items():
                rows.append((pool.get("uuid"), pool.get("status"), member_id, status))
    if not rows:
        return head + "\n\nno pools"
    return head + "\n\n" + table(rows, ("POOL", "POOL STATUS", "MEMBER", "MEMBER STATUS"))


def show_error(code: int, doc) -> str:
    if isinstance(doc, dict) and "message" in doc:
        text = f"{code} {doc['message']}"
        details = doc.get("details")
        if details not in (None, ""):
            text += ": " + (details if isinstance(details, str) else json.dumps(details))
        return text
    return f"{code} {doc!r}"


def exit_code_for(status: int) -> int:
    if 200 <= status < 300:
        return EXIT_OK
    if 400 <= status < 500:
        return EXIT_CLIENT_ERROR
    if status >= 500:
        return EXIT_SERVER_ERROR
    return EXIT_LOCAL


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


def _connection(args) -> dict:
    if not args.ca:
        raise UsageError("the agent's CA is required: --ca or AMPHORA_CA")
    if not args.cert:
        raise UsageError("a client certificate is required: --cert or AMPHORA_CERT")
    parts = urlsplit(args.url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"--url must be https://host[:port], got {args.url!r}")
    for path in (args.ca, args.cert, args.key):
        if path and not os.access(path, os.R_OK):
            raise LocalError(f"cannot read {path}")
    return {"ca": args.ca, "cert": args.cert, "key": args.key,
            "server_name": args.server_name or parts.hostname}


def _describe_failure(failure, timeout: float) -> str:
    from twisted.internet.defer import CancelledError
    from twisted.web.client import ResponseFailed, ResponseNeverReceived

    error = failure.value
    if isinstance(error, (ResponseNeverReceived, ResponseFailed)) and error.reasons:
        error = error.reasons[0].value  # the real cause (TLS, connection lost, cancel)
    if isinstance(error, CancelledError):  # treq cancels the request when --timeout expires
        return f"no answer within {timeout:g}s (--timeout)"
    return f"{type(error).__name__}: {error}"


async def run(reactor, args, call: Call | None = None, out=None, err=None) -> int:
    """Does one request (``call``, or what ``plan(args)`` says); writes the answer;
    returns the exit status."""
    # imported here so that `--help` and usage errors stay fast
    from twisted.python.failure import Failure

    from amphora.client import make_client

    out = out or sys.stdout
    err = err or sys.stderr
    conn = _connection(args)
    call = call or plan(args)
    url = args.url.rstrip("/") + call.path
    try:
        client = make_client(reactor, conn["ca"], conn["cert"], conn["key"], persistent=False,
                             server_name=conn["server_name"])
    except Exception as e:  # unreadable or malformed PEM: a local problem, said in one line
        err.write(f"amphora-ctl: cannot load the TLS credentials (--ca/--cert/--key): {e}\n")
        return EXIT_LOCAL
    kwargs = {"timeout": args.timeout}
    if call.json_body is not None:
        kwargs["json"] = call.json_body
    elif call.body is not None:
        kwargs["data"] = call.body
    if call.params:
        kwargs["params"] = call.params
    try:
        response = await client.request(call.method, url, **kwargs)
        content = await response.content()
    except Exception:
        reason = _describe_failure(Failure(), args.timeout)
        if args.json:
            out.write(json.dumps({"message": "Connection failed", "details": reason}) + "\n")
        err.write(f"amphora-ctl: cannot get an answer from {args.url}: {reason}\n")
        return EXIT_CONNECTION
    code = response.code
    ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip()
    if ctype == b"application/json":
        try:
            doc = json.loads(content)
        except ValueError:
            err.write(f"amphora-ctl: {code}: the agent sent malformed JSON\n")
            return EXIT_LOCAL
        if args.json:
            out.write(json.dumps(doc, indent=2) + "\n")
        if 200 <= code < 300:
            if not args.json:
                text = call.show(doc) if call.show else json.dumps(doc, indent=2)
                out.write(text + "\n")
        else:
            err.write(f"amphora-ctl: {show_error(code, doc)}\n")
        return exit_code_for(code)
    text = content.decode("utf-8", "replace")
    if 200 <= code < 300:
        if args.json:
            out.write(json.dumps({"text": text}) + "\n")
        else:
            out.write(text if text.endswith("\n") or not text else text + "\n")
    else:
        err.write(f"amphora-ctl: {code}: {text[:500]}\n")
    return exit_code_for(code)


def show_beat(document: dict) -> str:
    """One human line per accepted beat: who, which seq, what it carries."""
    beat = document.get("beat", {})
    listeners = beat.get("listeners") or {}
    pools = beat.get("pools") or {}
    states = ", ".join(f"{lid[:8]}={(v or {}).get('status', '?')}" for lid, v in sorted(listeners.items()))
    extra = "".join(f" {k}={beat[k]}" for k in ("topology", "role", "topology_status") if k in beat)
    return (f"{document.get('source', '?')} amphora={beat.get('id')} seq={beat.get('seq')} "
            f"listeners={len(listeners)} pools={len(pools)} bytes={document.get('bytes')}{extra}"
            + (f" [{states}]" if states else ""))


def heartbeats(args) -> int:
    """Receive and print heartbeats: a thin wrapper over amphora.heartbeat.receiver's library API.

    Does not talk to the agent's API (no certificate needed): it is what a
    controller's health manager sees. ``--count N`` stops after N accepted beats;
    ``--wait S`` gives up with exit status 3 when they have not come in S seconds.
    """
    try:
        from amphora.heartbeat.receiver import HeartbeatReceiver, listen, parse_bind, read_key
    except ImportError as e:
        sys.stderr.write(f"amphora-ctl: the heartbeat receiver is not available: {e}\n")
        return EXIT_LOCAL
    try:
        key = read_key(args.key, args.key_file)
    except (OSError, UnicodeDecodeError) as e:
        raise LocalError(f"cannot read {args.key_file}: {getattr(e, 'strerror', None) or e}") from None
    if not key:
        raise UsageError("a key is required: --key-file, --key or AMPHORA_HEARTBEAT_KEY")
    try:
        host, port = parse_bind(args.bind)
    except Exception as e:
        raise UsageError(f"--bind: {e}") from None

    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.task import react

    async def _main(reactor):
        done = Deferred()

        def on_beat(beat):
            document = beat.document()
            sys.stdout.write((json.dumps(document, sort_keys=True) if args.json else show_beat(document))
                             + "\n")
            sys.stdout.flush()
            if args.count and receiver.accepted >= args.count and not done.called:
                done.callback(None)

        def on_reject(error, source):
            sys.stderr.write(f"amphora-ctl: rejected a packet from {source[0]}:{source[1]}: "
                             f"{error.reason} ({error.detail}); counts {dict(receiver.rejected)}\n")
            sys.stderr.flush()

        receiver = HeartbeatReceiver(key, on_beat=on_beat, on_reject=on_reject)
        try:
            listening = listen(reactor, receiver, host, port)
        except Exception as e:
            sys.stderr.write(f"amphora-ctl: cannot listen on {host}:{port}: {e}\n")
            raise SystemExit(EXIT_LOCAL)
        address = listening.getHost()
        sys.stderr.write(f"amphora-ctl: listening for heartbeats on {address.host}:{address.port}\n")
        sys.stderr.flush()
        timer = None
        if args.wait:
            def expire():
                sys.stderr.write(f"amphora-ctl: {receiver.accepted} heartbeat(s) in {args.wait:g}s; "
                                 f"rejected {dict(receiver.rejected)}\n")
                done.errback(SystemExit(EXIT_CONNECTION))
            timer = reactor.callLater(args.wait, expire)
        try:
            await done  # until --count beats, --wait expires, or Ctrl-C / SIGTERM (react then exits 0)
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            await listening.stopListening()

    react(lambda reactor: ensureDeferred(_main(reactor)))
    return EXIT_OK  # pragma: no cover - react exits


def main(argv: list[str] | None = None) -> None:
    """The console script. Exits with the status described in the module docstring."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "heartbeats":
            raise SystemExit(heartbeats(args))
        # usage and local errors surface before any network I/O (and stdin is read once)
        call = plan(args)
        _connection(args)
    except UsageError as e:
        sys.stderr.write(f"amphora-ctl: {e}\n")
        raise SystemExit(EXIT_USAGE) from None
    except LocalError as e:
        sys.stderr.write(f"amphora-ctl: {e}\n")
        raise SystemExit(EXIT_LOCAL) from None

    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    async def _main(reactor):
        code = await run(reactor, args, call)
        if code:
            raise SystemExit(code)

    react(lambda reactor: ensureDeferred(_main(reactor)))


if __name__ == "__main__":
    main()
