"""The agent's INI configuration, parsed once into immutable objects.

Every section is a frozen dataclass whose fields *are* the schema: each field
carries its parser in its metadata, and a field without a default is required.
Anything the file says that the schema does not know is an error, and every
error names ``section.option`` so an operator can find it in one look.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import socket
import uuid
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization


class ConfigError(Exception):
    """The configuration is unusable; ``str()`` is one line naming the option."""


_REQUIRED = object()


def opt(parse: Callable[[str], Any], default: Any = _REQUIRED, secret: bool = False,
        help: str = "", example: str | None = None) -> Any:
    """Declare an option: ``parse`` turns the raw string into its value.

    A ``secret`` option is left out of the section's repr, so printing or
    logging a configuration object never shows it. ``help`` (reStructuredText)
    and, for a required option, ``example`` (the raw value the sample shows)
    are the option's documentation: ``amphora.configdoc`` generates
    ``docs/configuration.rst`` and ``conf/amphora-agent.conf`` from them.
    """
    required = default is _REQUIRED
    return field(
        default=None if required else default,
        repr=not secret,
        metadata={"parse": parse, "required": required, "help": help, "example": example},
    )


# -- parsers: each takes the raw string and raises ValueError with a reason --

def parse_uuid(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ValueError(f"not a UUID: {raw!r}") from None


def parse_ip(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError(f"not an IP address: {raw!r}") from None


def parse_port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"not a port number: {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range 0-65535: {port}")
    return port


def _number(kind: type, minimum: float | None = None) -> Callable[[str], Any]:
    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"not a {kind.__name__}: {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value
    return parse


positive_int = _number(int, 1)
non_negative_int = _number(int, 0)
positive_float = _number(float, 0.001)


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_path(raw: str) -> str:
    raw = raw.strip()
    if not raw:
        raise ValueError("empty path")
    return os.path.abspath(raw)


def parse_executable(raw: str) -> str:
    path = parse_path(raw)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ValueError(f"not an executable file: {path}")
    return path


_NAMESPACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_namespace(raw: str) -> str:
    """A network namespace name (a file under /var/run/netns), or "" for the agent's own."""
    raw = raw.strip()
    if raw and (not _NAMESPACE_NAME.fullmatch(raw) or raw in (".", "..")):
        raise ValueError(f"not a usable namespace name: {raw!r} (letters, digits, '_', '.', '-')")
    return raw


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def parse_controllers(raw: str) -> tuple[tuple[str, int], ...]:
    """``ip:port`` / ``[v6]:port`` / ``name:port``, comma-separated."""
    result = []
    for item in parse_list(raw):
        if item.startswith("["):
            host, sep, port = item[1:].partition("]:")
            if not sep:
                raise ValueError(f"expected [address]:port, got {item!r}")
            parse_ip(host)
        else:
            host, sep, port = item.rpartition(":")
            if not sep or not host:
                raise ValueError(f"expected host:port, got {item!r}")
        port_number = parse_port(port)
        if port_number == 0:
            raise ValueError(f"port 0 in {item!r}")
        result.append((host, port_number))
    return tuple(result)


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"not a boolean (true/false): {raw!r}")


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value
    return parse


def parse_forward(raw: str) -> str:
    raw = raw.strip()
    if not raw:
        return ""
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme not in ("udp", "tcp"):
        raise ValueError(f"expected udp://host:port or tcp://host:port, got {raw!r}")
    parse_controllers(rest)
    return raw


# -- the schema --------------------------------------------------------------

@dataclass(frozen=True)
class AgentSection:
    """The amphora's identity, its API and where it keeps its files (layout: docs/architecture.rst)."""
    amphora_id: str = opt(parse_uuid, example="6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce", help=(
        "This amphora's UUID. Reported by ``/info``, ``/v0.1/details`` and the heartbeats."))
    hostname: str = opt(parse_str, "", help=(
        "Host name reported by the API and in forwarded log lines; empty: the system's host name."))
    bind_host: str = opt(parse_ip, "0.0.0.0", help=(
        "Address of the API (mutual TLS). ``::`` listens on IPv6 (and IPv4)."))
    bind_port: int = opt(parse_port, 9443, help="Port of the API.")
    state_dir: str = opt(parse_path, "/var/lib/amphora-agent", help=(
        "Persistent state: listener configurations and desired states, topology, plugged "
        "interfaces, heartbeat counters, the package inventory cache."))
    run_dir: str = opt(parse_path, "/run/amphora-agent", help=(
        "Runtime files: pid files, haproxy stats and master sockets, the listeners' log sockets "
        "(``logs/``), keepalived's files (``keepalived/``). Any length works: sockets beyond the "
        "kernel's path limit are reached through their directory's descriptor."))
    certs_dir: str = opt(parse_path, "/run/amphora-agent/certs", help=(
        "Listener TLS certificates (keys!): directory 0700, files 0600. Put this on a tmpfs; "
        "the agent warns at start when it is not on tmpfs or ramfs."))
    log_dir: str = opt(parse_path, "/var/log/amphora-agent", help=(
        "Per-listener haproxy logs: ``<uuid>.log`` (mode 0640) and its rotated backups."))
    max_certificate_bytes: int = opt(positive_int, 64 * 1024, help=(
        "Largest accepted certificate upload, bytes (413 above it)."))
    packages: tuple = opt(parse_list, (), help=(
        "Extra Debian packages to report in ``/v0.1/details`` (comma-separated; invalid names "
        "are logged and ignored)."))
    packages_max_age: float = opt(positive_float, 86400.0, help=(
        "Refresh the cached package inventory when it is older than this (seconds)."))
    access_log: bool = opt(parse_bool, True, help=(
        "One access-log event per API request (method, path, status, duration, client subject). "
        "Rendering it is most of the agent's own per-request cost (docs/testing.rst, "
        "Benchmarks); turn it off for controllers that poll at very high rates."))


@dataclass(frozen=True)
class TLSSection:
    """The API's mutual TLS: the agent's own certificate and the CA of its clients."""
    server_cert: str = opt(parse_path, example="/etc/octavia/certs/server.pem", help=(
        "The agent's certificate (PEM; leaf first, then the chain; CN = the amphora id, SANs for "
        "the addresses the controller uses). May also hold the key."))
    server_key: str = opt(parse_str, "", help=(
        "The private key (unencrypted PEM), when it is not in ``server_cert``. It must match "
        "the certificate."))
    client_ca: str = opt(parse_path, example="/etc/octavia/certs/client_ca.pem", help=(
        "CA certificate(s) that sign the controllers' client certificates."))


@dataclass(frozen=True)
class HAProxySection:
    """One haproxy per listener (docs/api.rst, Listeners)."""
    binary: str = opt(parse_executable, "/usr/sbin/haproxy", help="The haproxy binary (Debian's package).")
    max_config_bytes: int = opt(positive_int, 1024 * 1024, help=(
        "Largest accepted listener configuration upload, bytes (413 above it)."))
    stop_timeout: float = opt(positive_float, 30.0, help=(
        "How long a graceful stop (SIGUSR1) may wait for open connections before SIGTERM, "
        "then SIGKILL (seconds)."))
    start_timeout: float = opt(positive_float, 10.0, help=(
        "How long a start or reload may take to be confirmed, the wait for a reload's new worker "
        "included (seconds). Also bounds every ``haproxy -c``: when it runs out, haproxy and "
        "everything it forked are killed."))
    check_timeout: float = opt(positive_float, 120.0, help=(
        "Bound of ``haproxy -c``, start and reload of a 1.0 load balancer (seconds). Octavia sizes "
        "``tune.ssl.cachesize`` from the memory ``/details`` reports; haproxy then needs ~25 s on a "
        "24 GB host to allocate it."))


@dataclass(frozen=True)
class KeepalivedSection:
    """VRRP for ACTIVE-STANDBY pairs (docs/api.rst, Topology)."""
    binary: str = opt(parse_path, "/usr/sbin/keepalived", help=(
        "The keepalived binary, used in ACTIVE-STANDBY."))
    advert_int: float = opt(positive_float, 1.0, help=(
        "VRRP advertisement interval (seconds). A non-integer value, or an IPv6 ha_ip, selects "
        "VRRPv3, which has no authentication: the VRRP secret is then not used."))
    transition_timeout: float = opt(positive_float, 60.0, help=(
        "A topology transition that takes longer than this is rolled back (seconds)."))


@dataclass(frozen=True)
class HeartbeatSection:
    """UDP heartbeats to the health managers (format: docs/heartbeat.rst)."""
    controllers: tuple = opt(parse_controllers, (), help=(
        "Where heartbeats go: comma-separated ``ip:port``, ``[v6]:port`` or ``name:port``. "
        "Empty: none are sent. Names are resolved at start, asynchronously (the first address "
        "is used); a name that fails is retried with a backoff (5 s doubling to 5 min) and "
        "does not delay the other controllers."))
    interval: float = opt(positive_float, 10.0, help=(
        "Seconds between heartbeats. The first goes out as soon as the agent has finished its "
        "start-up sequence (listeners adopted)."))
    key: str = opt(str, "", secret=True, help=(
        "HMAC key shared with the health managers (required when ``controllers`` is set). "
        "Never logged."))
    max_packet_bytes: int = opt(positive_int, 65000, help=(
        "Largest heartbeat datagram, capped at 65507 (the largest UDP payload); larger beats are "
        "reduced, never dropped. E.g. 1400 avoids IP fragmentation."))
    fanout: str = opt(choice("all", "round-robin"), "all", help=(
        "``all``: every controller gets every beat. ``round-robin``: one controller per beat, in "
        "turn, as Octavia's own agent does (if the chosen one cannot be sent to locally, the next "
        "one gets the beat). Octavia's health managers ADD the deltas they receive to one shared "
        "database (``octavia/statistics/drivers/update_db.py``): with several of them, use "
        "round-robin or statistics are counted once per controller."))


@dataclass(frozen=True)
class NetworkSection:
    """Where plugged interfaces live (docs/api.rst, Plugging)."""
    namespace: str = opt(parse_namespace, "", help=(
        "Network namespace for plugged interfaces, haproxy (and its bind check) and keepalived (Octavia uses "
        "``amphora-haproxy``); created at start when missing. Empty: the agent's own."))


@dataclass(frozen=True)
class LogsSection:
    """The listeners' haproxy logs, collected by the agent (docs/operations.rst, Listener logs)."""
    max_bytes: int = opt(positive_int, 10 * 1024 * 1024, help=(
        "Rotate a listener's log file before a line would push it past this size (bytes)."))
    backups: int = opt(non_negative_int, 5, help=(
        "Rotated files to keep per listener (``.1`` is the newest; 0: just start over)."))
    forward: str = opt(parse_forward, "", help=(
        "Also forward every haproxy log line as RFC 5424 syslog: ``udp://host:port`` or "
        "``tcp://host:port`` (IPv4, ``[IPv6]`` or a host name). Empty: off."))


@dataclass(frozen=True)
class OctaviaSection:
    """Paths an Octavia controller names inside what it uploads (its ``[haproxy_amphora]``
    ``base_path`` / ``base_cert_dir``): the agent makes them real for the 1.0 and 0.5 faces."""
    base_path: str = opt(parse_path, "/var/lib/octavia", help=(
        "Octavia's ``[haproxy_amphora] base_path``: the directory its uploaded haproxy configurations "
        "name (stats sockets, server-state files). The agent creates it and keeps load balancers there."))
    base_cert_dir: str = opt(parse_str, "", help=(
        "Octavia's ``[haproxy_amphora] base_cert_dir`` (certificates and crt-lists). "
        "Empty: ``<base_path>/certs``, as Octavia's own default."))

    @property
    def cert_dir(self) -> str:
        return os.path.abspath(self.base_cert_dir) if self.base_cert_dir else os.path.join(self.base_path, "certs")


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection
    tls: TLSSection
    haproxy: HAProxySection
    keepalived: KeepalivedSection
    heartbeat: HeartbeatSection
    network: NetworkSection
    logs: LogsSection
    octavia: OctaviaSection
    source: str = ""

    @property
    def hostname(self) -> str:
        return self.agent.hostname or socket.gethostname()


SECTIONS: dict[str, type] = {
    "agent": AgentSection,
    "tls": TLSSection,
    "haproxy": HAProxySection,
    "keepalived": KeepalivedSection,
    "heartbeat": HeartbeatSection,
    "network": NetworkSection,
    "logs": LogsSection,
    "octavia": OctaviaSection,
}


def _parse_section(name: str, cls: type, items: dict[str, str]) -> Any:
    known = {f.name: f for f in fields(cls)}
    for key in items:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown option")
    values = {}
    for key, f in known.items():
        if key in items:
            try:
                values[key] = f.metadata["parse"](items[key])
            except ValueError as e:
                raise ConfigError(f"{name}.{key}: {e}") from None
        elif f.metadata["required"]:
            raise ConfigError(f"{name}.{key}: required option is missing")
        elif f.default is MISSING:  # pragma: no cover - schema bug
            raise ConfigError(f"{name}.{key}: no default")
    return cls(**values)


def parse_config(text: str, source: str = "<string>") -> AgentConfig:
    """Parse and validate configuration text (file checks included)."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    parser.optionxform = str  # option names are case-sensitive and exact
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"{source}: {first}") from None
    for section in parser.sections():
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section")
    sections = {}
    for name, cls in SECTIONS.items():
        items = dict(parser.items(name)) if parser.has_section(name) else {}
        if name in ("agent", "tls") and not parser.has_section(name):
            raise ConfigError(f"{name}: required section is missing")
        sections[name] = _parse_section(name, cls, items)
    config = AgentConfig(source=source, **sections)
    _check_tls(config.tls)
    _check_heartbeat(config.heartbeat)
    return config


def load_config(path: str) -> AgentConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return parse_config(text, source=path)


# -- cross-field checks ------------------------------------------------------

def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{option}: cannot read {path}: {e.strerror}") from None


def _load_certs(option: str, path: str) -> list[x509.Certificate]:
    data = _read(option, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{option}: no PEM certificate in {path}")
    return certs


def _check_tls(tls: TLSSection) -> None:
    leaf = _load_certs("tls.server_cert", tls.server_cert)[0]
    key_option = "tls.server_key" if tls.server_key else "tls.server_cert"
    key_path = tls.server_key or tls.server_cert
    key_data = _read(key_option, key_path)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ConfigError(f"{key_option}: private key in {key_path} is encrypted") from None
    except ValueError:
        raise ConfigError(f"{key_option}: no usable PEM private key in {key_path}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(enc, pub):
        raise ConfigError(f"{key_option}: private key does not match the certificate in tls.server_cert")
    _load_certs("tls.client_ca", tls.client_ca)


def _check_heartbeat(hb: HeartbeatSection) -> None:
    if hb.controllers and not hb.key:
        raise ConfigError("heartbeat.key: required (and non-empty) when heartbeat.controllers is set")
