"""UDP and SCTP listeners: one supervised keepalived (LVS virtual server) per listener
(``/1.0/listeners/<amphora_id>/<listener_id>/udp_listener``, spec §4.15).

The controller renders the whole keepalived configuration (virtual servers,
real servers, health checks); the agent checks it with ``keepalived -t``,
stores it under ``<state_dir>/lvs/<listener_id>/`` and runs keepalived's
checker subsystem on it in the agent's namespace, supervised like every other
child (restarted when it dies, stopped on delete).

Everything here needs the kernel's IP virtual server (``ip_vs``): keepalived
programs the virtual servers through it. Whether it is there is read at agent
start (``/proc/net/ip_vs``) and again when a call needs it; without it an
upload or start is refused with 503 naming ``ip_vs`` *before* anything is
written, so nothing is left half configured. Reading, stopping and deleting
work either way.
"""

from __future__ import annotations

import os
import re
import shutil

from twisted.application.service import Service
from twisted.internet.defer import DeferredLock, gatherResults, inlineCallbacks
from twisted.logger import Logger

from amphora.errors import AgentError, InvalidRequest, NotFound, OperationFailed
from amphora.fsutil import atomic_write, ensure_dir, remove_file
from amphora.netns import exec_argv
from amphora.process import SupervisedProcess, run_bounded

log = Logger()

IP_VS_PROC = "/proc/net/ip_vs"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
CHECK_TIMEOUT = 30.0
ACTIONS = ("start", "stop", "reload")
# Octavia's template names its own namespace (net_namespace amphora-haproxy); the agent
# starts keepalived inside [network] namespace itself, so the line is left out of what runs.
_NET_NAMESPACE = re.compile(rb"^[ \t]*net_namespace[ \t]+\S+[ \t]*\r?\n?", re.MULTILINE)


def runnable(config: bytes) -> bytes:
    """The configuration keepalived runs: the controller's, without its net_namespace line."""
    return _NET_NAMESPACE.sub(b"", config)


class KernelSupportMissing(AgentError):
    status = 503
    message = "Service Unavailable"


def udp_listener_not_found(listener_id: str) -> NotFound:
    return NotFound(f"No UDP listener with UUID: {listener_id}", message="UDP Listener Not Found")


def ipvs_present(path: str = IP_VS_PROC) -> bool:
    """The kernel has IP virtual server support loaded (the file exists in every namespace)."""
    return os.path.exists(path)


class UdpListeners(Service):
    """The stored UDP/SCTP listeners and their keepalived processes (stopped with the agent,
    started again by ``restore`` at the next start)."""

    def __init__(self, config, reactor, *, probe=ipvs_present, runner=run_bounded, process_factory=None):
        self.reactor = reactor
        self.namespace = config.network.namespace
        self.binary = config.keepalived.binary
        self.directory = os.path.join(config.agent.state_dir, "lvs")
        self.run_dir = os.path.join(config.agent.run_dir, "lvs")
        self._probe = probe
        self._run = runner
        self._process_factory = process_factory or self._new_process
        self.ipvs = probe()
        self.processes: dict[str, object] = {}
        self._lock = DeferredLock()

    # -- queries -------------------------------------------------------------------

    def _dir(self, listener_id: str) -> str:
        return os.path.join(self.directory, listener_id)

    def _config(self, listener_id: str) -> str:
        return os.path.join(self._dir(listener_id), "keepalived.conf")

    def _runnable(self, listener_id: str) -> str:
        return os.path.join(self._dir(listener_id), "keepalived.run.conf")

    def knows(self, listener_id: str) -> bool:
        return os.path.isfile(self._config(listener_id))

    def listener_ids(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if self.knows(name))

    def get_config(self, listener_id: str) -> bytes:
        try:
            with open(self._config(listener_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise udp_listener_not_found(listener_id) from None

    def running_count(self) -> int:
        return sum(1 for p in self.processes.values() if p.running)

    def details(self) -> dict:
        """What /1.0/details adds: the kernel support and the running LVS keepalived count."""
        return {"ip_vs": self.ipvs, "lvs_listener_process_count": self.running_count(),
                "udp_listeners": self.listener_ids()}

    def require_ipvs(self, what: str) -> None:
        if not self.ipvs:
            self.ipvs = self._probe()  # loaded since the agent started?
        if not self.ipvs:
            raise KernelSupportMissing(
                f"{what} needs the kernel's IP virtual server support (ip_vs), which this kernel "
                f"does not have ({IP_VS_PROC} is absent); UDP and SCTP listeners cannot run here")

    # -- changes -------------------------------------------------------------------

    def upload(self, listener_id: str, body: bytes):
        self.require_ipvs("a UDP/SCTP listener")  # before anything is written
        return self._lock.run(self._upload, listener_id, body)

    @inlineCallbacks
    def _upload(self, listener_id: str, body: bytes):
        directory = ensure_dir(self._dir(listener_id), 0o755)
        candidate = self._runnable(listener_id) + ".new"
        atomic_write(candidate, runnable(body), 0o644)
        try:
            out, err, code = yield self._run(
                self.reactor, exec_argv(self.namespace, [self.binary, "-t", "-l", "-f", candidate]),
                env=ENV, timeout=CHECK_TIMEOUT)
        except Exception as e:
            self._discard(listener_id, candidate)
            raise OperationFailed(f"cannot run {self.binary} -t: {e}") from None
        if code != 0:
            self._discard(listener_id, candidate)
            text = (err or out).decode("utf-8", "replace").strip()[-2000:]
            raise InvalidRequest(f"keepalived -t refused the configuration (exit {code}): {text}",
                                 message="Invalid request")
        os.replace(candidate, self._runnable(listener_id))
        atomic_write(self._config(listener_id), body, 0o644)  # as uploaded, for GET
        log.info("lvs: stored the configuration of UDP listener {lid} in {dir}", lid=listener_id, dir=directory)

    def _discard(self, listener_id: str, candidate: str) -> None:
        """A refused first upload leaves no directory behind; a refused update keeps the old one."""
        os.unlink(candidate)
        if not self.knows(listener_id):
            shutil.rmtree(self._dir(listener_id), ignore_errors=True)

    def action(self, listener_id: str, action: str):
        if action not in ACTIONS:
            raise InvalidRequest(f"Unknown action: {action[:100]!r}", message="Invalid Request")
        if not self.knows(listener_id):
            raise udp_listener_not_found(listener_id)
        if action != "stop":
            self.require_ipvs(f"{action} of UDP listener {listener_id}")
        return self._lock.run(self._action, listener_id, action)

    @inlineCallbacks
    def _action(self, listener_id: str, action: str):
        process = self.processes.get(listener_id)
        marker = os.path.join(self._dir(listener_id), "running")
        if action == "stop":
            if process is not None:
                yield process.stop()
            remove_file(marker)
            return f"keepalivedlvs {listener_id} stopped"
        if process is not None and action == "reload":  # Octavia turns reload into a restart
            yield process.stop()
        process = self.processes.setdefault(listener_id, process or self._process_factory(listener_id))
        try:
            yield process.start()
        except Exception as e:
            raise OperationFailed(f"keepalived for UDP listener {listener_id} did not start: "
                                  f"{getattr(e, 'reason', e)}", message=f"Error {action}ing keepalivedlvs") \
                from None
        atomic_write(marker, b"", 0o644)
        return f"keepalivedlvs {listener_id} {action}ed"

    def delete(self, listener_id: str):
        return self._lock.run(self._delete, listener_id)

    @inlineCallbacks
    def _delete(self, listener_id: str):
        process = self.processes.pop(listener_id, None)
        if process is not None:
            yield process.stop()
        shutil.rmtree(self._dir(listener_id), ignore_errors=True)
        shutil.rmtree(os.path.join(self.run_dir, listener_id), ignore_errors=True)

    @inlineCallbacks
    def restore(self):
        """At agent start: read the kernel support, start the listeners that were running."""
        self.ipvs = self._probe()
        log.info("lvs: kernel IP virtual server support (ip_vs) {state}",
                 state="present" if self.ipvs else f"absent ({IP_VS_PROC} missing): UDP/SCTP listeners refused")
        for listener_id in self.listener_ids():
            if not os.path.exists(os.path.join(self._dir(listener_id), "running")):
                continue
            try:
                self.require_ipvs(f"restoring UDP listener {listener_id}")
                yield self._lock.run(self._action, listener_id, "start")
            except AgentError as e:
                log.error("lvs: UDP listener {lid} not restored: {error}", lid=listener_id, error=e.details)

    def stopService(self):
        super().stopService()
        processes, self.processes = list(self.processes.values()), {}
        return gatherResults([p.stop() for p in processes], consumeErrors=True)

    def _new_process(self, listener_id: str):
        run_dir = ensure_dir(os.path.join(self.run_dir, listener_id), 0o755)
        argv = [self.binary, "-n", "-l", "-D", "-C", "-f", self._runnable(listener_id),
                "-p", os.path.join(run_dir, "keepalived.pid"), "-c", os.path.join(run_dir, "checkers.pid"),
                "-r", os.path.join(run_dir, "vrrp.pid")]
        return SupervisedProcess(self.reactor, f"keepalivedlvs-{listener_id}",
                                 exec_argv(self.namespace, argv), env=dict(ENV))
