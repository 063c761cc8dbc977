"""One supervised child process: spawn, readiness, restart with backoff, stop, adopt.

``SupervisedProcess`` knows nothing about haproxy or keepalived; callers give
it an argv, a readiness probe and the signals to use. Its contract:

States (``state``)
    STOPPED   no process, none wanted.
    STARTING  spawned (or being re-spawned), waiting for the readiness probe.
    RUNNING   the probe succeeded (or the process was adopted alive).
    STOPPING  asked to stop; waiting for it to exit (signal, timeout, SIGKILL).
    BACKOFF   it died unasked; a restart is scheduled after a delay.
    FAILED    it kept dying, or an explicit ``start()`` failed; nothing restarts
              it until ``start()`` is called again.

``start() -> Deferred[int]``
    Spawn the argv (``reactor.spawnProcess``, stdout/stderr captured line by
    line into ``output``) and poll ``ready(pid) -> Deferred`` every
    ``ready_interval`` seconds until it succeeds: fires with the pid. If the
    child exits first, or ``start_timeout`` passes (the child is then killed,
    process group included), errbacks with ``ProcessFailed`` carrying the
    child's output, and the state is FAILED (the caller decides what next;
    nothing retries behind its back). Starting a RUNNING process fires at once
    with its pid; starting a STOPPING one waits for the stop first.

``stop(timeout=None) -> Deferred``
    No restart from now on. Sends ``stop_signal``; after ``timeout``
    (default ``stop_timeout``) sends SIGTERM, and ``kill_grace`` seconds later
    SIGKILL to the whole process group (``kill_group``). Fires once the
    process is gone (for a child: reaped).

``signal(name)``
    Send a signal (``"USR2"``, ``"HUP"``, ...) to the running process.

``adopt(pid) -> bool``
    Take over a live process that is not our child (left by a previous agent):
    it is polled every ``poll_interval`` seconds (alive, not a zombie, same
    start time, so a recycled pid is not mistaken for it). False if the pid is
    not alive.

``detach()``
    Forget the process without touching it (the agent is shutting down and
    the next agent will adopt it): timers are cancelled, no restart happens.

Unexpected exit (child exits or adopted pid disappears while RUNNING or
STARTING after a restart): state BACKOFF at once (observers hear it at once),
then a restart after ``backoff_initial * 2**(n-1)`` seconds capped at
``backoff_max``, where n counts consecutive failures. The count resets once a
process has stayed RUNNING for ``stable_after`` seconds. After
``max_restarts`` consecutive failures the state is FAILED.

Observers: ``observers`` is a list of ``callable(process, old_state,
new_state)``; ``output_observers`` a list of ``callable(process, line: str)``.
Every event is logged with ``name``.

Settings: a frozen ``SupervisionPolicy`` (``policy=``), or its fields as
keyword arguments (applied over the default policy). States are
``ProcessState`` members (a ``StrEnum``: they compare equal to their names).

``SupervisionPolicy``, ``ProcessState`` and ``ProcessFailed`` live in
``amphora.supervision``; ``run_bounded`` / ``CommandTimeout``, the short-lived
counterpart (e.g. ``haproxy -c``), in ``amphora.command``. All are re-exported here.
"""

from __future__ import annotations

import collections
import os
import signal as signal_module
from dataclasses import replace

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from amphora.command import CommandTimeout, run_bounded
from amphora.supervision import (BACKOFF, FAILED, RUNNING, STARTING, STOPPED, STOPPING, ProcessFailed,
                                 ProcessState, SupervisionPolicy, process_identity)

__all__ = ["BACKOFF", "FAILED", "RUNNING", "STARTING", "STOPPED", "STOPPING", "CommandTimeout", "ProcessFailed",
           "ProcessState", "SupervisedProcess", "SupervisionPolicy", "process_identity", "run_bounded"]

log = Logger()


def _signum(sig) -> int:
    if isinstance(sig, int):
        return sig
    name = sig if sig.startswith("SIG") else "SIG" + sig
    return int(getattr(signal_module, name))


class _ChildProtocol(ProcessProtocol):
    def __init__(self, owner: "SupervisedProcess", generation: int):
        self.owner = owner
        self.generation = generation
        self._partial = {1: b"", 2: b""}

    def connectionMade(self):
        # The child never reads stdin; closing it means nothing of ours lingers in it.
        self.transport.closeStdin()

    def childDataReceived(self, fd, data):
        buf = self._partial.get(fd, b"") + data
        *lines, rest = buf.split(b"\n")
        if len(rest) > 8192:  # a line without end: keep memory bounded
            lines.append(rest)
            rest = b""
        self._partial[fd] = rest
        for line in lines:
            self.owner._line(self.generation, line.decode("utf-8", "replace").rstrip("\r"))

    def processEnded(self, reason):
        for fd, rest in self._partial.items():
            if rest:
                self.owner._line(self.generation, rest.decode("utf-8", "replace"))
        self._partial = {1: b"", 2: b""}
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.owner._ended(self.generation, code, sig)


class SupervisedProcess:
    """A supervised child; see the module docstring for the contract."""

    def __init__(self, reactor, name: str, argv: list[str], *, env: dict | None = None,
                 path: str | None = None, ready=None, policy: SupervisionPolicy | None = None,
                 output_lines: int = 200, identity=process_identity, os_kill=os.kill, os_killpg=os.killpg,
                 **settings):
        self.reactor = reactor
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self.path = path
        self.ready = ready
        # ``settings``: SupervisionPolicy fields over ``policy`` (TypeError names an unknown one).
        self.policy = replace(policy or SupervisionPolicy(), **settings)
        self._identity = identity
        self._kill = os_kill
        self._killpg = os_killpg

        self.state = STOPPED
        self.pid: int | None = None
        self.adopted = False
        self.failures = 0          # consecutive unexpected exits / failed starts
        self.last_exit: str | None = None
        self.observers: list = []
        self.output_observers: list = []
        self._lines: collections.deque = collections.deque(maxlen=output_lines)
        self._line_count = 0
        self._generation = 0
        self._token = None         # identity of an adopted process
        self._transport = None
        self._timers: dict[str, object] = {}
        self._start_waiters: list[Deferred] = []
        self._stop_waiters: list[Deferred] = []
        self._detached = False
        self._restarting = False
        self._start_mark = 0
        self._timeout_reason: str | None = None

    # -- public ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def mark(self) -> int:
        """A position in the output stream, for ``output_since``."""
        return self._line_count

    def output_since(self, mark: int = 0) -> str:
        lines = list(self._lines)
        keep = self._line_count - mark
        if keep <= 0:
            return ""
        return "\n".join(lines[-keep:])

    def start(self) -> Deferred:
        self._detached = False
        if self.state == RUNNING:
            return succeed(self.pid)
        if self.state == STOPPING:
            after_stop = Deferred()
            after_stop.addCallback(lambda _: self.start())
            self._stop_waiters.append(after_stop)
            return after_stop
        d = Deferred()
        self._start_waiters.append(d)
        if self.state != STARTING:
            self.failures = 0
            self._cancel("restart")
            self._restarting = False
            self._spawn()
        return d

    def stop(self, timeout: float | None = None) -> Deferred:
        self._cancel("restart")
        self._cancel("stable")
        if self.state in (STOPPED, BACKOFF, FAILED) or self.pid is None:
            self._fail_start_waiters(ProcessFailed(f"{self.name}: stopped before it came up"))
            self._set_state(STOPPED)
            return succeed(None)
        d = Deferred()
        self._stop_waiters.append(d)
        if self.state != STOPPING:
            self._fail_start_waiters(ProcessFailed(f"{self.name}: stopped before it came up",
                                                   self.output_since(0)))
            self._cancel("ready")
            self._set_state(STOPPING)
            log.info("{name}: stopping pid {pid} (signal {sig})", name=self.name, pid=self.pid,
                     sig=self.policy.stop_signal)
            self._send(self.policy.stop_signal)
            wait = self.policy.stop_timeout if timeout is None else timeout
            self._later("escalate", wait, self._escalate)
            if self.adopted:
                self._later("poll", 0.05, self._poll)
        return d

    def signal(self, sig) -> None:
        if self.pid is None:
            raise ProcessLookupError(f"{self.name}: no process")
        self._send(sig)

    def adopt(self, pid: int) -> bool:
        token = self._identity(pid)
        if token is None:
            return False
        self._detached = False
        self._generation += 1
        self.pid = pid
        self.adopted = True
        self._token = token
        self._transport = None
        self.failures = 0
        self._set_state(RUNNING)
        log.info("{name}: adopted running pid {pid}", name=self.name, pid=pid)
        self._later("poll", self.policy.poll_interval, self._poll)
        self._later("stable", self.policy.stable_after, self._stable)
        return True

    def detach(self) -> None:
        self._detached = True
        for key in list(self._timers):
            self._cancel(key)

    # -- internals --------------------------------------------------------------

    def _set_state(self, new: ProcessState) -> None:
        old, self.state = self.state, new
        if old != new:
            for observer in list(self.observers):
                try:
                    observer(self, old, new)
                except Exception:
                    log.failure("{name}: state observer failed", name=self.name)

    def _later(self, key: str, delay: float, fn, *args) -> None:
        self._cancel(key)

        def fire():
            self._timers.pop(key, None)
            fn(*args)

        self._timers[key] = self.reactor.callLater(delay, fire)

    def _cancel(self, key: str) -> None:
        call = self._timers.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def _send(self, sig, group: bool = False) -> None:
        if self.pid is None:
            return
        try:
            if group:
                self._killpg(self.pid, _signum(sig))
            else:
                self._kill(self.pid, _signum(sig))
        except ProcessLookupError:
            pass
        except PermissionError as e:
            log.warn("{name}: cannot signal pid {pid}: {error}", name=self.name, pid=self.pid, error=e)

    def _spawn(self) -> None:
        self._generation += 1
        self.adopted = False
        self._token = None
        protocol = _ChildProtocol(self, self._generation)
        self._set_state(STARTING)
        try:
            self._transport = self.reactor.spawnProcess(
                protocol, self.argv[0], self.argv, env=self.env, path=self.path)
        except Exception as e:  # e.g. the executable vanished
            self.pid = None
            self._transport = None
            self._line(self._generation, f"cannot spawn {self.argv[0]}: {e}")
            self._start_failed(f"cannot spawn {self.argv[0]}: {e}")
            return
        self.pid = self._transport.pid
        log.info("{name}: spawned pid {pid}", name=self.name, pid=self.pid)
        self._start_mark = self.mark()
        self._later("start_timeout", self.policy.start_timeout, self._start_timed_out, self._generation)
        self._probe(self._generation)

    def _probe(self, generation: int) -> None:
        if generation != self._generation or self.state != STARTING:
            return
        if self.ready is None:
            self._up()
            return
        try:
            d = self.ready(self.pid)
        except Exception as e:  # a probe that raises is "not yet"
            d = Deferred()
            d.errback(e)

        def ok(_):
            if generation == self._generation and self.state == STARTING:
                self._up()

        def not_yet(_failure):
            if generation == self._generation and self.state == STARTING:
                self._later("ready", self.policy.ready_interval, self._probe, generation)

        d.addCallbacks(ok, not_yet)

    def _up(self) -> None:
        self._cancel("start_timeout")
        self._cancel("ready")
        self._restarting = False
        self._set_state(RUNNING)
        log.info("{name}: pid {pid} is up", name=self.name, pid=self.pid)
        self._later("stable", self.policy.stable_after, self._stable)
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            d.callback(self.pid)

    def _stable(self) -> None:
        if self.state == RUNNING:
            self.failures = 0

    def _start_timed_out(self, generation: int) -> None:
        if generation != self._generation or self.state != STARTING:
            return
        log.warn("{name}: pid {pid} not ready after {timeout}s; killing it", name=self.name,
                 pid=self.pid, timeout=self.policy.start_timeout)
        self._send("KILL", group=self.policy.kill_group)
        self._send("KILL")
        # _ended follows (the kill is certain); it records the failure.
        self._timeout_reason = f"not ready after {self.policy.start_timeout}s"

    def _line(self, generation: int, line: str) -> None:
        self._lines.append(line)
        self._line_count += 1
        for observer in list(self.output_observers):
            try:
                observer(self, line)
            except Exception:
                log.failure("{name}: output observer failed", name=self.name)

    def _ended(self, generation: int, code, sig) -> None:
        if generation != self._generation:
            return
        self._transport = None
        self.last_exit = f"killed by signal {sig}" if sig else f"exited with code {code}"
        pid, self.pid = self.pid, None
        for key in ("poll", "start_timeout", "ready", "stable", "escalate", "kill"):
            self._cancel(key)
        if self.state == STOPPING:
            log.info("{name}: pid {pid} stopped ({how})", name=self.name, pid=pid, how=self.last_exit)
            self._set_state(STOPPED)
            waiters, self._stop_waiters = self._stop_waiters, []
            for d in waiters:
                d.callback(None)
            return
        if self._detached:
            self._set_state(STOPPED)
            return
        if self.state == STARTING:
            reason = self._timeout_reason or self.last_exit
            self._timeout_reason = None
            self._start_failed(f"pid {pid} {reason}" if reason != self.last_exit else
                               f"pid {pid} {self.last_exit} before it was ready")
            return
        log.error("{name}: pid {pid} {how} unexpectedly", name=self.name, pid=pid, how=self.last_exit)
        self._died()

    def _start_failed(self, reason: str) -> None:
        output = self.output_since(self._start_mark)
        self._fail_start_waiters(ProcessFailed(f"{self.name}: {reason}", output))
        log.error("{name}: start failed: {reason}", name=self.name, reason=reason)
        if not self._restarting:
            # An explicit start that fails is reported to its caller; nothing retries behind its back.
            self._set_state(FAILED)
            return
        self._died()

    def _fail_start_waiters(self, error: Exception) -> None:
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            d.errback(error)

    def _died(self) -> None:
        self.failures += 1
        if self.failures > self.policy.max_restarts:
            log.error("{name}: gave up after {n} consecutive failures", name=self.name, n=self.failures)
            self._set_state(FAILED)
            return
        delay = self.policy.restart_delay(self.failures)
        log.warn("{name}: restart in {delay}s (attempt {n} of {max})", name=self.name, delay=delay,
                 n=self.failures, max=self.policy.max_restarts)
        self._set_state(BACKOFF)
        self._later("restart", delay, self._restart)

    def _restart(self) -> None:
        if self.state == BACKOFF and not self._detached:
            self._restarting = True
            self._spawn()

    def _poll(self) -> None:
        """Liveness of an adopted (non-child) process."""
        if not self.adopted or self.pid is None:
            return
        if self._identity(self.pid) == self._token:
            interval = 0.05 if self.state == STOPPING else self.policy.poll_interval
            self._later("poll", interval, self._poll)
            return
        self._ended(self._generation, None, None)

    def _escalate(self) -> None:
        if self.state != STOPPING or self.pid is None:
            return
        log.warn("{name}: pid {pid} still running after stop signal; sending SIGTERM", name=self.name,
                 pid=self.pid)
        self._send("TERM")
        self._later("kill", self.policy.kill_grace, self._kill_now)
        if self.adopted:
            self._later("poll", min(self.policy.poll_interval, 0.1), self._poll)

    def _kill_now(self) -> None:
        if self.state != STOPPING or self.pid is None:
            return
        log.warn("{name}: pid {pid} still running; sending SIGKILL", name=self.name, pid=self.pid)
        self._send("KILL", group=self.policy.kill_group)
        self._send("KILL")
        if self.adopted:
            self._later("poll", 0.05, self._poll)
