"""The amphora's topology: SINGLE, ACTIVE-STANDBY or ACTIVE-ACTIVE.

This is the state the rest of the agent consults: the document for
``GET /v0.1/topology``, ``active`` for the details and the heartbeat, and the
503 gate that every mutating route passes through (``check_gate``) while a
transition is in progress.

Transitions (``request``):

- SINGLE <-> ACTIVE-ACTIVE involve no VRRP: applied and stored at once (200).
- Anything that starts, stops or reconfigures keepalived is asynchronous
  (202): ``status`` is TOPOLOGY-CHANGE until keepalived runs and reports a
  VRRP state (or has stopped and ha_ip is gone), then OK. A transition that
  fails or outlasts ``[keepalived] transition_timeout`` is rolled back to the
  previous topology; the error is logged and shown as ``last_error``.
- The topology already in force is a 200 no-op.

Stored atomically in ``<state_dir>/topology.json`` (mode 0600) only once a
transition has succeeded, so a crash mid-transition restarts with the last
good topology. The VRRP secret itself is never stored: only the 8-character
``auth_pass`` derived from it (see amphora.keepalived).
"""

from __future__ import annotations

import ipaddress
import os
import re

from twisted.internet import defer
from twisted.logger import Logger

from amphora.errors import InvalidRequest, TopologyTransitionInProgress
from amphora.fsutil import atomic_write_json, read_state

log = Logger()

SINGLE = "SINGLE"
ACTIVE_STANDBY = "ACTIVE-STANDBY"
ACTIVE_ACTIVE = "ACTIVE-ACTIVE"
TOPOLOGIES = (SINGLE, ACTIVE_STANDBY, ACTIVE_ACTIVE)
ROLES = ("ACTIVE", "STANDBY")

STATUS_OK = "OK"
STATUS_CHANGE = "TOPOLOGY-CHANGE"

# keepalived's VRRP state -> the spec's role.
_LIVE_ROLE = {"MASTER": "ACTIVE", "BACKUP": "STANDBY", "FAULT": "STANDBY", "STOP": "STANDBY"}

_FIELDS = ("topology", "role", "ha_ip", "secret", "peers", "interface", "virtual_router_id", "priority")
_VRRP_ONLY = ("role", "ha_ip", "secret", "peers", "interface", "virtual_router_id", "priority")
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,14}")
MAX_SECRET = 1024
MAX_PEERS = 16


def _given(value) -> bool:
    return value is not None and value != "" and value != []


def _int_field(body, name, low, high, problems):
    value = body.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append(f"{name}: must be an integer from {low} to {high}, got {value!r}")
        return 0
    return value


def validate(body: dict):
    """The request as (topology, VRRPSettings | None), or InvalidRequest naming every bad field."""
    from amphora.keepalived import VRRPSettings, auth_pass

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
        return topology, None

    role = body.get("role")
    if role is None:
        problems.append("role: required for ACTIVE-STANDBY (ACTIVE or STANDBY)")
    elif role not in ROLES:
        problems.append(f"Unknown role: {role}")

    ha_ip = body.get("ha_ip")
    address = None
    if not _given(ha_ip):
        problems.append("ha_ip: required for ACTIVE-STANDBY")
    elif not isinstance(ha_ip, str):
        problems.append(f"ha_ip: not an IP address: {ha_ip!r}")
    else:
        try:
            address = ipaddress.ip_address(ha_ip.strip())
        except ValueError:
            problems.append(f"ha_ip: not an IP address: {ha_ip!r}")
        else:
            if (address.is_unspecified or address.is_multicast or address.is_loopback
                    or address.is_link_local):
                problems.append(f"ha_ip: not usable as a virtual address: {address}")
                address = None

    secret = body.get("secret")
    if not _given(secret):
        problems.append("secret: required for ACTIVE-STANDBY")
    elif not isinstance(secret, str) or len(secret) > MAX_SECRET or not secret.isprintable():
        # Never echo the secret back, not even a bad one.
        problems.append(f"secret: must be a printable string of at most {MAX_SECRET} characters")

    peers = body.get("peers")
    parsed_peers: list[str] = []
    if peers is not None:
        if not isinstance(peers, list) or len(peers) > MAX_PEERS:
            problems.append(f"peers: must be a list of at most {MAX_PEERS} IP addresses")
        else:
            for i, peer in enumerate(peers):
                try:
                    ip = ipaddress.ip_address(peer.strip() if isinstance(peer, str) else peer)
                    if not isinstance(peer, str):
                        raise ValueError
                except ValueError:
                    problems.append(f"peers[{i}]: not an IP address: {peer!r}")
                    continue
                if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
                    problems.append(f"peers[{i}]: not usable as a VRRP peer: {ip}")
                elif address is not None and ip.version != address.version:
                    problems.append(f"peers[{i}]: IPv{ip.version} peer for an IPv{address.version} ha_ip")
                elif address is not None and ip == address:
                    problems.append(f"peers[{i}]: is the ha_ip itself")
                elif str(ip) in parsed_peers:
                    problems.append(f"peers[{i}]: duplicate peer {ip}")
                else:
                    parsed_peers.append(str(ip))

    interface = body.get("interface")
    if interface is not None and (not isinstance(interface, str) or not _IFNAME.fullmatch(interface)):
        problems.append(f"interface: not an interface name: {interface!r}")

    router_id = _int_field(body, "virtual_router_id", 1, 255, problems)
    priority = _int_field(body, "priority", 1, 254, problems)
    if problems:
        raise InvalidRequest("; ".join(problems))
    return ACTIVE_STANDBY, VRRPSettings(role=role, ha_ip=str(address), auth=auth_pass(secret),
                                        interface=interface or "", peers=tuple(parsed_peers),
                                        virtual_router_id=router_id, priority=priority)


def _discard(d: defer.Deferred) -> None:
    """Cancel a waiter nobody will yield on any more, without an 'unhandled error' report."""
    if not d.called:
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        d.cancel()


class Topology:
    """The topology in force, its transitions and the 503 gate.

    ``attach(keepalived, clock, timeout)`` connects the keepalived adapter
    (amphora.keepalived.Keepalived); without it ACTIVE-STANDBY cannot be set.
    """

    def __init__(self, state_dir: str, hostname: str, amphora_id: str):
        self.path = os.path.join(state_dir, "topology.json")
        self.hostname = hostname
        self.amphora_id = amphora_id
        self.topology = SINGLE
        self.configured_role = "ACTIVE"
        self.settings = None
        self.status = STATUS_OK
        self.last_error = None
        self.keepalived = None
        self.clock = None
        self.transition_timeout = 60.0
        self.transition: defer.Deferred | None = None
        self._load()

    def _load(self):
        stored, _ = read_state(self.path, dict, {})  # wrong type: moved aside, logged, SINGLE
        topology = stored.get("topology", SINGLE)
        if topology not in TOPOLOGIES:
            return
        if topology == ACTIVE_STANDBY:
            from amphora.keepalived import VRRPSettings
            try:
                self.settings = VRRPSettings.from_json(stored["vrrp"])
            except (KeyError, TypeError, ValueError):
                log.error("topology: {path} has no usable VRRP settings; starting as SINGLE", path=self.path)
                return
            self.configured_role = self.settings.role
        self.topology = topology

    def attach(self, keepalived, clock, transition_timeout: float) -> None:
        self.keepalived = keepalived
        self.clock = clock
        self.transition_timeout = transition_timeout

    # -- what the rest of the agent reads ---------------------------------------

    @property
    def ha_ip(self) -> str:
        return self.settings.ha_ip if self.settings is not None else ""

    @property
    def vrrp_state(self):
        if self.topology != ACTIVE_STANDBY or self.keepalived is None:
            return None
        return self.keepalived.vrrp_state

    @property
    def role(self) -> str:
        """The live role: keepalived's VRRP state in ACTIVE-STANDBY (it changes on its own
        when the peer fails). The configured role while a transition waits for the first
        report; STANDBY when keepalived reports nothing outside one (crashed, restarting):
        a node without VRRP does not hold the VIP."""
        state = self.vrrp_state
        if state is not None:
            return _LIVE_ROLE.get(state, "STANDBY")
        if self.topology == ACTIVE_STANDBY and self.status == STATUS_OK and self.keepalived is not None:
            return "STANDBY"
        return self.configured_role

    @property
    def active(self) -> bool:
        """True when this amphora carries traffic: always outside ACTIVE-STANDBY, else only as VRRP MASTER."""
        if self.topology != ACTIVE_STANDBY:
            return True
        return self.vrrp_state == "MASTER"

    def check_gate(self) -> None:
        """Raise the spec's 503 while a topology transition is in progress."""
        if self.status == STATUS_CHANGE:
            raise TopologyTransitionInProgress()

    def document(self) -> dict:
        doc = {
            "hostname": self.hostname,
            "uuid": self.amphora_id,
            "topology": self.topology,
            "role": self.role,
            "ha_ip": self.ha_ip,
            "topology_status": self.status,
        }
        if self.last_error:
            doc["last_error"] = self.last_error
        return doc

    def save(self) -> None:
        doc = {"topology": self.topology, "role": self.configured_role, "ha_ip": self.ha_ip}
        if self.settings is not None:
            doc["vrrp"] = self.settings.to_json()
        # 0600: the derived VRRP password is a credential, even if not the secret.
        atomic_write_json(self.path, doc, mode=0o600)

    # -- transitions ----------------------------------------------------------------

    def request(self, body: dict) -> int:
        """Validate and start a change; returns 200 (done or no-op) or 202 (in progress)."""
        self.check_gate()
        topology, settings = validate(body)
        if topology == self.topology and settings == self.settings:
            return 200
        uses_keepalived = ACTIVE_STANDBY in (topology, self.topology)
        if not uses_keepalived:
            log.info("topology: {old} -> {new}", old=self.topology, new=topology)
            self._commit(topology, None)
            return 200
        if self.keepalived is None:
            raise InvalidRequest("topology: ACTIVE-STANDBY is not available (no keepalived)")
        previous = (self.topology, self.settings)
        log.info("topology: {old} -> {new} (role {role}) started", old=self.topology, new=topology,
                 role=settings.role if settings else "-")
        self.status = STATUS_CHANGE
        self.topology, self.settings = topology, settings
        self.configured_role = settings.role if settings is not None else "ACTIVE"
        self.transition = self._transition(previous, topology, settings)
        return 202

    def _commit(self, topology, settings):
        self.topology, self.settings = topology, settings
        self.configured_role = settings.role if settings is not None else "ACTIVE"
        self.save()
        self.status = STATUS_OK
        self.last_error = None

    def _with_timeout(self, d: defer.Deferred) -> defer.Deferred:
        return d.addTimeout(self.transition_timeout, self.clock)

    @defer.inlineCallbacks
    def _transition(self, previous, topology, settings):
        try:
            yield self._with_timeout(self._enact(settings))
        except Exception as e:
            error = self._describe(e)
            log.error("topology: transition to {new} failed, rolling back to {old}: {error}",
                      new=topology, old=previous[0], error=error)
            yield self._rollback(previous)
            self.last_error = f"transition to {topology} failed: {error}"
        else:
            self._commit(topology, settings)
            log.info("topology: now {topology} (role {role})", topology=topology, role=self.role)
        finally:
            self.status = STATUS_OK
            self.transition = None

    def _describe(self, e: Exception) -> str:
        if isinstance(e, defer.TimeoutError) or isinstance(e, defer.CancelledError):
            return f"no VRRP state from keepalived within {self.transition_timeout:g}s"
        return getattr(e, "details", None) or str(e) or type(e).__name__

    @defer.inlineCallbacks
    def _enact(self, settings):
        """Make keepalived match ``settings`` (None = no keepalived)."""
        if settings is None:
            yield self.keepalived.stop()
            return
        state = self.keepalived.wait_state()
        try:
            was_running = self.keepalived.running
            yield self.keepalived.apply(settings)
            if was_running:
                # A reload reports no new state when nothing changed; keepalived having
                # survived the reload for a moment is the signal then.
                yield self._settle()
                if not self.keepalived.running:
                    raise RuntimeError("keepalived exited after the reload")
            else:
                yield state
        finally:
            _discard(state)

    def _settle(self):
        from twisted.internet.task import deferLater
        return deferLater(self.clock, 1.0, lambda: None)

    @defer.inlineCallbacks
    def _rollback(self, previous):
        topology, settings = previous
        try:
            if settings is None:
                yield self.keepalived.stop()
            else:
                yield self.keepalived.apply(settings)
        except Exception as e:
            log.error("topology: rollback to {old} failed too: {error}", old=topology, error=self._describe(e))
        self.topology, self.settings = topology, settings
        self.configured_role = settings.role if settings is not None else "ACTIVE"

    @defer.inlineCallbacks
    def restore(self):
        """Re-apply the stored topology at start-up. keepalived is started and the gate is
        held until it reports a VRRP state (bounded by the transition timeout); start-up itself
        does not wait for VRRP."""
        if self.keepalived is None:
            return
        if self.topology != ACTIVE_STANDBY:
            yield self.keepalived.stop_leftover()
            return
        self.status = STATUS_CHANGE
        state = self.keepalived.wait_state()
        try:
            yield self.keepalived.apply(self.settings)
        except Exception as e:
            _discard(state)
            self.status = STATUS_OK
            self.last_error = f"restoring ACTIVE-STANDBY failed: {self._describe(e)}"
            log.error("topology: {error}", error=self.last_error)
            return
        self._with_timeout(state).addBoth(self._restored)

    def _restored(self, result):
        self.status = STATUS_OK
        if isinstance(result, Exception) or hasattr(result, "value"):
            error = result.value if hasattr(result, "value") else result
            self.last_error = f"restoring ACTIVE-STANDBY: {self._describe(error)}"
            log.error("topology: {error}", error=self.last_error)
        else:
            log.info("topology: ACTIVE-STANDBY restored (VRRP {state})", state=result)
        return None
