"""Reading an uploaded haproxy configuration: its type, its bind addresses (pure functions).

The agent never edits an upload; it only reads it to tell the listener type
(v0.1 status), the addresses haproxy will bind (the bind-conflict check
before a start or reload) and, for a load balancer, its frontends.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

TYPE_TCP = "TCP"
TYPE_HTTP = "HTTP"
TYPE_TERMINATED_HTTPS = "TERMINATED_HTTPS"


# -- reading the uploaded configuration ------------------------------------------

_SECTIONS = {"global", "defaults", "frontend", "listen", "backend", "peers", "resolvers", "userlist",
             "mailers", "program", "http-errors", "ring", "cache", "fcgi-app"}


def _config_lines(text: str):
    """(section keyword, words) for every meaningful line, comments dropped.

    A line whose first word is a section keyword opens that section and is
    yielded as ``(section, ["__section__", *arguments])``; haproxy does not
    care about indentation, so neither does this.
    """
    section = None
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in _SECTIONS:
            section = words[0]
            yield section, ["__section__", *words[1:]]
            continue
        yield section, words


def _proxies(config: str) -> list[dict]:
    """Every frontend and listen section: its name, mode (own, else the defaults') and whether a bind has ssl."""
    default_mode = "tcp"
    proxies: list[dict] = []
    for section, words in _config_lines(config):
        if words[0] == "__section__":
            if section in ("frontend", "listen"):
                proxies.append({"section": section, "name": words[1] if len(words) > 1 else "",
                                "mode": default_mode, "ssl": False})
            elif section == "defaults":
                default_mode = "tcp"
            continue
        if words[0] == "mode" and len(words) > 1:
            if section == "defaults":
                default_mode = words[1]
            elif section in ("frontend", "listen") and proxies:
                proxies[-1]["mode"] = words[1]
        elif words[0] == "bind" and section in ("frontend", "listen") and "ssl" in words[2:] and proxies:
            proxies[-1]["ssl"] = True
    return proxies


def _text(config: bytes | str) -> str:
    return config.decode("utf-8", "replace") if isinstance(config, bytes) else config


def listener_type(config: bytes | str) -> str:
    """TERMINATED_HTTPS if a bind has ``ssl``; else HTTP if a frontend is ``mode http``; else TCP."""
    proxies = _proxies(_text(config))
    if any(p["ssl"] for p in proxies):
        return TYPE_TERMINATED_HTTPS
    if any(p["mode"] == "http" for p in proxies):
        return TYPE_HTTP
    return TYPE_TCP


def frontends(config: bytes | str) -> list[tuple[str, str]]:
    """(name, TCP | HTTP | TERMINATED_HTTPS) of every ``frontend`` section, in order.

    A load balancer's frontends are its Octavia listeners (named by listener
    id); the type follows Octavia's agent: TERMINATED_HTTPS when a bind has
    ``ssl`` (``ssl crt-list ...``), else the frontend's mode. Octavia's
    internal prometheus frontend is not a listener.
    """
    result = []
    for p in _proxies(_text(config)):
        if p["section"] != "frontend" or not p["name"] or "prometheus" in p["name"]:
            continue
        kind = TYPE_TERMINATED_HTTPS if p["ssl"] else TYPE_HTTP if p["mode"] == "http" else TYPE_TCP
        result.append((p["name"], kind))
    return result


def global_setting(config: bytes | str, keyword: str) -> str | None:
    """The arguments of the first ``keyword`` line in a ``global`` section (joined by spaces), or None."""
    for section, words in _config_lines(_text(config)):
        if section == "global" and words[0] == keyword:
            return " ".join(words[1:])
    return None


@dataclass(frozen=True)
class Bind:
    """One TCP address haproxy will listen on."""

    host: str   # "" for the wildcard of ``family``
    port: int
    family: int  # socket.AF_INET or AF_INET6
    freebind: bool = False

    def __str__(self):
        host = self.host or ("*" if self.family == socket.AF_INET else "::")
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


_TCP_PREFIXES = {"": None, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "tcp": None,
                 "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}


def _parse_address(item: str, freebind: bool) -> list[Bind]:
    prefix, at, rest = item.partition("@")
    if not at:
        prefix, rest = "", item
    prefix = prefix.lower()
    if prefix not in _TCP_PREFIXES or rest.startswith("/") or "$" in rest:
        return []  # unix, abns, fd, sockpair, udp, quic, or an environment variable
    family = _TCP_PREFIXES[prefix]
    if rest.startswith("["):
        host, sep, ports = rest[1:].partition("]:")
        if not sep:
            return []
    else:
        host, sep, ports = rest.rpartition(":")
        if not sep:
            return []
    if host in ("", "*"):
        host = ""
        family = family or socket.AF_INET
    else:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return []  # a host name: haproxy resolves it; the bind test cannot guess
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        host = str(ip)
        if ip.is_unspecified:
            host = ""
    first, dash, last = ports.partition("-")
    try:
        low = int(first)
        high = int(last) if dash else low
    except ValueError:
        return []
    if not (0 < low <= high <= 65535) or high - low > 1024:
        return []
    return [Bind(host, port, family, freebind) for port in range(low, high + 1)]


def bind_addresses(config: bytes | str) -> list[Bind]:
    """The TCP addresses of every ``bind`` line in frontend and listen sections."""
    result: list[Bind] = []
    in_frontend = False
    for section, words in _config_lines(_text(config)):
        if words[0] == "__section__":
            in_frontend = section in ("frontend", "listen")
            if section == "listen" and len(words) > 2:  # "listen name addr:port" (old syntax)
                for item in words[2].split(","):
                    result.extend(_parse_address(item, False))
            continue
        if in_frontend and words[0] == "bind" and len(words) > 1:
            freebind = "transparent" in words[2:] or "freebind" in words[2:]
            for item in words[1].split(","):
                result.extend(_parse_address(item, freebind))
    seen, unique = set(), []
    for b in result:
        if b not in seen:
            seen.add(b)
            unique.append(b)
    return unique
