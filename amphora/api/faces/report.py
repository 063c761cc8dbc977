"""What the Octavia faces report about the host: ``/info`` and ``/details`` in
Octavia's shapes, read only from what the agent already holds in memory (the
host facts, the sampler's published figures, the package inventory), so a
request never waits, forks or walks /proc.
"""

from __future__ import annotations

import os
import re

# haproxy_version must start with <major>.<minor>: the controller splits it on "."
# and uses the first two fields as integers.
_MAJOR_MINOR = re.compile(r"\d+\.\d+")
# Octavia's own field set of GET /1.0/details memory (kB).
MEMORY_FIELDS = ("total", "free", "buffers", "cached", "swap_used", "shared", "slab")
TUNED_ACTIVE_PROFILE = "/etc/tuned/active_profile"


def without_epoch(version: str) -> str:
    """A Debian version without its epoch ("1:2.2.7-1" -> "2.2.7-1")."""
    return version.split(":", 1)[1] if ":" in version else version


class HostReport:
    """Builds the Octavia faces' host documents from the agent's collaborators."""

    udp = None  # amphora.lvs.UdpListeners, set by build_faces when the agent has one

    def __init__(self, facts, sampler, topology, registry, namespace: str = "",
                 tuned_profile_path: str = TUNED_ACTIVE_PROFILE):
        self.facts = facts
        self.sampler = sampler
        self.topology = topology
        self.registry = registry
        self.namespace = namespace
        self.tuned_profile_path = tuned_profile_path
        self._tuned: str | None = None

    # -- versions ------------------------------------------------------------------

    def _versions(self) -> dict[str, str]:
        """The package inventory's versions ({} for a sampler without one)."""
        packages = self.sampler.packages
        return dict(packages.versions) if packages is not None else {}

    def _package(self, name: str) -> str | None:
        return self._versions().get(name)

    def haproxy_version(self) -> str:
        """The Debian package version (``2.6.12-1+deb12u4``), as Octavia's agent reports it;
        ``haproxy -v``'s version when the package inventory has no answer (yet)."""
        package = self._package("haproxy")
        if package and _MAJOR_MINOR.match(without_epoch(package)):
            return without_epoch(package)
        return self.facts.haproxy_version

    def package_versions(self) -> dict:
        return {
            "keepalived_version": self._package("keepalived"),
            "ipvsadm_version": self._package("ipvsadm"),
        }

    def info(self, api_version: str) -> dict:
        return {
            "hostname": self.facts.hostname,
            "haproxy_version": self.haproxy_version(),
            "api_version": api_version,
            **self.package_versions(),
        }

    # -- details ---------------------------------------------------------------------

    def active_tuned_profiles(self) -> str:
        """The tuned profiles in force (``amphora`` makes the controller set nbthread);
        read once: the file is written at boot, not while the agent runs."""
        if self._tuned is None:
            try:
                with open(self.tuned_profile_path, encoding="utf-8", errors="replace") as f:
                    self._tuned = f.read().strip()
            except OSError:
                self._tuned = ""
        return self._tuned

    def networks(self) -> dict:
        """Byte counters (totals, like Octavia's agent) of the data-plane interfaces:
        those of the namespace when there is one, else the host's."""
        window = self.sampler.namespace_window if self.namespace else self.sampler.host_window
        if not window.samples:
            return {}
        _, counters = window.samples[-1]
        prefix = self.namespace + "/" if self.namespace else ""
        return {key[len(prefix):] if key.startswith(prefix) else key:
                {"network_tx": int(tx), "network_rx": int(rx)}
                for key, (_index, tx, rx) in sorted(counters.items())}

    def details(self, api_version: str, frontends: list[dict]) -> dict:
        sampler = self.sampler
        memory = sampler.memory
        document = {
            **self.info(api_version),
            "networks": self.networks(),
            "active": True,
            "haproxy_count": int(self.registry.running_count()),
            "cpu_count": os.cpu_count() or 1,
            # Percent of all CPUs over the last sampling interval (Octavia's agent sends
            # cumulative jiffies; no controller reads them).
            "cpu": dict(sampler.cpu),
            "memory": {name: int(memory.get(name, 0)) for name in MEMORY_FIELDS},
            "disk": {name: int(value) * 1024 for name, value in sampler.disk.items()},
            "load": [str(x) for x in sampler.load],
            "active_tuned_profiles": self.active_tuned_profiles(),
            "topology": self.topology.topology.replace("-", "_"),
            "topology_status": self.topology.status,
            "listeners": sorted({entry["uuid"] for entry in frontends}),
            "packages": self._versions(),
            "lvs_listener_process_count": 0,
        }
        if self.udp is not None:  # amphora.lvs: ip_vs, the LVS keepalived count, UDP listener ids
            extra = self.udp.details()
            document["listeners"] = sorted(set(document["listeners"]) | set(extra.pop("udp_listeners")))
            document.update(extra)
        return document
