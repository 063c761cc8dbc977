"""The wire format: known-answer vectors, round trip, tampering, wrong key, legacy raw digest."""

import hashlib
import hmac
import json
import zlib

import pytest

from amphora.heartbeat import envelope
from tests.heartbeat_support import octavia_unwrap

KEY = "amphora-test-key"
BODY = {"id": "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce", "seq": 7, "ver": 3, "listeners": {}, "pools": {}}
# Computed once, by hand, with Python's hmac/zlib (zlib 1.2.13, level 9, wbits 11) from the compact JSON of BODY.
COMPACT_JSON = b'{"id":"6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce","seq":7,"ver":3,"listeners":{},"pools":{}}'
COMPACT_HMAC = b"69c66d48e705e21e7080514ff4b30c35e6f7dd1adc047c39cf46ad4f56c49150"
# A packet exactly as OpenStack Octavia's amphora agent builds it (jsonutils.dumps keeps the
# default ", " / ": " separators): a literal, so this vector does not depend on our encoder
# or on the local zlib's output.
OCTAVIA_PACKET = bytes.fromhex(
    "78da25cacb0a80201085e1579159275879abb7511b41902c8d36e2bb37d0eefb0fa7433a6067a071f1c13ac1"
    "17252d97d11bee54143cfa19a3747ad3016162d0f0a6bb21bd58492b29a7f6e089b551f741c3554afe637cea"
    "7b1b4d") + b"3218afd98388c789d08380df0076c940c7574a5db77cdfe36e09f29b001a5304"


def test_known_answer_hmac_of_fixed_body():
    assert envelope.encode_body(BODY) == COMPACT_JSON
    packet = envelope.wrap(BODY, KEY)
    payload, mac = packet[:-64], packet[-64:]
    # Independently: the payload is zlib (level 9, a 2 KB window) of the JSON, the tail the hex
    # HMAC-SHA256 of it.
    assert (envelope.COMPRESS_LEVEL, envelope.COMPRESS_WBITS) == (9, 11)
    assert payload == zlib.compress(COMPACT_JSON, 9, 11)
    assert mac == hmac.new(KEY.encode(), payload, hashlib.sha256).hexdigest().encode()
    assert mac == COMPACT_HMAC
    assert len(packet) == len(payload) + 64


def test_octavia_reads_our_packets():
    assert octavia_unwrap(envelope.wrap(BODY, KEY), KEY) == BODY
    big = dict(BODY, pools={f"p{i}": {"status": "UP", "members": {f"m{j}": "UP" for j in range(50)}}
                            for i in range(50)})
    assert octavia_unwrap(envelope.wrap(big, KEY), KEY) == big


def test_octavia_built_packet_is_accepted():
    assert envelope.unwrap(OCTAVIA_PACKET, KEY) == BODY
    assert envelope.verify(OCTAVIA_PACKET, KEY)[1] == "hex"


def test_round_trip_with_unicode_key():
    key = "clé-secrète"
    body = dict(BODY, listeners={"l": {"status": "OPEN", "stats": {"tx": 1, "rx": 2, "conns": 3,
                                                                   "totconns": 4, "ereq": 5}}})
    assert envelope.unwrap(envelope.wrap(body, key), key) == body
    assert envelope.unwrap(envelope.wrap(body, key.encode("utf-8")), key) == body


@pytest.mark.parametrize("position", [0, 5, -70, -64, -1])
def test_tampered_byte_is_rejected(position):
    packet = bytearray(envelope.wrap(BODY, KEY))
    packet[position] ^= 0x01
    with pytest.raises(envelope.BadHMAC):
        envelope.unwrap(bytes(packet), KEY)


def test_wrong_key_is_rejected():
    with pytest.raises(envelope.BadHMAC):
        envelope.unwrap(envelope.wrap(BODY, KEY), KEY + "x")
    with pytest.raises(envelope.BadHMAC):
        envelope.unwrap(OCTAVIA_PACKET, "")


def test_raw_digest_form_is_accepted():
    payload = zlib.compress(json.dumps(BODY).encode(), 9)
    legacy = payload + hmac.new(KEY.encode(), payload, hashlib.sha256).digest()
    assert len(legacy) == len(payload) + 32
    assert envelope.unwrap(legacy, KEY) == BODY
    assert envelope.verify(legacy, KEY)[1] == "raw"
    assert envelope.unwrap(envelope.wrap_raw_digest(BODY, KEY), KEY) == BODY
    with pytest.raises(envelope.BadHMAC):
        envelope.unwrap(legacy, "other")


@pytest.mark.parametrize("packet", [b"", b"x", b"0" * 64, b"\x00" * 32])
def test_short_packets_are_rejected(packet):
    with pytest.raises(envelope.BadHMAC):
        envelope.unwrap(packet, KEY)


def test_authentic_garbage_is_a_payload_error():
    for payload in (b"not zlib at all", zlib.compress(b"{not json", 9), zlib.compress(b"\xff\xfe", 9),
                    zlib.compress(b'{"id": 1}', 9)[:-3]):
        packet = payload + envelope.hex_hmac(payload, KEY)
        with pytest.raises(envelope.BadPayload):
            envelope.unwrap(packet, KEY)


def test_decompression_bomb_is_refused():
    payload = zlib.compress(b"[" + b" " * (2 * 1024 * 1024) + b"]", 9)
    packet = payload + envelope.hex_hmac(payload, KEY)
    with pytest.raises(envelope.BadPayload):
        envelope.inflate(envelope.verify(packet, KEY)[0], limit=1024 * 1024)
    assert envelope.unwrap(packet, KEY) == []
