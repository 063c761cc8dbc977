"""Short child commands with a deadline: ``run_bounded`` and ``BoundedCommand``.

The short-lived counterpart of ``amphora.process.SupervisedProcess`` (e.g.
``haproxy -c``, ``keepalived -t``, ``haproxy -v``, ``dpkg-query``): stdin
closed at once, output captured up to a limit, and a deadline after which the
child's process group is SIGKILLed and reaped before the result errbacks
with ``CommandTimeout``. ``BoundedCommand.cancel()`` ends a command early
(a service stopping) and ``done`` fires once the child is reaped.
"""

from __future__ import annotations

import os
import signal as signal_module

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

log = Logger()


class CommandTimeout(Exception):
    """A ``run_bounded`` command outlived its deadline; it was killed (process group) and reaped."""

    def __init__(self, argv, timeout: float, output: str = "", reaped: bool = True):
        self.argv = list(argv)
        self.timeout = timeout
        self.output = output
        self.reaped = reaped
        super().__init__(f"{self.argv[0]} did not finish within {timeout:g} s")


class _BoundedProtocol(ProcessProtocol):
    def __init__(self, limit: int):
        self.limit = limit
        self.data = {1: bytearray(), 2: bytearray()}
        self.ended = Deferred()

    def connectionMade(self):
        # Nothing is ever written to a check: a child that reads stdin (haproxy's
        # "lua-load /dev/stdin") must see end-of-file at once, not wait for us forever.
        self.transport.closeStdin()

    def childDataReceived(self, fd, data):
        buf = self.data.get(fd)
        if buf is not None and len(buf) < self.limit:
            # bounded: a child printing in a loop until its deadline must not fill our memory
            buf += data[:self.limit - len(buf)]

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class BoundedCommand:
    """One short command (see ``run_bounded``); spawned by the constructor (which may raise).

    ``result``: Deferred ``(stdout, stderr, code)``, or CommandTimeout, or
    CancelledError after ``cancel()``. ``done``: fires (with None) once the
    child is reaped, or ``kill_grace`` seconds after a SIGKILL it ignored.
    """

    def __init__(self, reactor, argv: list[str], *, env: dict, timeout: float, path: str | None = None,
                 output_limit: int = 1 << 20, kill_grace: float = 5.0,
                 os_killpg=os.killpg, os_kill=os.kill):
        self.reactor = reactor
        self.argv = list(argv)
        self.timeout = timeout
        self.kill_grace = kill_grace
        self._killers = (os_killpg, os_kill)
        self._protocol = _BoundedProtocol(output_limit)
        transport = reactor.spawnProcess(self._protocol, argv[0], list(argv), env=env, path=path)
        self.pid = transport.pid
        self.result = Deferred()
        self.done = Deferred()
        self._timers: dict = {}
        self._why: str | None = None  # "timeout" or "cancelled" once killed
        self._timers["deadline"] = reactor.callLater(timeout, self._expire)
        self._protocol.ended.addCallback(self._ended)

    def output(self) -> str:
        data = self._protocol.data
        return (bytes(data[2]) + bytes(data[1])).decode("utf-8", "replace").strip()

    def cancel(self) -> Deferred:
        """Kill the command now (its group too); once it is reaped ``result`` errbacks CancelledError.

        Returns ``done``."""
        if not self.done.called and self._why is None:
            self._kill("cancelled")
        return self.done

    def _kill(self, why: str) -> None:
        self._why = why
        # The group first (everything the child forked), then the pid itself in case it has not
        # become a group leader yet; a pid that is still our unreaped child cannot be recycled.
        for kill in self._killers:
            try:
                kill(self.pid, signal_module.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._cancel("deadline")
        self._timers["grace"] = self.reactor.callLater(self.kill_grace, self._give_up)

    def _expire(self) -> None:
        log.warn("{cmd} pid {pid}: no exit within {timeout}s; killing its process group", cmd=self.argv[0],
                 pid=self.pid, timeout=self.timeout)
        self._kill("timeout")

    def _give_up(self) -> None:
        log.error("{cmd} pid {pid}: still not reaped {grace}s after SIGKILL", cmd=self.argv[0], pid=self.pid,
                  grace=self.kill_grace)
        self._finish(reaped=False)

    def _cancel(self, key: str) -> None:
        call = self._timers.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def _finish(self, value=None, reaped: bool = True) -> None:
        if not self.result.called:
            if self._why == "timeout":
                self.result.errback(CommandTimeout(self.argv, self.timeout, self.output(), reaped=reaped))
            elif self._why == "cancelled":
                self.result.errback(CancelledError(f"{self.argv[0]} was cancelled"))
            else:
                code = getattr(value, "exitCode", None)
                sig = getattr(value, "signal", None)
                if code is None:
                    code = -(sig or signal_module.SIGKILL)
                data = self._protocol.data
                self.result.callback((bytes(data[1]), bytes(data[2]), code))
        if not self.done.called:
            self.done.callback(None)

    def _ended(self, value) -> None:
        for key in list(self._timers):
            self._cancel(key)
        self._finish(value)


def run_bounded(reactor, argv: list[str], *, env: dict, timeout: float, path: str | None = None,
                output_limit: int = 1 << 20, kill_grace: float = 5.0,
                os_killpg=os.killpg, os_kill=os.kill) -> Deferred:
    """Run a short command: Deferred ``(stdout: bytes, stderr: bytes, code: int)``.

    ``code`` is the exit status, or minus the signal number that ended it.
    The child's stdin is closed right after the spawn and each output stream
    is kept up to ``output_limit`` bytes. After ``timeout`` seconds the child's
    process group (the argv should start with ``setsid`` so that the child
    leads one and everything it forked goes too) and the child itself get
    SIGKILL; once it is reaped the Deferred errbacks with ``CommandTimeout``
    (after ``kill_grace`` more seconds without an exit, e.g. a process stuck
    in the kernel, it errbacks anyway with ``reaped=False``).
    """
    try:
        command = BoundedCommand(reactor, argv, env=env, timeout=timeout, path=path, output_limit=output_limit,
                                 kill_grace=kill_grace, os_killpg=os_killpg, os_kill=os_kill)
    except Exception as e:  # e.g. the executable vanished
        return fail(e)
    return command.result
