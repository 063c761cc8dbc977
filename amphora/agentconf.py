"""Agent configuration updates from an Octavia controller (``PUT /1.0/config``,
``PUT /0.5/config``).

The body is the oslo.config INI Octavia renders for its own agent
(``amphora_agent_conf.template``). What this agent understands is mapped onto
its own configuration:

==========================================  =====================================
Octavia option                              here
==========================================  =====================================
``[health_manager] controller_ip_port_list``  ``[heartbeat] controllers``
``[health_manager] heartbeat_interval``       ``[heartbeat] interval``
``[health_manager] heartbeat_key``            ``[heartbeat] key``
``[controller_worker] loadbalancer_topology`` the topology of the 1.0 face
                                              (``SINGLE`` / ``ACTIVE_STANDBY``)
``[amphora_agent] amphora_id``                must be this amphora's (else 400)
==========================================  =====================================

Heartbeat destinations, interval and key apply at once (the next beat goes to
the new addresses, signed with the new key; Octavia's agent changes the same
options live, its "mutable" ones). Every other key is kept for the record in
the saved document and logged once per distinct set. The update is saved
atomically (``<state_dir>/octavia-agent-config.json``, 0600: it holds the key)
and laid over the configuration file at every start, so a restart keeps it.
A malformed body (not INI, a bad value) is a 400 and changes nothing.
"""

from __future__ import annotations

import configparser
import dataclasses
import os

from twisted.logger import Logger

from amphora.config import AgentConfig, parse_controllers, parse_uuid
from amphora.errors import InvalidRequest
from amphora.fsutil import atomic_write_json, read_json

log = Logger()

FILENAME = "octavia-agent-config.json"
TOPOLOGIES = ("SINGLE", "ACTIVE_STANDBY")
APPLIED = {
    ("health_manager", "controller_ip_port_list"),
    ("health_manager", "heartbeat_interval"),
    ("health_manager", "heartbeat_key"),
    ("controller_worker", "loadbalancer_topology"),
    ("amphora_agent", "amphora_id"),
}


@dataclasses.dataclass(frozen=True)
class OctaviaAgentConfig:
    """What one body sets (None: not named in it) and what it names that is not applied."""

    controllers: tuple | None = None
    interval: float | None = None
    key: str | None = None
    topology: str | None = None
    recorded: dict = dataclasses.field(default_factory=dict)  # "section.option" -> value, not applied

    def document(self) -> dict:
        return {"controllers": [list(c) for c in self.controllers] if self.controllers is not None else None,
                "interval": self.interval, "key": self.key, "topology": self.topology, "recorded": self.recorded}

    @classmethod
    def from_document(cls, doc: dict) -> OctaviaAgentConfig:
        controllers = doc.get("controllers")
        return cls(tuple((h, int(p)) for h, p in controllers) if controllers is not None else None,
                   doc.get("interval"), doc.get("key"), doc.get("topology"), dict(doc.get("recorded") or {}))


def _bad(details: str) -> InvalidRequest:
    return InvalidRequest(details, message="Invalid agent configuration")


def parse_octavia_config(body: bytes, amphora_id: str) -> OctaviaAgentConfig:
    """The options of an Octavia agent configuration body, or 400 naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("the body is not UTF-8 text") from None
    # [DEFAULT] is a section like the others here (never merged into the rest).
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\x00none")
    parser.optionxform = str
    try:
        parser.read_string(text, source="body")
    except configparser.Error as e:
        raise _bad(str(e).splitlines()[0]) from None
    values = {(section, option): value for section in parser.sections()
              for option, value in parser.items(section, raw=True)}
    get = values.get
    try:
        controllers = get(("health_manager", "controller_ip_port_list"))
        controllers = parse_controllers(controllers) if controllers is not None else None
        interval = get(("health_manager", "heartbeat_interval"))
        if interval is not None:
            try:
                interval = float(interval)
            except ValueError:
                raise ValueError(f"heartbeat_interval {interval[:40]!r} is not a number") from None
            if not 0 < interval <= 3600:
                raise ValueError(f"heartbeat_interval {interval} is not in (0, 3600]")
    except ValueError as e:
        raise _bad(f"[health_manager] {e}") from None
    key = get(("health_manager", "heartbeat_key"))
    if key is not None and not key:
        raise _bad("[health_manager] heartbeat_key is empty")
    topology = get(("controller_worker", "loadbalancer_topology"))
    if topology is not None and topology not in TOPOLOGIES:
        raise _bad(f"[controller_worker] loadbalancer_topology {topology[:40]!r} is not one of {', '.join(TOPOLOGIES)}")
    named = get(("amphora_agent", "amphora_id"))
    if named is not None:
        try:
            named = parse_uuid(named)
        except ValueError as e:
            raise _bad(f"[amphora_agent] amphora_id: {e}") from None
        if named != amphora_id:
            raise _bad(f"[amphora_agent] amphora_id {named} is not this amphora ({amphora_id})")
    recorded = {f"{s}.{o}": v for (s, o), v in sorted(values.items()) if (s, o) not in APPLIED}
    return OctaviaAgentConfig(controllers, interval, key, topology, recorded)


def _heartbeat_overlay(config: AgentConfig, update: OctaviaAgentConfig) -> AgentConfig:
    changes = {name: value for name, value in (("controllers", update.controllers), ("interval", update.interval),
                                               ("key", update.key)) if value is not None}
    if not changes:
        return config
    return dataclasses.replace(config, heartbeat=dataclasses.replace(config.heartbeat, **changes))


def saved_path(config: AgentConfig) -> str:
    return os.path.join(config.agent.state_dir, FILENAME)


def load_saved(config: AgentConfig) -> tuple[AgentConfig, OctaviaAgentConfig | None]:
    """At start: ``config`` with the last saved update laid over it (and that update)."""
    doc = read_json(saved_path(config))
    if not isinstance(doc, dict):
        return config, None
    try:
        update = OctaviaAgentConfig.from_document(doc)
    except (TypeError, ValueError, AttributeError):
        log.error("ignoring {path}: not a saved agent configuration update", path=saved_path(config))
        return config, None
    log.info("agent configuration: the update saved in {path} applies (heartbeat to {controllers})",
             path=saved_path(config), controllers=update.controllers)
    return _heartbeat_overlay(config, update), update


class AgentConfigUpdates:
    """Applies and saves controller updates; ``heartbeat`` is the running
    ``amphora.heartbeat.emitter.HeartbeatService`` (its ``reconfigure``)."""

    def __init__(self, config: AgentConfig, heartbeat, saved: OctaviaAgentConfig | None = None, network=None):
        self.config = config
        self.heartbeat = heartbeat
        self.network = network  # the topology decides who holds plugged VIPs (amphora.vrrp.VipOwnership)
        self.current = saved or OctaviaAgentConfig()
        self._logged_recorded: frozenset = frozenset(self.current.recorded)

    @property
    def topology(self) -> str | None:
        """The load-balancer topology the controller named (None: never told)."""
        return self.current.topology

    def update(self, body: bytes) -> None:
        update = parse_octavia_config(body, self.config.agent.amphora_id)
        merged = self._merge(update)
        hb = _heartbeat_overlay(self.config, merged).heartbeat
        if hb.controllers and not hb.key:
            raise _bad("[health_manager] heartbeat_key is required with controller_ip_port_list")
        atomic_write_json(saved_path(self.config), merged.document(), 0o600)
        previous_topology, self.current = self.current.topology, merged
        self.heartbeat.reconfigure(hb.controllers, hb.interval, hb.key)
        if merged.topology != previous_topology and self.network is not None:
            self.network.sync_vips().addErrback(lambda f: log.failure("handing the VIPs over", f))
        log.info("agent configuration updated: heartbeat every {interval}s to {controllers}, topology {topology}",
                 interval=hb.interval, controllers=", ".join(f"{h}:{p}" for h, p in hb.controllers) or "nobody",
                 topology=merged.topology or "not named")
        recorded = frozenset(update.recorded)
        if recorded and recorded != self._logged_recorded:
            self._logged_recorded = recorded
            log.info("agent configuration: kept for the record, not applied: {keys}", keys=", ".join(sorted(recorded)))

    def _merge(self, update: OctaviaAgentConfig) -> OctaviaAgentConfig:
        """An option a body does not name keeps its previous update's value."""
        old = self.current
        pick = (lambda new, previous: previous if new is None else new)
        return OctaviaAgentConfig(pick(update.controllers, old.controllers), pick(update.interval, old.interval),
                                  pick(update.key, old.key), pick(update.topology, old.topology),
                                  update.recorded)
