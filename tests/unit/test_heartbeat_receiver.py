"""The controller-side receiver: what it accepts and why it rejects."""

import argparse
import zlib

import pytest
from twisted.internet.task import Clock

from amphora.heartbeat import envelope
from amphora.heartbeat.receiver import HeartbeatReceiver, parse_bind

KEY = "receiver-key"
A = "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce"
B = "0d1b0c7e-3b0a-4c59-9f9a-34e1f4d0a1b2"
SRC = ("127.0.0.1", 40000)


def body(seq, amp=A, **extra):
    return dict({"id": amp, "seq": seq, "ver": 3, "listeners": {}, "pools": {}}, **extra)


def make():
    got, rejected = [], []
    clock = Clock()
    clock.advance(1000)
    r = HeartbeatReceiver(KEY, on_beat=got.append, on_reject=lambda e, src: rejected.append((e.reason, src)),
                          clock=clock)
    return r, got, rejected


def test_accepts_in_order_and_rejects_replay_and_old_seq():
    r, got, rejected = make()
    first = envelope.wrap(body(1), KEY)
    r.datagramReceived(first, SRC)
    r.datagramReceived(envelope.wrap(body(2), KEY), SRC)
    r.datagramReceived(envelope.wrap(body(2), KEY), SRC)      # same seq again
    r.datagramReceived(first, SRC)                            # a captured old packet
    r.datagramReceived(envelope.wrap(body(5), KEY), SRC)      # gaps are fine (lost datagrams)
    assert [b.seq for b in got] == [1, 2, 5]
    assert r.accepted == 3 and dict(r.rejected) == {"replay": 1, "old_seq": 1}
    assert rejected == [("replay", SRC), ("old_seq", SRC)]
    doc = got[0].document()
    assert doc == {"source": "127.0.0.1:40000", "received": 1000, "bytes": len(first), "digest": "hex",
                   "beat": body(1)}


def test_sequences_are_per_amphora():
    r, got, _ = make()
    for amp, seq in ((A, 10), (B, 1), (A, 11), (B, 2)):
        r.datagramReceived(envelope.wrap(body(seq, amp), KEY), SRC)
    assert [(b.amphora_id, b.seq) for b in got] == [(A, 10), (B, 1), (A, 11), (B, 2)]
    assert r.last_seq == {A: 11, B: 2}


def test_raw_digest_form_is_accepted():
    r, got, _ = make()
    r.datagramReceived(envelope.wrap_raw_digest(body(0), KEY), SRC)
    assert got[0].digest == "raw" and got[0].body == body(0)


def test_rejection_reasons():
    r, got, rejected = make()
    good = envelope.wrap(body(3), KEY)
    tampered = bytearray(good)
    tampered[10] ^= 0xFF
    not_zlib = b"plain text" + envelope.hex_hmac(b"plain text", KEY)
    bad_json = zlib.compress(b"{oops", 9)
    a_list = zlib.compress(b"[1, 2]", 9)
    no_seq = zlib.compress(b'{"id": "x"}', 9)
    bool_seq = zlib.compress(b'{"id": "x", "seq": true}', 9)
    packets = [bytes(tampered), envelope.wrap(body(3), "wrong"), b"", b"short", not_zlib,
               bad_json + envelope.hex_hmac(bad_json, KEY), a_list + envelope.hex_hmac(a_list, KEY),
               no_seq + envelope.hex_hmac(no_seq, KEY), bool_seq + envelope.hex_hmac(bool_seq, KEY)]
    for p in packets:
        r.datagramReceived(p, SRC)
    assert got == [] and r.accepted == 0
    assert dict(r.rejected) == {"bad_hmac": 4, "bad_payload": 2, "bad_body": 3}
    assert r.last_seq == {}          # nothing rejected moves the sequence
    r.datagramReceived(good, SRC)
    assert [b.seq for b in got] == [3]


def test_a_failing_hook_does_not_break_the_receiver():
    calls = []

    def hook(beat):
        calls.append(beat.seq)
        raise RuntimeError("consumer bug")

    r = HeartbeatReceiver(KEY, on_beat=hook)
    r.datagramReceived(envelope.wrap(body(1), KEY), SRC)
    r.datagramReceived(envelope.wrap(body(2), KEY), SRC)
    assert calls == [1, 2]


def test_empty_key_is_refused_and_key_not_in_repr():
    with pytest.raises(ValueError):
        HeartbeatReceiver("")
    assert KEY not in repr(HeartbeatReceiver(KEY))


def test_parse_bind():
    assert parse_bind("127.0.0.1:5555") == ("127.0.0.1", 5555)
    assert parse_bind("[::1]:5555") == ("::1", 5555)
    assert parse_bind(":5555") == ("0.0.0.0", 5555)
    for bad in ("5555", "host:", "[::1]5555", "h:99999"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_bind(bad)
