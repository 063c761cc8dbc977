"""keepalived's configuration: VRRP settings, the derived auth_pass and router id,
the rendered ``keepalived.conf`` and the track script; pure functions.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

INSTANCE = "amphora"
CHECK_NAME = "amphora_check"
DEFAULT_PRIORITY = {"ACTIVE": 100, "STANDBY": 90}
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}

_AUTH_CONTEXT = b"amphora-agent vrrp auth_pass v1"


def auth_pass(secret: str) -> str:
    """The 8-character VRRP password derived from the whole shared secret.

    keepalived keeps only 8 characters of ``auth_pass``; a keyed hash of the
    full secret makes every character of the secret count, and the secret
    itself never reaches a file or a log.
    """
    return hmac.new(secret.encode("utf-8"), _AUTH_CONTEXT, hashlib.sha256).hexdigest()[:8]


def default_router_id(ha_ip: str) -> int:
    """A virtual_router_id (1-255) both peers derive alike from the shared ha_ip."""
    digest = hashlib.sha256(ipaddress.ip_address(ha_ip).packed).digest()
    return digest[0] % 255 + 1


@dataclass(frozen=True)
class VRRPSettings:
    """Everything that goes into one amphora's vrrp_instance (no secret: only its derived auth)."""

    role: str
    ha_ip: str
    auth: str
    interface: str = ""
    peers: tuple = ()
    virtual_router_id: int = 0
    priority: int = 0

    @property
    def effective_priority(self) -> int:
        return self.priority or DEFAULT_PRIORITY[self.role]

    @property
    def effective_router_id(self) -> int:
        return self.virtual_router_id or default_router_id(self.ha_ip)

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_address(self.ha_ip).version == 6

    def to_json(self) -> dict:
        return {"role": self.role, "ha_ip": self.ha_ip, "auth": self.auth, "interface": self.interface,
                "peers": list(self.peers), "virtual_router_id": self.virtual_router_id,
                "priority": self.priority}

    @classmethod
    def from_json(cls, doc: dict) -> "VRRPSettings":
        return cls(role=doc["role"], ha_ip=doc["ha_ip"], auth=doc["auth"],
                   interface=doc.get("interface", ""), peers=tuple(doc.get("peers", ())),
                   virtual_router_id=int(doc.get("virtual_router_id", 0)),
                   priority=int(doc.get("priority", 0)))


def format_interval(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def needs_vrrp3(advert_int: float, settings: VRRPSettings) -> bool:
    """VRRPv2 only knows whole-second intervals and IPv4."""
    return advert_int != int(advert_int) or settings.ipv6


def render_config(settings: VRRPSettings, *, interface: str, advert_int: float, fifo_path: str,
                  check_script: str, router_name: str) -> str:
    """keepalived.conf for one amphora of an ACTIVE-STANDBY pair.

    ``interface`` is the resolved VIP interface (``settings.interface`` or the
    one found in the namespace). The output is free of keepalived warnings,
    since ``keepalived -t`` treats any warning as a failure.
    """
    v3 = needs_vrrp3(advert_int, settings)
    prefix = 128 if settings.ipv6 else 32
    lines = [
        "# Written by amphora-agent on every topology change; do not edit.",
        "global_defs {",
        f"    router_id {router_name}",
        # script_user must come before notify_fifo: see the module docstring.
        "    script_user root",
        "    enable_script_security",
        f"    notify_fifo {fifo_path}",
    ]
    if v3:
        lines.append("    vrrp_version 3")
    lines += [
        "}",
        "",
        # Gives up MASTER (FAULT) when listeners exist but no haproxy serves them.
        f"vrrp_script {CHECK_NAME} {{",
        f'    script "{check_script}"',
        "    interval 1",
        "    timeout 2",
        "    fall 2",
        "    rise 2",
        "}",
        "",
        f"vrrp_instance {INSTANCE} {{",
        "    state BACKUP",
        f"    interface {interface}",
        f"    virtual_router_id {settings.effective_router_id}",
        f"    priority {settings.effective_priority}",
        f"    advert_int {format_interval(advert_int)}",
        "    nopreempt",
        # Gratuitous ARP / unsolicited NA on takeover, repeated once a second later.
        "    garp_master_delay 1",
        "    garp_master_repeat 3",
    ]
    if not v3:
        lines += [
            "    authentication {",
            "        auth_type PASS",
            f"        auth_pass {settings.auth}",
            "    }",
        ]
    if settings.peers:
        lines.append("    unicast_peer {")
        lines += [f"        {peer}" for peer in settings.peers]
        lines.append("    }")
    lines += [
        "    virtual_ipaddress {",
        f"        {settings.ha_ip}/{prefix} dev {interface}",
        "    }",
        "    track_script {",
        f"        {CHECK_NAME}",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def render_check_script(listeners_run_dir: str) -> str:
    """A /bin/sh check: succeed when no listener exists, or when one has a live haproxy.

    It reads only this agent's run directory (several amphorae may share a pid
    namespace in tests), forks nothing, and treats a pid as alive only if
    ``/proc/<pid>/comm`` says haproxy (pid files can go stale).
    """
    return f"""#!/bin/sh
# Written by amphora-agent: keepalived's vrrp_script. Exit 0 while this amphora can serve.
dir='{listeners_run_dir}'
found=0
for d in "$dir"/*/; do
    [ -d "$d" ] || continue
    found=1
    for p in "$d"*.pid; do
        [ -r "$p" ] || continue
        read -r pid < "$p" || [ -n "$pid" ] || continue
        case "$pid" in ''|*[!0-9]*) continue ;; esac
        [ -r "/proc/$pid/comm" ] || continue
        read -r comm < "/proc/$pid/comm" || true
        [ "$comm" = haproxy ] && exit 0
    done
done
[ "$found" = 0 ] && exit 0
exit 1
"""
