"""Why haproxy could not bind an address: listening sockets that are not its own, or a failed bind.

Blocking (reads /proc, asks sock_diag): ``HAProxy.bind_conflicts`` runs it in
a thread, or as ``python -m amphora.listeners.haproxy bind-check JSON`` inside
the listener's network namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from amphora.listeners.cfgtext import Bind


# -- bind conflicts -----------------------------------------------------------------

_TCP_LISTEN = "0A"


def _hex_ip(hex_addr: str, family: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/tcp6 prints four host-order 32-bit words
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    return str(ipaddress.IPv6Address(b"".join(words)))


def listening_sockets(proc: str = "/proc") -> list[tuple[int, str, int, int]]:
    """(family, ip, port, inode) of every TCP socket in LISTEN state in this network namespace.

    Asks the kernel through sock_diag netlink (filtered by state: cheap even
    with tens of thousands of TIME_WAIT sockets); falls back to /proc/net/tcp.
    """
    try:
        return _listening_sockets_diag()
    except Exception:
        return _listening_sockets_proc(proc)


def _listening_sockets_diag() -> list[tuple[int, str, int, int]]:
    from amphora.pyroute2lean import part

    diag_module = part("netlink.diag")  # not pyroute2/__init__: ~190 modules
    DiagSocket, SS_LISTEN = diag_module.DiagSocket, diag_module.SS_LISTEN  # noqa: N806

    result = []
    with DiagSocket() as diag:
        diag.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in diag.get_sock_stats(family=family, states=1 << SS_LISTEN):
                result.append((family, str(ipaddress.ip_address(msg.get("idiag_src"))),
                               int(msg.get("idiag_sport")), int(msg.get("idiag_inode"))))
    return result


def _listening_sockets_proc(proc: str = "/proc") -> list[tuple[int, str, int, int]]:
    result = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(os.path.join(proc, "thread-self", "net", name)) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != _TCP_LISTEN:
                continue
            addr, port = parts[1].split(":")
            result.append((family, _hex_ip(addr, family), int(port, 16), int(parts[9])))
    return result


def socket_inodes(pids, proc: str = "/proc") -> set[int]:
    inodes = set()
    for pid in pids:
        fd_dir = os.path.join(proc, str(pid), "fd")
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(os.path.join(fd_dir, name))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _owner_of(inode: int, proc: str = "/proc") -> str:
    wanted = f"socket:[{inode}]"
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        fd_dir = os.path.join(proc, entry, "fd")
        try:
            for name in os.listdir(fd_dir):
                try:
                    if os.readlink(os.path.join(fd_dir, name)) == wanted:
                        try:
                            with open(os.path.join(proc, entry, "comm")) as f:
                                comm = f.read().strip()
                        except OSError:
                            comm = "?"
                        return f"pid {entry} ({comm})"
                except OSError:
                    continue
        except OSError:
            continue
    return "another process"


def _overlaps(family: int, ip: str, bind: Bind) -> bool:
    wildcard = ipaddress.ip_address(ip).is_unspecified
    if family == bind.family:
        return wildcard or not bind.host or ip == bind.host
    # A dual-stack IPv6 wildcard also holds the IPv4 port (and the other way round).
    if family == socket.AF_INET6 and wildcard:
        return True
    if bind.family == socket.AF_INET6 and not bind.host:
        return True
    return False


def _try_bind(bind: Bind) -> str | None:
    s = socket.socket(bind.family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind.freebind:
            s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
        s.bind((bind.host or ("0.0.0.0" if bind.family == socket.AF_INET else "::"), bind.port))
        return None
    except OSError as e:
        return os.strerror(e.errno) if e.errno else str(e)
    finally:
        s.close()


def find_bind_conflicts(binds: list[Bind], own_pids, proc: str = "/proc") -> list[str]:
    """Why each of ``binds`` cannot be used by this listener's haproxy (empty: all fine).

    Blocking (reads /proc): run it in a thread or a helper process inside the
    listener's network namespace. A TCP listening socket on an overlapping
    address that does not belong to ``own_pids`` (the listener's master and
    workers) is a conflict: haproxy would otherwise share it silently through
    SO_REUSEPORT. A port nobody listens on is bound once for real (without
    SO_REUSEPORT) to catch addresses that are not local or not permitted.
    """
    listening = listening_sockets(proc)
    own = socket_inodes(own_pids, proc) if own_pids else set()
    problems = []
    for bind in binds:
        holders = [(fam, ip, port, inode) for fam, ip, port, inode in listening
                   if port == bind.port and _overlaps(fam, ip, bind)]
        foreign = [h for h in holders if h[3] not in own]
        if foreign:
            problems.append(f"bind {bind}: address already in use by {_owner_of(foreign[0][3], proc)}")
            continue
        if holders:
            continue  # our own haproxy holds it: the reload takes it over
        error = _try_bind(bind)
        if error and not (bind.port < 1024 and os.geteuid() != 0 and error == os.strerror(errno.EACCES)):
            problems.append(f"bind {bind}: cannot bind: {error}")
    return problems
