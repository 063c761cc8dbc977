"""The keepalived process of this amphora: ``Keepalived`` (config, check, start or
reload, VIP clean-up, VRRP states) and ``KeepalivedService``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from amphora.errors import OperationFailed
from amphora.fsutil import atomic_write, ensure_dir
from amphora.interfaces import IKeepalivedState
from amphora.keepalived.config import ENV, INSTANCE, VRRPSettings, render_check_script, render_config
from amphora.keepalived.notify import NotifyEvent, NotifyFifo
from amphora.netlink import NetlinkQueries
from amphora.netns import exec_argv
from amphora.process import SupervisedProcess, run_bounded
from amphora.supervision import RUNNING, STARTING, STOPPED, STOPPING, SupervisionPolicy

log = Logger()

# The date keepalived puts before each console line (ours carry their own time).
_STAMP = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ [\d:]+ \d{4}: ")

@dataclass
class Paths:
    directory: str
    config: str = field(init=False)
    candidate: str = field(init=False)
    fifo: str = field(init=False)
    check: str = field(init=False)
    pid: str = field(init=False)
    vrrp_pid: str = field(init=False)

    def __post_init__(self):
        d = self.directory
        self.config = os.path.join(d, "keepalived.conf")
        self.candidate = os.path.join(d, "keepalived.conf.new")
        self.fifo = os.path.join(d, "notify.fifo")
        self.check = os.path.join(d, "check.sh")
        self.pid = os.path.join(d, "keepalived.pid")
        self.vrrp_pid = os.path.join(d, "vrrp.pid")


# keepalived -t and the other short commands: bounded, so a hung one cannot
# stall a topology transition (it then fails and is rolled back).
RUN_TIMEOUT = 30.0


def run(reactor, namespace: str, argv: list[str]):
    """Run a short command inside ``namespace``: Deferred (out, err, code); bounded by RUN_TIMEOUT."""
    return run_bounded(reactor, exec_argv(namespace, argv), env=ENV, timeout=RUN_TIMEOUT)


def _text(out: bytes, err: bytes) -> str:
    return (out + err).decode("utf-8", "replace").strip()[-2000:]


# How keepalived is supervised: SIGTERM (it sends priority 0 and drops the VIP itself).
SUPERVISION = SupervisionPolicy(start_timeout=10.0, stop_signal="TERM", stop_timeout=5.0, kill_grace=2.0,
                                backoff_initial=1.0, backoff_max=30.0, max_restarts=8, stable_after=30.0)


def _default_process_factory(reactor, name, argv, env):
    return SupervisedProcess(reactor, name, argv, env=env, policy=SUPERVISION)


class KeepalivedService(Service):
    """Ties keepalived to the agent's life the way haproxy is: stopping the agent detaches
    from keepalived without stopping it (VRRP and the VIP stay put, no failover); the next
    agent adopts the running keepalived from its pid file when it re-applies the topology."""

    name = "keepalived"

    def __init__(self, keepalived: "Keepalived"):
        self.keepalived = keepalived

    def stopService(self):
        super().stopService()
        self.keepalived.detach()


@implementer(IKeepalivedState)
class Keepalived:
    """keepalived for this amphora: one supervised process, one config, one FIFO reader.

    Public surface (the topology and the heartbeat use it):

    - ``running``: keepalived is up; ``configured``: it is wanted (the
      heartbeat is withheld in ACTIVE-STANDBY while configured and not running);
    - ``vrrp_state``: the last state keepalived reported (MASTER, BACKUP,
      FAULT, STOP) or None when unknown / not running;
    - ``state_observers``: ``callable(state)`` on every reported change and
      ``callable(None)`` when keepalived goes away;
    - ``apply(settings) -> Deferred``: render, check, then start or reload;
    - ``stop() -> Deferred``: stop keepalived and make sure ha_ip is gone;
    - ``wait_state() -> Deferred``: fires with the next reported state.

    ``network`` (``INetworkPlugger``) says where a VIP was plugged.
    """

    def __init__(self, config, reactor, network, *, process_factory=None, runner=None, netlink=None):
        self.reactor = reactor
        self.binary = config.keepalived.binary
        self.advert_int = config.keepalived.advert_int
        self.namespace = config.network.namespace
        self.router_name = "amphora-" + config.agent.amphora_id[:8]
        self.paths = Paths(os.path.join(config.agent.run_dir, "keepalived"))
        self.listeners_run_dir = os.path.join(config.agent.run_dir, "listeners")
        self._process_factory = process_factory or _default_process_factory
        self._run = runner or run
        # Address and route queries (``amphora.netlink.NetlinkQueries``): netlink in a thread.
        self.netlink = netlink if netlink is not None else NetlinkQueries(reactor)
        self.network = network
        self.process = None
        self.settings: VRRPSettings | None = None
        self.interface = ""          # the resolved VIP interface of the applied settings
        self.vrrp_state: str | None = None
        self.state_observers: list = []
        self._state_waiters: list[defer.Deferred] = []
        self._fifo: NotifyFifo | None = None
        self._lock = defer.DeferredLock()
        self._wanted = False
        self.instance = INSTANCE     # the vrrp_instance whose notifications count (amphora.vrrp sets its own)

    # -- queries ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def configured(self) -> bool:
        """keepalived is wanted (applied and not stopped since), even if it failed to start:
        the heartbeat is withheld while ``configured and not running``."""
        return self._wanted

    # -- operations ---------------------------------------------------------------

    def apply(self, settings: VRRPSettings):
        """Render, validate and (re)load ``settings``; Deferred fires once keepalived was started
        or signalled. Errbacks with OperationFailed (the live configuration is then untouched)."""
        return self._lock.run(self._apply, settings)

    def stop(self):
        """Stop keepalived (if running) and remove ha_ip; Deferred fires when both are done."""
        return self._lock.run(self._stop)

    def detach(self):
        """Forget keepalived without stopping it (agent shutdown); see KeepalivedService."""
        if self.process is not None:
            self.process.detach()
        if self._fifo is not None:
            self._fifo.close()

    def wait_state(self):
        """Fires with the next VRRP state keepalived reports (cancel it to stop waiting)."""
        d = defer.Deferred(lambda d: self._state_waiters.remove(d) if d in self._state_waiters else None)
        self._state_waiters.append(d)
        return d

    @defer.inlineCallbacks
    def _apply(self, settings: VRRPSettings):
        self._wanted = True
        self.instance = INSTANCE
        ensure_dir(self.paths.directory, 0o700)
        interface = settings.interface or (yield self.find_interface(settings.ha_ip))
        text = render_config(settings, interface=interface, advert_int=self.advert_int,
                             fifo_path=self.paths.fifo, check_script=self.paths.check,
                             router_name=self.router_name)
        atomic_write(self.paths.check, render_check_script(self.listeners_run_dir).encode(), 0o700)
        # The candidate is checked before it replaces the live file (mode 0600: it carries auth).
        atomic_write(self.paths.candidate, text.encode(), 0o600)
        yield self.check(self.paths.candidate)
        os.replace(self.paths.candidate, self.paths.config)
        self._open_fifo()
        previous, previous_interface = self.settings, self.interface
        self.settings, self.interface = settings, interface
        if self.process is not None and self.process.running and previous is not None:
            if (previous.ha_ip, previous_interface) != (settings.ha_ip, interface):
                # A reload moves the VIP itself; removing a stale one keeps a node from
                # answering for an address its peer now owns.
                self._remove_vip_later(previous.ha_ip, previous_interface)
            log.info("keepalived: reloading (role {role}, priority {priority})", role=settings.role,
                     priority=settings.effective_priority)
            self.process.signal("HUP")
            return
        self._ensure_process()
        orphan = self._running_pid()
        if orphan is not None and self.process.adopt(orphan):
            # Left running by a previous agent: keep VRRP (and the VIP) where they are, load the
            # checked configuration by signal, and learn the state it missed from the VIP itself.
            log.info("keepalived: adopted running pid {pid}; reloading", pid=orphan)
            self.process.signal("HUP")
            holds = yield self.holds_vip(settings.ha_ip, interface)
            self._set_state("MASTER" if holds else "BACKUP")
            return
        self._remove_pid_files()
        log.info("keepalived: starting (role {role}, priority {priority}, interface {interface})",
                 role=settings.role, priority=settings.effective_priority, interface=interface)
        try:
            yield self.process.start()
        except Exception as e:
            self.settings, self.interface = previous, previous_interface
            output = getattr(e, "output", "")
            raise OperationFailed(f"keepalived did not start: {getattr(e, 'reason', e)}"
                                  + (f": {output[-1000:]}" if output else "")) from None

    def _ensure_process(self):
        if self.process is None:
            self.process = self._process_factory(self.reactor, "keepalived", self._argv(), dict(ENV))
            self.process.observers.append(self._process_changed)
            if hasattr(self.process, "output_observers"):
                self.process.output_observers.append(self._output)
        return self.process

    def stop_leftover(self):
        """Stop a keepalived left running on our files when the stored topology does not want
        one (the agent died in the middle of a transition): it would hold the VIP for nobody."""
        pid = self._running_pid()
        if pid is None or self.running:
            return defer.succeed(None)
        log.warn("keepalived: pid {pid} is running but the topology does not use it; stopping it", pid=pid)
        if not self._ensure_process().adopt(pid):
            return defer.succeed(None)
        return self.stop()  # SIGTERM: keepalived sends priority 0 and removes its VIPs itself

    @defer.inlineCallbacks
    def _stop(self):
        self._wanted = False
        settings, interface = self.settings, self.interface
        if self.process is not None:
            yield self.process.stop()
        self._set_state(None)
        self.settings, self.interface = None, ""
        if settings is not None and interface:
            yield self.remove_vip(settings.ha_ip, interface)

    def _argv(self) -> list[str]:
        # Foreground (-n), log to the console (-l) in detail (-D), VRRP only (-P),
        # our own pid files so several amphorae (and a packaged keepalived) can coexist.
        return exec_argv(self.namespace, [
            self.binary, "-n", "-l", "-D", "-P", "-f", self.paths.config,
            "-p", self.paths.pid, "-r", self.paths.vrrp_pid])

    def _running_pid(self):
        """The pid of a live keepalived started on our configuration file, from our pid file."""
        try:
            with open(self.paths.pid) as f:
                pid = int(f.read().strip() or 0)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            return None
        if pid <= 1 or self.paths.config.encode() not in argv:
            return None
        if not any(os.path.basename(arg) == b"keepalived" for arg in argv[:1]):
            return None
        return pid

    @defer.inlineCallbacks
    def holds_vip(self, ha_ip: str, interface: str):
        try:
            links = yield self.netlink.interfaces(self.namespace, interface)
        except Exception as e:
            log.warn("keepalived: cannot list the addresses of {interface}: {error}", interface=interface,
                     error=e)
            return False
        return any(link.holds(ha_ip) for link in links)

    def _remove_pid_files(self):
        for path in (self.paths.pid, self.paths.vrrp_pid):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    @defer.inlineCallbacks
    def check(self, path: str):
        """``keepalived -t`` inside the namespace; any warning (exit 5, 6) is a failure."""
        try:
            out, err, code = yield self._run(self.reactor, self.namespace, [self.binary, "-t", "-l", "-f", path])
        except Exception as e:
            raise OperationFailed(f"cannot run {self.binary}: {e}") from None
        if code != 0:
            raise OperationFailed(f"keepalived configuration check failed (exit {code}): "
                                  f"{_text(out, err) or 'no output'}")

    @defer.inlineCallbacks
    def find_interface(self, ha_ip: str):
        """The VIP interface when none was given: where the VIP was plugged (``network``), else
        the one whose subnet holds ha_ip, else the one with the default route, else the only
        non-loopback interface."""
        name = self.network.vip_interface(ha_ip)
        if name:
            return name
        try:
            links = yield self.netlink.interfaces(self.namespace)
        except Exception as e:
            raise OperationFailed(f"cannot list interfaces: {e}") from None
        address = ipaddress.ip_address(ha_ip)
        candidates = []
        for link in links:
            if link.name == "lo" or link.loopback:
                continue
            candidates.append(link.name)
            for iface in link.addresses:
                net = iface.network
                if address in net and net.prefixlen < net.max_prefixlen:
                    return link.name
        try:
            devices = yield self.netlink.default_route_devices(self.namespace, address.version)
        except Exception as e:
            log.warn("keepalived: cannot list the default routes: {error}", error=e)
            devices = []
        if devices:
            return devices[0]
        if len(candidates) == 1:
            return candidates[0]
        raise OperationFailed(f"no interface for ha_ip {ha_ip}: give 'interface' "
                              f"(candidates: {', '.join(candidates) or 'none'})")

    @defer.inlineCallbacks
    def remove_vip(self, ha_ip: str, interface: str):
        """Best effort: delete ha_ip from interface (absent is fine)."""
        try:
            removed = yield self.netlink.remove_address(self.namespace, interface, ha_ip)
        except Exception as e:
            log.warn("keepalived: cannot remove {ha_ip}: {error}", ha_ip=ha_ip, error=e)
            return
        if removed:
            log.info("keepalived: removed {ha_ip} from {interface}", ha_ip=ha_ip, interface=interface)

    def _remove_vip_later(self, ha_ip, interface):
        self.remove_vip(ha_ip, interface).addErrback(lambda f: log.failure("removing VIP", f))

    # -- events -------------------------------------------------------------------

    def _open_fifo(self):
        if self._fifo is None:
            self._fifo = NotifyFifo(self.reactor, self.paths.fifo, self._notified)
        self._fifo.open()

    def _notified(self, event: NotifyEvent):
        if event.kind != "INSTANCE" or event.name != self.instance:
            return
        log.info("keepalived: VRRP state {state} (priority {priority})", state=event.state,
                 priority=event.priority)
        self._set_state(event.state)

    def _set_state(self, state):
        changed = state != self.vrrp_state
        self.vrrp_state = state
        if state is not None:
            waiters, self._state_waiters = self._state_waiters, []
            for d in waiters:
                d.callback(state)
        if changed:
            for observer in list(self.state_observers):
                try:
                    observer(state)
                except Exception:
                    log.failure("keepalived state observer failed")

    def _process_changed(self, process, old, new):
        if new == RUNNING or old != RUNNING and old != STARTING:
            return
        # keepalived went away (crash, kill, stop): its state is unknown until it reports again.
        self._set_state(None)
        if new == STOPPING or new == STOPPED:
            return
        # Died unasked: a SIGKILLed keepalived leaves the VIP behind, and its VRRP child may
        # outlive it for a moment. Both would keep this node answering for ha_ip.
        self._terminate_orphan()
        # A pid file naming a dying (or zombie) VRRP child makes the restarted keepalived
        # believe it is already running, and exit.
        self._remove_pid_files()
        if self.settings is not None and self.interface:
            self._remove_vip_later(self.settings.ha_ip, self.interface)

    def _output(self, process, line: str):
        # keepalived's own log (-l -D) into ours; the per-packet ARP lines would drown it.
        if line and "gratuitous ARP on" not in line and "unsolicited neighbour advert" not in line:
            log.info("keepalived: {line}", line=_STAMP.sub("", line))

    def _terminate_orphan(self):
        try:
            with open(self.paths.vrrp_pid) as f:
                pid = int(f.read().strip() or 0)
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except (OSError, ValueError):
            return
        if pid > 1 and comm == "keepalived":
            try:
                # SIGTERM: it still sends priority 0 (the peer takes over at once) and drops the VIP.
                os.kill(pid, signal.SIGTERM)
                log.warn("keepalived: stopped orphaned VRRP process {pid}", pid=pid)
            except ProcessLookupError:
                pass
