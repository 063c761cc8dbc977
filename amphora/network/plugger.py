"""``NetworkPlugger`` (``agent.network``): the domain object of plug VIP / plug network.

One DeferredLock serialises every plug and the restore; netlink work goes to
a thread; what was plugged is persisted in ``<state_dir>/plugged.json``
(written atomically in the reactor thread) so ``restore()`` can re-apply it
at start-up.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace

from twisted.internet.defer import DeferredLock, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from amphora.errors import AgentError, InvalidRequest, NoSuitableInterface, OperationFailed
from amphora.fsutil import atomic_write_json, read_json
from amphora.netlink import NetlinkFailure
from amphora.network.links import Link, Netlink, choose_interface
from amphora.netspec import MIN_MTU_IPV6, PlugSpec

log = Logger()

STATE_FILE = "plugged.json"
STATE_VERSION = 1

VIP_FAILED = "Error plugging VIP"
PORT_FAILED = "Error plugging Port"

# -- the domain object ------------------------------------------------------------

def check_mtu(spec: PlugSpec, name: str) -> None:
    """400 if ``spec`` (what is plugged merged with a request) sets an MTU below 1280 on an interface
    that carries IPv6: the kernel would drop every IPv6 address of the link, VIPs included."""
    if spec.mtu is None or spec.mtu >= MIN_MTU_IPV6:
        return
    ipv6 = [a for a in dict.fromkeys((*spec.addresses, *spec.vips)) if ipaddress.ip_interface(a).version == 6]
    if ipv6:
        raise InvalidRequest(f"mtu: {spec.mtu} is below {MIN_MTU_IPV6}, the minimum for IPv6, and interface "
                             f"{name or spec.mac} carries IPv6 addresses: {', '.join(ipv6)}")


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
                check_mtu(target, existing.name)  # before anything changes
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
