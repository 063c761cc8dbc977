"""The amphora's topology: SINGLE, ACTIVE-STANDBY or ACTIVE-ACTIVE.

This is the state the rest of the agent consults: the document for
``GET /v0.1/topology``, ``active`` for the details and the heartbeat, and the
503 gate that every mutating route passes through (``check_gate``) while a
transition is in progress.

Transitions (``request``, given a ``TopologySpec`` parsed by
amphora.api.requests; it returns an ``Outcome``, which the route maps to a status):

- SINGLE <-> ACTIVE-ACTIVE involve no VRRP: applied and stored at once (APPLIED).
- Anything that starts, stops or reconfigures keepalived is asynchronous
  (STARTED): ``status`` is TOPOLOGY-CHANGE until keepalived runs and reports a
  VRRP state (or has stopped and ha_ip is gone), then OK. A transition that
  fails or outlasts ``[keepalived] transition_timeout`` is rolled back to the
  previous topology; the error is logged and shown as ``last_error``.
- The topology already in force is a no-op (UNCHANGED).

Stored atomically in ``<state_dir>/topology.json`` (mode 0600) only once a
transition has succeeded, so a crash mid-transition restarts with the last
good topology. The VRRP secret itself is never stored: only the 8-character
``auth_pass`` derived from it (see amphora.keepalived).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger

from amphora.errors import InvalidRequest, TopologyTransitionInProgress
from amphora.fsutil import atomic_write_json, read_json

if TYPE_CHECKING:
    from amphora.keepalived import VRRPSettings

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


@dataclass(frozen=True)
class TopologySpec:
    """A requested topology (parsed by amphora.api.requests.parse_topology).

    ``vrrp`` is set for ACTIVE-STANDBY only.
    """

    topology: str
    vrrp: VRRPSettings | None = None


class Outcome(enum.Enum):
    """What ``Topology.request`` did; the route decides what a client sees of it."""

    UNCHANGED = "unchanged"  # that topology was in force already
    APPLIED = "applied"      # done at once: no keepalived involved
    STARTED = "started"      # asynchronous: topology_status is TOPOLOGY-CHANGE until it is done


def _discard(d: defer.Deferred) -> None:
    """Cancel a waiter nobody will yield on any more, without an 'unhandled error' report."""
    if not d.called:
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        d.cancel()


class Topology:
    """The topology in force, its transitions and the 503 gate.

    ``attach(keepalived, clock, timeout, network)`` connects the keepalived adapter
    (amphora.keepalived.Keepalived); without it ACTIVE-STANDBY cannot be set.
    ``network`` (the plugger) is told when the VIPs change hands
    (``sync_vips``): the agent configures them outside ACTIVE-STANDBY,
    keepalived inside it (``keepalived_owns_vips``).
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
        self.network = None
        self._handed_over = False  # during a transition: the VIPs changed hands already
        self.clock = None
        self.transition_timeout = 60.0
        self.transition: defer.Deferred | None = None
        self._load()

    def _load(self):
        stored = read_json(self.path, {}) or {}
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

    def attach(self, keepalived, clock, transition_timeout: float, network=None) -> None:
        self.keepalived = keepalived
        self.clock = clock
        self.transition_timeout = transition_timeout
        self.network = network

    # -- what the rest of the agent reads ---------------------------------------

    @property
    def keepalived_owns_vips(self) -> bool:
        """In ACTIVE-STANDBY keepalived adds the VIPs on the MASTER alone; otherwise the
        agent configures them itself (a VIP on both amphorae would answer ARP/ND from both)."""
        return self.topology == ACTIVE_STANDBY

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

    def request(self, spec: TopologySpec) -> Outcome:
        """Start the change to ``spec``: done at once, a no-op, or started (asynchronous)."""
        self.check_gate()
        topology, settings = spec.topology, spec.vrrp
        if topology == self.topology and settings == self.settings:
            return Outcome.UNCHANGED
        uses_keepalived = ACTIVE_STANDBY in (topology, self.topology)
        if not uses_keepalived:
            log.info("topology: {old} -> {new}", old=self.topology, new=topology)
            self._commit(topology, None)
            return Outcome.APPLIED
        if self.keepalived is None:
            raise InvalidRequest("topology: ACTIVE-STANDBY is not available (no keepalived)")
        previous = (self.topology, self.settings)
        log.info("topology: {old} -> {new} (role {role}) started", old=self.topology, new=topology,
                 role=settings.role if settings else "-")
        self.status = STATUS_CHANGE
        self.topology, self.settings = topology, settings
        self.configured_role = settings.role if settings is not None else "ACTIVE"
        self.transition = self._transition(previous, topology, settings)
        return Outcome.STARTED

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
        self._handed_over = False
        try:
            yield self._with_timeout(self._enact(settings, previous[0]))
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
    def _enact(self, settings, previous_topology):
        """Make keepalived match ``settings`` (None = no keepalived); hand the VIPs over."""
        if settings is None:
            yield self.keepalived.stop()
            yield self._hand_over()  # after keepalived let go of them: the agent holds them again
            return
        if previous_topology != ACTIVE_STANDBY:
            yield self._hand_over()  # before keepalived starts: only its MASTER may hold them
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

    def _hand_over(self):
        """Let the plugger put the VIPs where the topology in force says (it never fails)."""
        self._handed_over = True
        return self.network.sync_vips() if self.network is not None else defer.succeed(None)

    @defer.inlineCallbacks
    def _rollback(self, previous):
        topology, settings = previous
        self.topology = topology  # the VIP owner is the previous one again
        handed_over, self._handed_over = self._handed_over, False
        try:
            if settings is None:
                yield self.keepalived.stop()
                if handed_over:
                    yield self._hand_over()
            else:
                if handed_over:  # before keepalived is back: the agent's copies go first
                    yield self._hand_over()
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
