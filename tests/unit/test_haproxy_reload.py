"""HAProxy.reload's confirmation with a fake master CLI and a fake stats socket (real UNIX sockets).

haproxy 2.6 refuses its master CLI for a while after SIGUSR2 (the master
re-executes), longer than the new worker needs to take the stats socket
over: the new worker answering ``show info`` confirms the reload first; a
loading failure is still only seen on the master CLI.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from amphora.errors import OperationFailed
from amphora.listeners.haproxy import HAProxy, ProcInfo
from amphora.process import RUNNING

MASTER, OLD, NEW = 100, 101, 202


def show_proc(reloads: int, failed: int, workers: list[tuple[int, int]], old: list[tuple[int, int]]) -> bytes:
    lines = ["#<PID>          <type>          <reloads>       <uptime>        <version>",
             f"{MASTER}             master          {reloads} [failed: {failed}]   0d00h00m10s     2.6.12"]
    lines += ["# workers"] + [f"{pid}             worker          {n}               0d00h00m01s     2.6.12"
                              for pid, n in workers]
    lines += ["# old workers"] + [f"{pid}             worker          {n}               0d00h00m09s     2.6.12"
                                  for pid, n in old]
    return ("\n".join(lines) + "\n# programs\n\n").encode()


class Answer(Protocol):
    def __init__(self, answer):
        self.answer = answer

    def dataReceived(self, data):
        self.transport.write(self.answer())
        self.transport.loseConnection()


class Socket:
    """A UNIX socket answering ``answer()`` to every command; ``None`` = not listening (refused)."""

    def __init__(self, path: str, answer):
        self.path, self.answer, self.port, self.asked = path, answer, None, 0

    def listen(self):
        def respond():
            self.asked += 1
            return self.answer()
        self.port = reactor.listenUNIX(self.path, Factory.forProtocol(lambda: Answer(respond)))

    def close(self):
        return self.port.stopListening() if self.port else None


class FakeMaster:
    pid = MASTER
    state = RUNNING
    last_exit = None

    def __init__(self):
        self.signals = []

    def signal(self, name):
        self.signals.append(name)


@pytest.fixture
def sockets():
    directory = tempfile.mkdtemp(prefix="amp-rl-")
    made = []

    def make(name, answer, listening=True):
        sock = Socket(os.path.join(directory, name), answer)
        if listening:
            sock.listen()
        made.append(sock)
        return sock

    yield make
    # Stopped (the socket files unlinked) before the directory goes.
    pytest_twisted.blockon(defer.gatherResults([defer.maybeDeferred(sock.close) for sock in made]))
    shutil.rmtree(directory, ignore_errors=True)


BEFORE = ProcInfo(master_pid=MASTER, reloads=1, failed=0, workers=[(OLD, 0)])


@pytest_twisted.ensureDeferred
async def test_the_new_worker_on_the_stats_socket_confirms_while_the_master_cli_is_refused(sockets):
    pid = [OLD]
    stats = sockets("stats.sock", lambda: f"Name: HAProxy\nPid: {pid[0]}\nUptime: 0d\n".encode())
    master = sockets("master.sock", lambda: b"", listening=False)   # re-executing: refused
    reactor.callLater(0.05, pid.__setitem__, 0, NEW)
    proc = FakeMaster()
    worker = await HAProxy(reactor, "/bin/false").reload(proc, master.path, BEFORE, 5.0, stats_socket=stats.path)
    assert worker == NEW and proc.signals == ["USR2"] and stats.asked >= 2


@pytest_twisted.ensureDeferred
async def test_a_loading_failure_is_seen_on_the_master_cli(sockets):
    stats = sockets("stats.sock", lambda: f"Pid: {OLD}\n".encode())   # the old worker keeps it
    master = sockets("master.sock", lambda: show_proc(2, 1, [(OLD, 1)], []))
    with pytest.raises(OperationFailed, match="Loading failure"):
        await HAProxy(reactor, "/bin/false").reload(FakeMaster(), master.path, BEFORE, 5.0, stats_socket=stats.path)


@pytest_twisted.ensureDeferred
async def test_without_stats_socket_or_answer_the_master_cli_confirms(sockets):
    master = sockets("master.sock", lambda: show_proc(2, 0, [(NEW, 0)], [(OLD, 1)]))
    haproxy = HAProxy(reactor, "/bin/false")
    assert await haproxy.reload(FakeMaster(), master.path, BEFORE, 5.0) == NEW
    silent = sockets("stats.sock", lambda: b"Unknown command.\n")   # no Pid line: ignored
    assert await haproxy.reload(FakeMaster(), master.path, BEFORE, 5.0, stats_socket=silent.path) == NEW
    # The master itself or an old worker answering the stats socket is not a new worker.
    for pid in (MASTER, OLD):
        own = sockets(f"own{pid}.sock", lambda pid=pid: f"Pid: {pid}\n".encode())
        refused = sockets(f"gone{pid}.sock", lambda: b"", listening=False)
        with pytest.raises(OperationFailed, match="no new worker"):
            await haproxy.reload(FakeMaster(), refused.path, BEFORE, 0.2, stats_socket=own.path)
