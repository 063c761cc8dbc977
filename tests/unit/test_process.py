"""SupervisedProcess with a fake process reactor (Clock + recorded spawns) and fake signals."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from amphora.process import (BACKOFF, FAILED, RUNNING, STARTING, STOPPED, STOPPING, ProcessFailed,
                             ProcessState, SupervisedProcess, SupervisionPolicy)


class FakeTransport:
    def __init__(self, pid):
        self.pid = pid
        self.stdin_closed = False

    def closeStdin(self):
        self.stdin_closed = True


class FakeProcessReactor(Clock):
    """A Clock that records spawnProcess calls and hands out pids."""

    def __init__(self):
        super().__init__()
        self.spawned = []
        self.next_pid = 1000

    def spawnProcess(self, protocol, executable, args, env=None, path=None, **kw):
        self.next_pid += 1
        transport = FakeTransport(self.next_pid)
        protocol.makeConnection(transport)
        self.spawned.append((protocol, executable, list(args), env, path))
        return transport

    def exit(self, code=0, signal=None):
        protocol = self.spawned[-1][0]
        if signal is None and code == 0:
            reason = ProcessDone(0)
        else:
            reason = ProcessTerminated(exitCode=code, signal=signal)
        protocol.processEnded(Failure(reason))

    def say(self, data: bytes, fd=2):
        self.spawned[-1][0].childDataReceived(fd, data)


class Signals:
    def __init__(self):
        self.sent = []

    def kill(self, pid, sig):
        self.sent.append(("kill", pid, sig))

    def killpg(self, pid, sig):
        self.sent.append(("killpg", pid, sig))


def make(reactor, ready=None, **kw):
    signals = Signals()
    states = []
    kw.setdefault("backoff_initial", 1.0)
    kw.setdefault("backoff_max", 8.0)
    kw.setdefault("max_restarts", 3)
    kw.setdefault("stable_after", 30.0)
    proc = SupervisedProcess(reactor, "test[x]", ["/bin/prog", "-a"], env={"PATH": "/bin"}, path="/tmp",
                             ready=ready, ready_interval=0.1, start_timeout=5.0, stop_signal="USR1",
                             stop_timeout=10.0, kill_grace=2.0, os_kill=signals.kill, os_killpg=signals.killpg,
                             **kw)
    proc.observers.append(lambda p, old, new: states.append(new))
    return proc, signals, states


def results(d):
    out = []
    d.addBoth(out.append)
    return out


def test_start_polls_readiness_then_runs():
    reactor = FakeProcessReactor()
    answers = [False, False, True]

    def ready(pid):
        return succeed(pid) if answers.pop(0) else fail(ConnectionRefusedError())

    proc, _, states = make(reactor, ready)
    got = results(proc.start())
    assert proc.state == STARTING and got == []
    _, executable, args, env, path = reactor.spawned[0]
    assert (executable, args, env, path) == ("/bin/prog", ["/bin/prog", "-a"], {"PATH": "/bin"}, "/tmp")
    assert reactor.spawned[0][0].transport.stdin_closed
    reactor.advance(0.1)
    assert got == []
    reactor.advance(0.1)
    assert got == [1001] and proc.state == RUNNING and proc.pid == 1001
    assert states == [STARTING, RUNNING]
    assert results(proc.start()) == [1001]  # idempotent
    assert len(reactor.spawned) == 1


def test_exit_before_ready_fails_with_output_and_does_not_retry():
    reactor = FakeProcessReactor()
    proc, _, states = make(reactor, lambda pid: fail(ConnectionRefusedError()))
    got = results(proc.start())
    reactor.say(b"[ALERT] cannot bind socket\n[ALERT] fatal")
    reactor.exit(1)
    assert isinstance(got[0].value, ProcessFailed)
    assert "cannot bind socket" in got[0].value.output and "fatal" in got[0].value.output
    assert "exited with code 1" in got[0].value.reason
    assert proc.state == FAILED
    reactor.advance(100)
    assert len(reactor.spawned) == 1


def test_start_timeout_kills_the_group():
    reactor = FakeProcessReactor()
    proc, signals, _ = make(reactor, lambda pid: fail(ConnectionRefusedError()))
    got = results(proc.start())
    reactor.advance(5.0)
    assert ("killpg", 1001, 9) in signals.sent
    reactor.exit(signal=9)
    assert isinstance(got[0].value, ProcessFailed) and "not ready after 5.0s" in got[0].value.reason


def test_unexpected_exit_restarts_with_bounded_backoff_then_gives_up():
    reactor = FakeProcessReactor()
    proc, _, states = make(reactor)  # no probe: up once spawned
    results(proc.start())
    assert proc.state == RUNNING
    delays = []
    for attempt in range(3):
        reactor.exit(signal=9)
        assert proc.state == BACKOFF  # at once, before any restart
        spawned = len(reactor.spawned)
        t0 = reactor.seconds()
        while len(reactor.spawned) == spawned:
            reactor.advance(0.25)
        delays.append(reactor.seconds() - t0)
        assert proc.state == RUNNING
    assert delays == [1.0, 2.0, 4.0]
    reactor.exit(signal=9)
    assert proc.state == FAILED
    reactor.advance(1000)
    assert len(reactor.spawned) == 4
    assert states.count(BACKOFF) == 3 and states[-1] == FAILED


def test_backoff_is_capped_and_resets_after_a_stable_run():
    reactor = FakeProcessReactor()
    proc, _, _ = make(reactor, backoff_max=2.0, max_restarts=10, stable_after=30.0)
    results(proc.start())
    for expected in (1.0, 2.0, 2.0):
        reactor.exit(code=1)
        reactor.advance(expected - 0.01)
        assert proc.state == BACKOFF
        reactor.advance(0.01)
        assert proc.state == RUNNING
    assert proc.failures == 3
    reactor.advance(30.0)
    assert proc.failures == 0
    reactor.exit(code=1)
    reactor.advance(1.0)
    assert proc.state == RUNNING


def test_stop_is_graceful_then_escalates():
    reactor = FakeProcessReactor()
    proc, signals, states = make(reactor)
    results(proc.start())
    stopped = results(proc.stop())
    assert proc.state == STOPPING and signals.sent == [("kill", 1001, 10)]  # SIGUSR1
    reactor.advance(10.0)
    assert signals.sent[-1] == ("kill", 1001, 15)
    reactor.advance(2.0)
    assert ("killpg", 1001, 9) in signals.sent
    assert stopped == []
    reactor.exit(signal=9)
    assert stopped == [None] and proc.state == STOPPED
    reactor.advance(100)
    assert len(reactor.spawned) == 1  # a stop is never followed by a restart


def test_stop_during_backoff_cancels_the_restart():
    reactor = FakeProcessReactor()
    proc, _, _ = make(reactor)
    results(proc.start())
    reactor.exit(code=1)
    assert proc.state == BACKOFF
    assert results(proc.stop()) == [None]
    reactor.advance(100)
    assert proc.state == STOPPED and len(reactor.spawned) == 1


def test_adopted_process_is_polled_and_restarted_when_it_dies():
    reactor = FakeProcessReactor()
    alive = {"token": 123.0}
    proc, signals, states = make(reactor, identity=lambda pid: alive["token"] if pid == 77 else None,
                                 poll_interval=1.0)
    assert proc.adopt(77) and proc.state == RUNNING and proc.pid == 77 and proc.adopted
    reactor.advance(5)
    assert proc.state == RUNNING and reactor.spawned == []
    proc.signal("USR2")
    assert signals.sent == [("kill", 77, 12)]
    alive["token"] = 456.0  # pid recycled by another process: not ours any more
    reactor.advance(1)
    assert proc.state == BACKOFF
    reactor.advance(1)
    assert proc.state == RUNNING and len(reactor.spawned) == 1 and not proc.adopted
    assert not proc.adopt(78)


def test_adopted_process_stop_waits_for_it_to_vanish():
    reactor = FakeProcessReactor()
    alive = {"token": 1.0}
    proc, signals, _ = make(reactor, identity=lambda pid: alive["token"])
    proc.adopt(5)
    stopped = results(proc.stop())
    assert signals.sent == [("kill", 5, 10)]
    reactor.advance(0.5)
    assert stopped == []
    alive["token"] = None
    reactor.advance(0.1)
    assert stopped == [None] and proc.state == STOPPED


def test_detach_leaves_the_process_alone():
    reactor = FakeProcessReactor()
    proc, signals, _ = make(reactor)
    results(proc.start())
    proc.detach()
    reactor.exit(signal=9)
    reactor.advance(100)
    assert len(reactor.spawned) == 1 and signals.sent == [] and proc.state == STOPPED


def test_output_lines_are_captured_across_chunks():
    reactor = FakeProcessReactor()
    proc, _, _ = make(reactor)
    seen = []
    proc.output_observers.append(lambda p, line: seen.append(line))
    results(proc.start())
    mark = proc.mark()
    reactor.say(b"[NOTICE] Loading ")
    reactor.say(b"success.\n[WARNING] x\n")  # stderr lines are joined per stream
    assert seen == ["[NOTICE] Loading success.", "[WARNING] x"]
    assert proc.output_since(mark) == "[NOTICE] Loading success.\n[WARNING] x"
    assert proc.output_since(proc.mark()) == ""


def test_spawn_error_is_a_failed_start():
    class Broken(FakeProcessReactor):
        def spawnProcess(self, *a, **k):
            raise OSError(2, "No such file")

    reactor = Broken()
    proc, _, _ = make(reactor)
    got = results(proc.start())
    assert isinstance(got[0].value, ProcessFailed) and "cannot spawn" in got[0].value.output
    assert proc.state == FAILED


def test_start_while_stopping_waits_for_the_stop():
    reactor = FakeProcessReactor()
    proc, _, _ = make(reactor)
    results(proc.start())
    results(proc.stop())
    again = results(proc.start())
    assert again == [] and len(reactor.spawned) == 1
    reactor.exit(code=0)
    assert again == [1002] and proc.state == RUNNING


# -- the policy ---------------------------------------------------------------------------------

def test_settings_are_a_frozen_policy_and_keywords_override_it():
    import dataclasses

    base = SupervisionPolicy(stop_signal="USR1", max_restarts=2)
    proc = SupervisedProcess(FakeProcessReactor(), "p", ["/bin/prog"], policy=base, max_restarts=5)
    assert proc.policy == dataclasses.replace(base, max_restarts=5) and base.max_restarts == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.max_restarts = 3
    with pytest.raises(TypeError):
        SupervisedProcess(FakeProcessReactor(), "p", ["/bin/prog"], no_such_setting=1)


def test_restart_delays_double_up_to_the_cap():
    policy = SupervisionPolicy(backoff_initial=1.0, backoff_max=8.0)
    assert [policy.restart_delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_states_are_an_enum_equal_to_their_names():
    assert isinstance(RUNNING, ProcessState) and RUNNING == "RUNNING" and f"{BACKOFF}" == "BACKOFF"
    assert [s.value for s in ProcessState] == ["STOPPED", "STARTING", "RUNNING", "STOPPING", "BACKOFF", "FAILED"]
