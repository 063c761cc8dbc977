"""run_bounded / BoundedCommand (amphora.command): short commands with a deadline, cancellable."""

from __future__ import annotations

from twisted.internet.defer import CancelledError

from tests.unit.test_process import FakeProcessReactor, Signals, results


# -- run_bounded: short commands with a deadline ------------------------------------------------

def bounded(reactor, timeout=3.0, **kw):
    from amphora.command import run_bounded

    signals = Signals()
    d = run_bounded(reactor, ["/usr/bin/setsid", "/bin/prog", "-c"], env={"PATH": "/bin"}, path="/tmp",
                    timeout=timeout, os_kill=signals.kill, os_killpg=signals.killpg, **kw)
    return d, signals


def test_bounded_command_has_stdin_closed_and_returns_its_output():
    reactor = FakeProcessReactor()
    d, signals = bounded(reactor)
    protocol, executable, args, env, path = reactor.spawned[0]
    assert protocol.transport.stdin_closed  # closed at once, before anything else happens
    assert (executable, args, env, path) == ("/usr/bin/setsid", ["/usr/bin/setsid", "/bin/prog", "-c"],
                                             {"PATH": "/bin"}, "/tmp")
    reactor.say(b"out", fd=1)
    reactor.say(b"err", fd=2)
    reactor.exit(3)
    assert results(d) == [(b"out", b"err", 3)]
    reactor.advance(10)  # the deadline was cancelled
    assert signals.sent == []


def test_bounded_command_output_is_capped():
    reactor = FakeProcessReactor()
    d, _ = bounded(reactor, output_limit=5)
    for _ in range(3):
        reactor.say(b"abcd", fd=1)
    reactor.exit(0)
    assert results(d) == [(b"abcda", b"", 0)]


def test_bounded_command_killed_by_a_signal_reports_minus_the_signal():
    reactor = FakeProcessReactor()
    d, _ = bounded(reactor)
    reactor.exit(None, signal=11)
    assert results(d) == [(b"", b"", -11)]


def test_bounded_command_past_its_deadline_is_killed_with_its_group_then_reaped():
    from amphora.command import CommandTimeout

    reactor = FakeProcessReactor()
    d, signals = bounded(reactor, timeout=2.0)
    pid = reactor.spawned[0][0].transport.pid
    reactor.say(b"ALERT: still loading\n")
    out = results(d)
    reactor.advance(1.9)
    assert signals.sent == [] and out == []
    reactor.advance(0.2)
    assert signals.sent == [("killpg", pid, 9), ("kill", pid, 9)]
    assert out == []  # not before the child is reaped
    reactor.exit(None, signal=9)
    assert len(out) == 1 and out[0].check(CommandTimeout)
    error = out[0].value
    assert error.timeout == 2.0 and error.reaped and "ALERT: still loading" in error.output
    assert "did not finish within 2 s" in str(error)


def test_bounded_command_that_is_never_reaped_still_answers():
    from amphora.command import CommandTimeout

    reactor = FakeProcessReactor()
    d, signals = bounded(reactor, timeout=1.0, kill_grace=0.5)
    reactor.advance(1.0)
    out = results(d)
    reactor.advance(0.4)
    assert out == []
    reactor.advance(0.2)
    assert len(out) == 1 and out[0].check(CommandTimeout) and out[0].value.reaped is False
    reactor.exit(None, signal=9)  # a late exit changes nothing
    assert len(out) == 1


def test_bounded_command_that_cannot_be_spawned_fails():
    class Broken(FakeProcessReactor):
        def spawnProcess(self, *a, **kw):
            raise OSError(2, "No such file or directory")

    d, _ = bounded(Broken())
    out = results(d)
    assert len(out) == 1 and out[0].check(OSError)


def test_a_cancelled_command_is_killed_and_done_once_reaped():
    from amphora.command import BoundedCommand

    reactor, signals = FakeProcessReactor(), Signals()
    command = BoundedCommand(reactor, ["/bin/prog"], env={}, timeout=60.0, os_kill=signals.kill,
                             os_killpg=signals.killpg)
    out, done = results(command.result), results(command.cancel())
    pid = reactor.spawned[0][0].transport.pid
    assert signals.sent == [("killpg", pid, 9), ("kill", pid, 9)]
    assert done == [] and out == []  # not before the child is reaped
    reactor.exit(None, signal=9)
    assert done == [None] and len(out) == 1 and out[0].check(CancelledError)
    reactor.advance(120)  # neither the deadline nor the grace timer is left
    assert signals.sent == [("killpg", pid, 9), ("kill", pid, 9)] and reactor.getDelayedCalls() == []
