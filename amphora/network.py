"""Plug VIP / plug network: configure newly attached ports through netlink.

When the controller attaches a Neutron port to the amphora, a new interface
appears, down and unconfigured. ``POST /v0.1/plug/vip/<ip>`` and
``POST /v0.1/plug/network`` find that interface, optionally move it into the
configured ``[network] namespace`` (where haproxy and keepalived run), assign
addresses, MTU and routes, and bring it up. All of it is netlink through
pyroute2 -- never ``ip`` or ``ifup`` -- and what was plugged is persisted in
``<state_dir>/plugged.json`` so that ``restore()`` can re-apply it at start-up
(an amphora reboot loses every address), before the listeners bind the VIPs.

Layers, from the edge inwards:

- ``PlugSpec`` (amphora.netspec): what to apply, parsed from a request by
  amphora.api.requests (400 naming the field) or read back from plugged.json.
- ``choose_interface``: which link to plug, from plain ``Link`` records (404
  when none or several); a pure function.
- ``Netlink``: the only code touching pyroute2. Blocking; it runs in a thread
  (see ``NetworkPlugger``). Every call opens and closes its own ``IPRoute``, so
  no pyroute2 object is shared between threads.
- ``NetworkPlugger`` (``agent.network``): the domain object. One DeferredLock
  serialises every plug and the restore; netlink work goes to a thread; state
  is written atomically in the reactor thread.

Namespaces without forking: pyroute2 0.9 opens a socket in another namespace
(``IPRoute(netns=...)``) and creates namespaces (``netns.create``) by forking
a helper process, which is fragile in a multi-threaded process (the reactor
plus its thread pool). Here a short-lived thread does ``setns(2)`` (or
``unshare(2)``) and opens the netlink socket; a netlink socket stays bound to
the namespace it was created in, and the thread's namespace dies with the
thread, so no pooled thread is ever left in the wrong namespace and no
process is forked.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import re
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace

from twisted.internet.defer import DeferredLock, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from amphora.errors import AgentError, InvalidRequest, NoSuitableInterface, OperationFailed
from amphora.fsutil import atomic_write_json, read_json
from amphora.netns import CLONE_NEWNET, NETNS_RUN_DIR, setns
from amphora.netspec import PlugSpec

log = Logger()

STATE_FILE = "plugged.json"
STATE_VERSION = 1

VIP_FAILED = "Error plugging VIP"
PORT_FAILED = "Error plugging Port"

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
ARPHRD_ETHER = 1
IFA_F_NODAD = 0x02
RT_SCOPE_LINK = 253
# Interfaces a Neutron port can appear as: a NIC (virtio, SR-IOV VF: no link
# kind) or a veth (containers, tests). Bridges, bonds, VLANs, dummies, ifb and
# tunnel fallback devices (tunl0, sit0: not Ethernet anyway) are never ports,
# even when they are down.
PORT_KINDS = (None, "veth")

IFNAMSIZ = 16  # with the terminating NUL: names have at most 15 characters


# -- interface selection --------------------------------------------------------

@dataclass(frozen=True)
class Link:
    """What selection needs to know about one interface (from an RTM_NEWLINK dump)."""

    index: int
    name: str
    mac: str
    up: bool = False
    loopback: bool = False
    ether: bool = True
    kind: str | None = None
    master: int | None = None
    namespace: str = ""  # "" = the agent's own namespace

    def describe(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.name} ({self.mac}){where}"


def is_candidate(link: Link, plugged_macs) -> bool:
    """A newly attached port: down, an Ethernet NIC or veth, not enslaved, not plugged yet."""
    return (not link.up and not link.loopback and link.ether and link.kind in PORT_KINDS
            and link.master is None and link.mac not in plugged_macs)


def choose_interface(links: list[Link], plugged_macs, namespace: str = "", mac: str | None = None) -> Link:
    """The link to plug, or 404.

    With a MAC the choice is exact (the link's state does not matter). Without
    one, the single candidate; candidates already in the target namespace win
    over those still in the agent's own namespace (someone put them there for
    us), and several candidates with nothing to choose by is a 404 naming them.
    """
    if mac is not None:
        matches = [l for l in links if l.mac == mac and not l.loopback]
        if not matches:
            raise NoSuitableInterface(f"no interface with MAC address {mac}")
        matches.sort(key=lambda l: l.namespace != namespace)  # the one in the target namespace first
        return matches[0]
    candidates = [l for l in links if is_candidate(l, plugged_macs)]
    if namespace:
        inside = [l for l in candidates if l.namespace == namespace]
        candidates = inside or candidates
    if not candidates:
        raise NoSuitableInterface("no interface is down and unplugged")
    if len(candidates) > 1:
        names = ", ".join(l.describe() for l in sorted(candidates, key=lambda l: (l.namespace, l.name)))
        raise NoSuitableInterface(f"several candidate interfaces and no mac_address to choose by: {names}")
    return candidates[0]


# -- netlink (blocking; runs in a thread) ---------------------------------------

class NetlinkFailure(Exception):
    """A netlink step failed; ``str()`` names the step and the kernel's error."""

    def __init__(self, step: str, error: BaseException):
        code = getattr(error, "code", None) or getattr(error, "errno", None)
        if isinstance(error, OSError) and error.strerror:
            reason = error.strerror
        elif isinstance(code, int) and code > 0:
            reason = os.strerror(code)
        else:
            reason = str(error)
        super().__init__(f"{step}: {reason}" + (f" (errno {code})" if isinstance(code, int) else ""))
        self.step = step
        self.code = code


def _in_fresh_thread(fn):
    """Run ``fn`` in a new thread and return its result (or raise its error).

    For namespace switching: the thread's network namespace dies with it.
    """
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=run, name="amphora-netns", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def namespace_path(namespace: str) -> str:
    return os.path.join(NETNS_RUN_DIR, namespace)


def netlink_socket(namespace: str = "") -> socket.socket:
    """A NETLINK_ROUTE socket bound to ``namespace`` ("" = the caller's own)."""
    if not namespace:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)

    def open_inside():
        fd = os.open(namespace_path(namespace), os.O_RDONLY)
        try:
            setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)

    return _in_fresh_thread(open_inside)


# Per-namespace sysctls; a thread that entered the namespace sees that namespace's values.
NONLOCAL_BIND = ("/proc/sys/net/ipv4/ip_nonlocal_bind", "/proc/sys/net/ipv6/ip_nonlocal_bind")


def allow_nonlocal_bind(namespace: str) -> list[str]:
    """Let programs in ``namespace`` bind addresses no interface carries (yet); the paths changed.

    In ACTIVE-STANDBY keepalived puts the VIP on the MASTER only, while Octavia's
    haproxy configurations bind ``<VIP>:<port>`` on both amphorae: without this the
    STANDBY's haproxy cannot start, its VRRP check fails and it never takes over.
    A listener restored at boot before keepalived became MASTER would fail the same
    way. Octavia's amphora image sets the same two sysctls.
    """
    def inside():
        fd = os.open(namespace_path(namespace), os.O_RDONLY)
        try:
            setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
        changed = []
        for path in NONLOCAL_BIND:
            try:
                with open(path) as f:
                    if f.read().strip() == "1":
                        continue
                with open(path, "w") as f:
                    f.write("1\n")
            except FileNotFoundError:  # IPv6 disabled in this kernel
                continue
            changed.append(path)
        return changed

    return _in_fresh_thread(inside)


def create_namespace(namespace: str) -> bool:
    """Create the named namespace if missing (as ``ip netns add`` does); True if created."""
    from pyroute2 import netns as pr_netns

    if namespace in pr_netns.listnetns():
        return False

    def create():
        libc = _libc()
        if libc.unshare(CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"unshare: {os.strerror(code)}")
        # pyroute2's own create() forks; attach() does the same mount dance
        # for an existing namespace -- this thread's.
        pr_netns.attach(namespace, "thread-self", libc=libc)

    try:
        _in_fresh_thread(create)
    except OSError as e:
        if e.errno == errno.EEXIST:  # created meanwhile by someone else
            return False
        raise
    return True


@contextmanager
def iproute(namespace: str = ""):
    """An IPRoute on a socket in ``namespace``, opened and closed around one operation."""
    from pyroute2 import IPRoute

    sock = netlink_socket(namespace)
    try:
        ipr = IPRoute(use_socket=sock)
        try:
            yield ipr
        finally:
            ipr.close()
    finally:
        sock.close()


def link_from_msg(msg, namespace: str) -> Link:
    flags = msg["flags"]
    return Link(
        index=msg["index"],
        name=msg.get("ifname"),
        mac=(msg.get("address") or "").lower(),
        up=bool(flags & IFF_UP),
        loopback=bool(flags & IFF_LOOPBACK),
        ether=msg["ifi_type"] == ARPHRD_ETHER,
        kind=msg.get(("linkinfo", "kind")),
        master=msg.get("master"),
        namespace=namespace,
    )


def free_name(name: str, taken) -> str:
    """A name like ``name`` not in ``taken``: eth1 -> eth2 (the lowest free ethN, from 1)."""
    match = re.fullmatch(r"(.*?)(\d+)", name)
    prefix = match.group(1) if match and match.group(1) else name
    for n in range(1, 100000):
        candidate = prefix[:IFNAMSIZ - 1 - len(str(n))] + str(n)
        if candidate not in taken:
            return candidate
    raise ValueError(f"no free interface name like {name}")  # pragma: no cover - 100000 interfaces


class Netlink:
    """Blocking pyroute2 operations for one agent (own namespace + ``namespace``).

    ``home`` names the namespace where new ports appear and the agent lives
    ("" = the calling process's own); tests point it at a namespace of their
    own so they never touch the host's interfaces. Link records keep saying
    "" for it.
    """

    def __init__(self, namespace: str = "", home: str = ""):
        self.namespace = namespace
        self.home = home

    def _ns(self, tag: str) -> str:
        return tag or self.home

    def _step(self, step: str, fn, *args, **kwargs):
        from pyroute2 import NetlinkError

        try:
            return fn(*args, **kwargs)
        except (NetlinkError, OSError) as e:
            raise NetlinkFailure(step, e) from None

    def ensure_namespace(self) -> None:
        """The target namespace exists, its loopback is up (haproxy health checks, stats) and
        non-local binds are allowed in it (``allow_nonlocal_bind``)."""
        if not self.namespace:
            return
        if self._step(f"creating namespace {self.namespace}", create_namespace, self.namespace):
            log.info("created network namespace {namespace}", namespace=self.namespace)
        with iproute(self._ns(self.namespace)) as ipr:
            for msg in ipr.get_links():
                if msg["flags"] & IFF_LOOPBACK and not msg["flags"] & IFF_UP:
                    self._step("bringing up lo", ipr.link, "set", index=msg["index"], state="up")
        for path in self._step(f"allowing non-local binds in namespace {self.namespace}",
                               allow_nonlocal_bind, self.namespace):
            log.info("network namespace {namespace}: {path} = 1 (listeners bind VIPs they do not hold yet)",
                     namespace=self.namespace, path=path)

    def links(self) -> list[Link]:
        """Every link of the agent's namespace and of the target namespace."""
        result = []
        for ns in dict.fromkeys(("", self.namespace)):
            with iproute(self._ns(ns)) as ipr:
                result.extend(link_from_msg(m, ns) for m in self._step("listing links", ipr.get_links))
        return result

    def find(self, mac: str) -> Link | None:
        matches = [l for l in self.links() if l.mac == mac and not l.loopback]
        matches.sort(key=lambda l: l.namespace != self.namespace)
        return matches[0] if matches else None

    def apply(self, link: Link, spec: PlugSpec) -> Link:
        """Move ``link`` into the target namespace if needed and configure it per ``spec``.

        Idempotent: addresses already present are kept, routes are replaced.
        On failure the addresses this call added are removed and the link is
        put back down (so a retry finds it again); the error is raised.
        """
        if link.namespace != self.namespace:
            link = self._move(link)
        added = []
        with iproute(self._ns(self.namespace)) as ipr:
            try:
                if spec.mtu is not None:
                    self._step(f"setting MTU {spec.mtu} on {link.name}", ipr.link, "set",
                               index=link.index, mtu=spec.mtu)
                present = {}
                for msg in self._step(f"listing addresses of {link.name}", ipr.get_addr, index=link.index):
                    present.setdefault(msg.get("address"), []).append(msg["prefixlen"])
                for cidr in spec.addresses:
                    iface = ipaddress.ip_interface(cidr)
                    ip, prefixlen = str(iface.ip), iface.network.prefixlen
                    if prefixlen in present.get(ip, ()):
                        continue
                    for other in present.get(ip, ()):  # same address, other prefix: replace it
                        self._step(f"removing {ip}/{other} from {link.name}", ipr.addr, "del",
                                   index=link.index, address=ip, prefixlen=other)
                    extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
                    # NODAD: the VIP belongs to this port (Neutron guarantees it); a
                    # tentative address would make haproxy's bind fail for a second or two.
                    self._step(f"adding address {cidr} on {link.name}", ipr.addr, "add",
                               index=link.index, address=ip, prefixlen=prefixlen, **extra)
                    added.append((ip, prefixlen))
                if not link.up:
                    self._step(f"bringing up {link.name}", ipr.link, "set", index=link.index, state="up")
                on_port = {ipaddress.ip_interface(a).network for a in spec.addresses}
                for subnet in spec.links:  # an additional VIP's subnet, reached on this link
                    if ipaddress.ip_network(subnet) in on_port:
                        continue  # the kernel's own prefix route is there: keep it (and its src)
                    family = socket.AF_INET6 if ":" in subnet else socket.AF_INET
                    self._step(f"adding on-link route {subnet}", ipr.route, "replace", dst=subnet,
                               oif=link.index, family=family, scope=RT_SCOPE_LINK)
                if spec.gateway:
                    family = socket.AF_INET6 if ":" in spec.gateway else socket.AF_INET
                    dst = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
                    self._step(f"setting default route via {spec.gateway}", ipr.route, "replace",
                               dst=dst, gateway=spec.gateway, oif=link.index, family=family)
                for route in spec.routes:
                    family = socket.AF_INET6 if ":" in route.nexthop else socket.AF_INET
                    self._step(f"adding route {route.destination} via {route.nexthop}", ipr.route,
                               "replace", dst=route.destination, gateway=route.nexthop, oif=link.index,
                               family=family)
            except NetlinkFailure:
                self._undo(ipr, link, added)
                raise
        return replace(link, up=True)

    def withdraw(self, link: Link, addresses) -> None:
        """Remove ``addresses`` ("ip/prefixlen") from ``link`` where present: the VIP host
        addresses the agent configured, when keepalived takes the VIPs over."""
        with iproute(self._ns(self.namespace)) as ipr:
            present = {(m.get("address"), m["prefixlen"])
                       for m in self._step(f"listing addresses of {link.name}", ipr.get_addr, index=link.index)}
            for cidr in addresses:
                iface = ipaddress.ip_interface(cidr)
                ip, prefixlen = str(iface.ip), iface.network.prefixlen
                if (ip, prefixlen) in present:
                    self._step(f"removing {cidr} from {link.name}", ipr.addr, "del", index=link.index,
                               address=ip, prefixlen=prefixlen)

    def _undo(self, ipr, link: Link, added) -> None:
        for ip, prefixlen in reversed(added):
            try:
                ipr.addr("del", index=link.index, address=ip, prefixlen=prefixlen)
            except Exception as e:  # noqa: BLE001 - best effort, the original error matters
                log.warn("could not remove {ip}/{prefixlen} from {name}: {error}", ip=ip, prefixlen=prefixlen,
                         name=link.name, error=e)
        if not link.up:
            try:
                ipr.link("set", index=link.index, state="down")
            except Exception as e:  # noqa: BLE001
                log.warn("could not put {name} back down: {error}", name=link.name, error=e)

    def _move(self, link: Link) -> Link:
        """Move ``link`` from the agent's namespace into the target one; the moved Link.

        The kernel names a hot-plugged NIC with the lowest free ``ethN`` of the
        namespace it appears in, so the second port is often ``eth1`` again
        while the first ``eth1`` already sits in the target namespace: such a
        port is renamed to the next free name there as it moves (as Octavia does).
        """
        target = self.namespace
        with iproute(self._ns(self.namespace)) as ipr:
            taken = {m.get("ifname") for m in self._step("listing links", ipr.get_links)}
        name = link.name if link.name not in taken else free_name(link.name, taken)
        fd = self._step(f"opening namespace {self.namespace}", os.open, namespace_path(self.namespace),
                        os.O_RDONLY)
        try:
            with iproute(self._ns(link.namespace)) as ipr:
                rename = {"ifname": name} if name != link.name else {}
                self._step(f"moving {link.name} into namespace {target}", ipr.link, "set",
                           index=link.index, net_ns_fd=fd, **rename)
        finally:
            os.close(fd)
        with iproute(self._ns(self.namespace)) as ipr:
            for msg in ipr.get_links():
                moved = link_from_msg(msg, self.namespace)
                if moved.mac == link.mac and not moved.loopback:
                    return moved
        raise NetlinkFailure(f"moving {link.name} into namespace {target}",
                             OSError(errno.ENODEV, "interface not found after the move"))


# -- the domain object ------------------------------------------------------------

@dataclass
class _Entry:
    spec: PlugSpec
    name: str = ""


class NetworkPlugger:
    """``agent.network``: plug VIPs and networks, remember them, restore them at start.

    ``run_blocking(fn, *args)`` runs netlink work off the reactor thread and
    returns a Deferred (default: the reactor's thread pool); tests inject a
    synchronous one together with a fake ``netlink``.
    """

    def __init__(self, config, reactor, netlink=None, run_blocking=None, vip_owner=None):
        self.namespace = config.network.namespace
        if self.namespace:
            # Parsed configurations are checked already; this guards any other
            # caller, with the parser's own definition (the name becomes a path).
            from amphora.config import ConfigError, parse_namespace

            try:
                parse_namespace(self.namespace)
            except ValueError as e:
                raise ConfigError(f"network.namespace: {e}") from None
        self.reactor = reactor
        self.path = os.path.join(config.agent.state_dir, STATE_FILE)
        self.netlink = netlink if netlink is not None else Netlink(self.namespace)
        if run_blocking is None:
            def run_blocking(fn, *args):
                return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)
        self._run = run_blocking
        # The topology: its keepalived_owns_vips says who configures the VIPs.
        self.vip_owner = vip_owner
        self._lock = DeferredLock()
        self._entries: dict[str, _Entry] = self._load()

    # -- state --------------------------------------------------------------

    def _load(self) -> dict[str, _Entry]:
        doc = read_json(self.path, {}) or {}
        entries = {}
        for i, item in enumerate(doc.get("interfaces") or []):
            try:
                spec = PlugSpec.from_json(item)
            except (AgentError, AttributeError, KeyError, TypeError) as e:
                log.error("ignoring unusable entry {i} in {path}: {error}", i=i, path=self.path, error=e)
                continue
            entries[spec.mac] = _Entry(spec, str(item.get("name") or ""))
        return entries

    def _save(self) -> None:
        atomic_write_json(self.path, {
            "version": STATE_VERSION,
            "namespace": self.namespace,
            "interfaces": [e.spec.to_json(e.name) for _, e in sorted(self._entries.items())],
        })

    def plugged(self) -> dict:
        """What is plugged: {"namespace", "interfaces": [{mac, name, vips, addresses, mtu, gateway, host_routes}]}."""
        return {"namespace": self.namespace,
                "interfaces": [e.spec.to_json(e.name) for _, e in sorted(self._entries.items())]}

    def vip_interface(self, vip: str) -> str | None:
        """The name of the interface carrying ``vip`` (for keepalived), if plugged."""
        for entry in self._entries.values():
            if vip in entry.spec.vips:
                return entry.name
        return None

    def _keepalived_vips(self) -> bool:
        return self.vip_owner is not None and self.vip_owner.keepalived_owns_vips

    def _entry_for_vip(self, vip: str) -> _Entry | None:
        return next((e for e in self._entries.values() if vip in e.spec.vips), None)

    # -- operations ---------------------------------------------------------

    def plug_vip(self, vip: str, spec: PlugSpec):
        """Plug ``vip`` (validated by amphora.api.requests); Deferred[str] of the details."""
        return self._lock.run(self._plug, spec, VIP_FAILED, vip)

    def plug_network(self, spec: PlugSpec):
        """Plug the newly attached network port; Deferred[str] of the details."""
        return self._lock.run(self._plug, spec, PORT_FAILED, None)

    @inlineCallbacks
    def _plug(self, spec: PlugSpec, failure_message: str, vip: str | None):
        existing = None
        if vip is not None:
            existing = self._entry_for_vip(vip)
            if existing is not None and spec.mac is not None and spec.mac != existing.spec.mac:
                raise InvalidRequest(f"VIP {vip} is already plugged on interface {existing.name} "
                                     f"({existing.spec.mac}), not {spec.mac}")
        if existing is None and spec.mac is not None:
            existing = self._entries.get(spec.mac)
        already = existing is not None and (vip is None or vip in existing.spec.vips)
        plugged_macs, owned = set(self._entries), self._keepalived_vips()
        try:
            if existing is not None:
                # A bare replug (no body) re-applies what is recorded; a body is
                # authoritative and merged in.
                bare = vip is not None and spec == PlugSpec.host_vip(vip)
                target = existing.spec if already and bare else existing.spec.merged(spec)
                link = yield self._run(self._apply_existing, target, owned)
            else:
                link, target = yield self._run(self._apply_new, spec, plugged_macs, owned)
        except AgentError:
            raise
        except NetlinkFailure as e:
            log.error("{what}: {error}", what=failure_message, error=str(e))
            raise OperationFailed(str(e), message=failure_message) from None
        except Exception as e:  # noqa: BLE001 - pyroute2 can raise more than NetlinkError
            log.failure("{what}", what=failure_message)
            raise OperationFailed(f"{type(e).__name__}: {e}", message=failure_message) from None
        self._entries[target.mac] = _Entry(target, link.name)
        self._save()
        where = f" in namespace {self.namespace}" if self.namespace else ""
        if vip is None:
            log.info("plugged interface {name} ({mac}){where}: {addresses}", name=link.name, mac=link.mac,
                     where=where, addresses=", ".join(target.addresses) or "no addresses")
            return f"Interface {link.name} already plugged" if already else f"Plugged interface {link.name}"
        log.info("plugged VIP {vip} on interface {name} ({mac}){where}", vip=vip, name=link.name,
                 mac=link.mac, where=where)
        if already:
            return f"VIP {vip} already plugged on interface {link.name}"
        return f"VIP {vip} plugged on interface {link.name}"

    def _apply_new(self, spec: PlugSpec, plugged_macs, keepalived_vips: bool):
        """Thread: choose the interface, then configure it."""
        self.netlink.ensure_namespace()
        link = choose_interface(self.netlink.links(), plugged_macs, self.namespace, spec.mac)
        target = replace(spec, mac=link.mac)
        return self.netlink.apply(link, target.configured(keepalived_vips)), target

    def _apply_existing(self, spec: PlugSpec, keepalived_vips: bool) -> Link:
        """Thread: re-apply an already plugged interface (found by MAC); 404 if it vanished."""
        self.netlink.ensure_namespace()
        link = self.netlink.find(spec.mac)
        if link is None:
            raise NoSuitableInterface(f"the interface plugged with MAC address {spec.mac} is gone")
        return self.netlink.apply(link, spec.configured(keepalived_vips))

    def restore(self):
        """Re-apply everything in plugged.json (start-up, before listeners); never fails.

        Each interface is found again by MAC (names can change across reboots)
        and configured as recorded; a missing one is logged and kept on record.
        """
        return self._lock.run(self._restore)

    @inlineCallbacks
    def _restore(self):
        if not self.namespace and not self._entries:
            return  # nothing to prepare, nothing to restore
        try:
            yield self._run(self.netlink.ensure_namespace)
        except Exception as e:  # noqa: BLE001 - start-up must go on; listeners will report
            log.error("cannot prepare network namespace {namespace}: {error}", namespace=self.namespace,
                      error=e)
            return
        changed, owned = False, self._keepalived_vips()
        for mac, entry in sorted(self._entries.items()):
            try:
                link = yield self._run(self._restore_one, entry.spec, owned)
            except Exception as e:  # noqa: BLE001
                log.error("cannot restore interface {mac} ({name}): {error}", mac=mac, name=entry.name,
                          error=e)
                continue
            if link is None:
                log.warn("plugged interface {mac} ({name}) is not present; not restored", mac=mac,
                         name=entry.name)
                continue
            log.info("restored interface {name} ({mac}): {addresses}", name=link.name, mac=mac,
                     addresses=", ".join(entry.spec.addresses) or "no addresses")
            if link.name != entry.name:
                entry.name, changed = link.name, True
        if changed:
            self._save()

    def _restore_one(self, spec: PlugSpec, keepalived_vips: bool) -> Link | None:
        link = self.netlink.find(spec.mac)
        return None if link is None else self.netlink.apply(link, spec.configured(keepalived_vips))

    def sync_vips(self):
        """Put every recorded VIP where the topology now says (``vip_owner``): on its interface
        as a host address, or -- keepalived's, in ACTIVE-STANDBY -- off it. Called by the
        topology when the VIPs change hands; never fails (a problem is logged)."""
        return self._lock.run(self._sync_vips)

    @inlineCallbacks
    def _sync_vips(self):
        owned = self._keepalived_vips()
        holder = "keepalived" if owned else "the agent"
        for mac, entry in sorted(self._entries.items()):
            if not entry.spec.vip_host_addresses():
                continue  # its VIPs are port addresses: they stay whoever holds the others
            try:
                yield self._run(self._sync_one, entry.spec, owned)
            except Exception as e:  # noqa: BLE001 - the topology change goes on; this is logged
                log.error("cannot hand the VIPs of {name} ({mac}) to {holder}: {error}", name=entry.name,
                          mac=mac, holder=holder, error=e)
                continue
            log.info("VIPs {vips} on {name} now held by {holder}", vips=", ".join(entry.spec.vips),
                     name=entry.name, holder=holder)

    def _sync_one(self, spec: PlugSpec, keepalived_vips: bool) -> None:
        link = self.netlink.find(spec.mac)
        if link is None:
            return
        if keepalived_vips:
            self.netlink.withdraw(link, spec.vip_host_addresses())
        else:
            self.netlink.apply(link, spec.configured(False))

