"""Heartbeats over real loopback UDP from an in-process agent to the receiver.

The listeners are two REAL haproxy processes (with admin stats sockets) in
front of a small web server; until the listener manager lands, a stand-in
``agent.listeners`` (amphora.testing.FakeListeners) exposes them
with the agreed interface, set on the agent before it starts.
"""

from __future__ import annotations

import os
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from amphora.agent import build_agent
from amphora.heartbeat import envelope
from amphora.heartbeat.receiver import HeartbeatReceiver, listen
from amphora.listeners.stats import parse_show_stat, query
from amphora.testing import FakeListeners
from tests.heartbeat_support import RealHAProxy, synthetic_csv, uuids
from tests.helpers import REPO

KEY = "integration-heartbeat-key"
INTERVAL = 0.4


class CapturingReceiver(HeartbeatReceiver):
    """The library receiver, also keeping every raw datagram (for the replay test)."""

    def __init__(self, key):
        self.beats = []
        self.raw: list[bytes] = []
        super().__init__(key, on_beat=self.beats.append)

    def datagramReceived(self, data, addr):
        self.raw.append(data)
        super().datagramReceived(data, addr)


@pytest.fixture
def receiver():
    r = CapturingReceiver(KEY)
    port = listen(reactor, r, "127.0.0.1", 0)
    r.port = port.getHost().port
    yield r
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def agent_config_extra(receiver):
    return {"heartbeat": {"controllers": f"127.0.0.1:{receiver.port}", "key": KEY, "interval": str(INTERVAL)}}


class Backend(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"hello from the backend\n" * 20


@pytest.fixture
def web():
    port = reactor.listenTCP(0, Site(Backend()), interface="127.0.0.1")
    yield port.getHost().port
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def haproxies(web, tmp_path):
    started = []
    try:
        for name in ("a", "b"):
            started.append(RealHAProxy(str(tmp_path / f"amp6-haproxy-{name}"), web).start())
        yield started
    finally:
        for h in started:
            h.stop()


async def start_agent(config, listeners):
    agent = build_agent(config, reactor, listeners=listeners)
    agent.privilegedStartService()
    agent.startService()
    await agent.when_ready()
    return agent


async def wait_for(predicate, timeout=10.0, step=0.05, what="condition"):
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(reactor, step, lambda: None)
        waited += step


async def absolutes(h: RealHAProxy) -> dict:
    rows = parse_show_stat(await query(reactor, h.socket, "show stat"))
    front = next(r for r in rows if r["svname"] == "FRONTEND")
    return {"rx": int(front["bin"]), "tx": int(front["bout"]), "totconns": int(front["stot"]),
            "ereq": int(front["ereq"])}


def totals(beats, lid):
    out = {"rx": 0, "tx": 0, "totconns": 0, "ereq": 0}
    for b in beats:
        stats = b.body["listeners"][lid]["stats"]
        for k in out:
            out[k] += stats[k]
    return out


async def traffic(h: RealHAProxy, n: int):
    pool = HTTPConnectionPool(reactor, persistent=False)   # one session per request
    for _ in range(n):
        response = await treq.get(f"http://127.0.0.1:{h.port}/", pool=pool)
        assert response.code == 200
        await response.content()
    await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_two_real_listeners_deltas_replay_and_restart(agent_config, receiver, haproxies):
    a, b = haproxies
    listeners = FakeListeners(reactor, sockets={a.listener: a.socket, b.listener: b.socket})
    agent = await start_agent(agent_config, listeners)
    try:
        expected_pools = {f"{h.pool}:{h.listener}" for h in haproxies} | {f"{h.pool2}:{h.listener}"
                                                                         for h in haproxies}

        def settled():
            return receiver.beats and all(
                receiver.beats[-1].body["pools"].get(f"{h.pool}:{h.listener}", {}).get("members")
                == h.expected_members() for h in haproxies)

        await wait_for(settled, what="health checks to settle")
        last = receiver.beats[-1].body
        assert set(last["listeners"]) == {a.listener, b.listener}
        assert set(last["pools"]) == expected_pools
        assert all(last["listeners"][h.listener]["status"] == "OPEN" for h in haproxies)
        assert last["pools"][f"{a.pool}:{a.listener}"]["status"] == "UP"
        assert last["id"] == agent.config.agent.amphora_id and last["ver"] == 3
        assert last["topology"] == "SINGLE" and last["topology_status"] == "OK"

        # haproxy's own counters are the truth: the readiness probe of RealHAProxy.start
        # already made one (empty) session on each.
        before = {h.listener: await absolutes(h) for h in haproxies}
        await traffic(a, 5)
        await traffic(b, 3)
        after = {h.listener: await absolutes(h) for h in haproxies}
        assert after[a.listener]["totconns"] - before[a.listener]["totconns"] == 5
        assert after[b.listener]["totconns"] - before[b.listener]["totconns"] == 3

        def reported():
            return all(totals(receiver.beats, lid)[k] == after[lid][k] for lid in after for k in after[lid])

        try:
            await wait_for(reported, what="deltas of the traffic")
        except AssertionError:
            raise AssertionError(f"beats say { {lid: totals(receiver.beats, lid) for lid in after} };"
                                 f" haproxy says {after}") from None
        # Nothing more is reported while there is no traffic.
        seen = len(receiver.beats)
        await wait_for(lambda: len(receiver.beats) >= seen + 2, what="two more beats")
        assert reported()
        assert all(beat.body["listeners"][h.listener]["stats"]["totconns"] == 0
                   for beat in receiver.beats[seen:] for h in haproxies)

        # The beats come at the interval, seq by seq, none lost on loopback.
        seqs = [beat.seq for beat in receiver.beats]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        span = receiver.beats[-1].received - receiver.beats[0].received
        assert span >= (len(seqs) - 1) * INTERVAL * 0.8

        # A captured packet sent again is rejected.
        sender = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        try:
            before = receiver.accepted
            sender.write(receiver.raw[-1], ("127.0.0.1", receiver.port))
            sender.write(receiver.raw[0], ("127.0.0.1", receiver.port))
            await wait_for(lambda: sum(receiver.rejected.values()) >= 2, what="replays to be rejected")
            assert receiver.rejected["replay"] + receiver.rejected["old_seq"] == 2
            assert receiver.rejected["old_seq"] >= 1
            forged = bytearray(receiver.raw[-1])
            forged[3] ^= 0x40
            sender.write(bytes(forged), ("127.0.0.1", receiver.port))
            await wait_for(lambda: receiver.rejected["bad_hmac"] == 1, what="forged packet to be rejected")
            assert receiver.accepted >= before
        finally:
            await sender.stopListening()
    finally:
        await agent.stopService()

    # Restart: traffic while the agent is down is reported once, and seq continues.
    last_seq = receiver.beats[-1].seq
    await traffic(a, 2)
    mark = len(receiver.beats)
    agent = await start_agent(agent_config, listeners)
    try:
        await wait_for(lambda: len(receiver.beats) >= mark + 3, what="beats after the restart")
        after = receiver.beats[mark:]
        assert after[0].seq == last_seq + 1
        assert [beat.seq for beat in after] == list(range(last_seq + 1, last_seq + 1 + len(after)))
        assert totals(after, a.listener)["totconns"] == 2
        assert totals(after, b.listener)["totconns"] == 0
        assert totals(receiver.beats, a.listener) == await absolutes(a)
        assert receiver.rejected["replay"] + receiver.rejected["old_seq"] == 2   # nothing new rejected
    finally:
        await agent.stopService()


@pytest_twisted.ensureDeferred
async def test_agent_without_listeners_still_beats(agent, receiver):
    # No listener exists (agent.listeners is None until the listener manager is merged,
    # then a manager without listeners): beats are still sent, with empty maps.
    await wait_for(lambda: len(receiver.beats) >= 2, what="two beats")
    assert receiver.beats[0].body["listeners"] == {} and receiver.beats[0].body["pools"] == {}
    assert agent.heartbeat.running


@pytest_twisted.ensureDeferred
async def test_oversize_beat_arrives_reduced_with_every_listener_and_pool(agent_config, receiver):
    answers = {}
    for lid in uuids(50):
        answers[lid] = synthetic_csv(lid, {uuids(1)[0]: {m: "UP" for m in uuids(100)}}, stot=1)
    agent = await start_agent(agent_config, FakeListeners(reactor, answers))
    try:
        await wait_for(lambda: receiver.beats, what="a beat")
        beat = receiver.beats[0]
        assert beat.size <= 65000
        assert set(beat.body["listeners"]) == set(answers)
        assert len(beat.body["pools"]) == 50
        assert all(p["status"] == "UP" for p in beat.body["pools"].values())
        assert 0 < beat.body["members_omitted"] < 50
        reduction = agent.heartbeat.last_reduction
        assert reduction.full_bytes > 65000 >= reduction.sent_bytes == beat.size
    finally:
        await agent.stopService()


class Hang(Protocol):
    """A stats socket that accepts and never answers."""


class Garbage(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"\x00\xffthis is not a show stat answer\n")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_loop_survives_hanging_and_garbage_stats_sockets(agent_config, receiver, haproxies, tmp_path):
    a = haproxies[0]
    hang_lid, garbage_lid = uuids(2)
    hang_path, garbage_path = str(tmp_path / "amp6-hang.sock"), str(tmp_path / "amp6-garbage.sock")
    hang_port = reactor.listenUNIX(hang_path, Factory.forProtocol(Hang))
    garbage_port = reactor.listenUNIX(garbage_path, Factory.forProtocol(Garbage))
    listeners = FakeListeners(reactor, sockets={a.listener: a.socket, hang_lid: hang_path,
                                                garbage_lid: garbage_path})
    agent = None
    try:
        agent = await start_agent(agent_config, listeners)
        await wait_for(lambda: len(receiver.beats) >= 5, what="five beats")
        for beat in receiver.beats:
            assert set(beat.body["listeners"]) == {a.listener, hang_lid, garbage_lid}
            assert beat.body["listeners"][hang_lid]["status"] == "UNKNOWN"
            assert beat.body["listeners"][garbage_lid]["status"] == "UNKNOWN"
            assert beat.body["listeners"][a.listener]["status"] == "OPEN"
        seqs = [beat.seq for beat in receiver.beats]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        if agent is not None:
            await agent.stopService()
        for port in (hang_port, garbage_port):
            await defer.maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_receiver_command_prints_beats_and_counts_rejections(tmp_path):
    """``python -m amphora.heartbeat.receiver``: one JSON line per accepted beat on stdout."""
    import json

    from twisted.internet import protocol
    from tests.heartbeat_support import free_port

    key_file = tmp_path / "amp6-key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    out, err = [], []
    ended = defer.Deferred()

    class Proc(protocol.ProcessProtocol):
        def outReceived(self, data):
            out.append(data)

        def errReceived(self, data):
            err.append(data)

        def processEnded(self, reason):
            ended.callback(reason.value.exitCode)

    env = dict(os.environ, PYTHONPATH=REPO)
    proc = reactor.spawnProcess(Proc(), sys.executable, [sys.executable, "-m", "amphora.heartbeat.receiver",
                                                         "--bind", f"127.0.0.1:{port}", "--key-file", str(key_file)],
                                env=env, path=REPO)
    sender = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    try:
        await wait_for(lambda: b"listening on" in b"".join(err), what="receiver to listen")
        good = envelope.wrap({"id": "amp", "seq": 1, "ver": 3, "listeners": {}, "pools": {}}, KEY)
        for packet in (good, good, envelope.wrap({"id": "amp", "seq": 2}, "wrong"),
                       envelope.wrap_raw_digest({"id": "amp", "seq": 2, "ver": 3}, KEY)):
            sender.write(packet, ("127.0.0.1", port))
        await wait_for(lambda: b"".join(out).count(b"\n") >= 2 and b"".join(err).count(b"rejected") >= 2,
                       what="receiver output")
        lines = [json.loads(line) for line in b"".join(out).decode().splitlines()]
        assert [(line["beat"]["seq"], line["digest"]) for line in lines] == [(1, "hex"), (2, "raw")]
        rejections = [json.loads(line) for line in b"".join(err).decode().splitlines() if line.startswith("{")]
        assert [r["rejected"] for r in rejections] == ["replay", "bad_hmac"]
        assert rejections[-1]["counts"] == {"replay": 1, "bad_hmac": 1}
        assert KEY not in b"".join(out + err).decode()
    finally:
        await sender.stopListening()
        if proc.pid is not None:
            proc.signalProcess("TERM")
        assert await ended in (0, 1, None)


def test_twistd_agent_beats_to_ipv4_and_ipv6_controllers_across_a_restart(pki, tmp_path):
    """The real ``twistd -n amphora-agent`` process: wiring, both address families, seq on disk."""
    import socket

    from tests.helpers import TwistdAgent, free_port, write_config

    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v4.bind(("127.0.0.1", 0))
    v6.bind(("::1", 0))
    controllers = f"127.0.0.1:{v4.getsockname()[1]}, [::1]:{v6.getsockname()[1]}"
    config = write_config(pki, str(tmp_path / "amp6-twistd"), free_port(),
                          {"heartbeat": {"controllers": controllers, "key": KEY, "interval": "0.2"}})
    receivers = {"v4": HeartbeatReceiver(KEY), "v6": HeartbeatReceiver(KEY)}

    def collect(n):
        got = {"v4": [], "v6": []}
        for name, sock in (("v4", v4), ("v6", v6)):
            sock.settimeout(10)
            while len(got[name]) < n:
                data, source = sock.recvfrom(65535)
                beat = receivers[name].accept(data, source)
                assert beat is not None, dict(receivers[name].rejected)
                got[name].append(beat.seq)
        return got

    try:
        for run in range(2):
            agent = TwistdAgent(config, str(tmp_path / f"amp6-twistd-{run}.log")).start()
            try:
                got = collect(3)
            finally:
                assert agent.stop() == 0, agent.log()
            assert got["v4"] == got["v6"]
            assert KEY not in agent.log()
            if run == 0:
                first = got["v4"]
                assert first == [0, 1, 2]
            else:
                assert got["v4"][0] > first[-1]         # seq continues after the restart
        assert sum(receivers["v4"].rejected.values()) == 0
    finally:
        v4.close()
        v6.close()
