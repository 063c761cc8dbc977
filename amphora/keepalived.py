"""keepalived for ACTIVE-STANDBY: configuration, validation, the notify FIFO, the process.

The agent writes keepalived's configuration itself (one ``vrrp_instance``),
checks it with ``keepalived -t`` inside the amphora's network namespace, runs
keepalived in the foreground as a supervised child and learns every VRRP state
change from keepalived's notify FIFO (lines like ``INSTANCE "amphora" MASTER 100``),
read in the reactor.

Traps this module exists to avoid (measured with keepalived 2.2.7):

- ``auth_pass`` is silently cut to 8 characters, so two secrets that share
  their first 8 characters would authenticate each other: the configured value
  is an 8-character HMAC of the whole secret (``auth_pass``), never the secret.
- A SIGHUP with a configuration keepalived cannot load kills it without
  releasing the VIP: every configuration is checked with ``keepalived -t``
  (any warning counts as a failure: exit status 5) before it replaces the live
  file, and only then is keepalived started or signalled.
- After a SIGKILL the VIP stays on the dead node: when keepalived exits, the
  agent removes ``ha_ip`` from the interface itself.
- Both peers must carry identical virtual address lists, or both become
  MASTER: the list is exactly ``ha_ip`` on both (nothing node-specific).
- ``script_user`` must precede ``notify_fifo`` in ``global_defs``, or a reload
  fails to set the script user and silently drops the track script.
- ``nopreempt`` is ignored (with a warning) for ``state MASTER``: both roles
  start as ``state BACKUP`` and the role only sets the priority, so a node
  that recovers after a failover does not take the VIP back (no second blip).
- VRRPv3 (needed for sub-second ``advert_int`` and for IPv6) has no
  authentication; keepalived ignores the block with a warning, so it is not
  rendered then.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import os
import re
import signal
import stat
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from amphora.errors import OperationFailed
from amphora.fsutil import atomic_write, ensure_dir
from amphora.netlink import NetlinkQueries
from amphora.netns import exec_argv
from amphora.process import SupervisedProcess, run_bounded
from amphora.supervision import RUNNING, STARTING, STOPPED, STOPPING, SupervisionPolicy

log = Logger()

INSTANCE = "amphora"
CHECK_NAME = "amphora_check"
DEFAULT_PRIORITY = {"ACTIVE": 100, "STANDBY": 90}
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}

_AUTH_CONTEXT = b"amphora-agent vrrp auth_pass v1"


def auth_pass(secret: str) -> str:
    """The 8-character VRRP password derived from the whole shared secret.

    keepalived keeps only 8 characters of ``auth_pass``; a keyed hash of the
    full secret makes every character of the secret count, and the secret
    itself never reaches a file or a log.
    """
    return hmac.new(secret.encode("utf-8"), _AUTH_CONTEXT, hashlib.sha256).hexdigest()[:8]


def default_router_id(ha_ip: str) -> int:
    """A virtual_router_id (1-255) both peers derive alike from the shared ha_ip."""
    digest = hashlib.sha256(ipaddress.ip_address(ha_ip).packed).digest()
    return digest[0] % 255 + 1


@dataclass(frozen=True)
class VRRPSettings:
    """Everything that goes into one amphora's vrrp_instance (no secret: only its derived auth)."""

    role: str
    ha_ip: str
    auth: str
    interface: str = ""
    peers: tuple = ()
    virtual_router_id: int = 0
    priority: int = 0

    @property
    def effective_priority(self) -> int:
        return self.priority or DEFAULT_PRIORITY[self.role]

    @property
    def effective_router_id(self) -> int:
        return self.virtual_router_id or default_router_id(self.ha_ip)

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_address(self.ha_ip).version == 6

    def to_json(self) -> dict:
        return {"role": self.role, "ha_ip": self.ha_ip, "auth": self.auth, "interface": self.interface,
                "peers": list(self.peers), "virtual_router_id": self.virtual_router_id,
                "priority": self.priority}

    @classmethod
    def from_json(cls, doc: dict) -> "VRRPSettings":
        return cls(role=doc["role"], ha_ip=doc["ha_ip"], auth=doc["auth"],
                   interface=doc.get("interface", ""), peers=tuple(doc.get("peers", ())),
                   virtual_router_id=int(doc.get("virtual_router_id", 0)),
                   priority=int(doc.get("priority", 0)))


def format_interval(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def needs_vrrp3(advert_int: float, settings: VRRPSettings) -> bool:
    """VRRPv2 only knows whole-second intervals and IPv4."""
    return advert_int != int(advert_int) or settings.ipv6


def render_config(settings: VRRPSettings, *, interface: str, advert_int: float, fifo_path: str,
                  check_script: str, router_name: str) -> str:
    """keepalived.conf for one amphora of an ACTIVE-STANDBY pair.

    ``interface`` is the resolved VIP interface (``settings.interface`` or the
    one found in the namespace). The output is free of keepalived warnings,
    since ``keepalived -t`` treats any warning as a failure.
    """
    v3 = needs_vrrp3(advert_int, settings)
    prefix = 128 if settings.ipv6 else 32
    lines = [
        "# Written by amphora-agent on every topology change; do not edit.",
        "global_defs {",
        f"    router_id {router_name}",
        # script_user must come before notify_fifo: see the module docstring.
        "    script_user root",
        "    enable_script_security",
        f"    notify_fifo {fifo_path}",
    ]
    if v3:
        lines.append("    vrrp_version 3")
    lines += [
        "}",
        "",
        # Gives up MASTER (FAULT) when listeners exist but no haproxy serves them.
        f"vrrp_script {CHECK_NAME} {{",
        f'    script "{check_script}"',
        "    interval 1",
        "    timeout 2",
        "    fall 2",
        "    rise 2",
        "}",
        "",
        f"vrrp_instance {INSTANCE} {{",
        "    state BACKUP",
        f"    interface {interface}",
        f"    virtual_router_id {settings.effective_router_id}",
        f"    priority {settings.effective_priority}",
        f"    advert_int {format_interval(advert_int)}",
        "    nopreempt",
        # Gratuitous ARP / unsolicited NA on takeover, repeated once a second later.
        "    garp_master_delay 1",
        "    garp_master_repeat 3",
    ]
    if not v3:
        lines += [
            "    authentication {",
            "        auth_type PASS",
            f"        auth_pass {settings.auth}",
            "    }",
        ]
    if settings.peers:
        lines.append("    unicast_peer {")
        lines += [f"        {peer}" for peer in settings.peers]
        lines.append("    }")
    lines += [
        "    virtual_ipaddress {",
        f"        {settings.ha_ip}/{prefix} dev {interface}",
        "    }",
        "    track_script {",
        f"        {CHECK_NAME}",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def render_check_script(listeners_run_dir: str) -> str:
    """A /bin/sh check: succeed when no listener exists, or when one has a live haproxy.

    It reads only this agent's run directory (several amphorae may share a pid
    namespace in tests), forks nothing, and treats a pid as alive only if
    ``/proc/<pid>/comm`` says haproxy (pid files can go stale).
    """
    return f"""#!/bin/sh
# Written by amphora-agent: keepalived's vrrp_script. Exit 0 while this amphora can serve.
dir='{listeners_run_dir}'
found=0
for d in "$dir"/*/; do
    [ -d "$d" ] || continue
    found=1
    for p in "$d"*.pid; do
        [ -r "$p" ] || continue
        read -r pid < "$p" || [ -n "$pid" ] || continue
        case "$pid" in ''|*[!0-9]*) continue ;; esac
        [ -r "/proc/$pid/comm" ] || continue
        read -r comm < "/proc/$pid/comm" || true
        [ "$comm" = haproxy ] && exit 0
    done
done
[ "$found" = 0 ] && exit 0
exit 1
"""


# -- the notify FIFO ----------------------------------------------------------

_STAMP = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ [\d:]+ \d{4}: ")
_NOTIFY = re.compile(r'(INSTANCE|GROUP) "([^"]*)" ([A-Z_]+)(?: (\d+))?')
VRRP_STATES = ("MASTER", "BACKUP", "FAULT", "STOP")


@dataclass(frozen=True)
class NotifyEvent:
    kind: str
    name: str
    state: str
    priority: int | None


def parse_notify_line(line: bytes | str) -> NotifyEvent | None:
    """One FIFO line -> NotifyEvent, or None for lines that are not instance/group states."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    m = _NOTIFY.fullmatch(line.strip().strip("\x00"))
    if not m or m.group(3) not in VRRP_STATES:
        return None
    return NotifyEvent(m.group(1), m.group(2), m.group(3), int(m.group(4)) if m.group(4) else None)


class NotifyFifo:
    """Reads keepalived's notify FIFO in the reactor and calls ``callback(event)`` per state line.

    The FIFO is opened read-write and non-blocking: the open never waits for a
    writer, and a keepalived that exits (closing its write end) does not make
    the reader see end-of-file and spin.
    """

    MAX_LINE = 4096

    def __init__(self, reactor, path: str, callback):
        self.reactor = reactor
        self.path = path
        self.callback = callback
        self.fd = -1
        self._buffer = b""

    def open(self) -> None:
        if self.fd >= 0:
            return
        try:
            st = os.lstat(self.path)
            if not stat.S_ISFIFO(st.st_mode):
                os.unlink(self.path)
                raise FileNotFoundError
        except FileNotFoundError:
            os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        # keepalived opens its end read-write too, so lines written while no agent was
        # reading wait in the pipe: stale states, never to be taken for the current one.
        self._drain()
        self.reactor.addReader(self)

    def _drain(self) -> None:
        while True:
            try:
                if not os.read(self.fd, 65536):
                    return
            except BlockingIOError:
                return

    def close(self) -> None:
        if self.fd >= 0:
            self.reactor.removeReader(self)
            os.close(self.fd)
            self.fd = -1

    # IReadDescriptor
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "keepalived-notify"

    def connectionLost(self, reason) -> None:
        self.close()

    def doRead(self):
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            self.feed(data)
        return None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self.MAX_LINE:
            self._buffer = b""
        for line in lines:
            event = parse_notify_line(line)
            if event is not None:
                try:
                    self.callback(event)
                except Exception:
                    log.failure("keepalived notify callback failed")


# -- the process and its life cycle ------------------------------------------

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
    """

    def __init__(self, config, reactor, *, process_factory=None, runner=None, netlink=None, vip_interface=None):
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
        # ``vip_interface(ip) -> name | None``: where the network side plugged that VIP.
        self._vip_interface = vip_interface
        self.process = None
        self.settings: VRRPSettings | None = None
        self.interface = ""          # the resolved VIP interface of the applied settings
        self.vrrp_state: str | None = None
        self.state_observers: list = []
        self._state_waiters: list[defer.Deferred] = []
        self._fifo: NotifyFifo | None = None
        self._lock = defer.DeferredLock()
        self._wanted = False

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
        """The VIP interface when none was given: where the VIP was plugged (agent.network), else
        the one whose subnet holds ha_ip, else the one with the default route, else the only
        non-loopback interface."""
        if self._vip_interface is not None:
            name = self._vip_interface(ha_ip)
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
        if event.kind != "INSTANCE" or event.name != INSTANCE:
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
