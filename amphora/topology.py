"""The amphora's topology: SINGLE, ACTIVE-STANDBY or ACTIVE-ACTIVE.

This is the state the rest of the agent consults: the document for
``GET /v0.1/topology`` and the 503 gate that every mutating route passes
through (``check_gate``) while a transition is in progress.

Stored atomically in ``<state_dir>/topology.json``.
"""

from __future__ import annotations

import os

from amphora.errors import TopologyTransitionInProgress
from amphora.fsutil import atomic_write_json, read_json

SINGLE = "SINGLE"
ACTIVE_STANDBY = "ACTIVE-STANDBY"
ACTIVE_ACTIVE = "ACTIVE-ACTIVE"
TOPOLOGIES = (SINGLE, ACTIVE_STANDBY, ACTIVE_ACTIVE)

STATUS_OK = "OK"
STATUS_CHANGE = "TOPOLOGY-CHANGE"


class Topology:
    def __init__(self, state_dir: str, hostname: str, amphora_id: str):
        self.path = os.path.join(state_dir, "topology.json")
        self.hostname = hostname
        self.amphora_id = amphora_id
        stored = read_json(self.path, {}) or {}
        self.topology = stored.get("topology", SINGLE)
        self.role = stored.get("role", "ACTIVE")
        self.ha_ip = stored.get("ha_ip", "")
        self.status = STATUS_OK
        self.last_error = None

    @property
    def active(self) -> bool:
        """True when this amphora should carry traffic (always, outside ACTIVE-STANDBY)."""
        return self.topology != ACTIVE_STANDBY or self.role == "ACTIVE"

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
        atomic_write_json(self.path, {"topology": self.topology, "role": self.role, "ha_ip": self.ha_ip})
