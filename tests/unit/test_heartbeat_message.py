"""Building the v3 body from canned show-stat CSV, the delta rules, persistence and reduction."""

import json
import os

import pytest

from amphora.heartbeat import envelope
from amphora.heartbeat import message as msg
from amphora.listeners.stats import parse_show_stat
from tests.heartbeat_support import (HEADER, backend_line, frontend_line, octavia_unwrap, server_line, synthetic_csv,
                                     uuids)

AMP = "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce"
L1 = "e2dfddc0-5b9e-11e4-8ed6-0800200c9a66"
P1 = "399bbf4b-5f6c-4370-a61e-ed2ff2fc9387"
P2 = "c2f0ad6e-64a2-4a1f-8d3c-6a4a0f61f6a1"
P3 = "0cbc84b3-4c8e-46a6-93d5-5f3ba3c59a6e"
M = ["73f6d278-ae1c-4248-ad02-0bfd50d69aab", "2edca57c-5890-4bcb-ae67-4ef75776cc67",
     "b9e8a6a4-4a7e-4d43-9a3e-2a0d5d0b1a11", "5a1f0bb1-0d52-4fd6-8d56-0d4a7b6b2c22",
     "e4cc5f6b-8d7e-4b0e-9a36-8f2a1c3d4e33", "91d9a0c3-2b1f-4e0a-8c9d-7e6f5a4b3c44"]

CANNED = "\n".join([
    HEADER,
    frontend_line(L1, scur=3, stot=10, bin=1000, bout=2000, ereq=1),
    # backend named <pool>:<listener>
    server_line(f"{P1}:{L1}", M[0], "UP", 1),
    server_line(f"{P1}:{L1}", M[1], "DOWN", 1),
    server_line(f"{P1}:{L1}", M[2], "UP", 0),        # weight 0: Octavia's DRAIN
    server_line(f"{P1}:{L1}", M[3], "MAINT", 1),
    server_line(f"{P1}:{L1}", M[4], "no check", 1),
    backend_line(f"{P1}:{L1}", "UP"),
    # backend named <pool>, all servers down
    server_line(P2, M[5], "DOWN", 1),
    backend_line(P2, "DOWN"),
    # a pool without servers
    backend_line(P3, "UP"),
    # Octavia's internal exporter is never reported
    frontend_line("prometheus-exporter", scur=1, stot=99, bin=99, bout=99),
]) + "\n"


def sample(text=CANNED, lid=L1):
    return msg.summarize(lid, parse_show_stat(text))


def test_message_from_canned_csv():
    message, records = msg.build(AMP, 42, {L1: sample()}, {}, extra={"topology": "SINGLE", "role": "ACTIVE",
                                                                    "topology_status": "OK"})
    assert message == {
        "id": AMP, "seq": 42, "ver": 3,
        "listeners": {L1: {"status": "OPEN", "stats": {"tx": 2000, "rx": 1000, "conns": 3, "totconns": 10,
                                                        "ereq": 1}}},
        "pools": {
            f"{P1}:{L1}": {"status": "UP", "members": {M[0]: "UP", M[1]: "DOWN", M[2]: "DRAIN", M[3]: "MAINT",
                                                       M[4]: "no check"}},
            f"{P2}:{L1}": {"status": "DOWN", "members": {M[5]: "DOWN"}},
            f"{P3}:{L1}": {"status": "UP", "members": {}},
        },
        "topology": "SINGLE", "role": "ACTIVE", "topology_status": "OK",
    }
    assert records == {L1: {"bin": 1000, "bout": 2000, "stot": 10, "ereq": 1, "scur": 3, "status": "OPEN"}}
    # It survives the wire unchanged.
    assert envelope.unwrap(envelope.wrap(message, "k"), "k") == message


def test_haproxy_drain_and_transitional_statuses_pass_through():
    text = "\n".join([HEADER, frontend_line(L1, status="FULL"),
                      server_line(P1, M[0], "DRAIN", 1), server_line(P1, M[1], "UP 1/3", 0),
                      server_line(P1, M[2], "no check", 0), server_line(P1, M[3], "DOWN 1/2", 1),
                      backend_line(P1, "UP")]) + "\n"
    s = sample(text)
    assert s.status == "FULL"
    # Octavia turns exactly "UP" with weight 0 into DRAIN, nothing else.
    assert s.pools[f"{P1}:{L1}"]["members"] == {M[0]: "DRAIN", M[1]: "UP 1/3", M[2]: "no check", M[3]: "DOWN 1/2"}


def test_frontends_not_named_after_the_listener_are_summed():
    text = "\n".join([HEADER, frontend_line("http", scur=1, stot=2, bin=3, bout=4, ereq=0, status="STOP"),
                      frontend_line("https", scur=10, stot=20, bin=30, bout=40, ereq=5)]) + "\n"
    s = sample(text)
    assert (s.status, s.scur, s.counters) == ("OPEN", 11, {"bin": 33, "bout": 44, "stot": 22, "ereq": 5})
    named = "\n".join([HEADER, frontend_line(L1, stot=7, status="STOP"), frontend_line("other", stot=100)]) + "\n"
    assert sample(named).counters["stot"] == 7 and sample(named).status == "STOP"


def test_deltas_and_counter_reset():
    first, rec1 = msg.build(AMP, 0, {L1: sample()}, {})
    assert first["listeners"][L1]["stats"] == {"tx": 2000, "rx": 1000, "conns": 3, "totconns": 10, "ereq": 1}
    grown = CANNED.replace(frontend_line(L1, scur=3, stot=10, bin=1000, bout=2000, ereq=1),
                           frontend_line(L1, scur=1, stot=15, bin=1500, bout=2600, ereq=1))
    second, rec2 = msg.build(AMP, 1, {L1: sample(grown)}, rec1)
    assert second["listeners"][L1]["stats"] == {"tx": 600, "rx": 500, "conns": 1, "totconns": 5, "ereq": 0}
    # haproxy restarted: every counter went down, so the new absolutes are the deltas.
    reset = CANNED.replace(frontend_line(L1, scur=3, stot=10, bin=1000, bout=2000, ereq=1),
                           frontend_line(L1, scur=0, stot=2, bin=100, bout=300, ereq=0))
    third, rec3 = msg.build(AMP, 2, {L1: sample(reset)}, rec2)
    assert third["listeners"][L1]["stats"] == {"tx": 300, "rx": 100, "conns": 0, "totconns": 2, "ereq": 0}
    assert rec3[L1]["stot"] == 2
    assert msg.delta(5, 5) == 0 and msg.delta(7, 5) == 2 and msg.delta(3, 5) == 3


def test_unanswered_listener_keeps_last_status_and_counters():
    _, rec1 = msg.build(AMP, 0, {L1: sample()}, {})
    pools = {L1: sample().pools}
    message, rec2 = msg.build(AMP, 1, {L1: None}, rec1, pools)
    assert message["listeners"][L1] == {"status": "OPEN", "stats": {"tx": 0, "rx": 0, "conns": 3, "totconns": 0,
                                                                     "ereq": 0}}
    assert message["pools"] == sample().pools
    assert rec2 == rec1
    # Never seen: still listed (the controller counts listeners), status UNKNOWN.
    L2 = uuids(1)[0]
    message, rec = msg.build(AMP, 2, {L2: None}, {})
    assert message["listeners"][L2]["status"] == "UNKNOWN" and rec == {}


def test_no_listeners_is_still_a_beat():
    message, records = msg.build(AMP, 5, {}, {})
    assert message == {"id": AMP, "seq": 5, "ver": 3, "listeners": {}, "pools": {}} and records == {}


def test_state_persists_and_restart_neither_loses_nor_double_counts(tmp_path):
    state = msg.BeatState(str(tmp_path))
    assert (state.seq, state.listeners) == (0, {})
    _, records = msg.build(AMP, state.seq, {L1: sample()}, state.listeners)
    state.seq += 1
    state.listeners.update(records)
    state.save()
    assert oct(os.stat(state.path).st_mode & 0o777) == "0o600"

    restarted = msg.BeatState(str(tmp_path))      # the agent restarts
    assert restarted.seq == 1 and restarted.listeners == records
    grown = CANNED.replace(frontend_line(L1, scur=3, stot=10, bin=1000, bout=2000, ereq=1),
                           frontend_line(L1, scur=3, stot=12, bin=1010, bout=2020, ereq=1))
    message, _ = msg.build(AMP, restarted.seq, {L1: sample(grown)}, restarted.listeners)
    assert message["seq"] == 1
    assert message["listeners"][L1]["stats"] == {"tx": 20, "rx": 10, "conns": 3, "totconns": 2, "ereq": 0}


def test_corrupt_state_file_moves_on_past_the_last_sequence_number(tmp_path):
    """issue 17: a garbled heartbeat.json must not restart seq at 0 (the controller would take the
    beats for replays): it is moved aside and seq continues from a time base."""
    for n, content in enumerate(("not json", "[]", '{"seq": "x", "listeners": []}', '{"seq": -3}',
                                 '{"seq": true}', '"started"', '{"seq": 5, "listeners": [1]}')):
        (tmp_path / "heartbeat.json").write_text(content)
        state = msg.BeatState(str(tmp_path), now=lambda: 1_700_000_000.0 + n)
        assert (state.seq, state.listeners) == (1_700_000_000 + n, {}), content
        assert not (tmp_path / "heartbeat.json").exists()
    assert len(list(tmp_path.glob("heartbeat.json.corrupt-*"))) == 7
    state.seq += 1
    state.save()
    assert msg.BeatState(str(tmp_path)).seq == 1_700_000_007  # a good file is used as it is


def big_message(listeners=50, members=100):
    samples = {}
    for lid in uuids(listeners):
        pools = {uuids(1)[0]: {m: "UP" for m in uuids(members)}}
        samples[lid] = msg.summarize(lid, parse_show_stat(synthetic_csv(lid, pools, stot=5)))
    return msg.build(AMP, 1, samples, {})[0]


def test_small_beat_is_not_reduced():
    message, _ = msg.build(AMP, 0, {L1: sample()}, {})
    packet, reduction = msg.fit(message, "k", 65000)
    assert reduction is None and envelope.unwrap(packet, "k") == message


def test_oversize_beat_keeps_every_listener_and_pool_status():
    message = big_message(50, 100)
    full = envelope.wrap(message, "k")
    assert len(full) > 65000, "the synthetic beat must really be too big"
    packet, reduction = msg.fit(message, "k", 65000)
    assert len(packet) <= 65000
    body = envelope.unwrap(packet, "k")
    assert octavia_unwrap(packet, "k") == body   # Octavia's health manager reads it the same
    assert body["listeners"] == message["listeners"]
    assert set(body["pools"]) == set(message["pools"])
    assert all(body["pools"][k]["status"] == p["status"] for k, p in message["pools"].items())
    assert all("members" in p for p in body["pools"].values())   # Octavia reads it unconditionally
    stripped = [k for k, p in body["pools"].items() if not p["members"]]
    kept = [k for k, p in body["pools"].items() if p["members"]]
    assert kept, "only as many pools as needed lose their members"
    assert body["members_omitted"] == len(stripped) == reduction.pools_stripped
    assert reduction.members_dropped == 100 * len(stripped) and reduction.pools_dropped == 0
    assert reduction.full_bytes == len(full) and reduction.sent_bytes == len(packet) and reduction.fits
    # Minimal: keeping the members of the last pool stripped would not fit.
    order = msg.reduction_order(message["pools"])
    assert set(order[:len(stripped)]) == set(stripped)
    assert len(envelope.wrap(msg._stripped(message, order[:len(stripped) - 1]), "k")) > 65000
    # Byte for byte what one zlib.compress of that body gives.
    assert packet == envelope.wrap(msg._stripped(message, order[:len(stripped)]), "k")


def test_largest_pools_lose_their_members_first():
    samples = {}
    sizes = {}
    for lid, n in zip(uuids(6), (5, 400, 10, 300, 20, 200)):
        pool = uuids(1)[0]
        sizes[f"{pool}:{lid}"] = n
        samples[lid] = msg.summarize(lid, parse_show_stat(synthetic_csv(lid, {pool: {m: "UP" for m in uuids(n)}})))
    message = msg.build(AMP, 1, samples, {})[0]
    full = len(envelope.wrap(message, "k"))
    packet, reduction = msg.fit(message, "k", full // 2)
    body = envelope.unwrap(packet, "k")
    stripped = {k for k, p in body["pools"].items() if not p["members"]}
    assert stripped and all(sizes[s] >= max(sizes[k] for k in sizes if k not in stripped) for s in stripped)


def test_pool_statuses_too_big_drops_pools_but_never_listeners():
    message = big_message(40, 3)
    packet, reduction = msg.fit(message, "k", 2000)
    body = envelope.unwrap(packet, "k")
    assert set(body["listeners"]) == set(message["listeners"])
    assert reduction.pools_dropped > 0 and body["pools_omitted"] == reduction.pools_dropped
    assert len(packet) <= 2000 and reduction.fits
    tiny_packet, tiny = msg.fit(message, "k", 100)
    assert not tiny.fits and set(envelope.unwrap(tiny_packet, "k")["listeners"]) == set(message["listeners"])


def test_body_is_plain_json():
    message, _ = msg.build(AMP, 0, {L1: sample()}, {})
    assert json.loads(envelope.encode_body(message)) == message


class CountingCompressor:
    """envelope.compressor() that counts the bytes every copy of it compresses."""

    def __init__(self, fed, inner=None):
        import zlib
        self.fed, self.inner = fed, inner or zlib.compressobj(envelope.COMPRESS_LEVEL, zlib.DEFLATED,
                                                                envelope.COMPRESS_WBITS)

    def compress(self, data):
        self.fed.append(len(data))
        return self.inner.compress(data)

    def flush(self):
        return self.inner.flush()

    def copy(self):
        return CountingCompressor(self.fed, self.inner.copy())


def test_reduction_compresses_the_beat_about_once(monkeypatch):
    message = big_message(50, 100)
    size = len(envelope.encode_body(message))
    fed = []
    monkeypatch.setattr(envelope, "compressor", lambda: CountingCompressor(fed))
    packet, reduction = msg.fit(message, "k", 65000)
    assert reduction.fits and reduction.pools_stripped > 0
    # One pass over the whole beat, then only tails: stripped pools and a few pools again.
    assert size <= sum(fed) <= 1.25 * size, (sum(fed), size)


def brute_force(message, limit):
    """The fewest pools to strip (in reduction order) for the packet to fit, trying every count."""
    order = [k for k in msg.reduction_order(message["pools"]) if message["pools"][k]["members"]]
    for k in range(len(order) + 1):
        packet = envelope.wrap(msg._stripped(message, order[:k]) if k else message, "k")
        if len(packet) <= limit:
            return k, packet
    return None, None


@pytest.mark.parametrize("listeners,members", [(12, 40), (60, 5), (3, 300)])
def test_reduction_is_the_fewest_pools_at_any_limit(listeners, members):
    samples = {}
    for i, lid in enumerate(uuids(listeners)):
        pools = {p: {m: "UP" for m in uuids(members + i % 7)} for p in uuids(1 + i % 2)}
        samples[lid] = msg.summarize(lid, parse_show_stat(synthetic_csv(lid, pools, stot=5)))
    message = msg.build(AMP, 1, samples, {})[0]
    full = len(envelope.wrap(message, "k"))
    stripped_all = len(envelope.wrap(msg._stripped(message, msg.reduction_order(message["pools"])), "k"))
    limits = {full, full - 1, stripped_all, stripped_all + 1} | {
        stripped_all + (full - stripped_all) * i // 9 for i in range(1, 9)}
    for limit in sorted(limits):
        k, expected = brute_force(message, limit)
        packet, reduction = msg.fit(message, "k", limit)
        assert packet == expected, (limit, k, reduction)
        assert (reduction.pools_stripped if reduction else 0) == k
        assert (reduction is None) == (k == 0)


def test_without_measure_the_full_beat_is_not_compressed_past_the_limit(monkeypatch):
    message = big_message(50, 100)
    measured_packet, measured = msg.fit(message, "k", 65000)
    fed = []
    monkeypatch.setattr(envelope, "compressor", lambda: CountingCompressor(fed))
    packet, reduction = msg.fit(message, "k", 65000, measure=False)
    assert packet == measured_packet and reduction.full_bytes is None
    assert (reduction.pools_stripped, reduction.members_dropped, reduction.sent_bytes) == (
        measured.pools_stripped, measured.members_dropped, measured.sent_bytes)
    assert sum(fed) < 0.8 * len(envelope.encode_body(message))
    # A beat that fits is the same either way.
    small = big_message(2, 10)
    assert msg.fit(small, "k", 65000, measure=False) == (envelope.wrap(small, "k"), None)
