"""keepalived driven by an Octavia controller (``PUT /1.0/vrrp/upload``,
``PUT /1.0/vrrp/<start|stop|reload>``, the same under ``/0.5``).

The controller renders the whole keepalived configuration itself (Octavia's
``keepalived_base.template``: one ``vrrp_instance`` named after the load
balancer, unicast peers, ``nopreempt``, a ``vrrp_script`` at
``<base_path>/vrrp/check_script.sh``). The agent:

- keeps the controller's text as ``<base_path>/vrrp/octavia-keepalived.conf``
  (Octavia's own place for it), and makes the paths it names real:
  ``<base_path>/vrrp/check_script.sh`` runs every script in
  ``<base_path>/vrrp/check_scripts/`` and sums their exit codes, as Octavia's
  does; ``check_scripts/haproxy_check_script.sh`` succeeds when no load
  balancer exists or one of them has a live haproxy (from the agent's own pid
  files, so several amphorae can share a host). Any other script the
  configuration names must exist, or the upload is refused;
- runs it with the same supervisor as ``/v0.1/topology``
  (``amphora.keepalived.Keepalived``: same process, same pid files, same
  notify FIFO, adoption across agent restarts, SIGKILL clean-up). The live file
  is the controller's text with a ``global_defs`` block added in front
  (``script_user root``, ``enable_script_security``, ``notify_fifo``), so the
  VRRP role is learned from keepalived's own reports. Every upload is checked
  with ``keepalived -t`` in the namespace before it replaces the live file; a
  configuration keepalived refuses is a 400 and changes nothing;
- ``start`` of a running keepalived reloads it (SIGHUP: no restart, no new
  election), as Octavia's agent does; ``reload`` of a stopped one starts it;
  ``stop`` stops it and removes the addresses of its ``virtual_ipaddress``
  block. A keepalived that dies unasked has those addresses removed too (a
  SIGKILLed keepalived leaves them behind).

One owner of keepalived at a time: the controller owns it from ``vrrp/upload``
or ``vrrp/start`` until ``vrrp/stop``; meanwhile ``GET /v0.1/topology``
reports ACTIVE-STANDBY with the role keepalived reports and ``POST
/v0.1/topology`` is a 409. While ``/v0.1/topology`` is ACTIVE-STANDBY (or
changing), the ``vrrp`` calls are a 409. Ownership is saved
(``<state_dir>/controller-vrrp.json``): an agent restart re-adopts a running
keepalived the controller started.
"""

from __future__ import annotations

import ipaddress
import os
import re

from twisted.internet import defer
from twisted.logger import Logger

from amphora.errors import AgentError, InvalidRequest, OperationFailed
from amphora.fsutil import atomic_write, atomic_write_json, ensure_dir, read_json
from amphora.keepalived.config import render_check_script
from amphora.supervision import STARTING, STOPPED, STOPPING, RUNNING
from amphora.topology import ACTIVE_STANDBY, STATUS_OK

log = Logger()

ACTIONS = ("start", "stop", "reload")
_LIVE_ROLE = {"MASTER": "ACTIVE"}

CHECK_SCRIPT = """#!/bin/sh
# Written by amphora-agent: every script in check_scripts/ runs; the sum of their exit codes is the result.
status=0
for s in '{scripts}'/*; do
    [ -x "$s" ] || continue
    "$s"
    status=$((status + $?))
done
exit $status
"""


class KeepalivedOwned(AgentError):
    status = 409
    message = "Conflict"


def _instance(text: str) -> str:
    names = re.findall(r"^\s*vrrp_instance\s+(\S+)\s*\{", text, re.M)
    if len(names) != 1:
        raise InvalidRequest(f"expected one vrrp_instance, found {len(names)}",
                             message="Invalid keepalived configuration")
    return names[0]


def _block(text: str, name: str) -> list[str]:
    match = re.search(r"^\s*" + name + r"\s*\{([^{}]*)\}", text, re.M)
    return [line.strip() for line in match.group(1).splitlines() if line.strip()] if match else []


def virtual_addresses(text: str) -> tuple[str, ...]:
    """The addresses of ``virtual_ipaddress`` and ``virtual_ipaddress_excluded``."""
    found = []
    for name in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
        for line in _block(text, name):
            try:
                found.append(str(ipaddress.ip_interface(line.split()[0]).ip))
            except ValueError:
                continue
    return tuple(found)


def _interface(text: str) -> str:
    match = re.search(r"^\s*interface\s+(\S+)", text, re.M)
    return match.group(1) if match else ""


class VipOwnership:
    """Who configures the plugged VIPs (``NetworkPlugger.vip_owner``): keepalived when
    /v0.1/topology is ACTIVE-STANDBY, when the controller drives keepalived, or when the
    controller's configuration names ACTIVE_STANDBY (``[controller_worker]
    loadbalancer_topology``, as Octavia's own agent reads it in its VIP plug); the agent
    otherwise. A VIP on both amphorae of a pair would answer ARP/ND from both."""

    def __init__(self, topology, vrrp, agent_config):
        self.topology, self.vrrp, self.agent_config = topology, vrrp, agent_config

    @property
    def keepalived_owns_vips(self) -> bool:
        return bool(self.topology.keepalived_owns_vips or self.vrrp.owned
                    or self.agent_config.topology == "ACTIVE_STANDBY")


class ControllerVRRP:
    def __init__(self, config, reactor, keepalived, topology, network=None):
        self.reactor = reactor
        self.network = network  # its sync_vips hands plugged VIPs over when ownership changes
        self.keepalived = keepalived
        self.topology = topology
        self.directory = os.path.join(config.octavia.base_path, "vrrp")
        self.stored = os.path.join(self.directory, "octavia-keepalived.conf")
        self.check_script = os.path.join(self.directory, "check_script.sh")
        self.check_scripts = os.path.join(self.directory, "check_scripts")
        self.loadbalancers_run_dir = os.path.join(config.agent.run_dir, "loadbalancers")
        self.state_path = os.path.join(config.agent.state_dir, "controller-vrrp.json")
        state = read_json(self.state_path, {}) or {}
        self.owned = bool(state.get("owned"))
        self.wanted = bool(state.get("running"))
        self.instance = state.get("instance", "")
        self.vips: tuple = tuple(state.get("vips", ()))
        self.interface = state.get("interface", "")
        self._observing = None

    # -- ownership ------------------------------------------------------------------

    def check_v0_1(self) -> None:
        """POST /v0.1/topology: 409 while the controller drives keepalived."""
        if self.owned:
            raise KeepalivedOwned("keepalived is driven by the controller through /1.0/vrrp (until vrrp/stop)")

    def _check_controller(self) -> None:
        if self.topology is not None and (self.topology.topology == ACTIVE_STANDBY
                                          or self.topology.status != STATUS_OK):
            raise KeepalivedOwned("keepalived is driven by /v0.1/topology (ACTIVE-STANDBY): "
                                  "set SINGLE there first")

    def topology_document(self) -> dict | None:
        """GET /v0.1/topology while the controller owns keepalived, else None."""
        if not self.owned:
            return None
        state = self.keepalived.vrrp_state
        return {"hostname": self.topology.hostname, "uuid": self.topology.amphora_id,
                "topology": ACTIVE_STANDBY, "role": _LIVE_ROLE.get(state, "STANDBY"),
                "ha_ip": self.vips[0] if self.vips else "", "topology_status": STATUS_OK}

    def _save(self) -> None:
        atomic_write_json(self.state_path, {"owned": self.owned, "running": self.wanted, "instance": self.instance,
                                            "vips": list(self.vips), "interface": self.interface})

    # -- upload -------------------------------------------------------------------------

    def upload(self, body: bytes):
        self._check_controller()
        return self.keepalived._lock.run(self._upload, body)

    @defer.inlineCallbacks
    def _upload(self, body: bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("the keepalived configuration is not UTF-8 text") from None
        instance = _instance(text)
        self._write_scripts()
        for path in re.findall(r"^\s*script\s+\"?([^\s\"]+)", text, re.M):
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise InvalidRequest(f"the configuration names the script {path[:200]}, which does not exist here",
                                     message="Invalid keepalived configuration")
        k = self.keepalived
        ensure_dir(k.paths.directory, 0o700)
        atomic_write(k.paths.candidate, self._live_text(text).encode(), 0o600)
        try:
            yield k.check(k.paths.candidate)
        except OperationFailed as e:
            raise InvalidRequest(e.details, message="Invalid keepalived configuration") from None
        os.replace(k.paths.candidate, k.paths.config)
        atomic_write(self.stored, body, 0o644)
        self.owned, self.instance = True, instance
        self.vips, self.interface = virtual_addresses(text), _interface(text)
        self._save()
        log.info("controller VRRP: configuration of instance {instance} stored (VIPs {vips} on {interface})",
                 instance=instance, vips=", ".join(self.vips), interface=self.interface)

    def _write_scripts(self) -> None:
        ensure_dir(self.directory, 0o755)
        ensure_dir(self.check_scripts, 0o755)
        atomic_write(self.check_script, CHECK_SCRIPT.format(scripts=self.check_scripts).encode(), 0o755)
        atomic_write(os.path.join(self.check_scripts, "haproxy_check_script.sh"),
                     render_check_script(self.loadbalancers_run_dir).encode(), 0o755)

    def _live_text(self, text: str) -> str:
        defs = ["    script_user root", "    enable_script_security", f"    notify_fifo {self.keepalived.paths.fifo}"]
        if re.search(r"^\s*global_defs\s*\{", text, re.M):
            return re.sub(r"^(\s*global_defs\s*\{)", lambda m: m.group(1) + "\n" + "\n".join(defs), text,
                          count=1, flags=re.M)
        return "# Written by amphora-agent from the controller's configuration\nglobal_defs {\n" + \
            "\n".join(defs) + "\n}\n\n" + text

    # -- actions --------------------------------------------------------------------------

    def action(self, raw: str):
        action = raw.lower()
        if action not in ACTIONS:
            raise InvalidRequest(f"unknown action {raw[:40]!r}: one of {', '.join(ACTIONS)}",
                                 message="Unknown action")
        self._check_controller()
        if action != "stop" and not (os.path.exists(self.keepalived.paths.config) and os.path.exists(self.stored)):
            raise InvalidRequest("no keepalived configuration was uploaded (PUT vrrp/upload first)")
        run = self._stop if action == "stop" else self._start
        return self.keepalived._lock.run(run)

    def _sync_vips(self):
        return self.network.sync_vips() if self.network is not None else defer.succeed(None)

    @defer.inlineCallbacks
    def _start(self):
        k = self.keepalived
        self.owned = self.wanted = True
        self._save()
        yield self._sync_vips()  # plugged VIPs leave the agent: keepalived adds them on the MASTER
        k._wanted = True
        k.instance = self.instance
        k._open_fifo()
        if k.running:
            log.info("controller VRRP: keepalived runs; reloading")
            k.process.signal("HUP")
            return "keepalived reloaded"
        self._observe(k._ensure_process())
        orphan = k._running_pid()
        if orphan is not None and k.process.adopt(orphan):
            log.info("controller VRRP: adopted running keepalived pid {pid}; reloading", pid=orphan)
            k.process.signal("HUP")
            holds = yield self._holds_vip()
            k._set_state("MASTER" if holds else "BACKUP")
            return "keepalived reloaded"
        k._remove_pid_files()
        log.info("controller VRRP: starting keepalived (instance {instance})", instance=self.instance)
        try:
            yield k.process.start()
        except Exception as e:
            output = getattr(e, "output", "")
            raise OperationFailed(f"keepalived did not start: {getattr(e, 'reason', e)}"
                                  + (f": {output[-1000:]}" if output else ""),
                                  message="Failed to start octavia-keepalived service") from None
        return "keepalived started"

    @defer.inlineCallbacks
    def _stop(self):
        k = self.keepalived
        self.wanted = False
        k._wanted = False
        if k.process is not None:
            yield k.process.stop()
        elif k._running_pid() is not None:  # left by a previous agent, not adopted yet
            self._observe(k._ensure_process())
            if k.process.adopt(k._running_pid()):
                yield k.process.stop()
        k._set_state(None)
        yield self._remove_vips()
        self.owned = False
        self._save()
        yield self._sync_vips()
        return "keepalived stopped"

    def restore(self):
        """At agent start: re-adopt (or restart) the keepalived the controller started."""
        if not (self.owned and self.wanted):
            return None
        if self.topology is not None and self.topology.topology == ACTIVE_STANDBY:
            log.error("controller VRRP: /v0.1/topology is ACTIVE-STANDBY too; leaving keepalived to it")
            return None
        return self.keepalived._lock.run(self._start)

    # -- addresses ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _holds_vip(self):
        if not (self.vips and self.interface):
            return False
        return (yield self.keepalived.holds_vip(self.vips[0], self.interface))

    @defer.inlineCallbacks
    def _remove_vips(self):
        if self.interface:
            for vip in self.vips:
                yield self.keepalived.remove_vip(vip, self.interface)

    def _observe(self, process) -> None:
        if self._observing is not process:
            self._observing = process
            process.observers.append(self._changed)

    def _changed(self, process, old, new):
        if not self.owned or new == RUNNING or old not in (RUNNING, STARTING) or new in (STOPPING, STOPPED):
            return
        # Died unasked (SIGKILL): its addresses stay behind and would answer for a VIP the peer now owns.
        self._remove_vips().addErrback(lambda f: log.failure("controller VRRP: removing VIPs", f))
