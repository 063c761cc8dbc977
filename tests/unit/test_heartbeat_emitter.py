"""The heartbeat service on a fake clock and fake UDP ports: timing, deltas, failures, gates."""

import socket
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent

from amphora.config import HeartbeatSection
from amphora.heartbeat import envelope
from amphora.heartbeat import message as msg
from amphora.heartbeat.emitter import HeartbeatService, RateLimiter
from amphora.testing import FakeKeepalived, FakeListeners
from tests.heartbeat_support import FakeReactor, synthetic_csv, uuids

AMP = "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce"
KEY = "s3cr3t-heartbeat-key"
CTRL = ("127.0.0.1", 5555)


def topo(name=None, role=None, status=None):
    """What the heartbeat reads of the topology; all None: nothing to report."""
    return SimpleNamespace(topology=name, role=role, status=status)


def make(tmp_path, listeners=None, controllers=(CTRL,), interval=10.0, limit=65000, resolve=None,
         topology=None, keepalived=None, reactor=None, fanout="all", ready=None):
    reactor = reactor or FakeReactor()
    settings = HeartbeatSection(controllers=tuple(controllers), interval=interval, key=KEY,
                                max_packet_bytes=limit, fanout=fanout)
    parts = SimpleNamespace(listeners=listeners if listeners is not None else FakeListeners(),
                            topology=topology if topology is not None else topo(),
                            keepalived=keepalived if keepalived is not None else FakeKeepalived())
    service = HeartbeatService(reactor, settings, amphora_id=AMP, state_dir=str(tmp_path),
                               listeners=parts.listeners, topology=parts.topology, keepalived=parts.keepalived,
                               ready=ready, resolve=resolve)
    return reactor, parts, service


def beats(reactor, addr=CTRL):
    return [envelope.unwrap(data, KEY) for data, to in reactor.sent if to == addr]


def csv_for(lid, pool, member_status="UP", **frontend):
    return synthetic_csv(lid, {pool: {"m-" + lid[:8]: member_status}}, **frontend)


def test_beats_at_the_interval_with_increasing_seq(tmp_path):
    reactor, agent, service = make(tmp_path)
    service.startService()
    assert [b["seq"] for b in beats(reactor)] == [0]     # the first beat goes out at once
    reactor.advance(9.9)
    assert len(beats(reactor)) == 1
    reactor.pump([0.1, 10, 10])
    got = beats(reactor)
    assert [b["seq"] for b in got] == [0, 1, 2, 3]
    assert all(b == {"id": AMP, "seq": b["seq"], "ver": 3, "listeners": {}, "pools": {}} for b in got)
    assert reactor.ports[0].interface == "0.0.0.0"
    service.stopService()
    assert reactor.ports[0].closed
    reactor.advance(30)
    assert len(beats(reactor)) == 4


def test_every_running_listener_with_deltas(tmp_path):
    l1, l2 = sorted(uuids(2))
    p1, p2 = uuids(2)
    counters = {l1: 0, l2: 0}
    answers = {l1: lambda: csv_for(l1, p1, stot=counters[l1], bin=counters[l1] * 100),
               l2: lambda: csv_for(l2, p2, "DOWN", stot=counters[l2], bin=counters[l2] * 100)}
    listeners = FakeListeners(None, answers)
    reactor, agent, service = make(tmp_path, listeners,
                                   topology=SimpleNamespace(topology="SINGLE", role="ACTIVE", status="OK"))
    counters[l1] = 4
    service.startService()
    counters[l1], counters[l2] = 10, 3
    reactor.advance(10)
    counters[l2] = 1        # l2's haproxy restarted
    reactor.advance(10)
    got = beats(reactor)
    assert [sorted(b["listeners"]) for b in got] == [[l1, l2]] * 3
    assert [b["listeners"][l1]["stats"]["totconns"] for b in got] == [4, 6, 0]
    assert [b["listeners"][l1]["stats"]["rx"] for b in got] == [400, 600, 0]
    assert [b["listeners"][l2]["stats"]["totconns"] for b in got] == [0, 3, 1]
    assert got[0]["pools"][f"{p2}:{l2}"] == {"status": "DOWN", "members": {"m-" + l2[:8]: "DOWN"}}
    assert got[0]["topology"] == "SINGLE" and got[0]["role"] == "ACTIVE" and got[0]["topology_status"] == "OK"
    service.stopService()


def test_restart_resumes_seq_and_counters(tmp_path):
    lid, pool = uuids(2)
    total = {"stot": 7}
    listeners = FakeListeners(None, {lid: lambda: csv_for(lid, pool, stot=total["stot"])})
    reactor, _, service = make(tmp_path, listeners)
    service.startService()
    reactor.advance(10)
    service.stopService()
    total["stot"] = 9
    reactor2, _, service2 = make(tmp_path, listeners)
    service2.startService()
    got = beats(reactor) + beats(reactor2)
    assert [b["seq"] for b in got] == [0, 1, 2]
    assert [b["listeners"][lid]["stats"]["totconns"] for b in got] == [7, 0, 2]
    service2.stopService()


def test_hanging_and_garbage_stats_socket_do_not_stop_the_loop(tmp_path):
    good, hangs, garbage = sorted(uuids(3))
    pool = uuids(1)[0]
    mode = {"hangs": False}
    answers = {
        good: lambda: csv_for(good, pool, stot=1),
        hangs: lambda: "hang" if mode["hangs"] else csv_for(hangs, pool, stot=5, status="FULL"),
        garbage: lambda: "Unknown command. Please enter one of the following commands only :\n",
    }
    reactor, _, service = make(tmp_path, FakeListeners(None, answers), interval=1.0)
    with capturedLogs() as events:
        service.startService()
        mode["hangs"] = True
        reactor.pump([0.1] * 40)
    got = beats(reactor)
    assert len(got) >= 4, "beats keep coming while a socket hangs"
    assert [b["seq"] for b in got] == list(range(len(got)))
    for b in got:
        assert sorted(b["listeners"]) == sorted([good, hangs, garbage])
        assert b["listeners"][garbage]["status"] == "UNKNOWN"
        assert b["listeners"][hangs]["status"] == "FULL"            # its last known status
    assert [b["listeners"][hangs]["stats"]["totconns"] for b in got] == [5] + [0] * (len(got) - 1)
    assert got[-1]["pools"][f"{pool}:{hangs}"]["status"] == "UP"   # last known pools too
    warnings = [formatEvent(e) for e in events if "no statistics" in formatEvent(e)]
    assert len(warnings) == 2, warnings      # one per listener, rate-limited
    mode["hangs"] = False
    reactor.pump([0.5] * 4)
    assert beats(reactor)[-1]["listeners"][hangs]["stats"]["totconns"] == 0   # same absolute 5: no delta
    service.stopService()


def test_an_exception_in_one_beat_does_not_stop_the_next(tmp_path):
    class Broken(FakeListeners):
        calls = 0

        def running_ids(self):
            Broken.calls += 1
            if Broken.calls == 2:
                raise RuntimeError("boom")
            return []

    reactor, _, service = make(tmp_path, Broken())
    with capturedLogs() as events:
        service.startService()
        reactor.pump([10, 10, 10])
    assert [b["seq"] for b in beats(reactor)] == [0, 1, 2]
    assert any("beat failed" in formatEvent(e) for e in events)
    service.stopService()


def test_each_controller_gets_every_beat_and_send_errors_are_rate_limited(tmp_path):
    v6 = ("::1", 5556)
    dead = ("127.0.0.2", 5557)
    reactor, _, service = make(tmp_path, controllers=(CTRL, v6, dead))
    service.startService()
    v4port = next(p for p in reactor.ports if p.interface == "0.0.0.0")
    v4port.fail[dead] = OSError(101, "Network is unreachable")
    with capturedLogs() as events:
        reactor.pump([10] * 5)
    assert [b["seq"] for b in beats(reactor)] == [0, 1, 2, 3, 4, 5]
    assert [b["seq"] for b in beats(reactor, v6)] == [0, 1, 2, 3, 4, 5]
    assert next(p for p in reactor.ports if p.sent and p.sent[0][1] == v6).interface == "::"
    errors = [formatEvent(e) for e in events if "cannot send" in formatEvent(e)]
    assert len(errors) == 1 and "127.0.0.2:5557" in errors[0]
    del v4port.fail[dead]
    with capturedLogs() as events:
        reactor.advance(10)
    assert any("works again" in formatEvent(e) for e in events)
    service.stopService()


def test_when_no_controller_takes_the_beat_deltas_are_kept_for_the_next(tmp_path):
    lid, pool = uuids(2)
    total = {"stot": 3}
    reactor, _, service = make(tmp_path, FakeListeners(None, {lid: lambda: csv_for(lid, pool, stot=total["stot"])}))
    service.startService()
    port = reactor.ports[0]
    port.fail[CTRL] = OSError(101, "Network is unreachable")
    total["stot"] = 5
    reactor.advance(10)
    total["stot"] = 8
    reactor.advance(10)
    del port.fail[CTRL]
    reactor.advance(10)
    got = beats(reactor)
    assert [b["seq"] for b in got] == [0, 3]          # seq is never reused
    assert [b["listeners"][lid]["stats"]["totconns"] for b in got] == [3, 5]
    service.stopService()


def test_names_resolve_asynchronously_and_failures_are_retried(tmp_path):
    pending = {}
    attempts = []

    def resolve(host, port):
        attempts.append(host)
        if host == "broken.example":
            return defer.fail(OSError("name not known"))
        pending[host] = d = defer.Deferred()
        return d

    reactor, _, service = make(tmp_path, controllers=(("hm.example", 5555), ("broken.example", 5556)),
                               resolve=resolve)
    with capturedLogs() as events:
        service.startService()
        assert reactor.sent == []                    # nothing resolved yet: no beat
        pending["hm.example"].callback([(socket.AF_INET6, "fd00::5", 5555)])
        reactor.advance(10)
    assert [b["seq"] for b in beats(reactor, ("fd00::5", 5555))] == [0]
    assert attempts.count("broken.example") == 2   # retried after the backoff
    assert sum("cannot resolve" in formatEvent(e) for e in events) == 1
    service.stopService()


def test_active_standby_without_keepalived_sends_nothing(tmp_path):
    topology = topo("ACTIVE-STANDBY", "BACKUP", "OK")
    keepalived = FakeKeepalived(running=False, configured=True)
    reactor, _, service = make(tmp_path, topology=topology, keepalived=keepalived)
    with capturedLogs() as events:
        service.startService()
        reactor.pump([10, 10])
    assert beats(reactor) == []
    assert sum("keepalived is configured but not running" in formatEvent(e) for e in events) == 1
    keepalived.running = True
    reactor.advance(10)
    assert [(b["seq"], b["topology"], b["role"]) for b in beats(reactor)] == [(0, "ACTIVE-STANDBY", "BACKUP")]
    keepalived.running = False                  # stopped again
    reactor.advance(10)
    assert len(beats(reactor)) == 1
    service.stopService()


@pytest.mark.parametrize("topology,keepalived", [
    (topo("SINGLE"), FakeKeepalived(running=False, configured=True)),
    (topo("ACTIVE-STANDBY"), FakeKeepalived()),
    (topo("ACTIVE-STANDBY"), FakeKeepalived(running=True, configured=True)),
    (topo("ACTIVE-STANDBY"), FakeKeepalived(running=False, configured=False)),
    (topo(), FakeKeepalived()),
])
def test_gate_only_applies_to_active_standby_with_a_stopped_keepalived(tmp_path, topology, keepalived):
    reactor, _, service = make(tmp_path, topology=topology, keepalived=keepalived)
    service.startService()
    assert len(beats(reactor)) == 1
    service.stopService()


def test_waits_for_the_agent_to_be_ready(tmp_path):
    ready = defer.Deferred()
    reactor, _, service = make(tmp_path, ready=lambda: ready)
    service.startService()
    reactor.advance(20)
    assert beats(reactor) == []
    ready.callback(None)
    assert [b["seq"] for b in beats(reactor)] == [0]
    service.stopService()


def test_oversize_beat_is_reduced_and_warned_about(tmp_path):
    answers = {}
    for lid in uuids(50):
        pools = {uuids(1)[0]: {m: "UP" for m in uuids(100)}}
        answers[lid] = synthetic_csv(lid, pools)
    reactor, _, service = make(tmp_path, FakeListeners(None, answers))
    with capturedLogs() as events:
        service.startService()
        reactor.advance(10)
    packets = [data for data, _ in reactor.sent]
    assert len(packets) == 2 and all(len(p) <= 65000 for p in packets)
    body = envelope.unwrap(packets[0], KEY)
    assert sorted(body["listeners"]) == sorted(answers) and len(body["pools"]) == 50
    warned = [formatEvent(e) for e in events if "exceeds max_packet_bytes" in formatEvent(e)]
    assert len(warned) == 1 and f"of 50 pools ({service.last_reduction.members_dropped} members)" in warned[0]
    # Only the beat whose warning is logged measures the full beat; the next warning does again.
    assert service.last_reduction.full_bytes is None
    with capturedLogs() as events:
        reactor.advance(300)
    warned = [formatEvent(e) for e in events if "exceeds max_packet_bytes" in formatEvent(e)]
    full = service.last_reduction.full_bytes
    assert len(warned) == 1 and full > 65000 and f"beat of {full} bytes" in warned[0]
    service.stopService()


def test_counters_of_deleted_listeners_are_forgotten(tmp_path):
    keep, stopped, deleted = uuids(3)
    pool = uuids(1)[0]
    answers = {lid: csv_for(lid, pool, stot=3) for lid in (keep, stopped, deleted)}
    listeners = FakeListeners(None, answers)
    reactor, _, service = make(tmp_path, listeners)
    service.startService()
    listeners.running = [keep]
    listeners.existing = [keep, stopped]
    reactor.advance(10)
    assert set(service.state.listeners) == {keep, stopped}
    listeners.running = [keep, stopped]        # the same haproxy is seen again: no double count
    reactor.advance(10)
    assert beats(reactor)[-1]["listeners"][stopped]["stats"]["totconns"] == 0
    service.stopService()


def test_key_is_never_logged(tmp_path):
    lid = uuids(1)[0]
    reactor, agent, service = make(tmp_path, FakeListeners(None, {lid: RuntimeError("socket gone")}),
                                   controllers=(CTRL, ("127.0.0.3", 1)))
    with capturedLogs() as events:
        service.startService()
        reactor.ports[0].fail[("127.0.0.3", 1)] = OSError(90, "Message too long")
        reactor.pump([10, 10])
        service.stopService()
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert events and KEY not in text
    assert KEY not in repr(service)


def test_rate_limiter():
    reactor = FakeReactor()
    limiter = RateLimiter(reactor, period=60)
    assert limiter.allow("a") == (True, 0)
    assert limiter.allow("a") == (False, 0)
    assert limiter.allow("b") == (True, 0)
    reactor.advance(61)
    assert limiter.allow("a") == (True, 1)
    limiter.clear("a")
    assert limiter.allow("a") == (True, 0) and limiter.tripped("a")


def test_limit_never_exceeds_what_udp_can_carry(tmp_path):
    assert make(tmp_path, limit=10**6)[2].limit == 65507
    assert make(tmp_path, limit=1400)[2].limit == 1400


def test_rows_that_cannot_be_read_count_as_no_answer(tmp_path):
    class Odd(FakeListeners):
        def show_stat(self, lid, columns=None):
            return defer.succeed([["not", "a", "row"]])

    lid = uuids(1)[0]
    reactor, _, service = make(tmp_path, Odd(None, {lid: ""}))
    with capturedLogs() as events:
        service.startService()
    assert beats(reactor)[0]["listeners"][lid]["status"] == "UNKNOWN"
    assert any("unreadable statistics" in formatEvent(e) for e in events)
    service.stopService()


def test_round_robin_sends_each_beat_to_one_controller_in_turn(tmp_path):
    c2, c3 = ("127.0.0.2", 5555), ("::1", 5555)
    reactor, _, service = make(tmp_path, controllers=(CTRL, c2, c3), fanout="round-robin")
    service.startService()
    reactor.pump([10] * 5)
    seqs = {c: [b["seq"] for b in beats(reactor, c)] for c in (CTRL, c2, c3)}
    assert seqs == {CTRL: [0, 3], c2: [1, 4], c3: [2, 5]}
    # A controller that cannot be sent to is skipped for that beat: the next one gets it.
    v4 = next(p for p in reactor.ports if p.interface == "0.0.0.0")
    v4.fail[CTRL] = OSError(101, "Network is unreachable")
    reactor.advance(10)
    assert [b["seq"] for b in beats(reactor, c2)] == [1, 4, 6]
    service.stopService()


def test_fanout_option_is_validated():
    from amphora.config import ConfigError, _parse_section

    assert _parse_section("heartbeat", HeartbeatSection, {}).fanout == "all"
    assert _parse_section("heartbeat", HeartbeatSection, {"fanout": "round-robin"}).fanout == "round-robin"
    with pytest.raises(ConfigError, match="heartbeat.fanout"):
        _parse_section("heartbeat", HeartbeatSection, {"fanout": "some"})


def test_a_state_write_failure_is_logged_and_the_beat_still_sent(tmp_path, monkeypatch):
    reactor, _, service = make(tmp_path)

    def broken():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.state, "save", broken)
    with capturedLogs() as events:
        service.startService()
        reactor.advance(10)
    assert [b["seq"] for b in beats(reactor)] == [0, 1]
    assert sum("cannot persist" in formatEvent(e) for e in events) == 1
    service.stopService()


def test_stopping_mid_beat_sends_nothing_more(tmp_path):
    lid = uuids(1)[0]
    reactor, _, service = make(tmp_path, FakeListeners(None, {lid: "hang"}))
    service.startService()           # the first beat waits for the hanging socket
    with capturedLogs() as events:
        service.stopService()
        reactor.advance(30)
    assert reactor.sent == [] and service.state.seq == 0
    assert not [e for e in events if e.get("log_level") is not None and e["log_level"].name in ("warn", "error",
                                                                                                "critical")]


def test_asks_the_listeners_only_for_the_columns_it_reads(tmp_path):
    lid, pool = uuids(2)
    listeners = FakeListeners(None, {lid: csv_for(lid, pool)})
    reactor, _, service = make(tmp_path, listeners)
    service.startService()
    assert listeners.columns == msg.STAT_COLUMNS
    assert beats(reactor)[0]["pools"][f"{pool}:{lid}"] == {"status": "UP", "members": {"m-" + lid[:8]: "UP"}}
    service.stopService()
