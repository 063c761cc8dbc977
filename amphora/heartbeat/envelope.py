"""The heartbeat wire format, byte-compatible with OpenStack Octavia.

A packet is ``zlib.compress(json_bytes, COMPRESS_LEVEL, COMPRESS_WBITS)``
followed by the HMAC-SHA256 of those compressed bytes, keyed with the UTF-8
bytes of the shared key. The HMAC is written as 64 ASCII hex characters; Octavia's receivers also accept
the 32-byte raw digest that old amphorae sent, and so does :func:`unwrap`.
There is no header and no length field: the HMAC is simply the packet's tail.

Everything here is pure (no I/O, no reactor) so the emitter, the receiver,
the tests and the benchmark share exactly one implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import zlib
from typing import Any

HEX_DIGEST_LEN = 64
RAW_DIGEST_LEN = 32
# Level 9, as Octavia's own agent, but a 2 KB window (zlib's default is 32 KB). Octavia's
# receivers only ``zlib.decompress`` the payload (status_message.decode_obj; the default
# wbits=15 inflates any smaller window), so the window is the sender's choice. A beat's
# repetition is local (``"<uuid>":"UP",`` member after member); farther back there are only
# chance matches of a few hex digits, which cost more bits than they save and which level 9
# searches long hash chains for. With 2 KB the beat is ~1.5 % smaller and compresses in
# ~0.4 of the time (bench/heartbeat.py prints both sizes).
COMPRESS_LEVEL = 9
COMPRESS_WBITS = 11
# A forged or corrupt packet must not make the receiver inflate gigabytes:
# real beats are well under a megabyte even for hundreds of listeners.
MAX_INFLATED_BYTES = 16 * 1024 * 1024


class EnvelopeError(ValueError):
    """A packet that is not an acceptable heartbeat; ``reason`` is a short counter key."""

    reason = "invalid"


class BadHMAC(EnvelopeError):
    reason = "bad_hmac"


class BadPayload(EnvelopeError):
    reason = "bad_payload"


def key_bytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode("utf-8")


# One encoder for every beat (json.dumps with non-default options builds one per call). A
# beat is plain dicts, lists, strings and numbers built here: no cycle to check for.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, check_circular=False)


def encode_body(obj: Any) -> bytes:
    """Compact JSON of the beat (any JSON is fine for Octavia; compact is smaller)."""
    return _ENCODER.encode(obj).encode("ascii")


def hex_hmac(payload: bytes, key: str | bytes) -> bytes:
    return hmac.new(key_bytes(key), payload, hashlib.sha256).hexdigest().encode("ascii")


def raw_hmac(payload: bytes, key: str | bytes) -> bytes:
    return hmac.new(key_bytes(key), payload, hashlib.sha256).digest()


def seal(json_bytes: bytes, key: str | bytes) -> bytes:
    """Compress ``json_bytes`` and append the hex HMAC: the bytes to put in one datagram."""
    return sealed(zlib.compress(json_bytes, COMPRESS_LEVEL, COMPRESS_WBITS), key)


def compressor():
    """A zlib compressor with the packet's settings: fed piece by piece (Z_NO_FLUSH) and then
    flushed, it gives exactly :func:`seal`'s compression of all pieces; ``copy()`` forks it."""
    return zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, COMPRESS_WBITS)


def sealed(payload: bytes, key: str | bytes) -> bytes:
    """An already compressed ``payload`` with its hex HMAC appended."""
    return payload + hex_hmac(payload, key)


def wrap(obj: Any, key: str | bytes) -> bytes:
    """``seal(encode_body(obj), key)``."""
    return seal(encode_body(obj), key)


def wrap_raw_digest(obj: Any, key: str | bytes) -> bytes:
    """The legacy form (32-byte binary digest). Only for tests and interoperability checks."""
    payload = zlib.compress(encode_body(obj), COMPRESS_LEVEL, COMPRESS_WBITS)
    return payload + raw_hmac(payload, key)


def verify(packet: bytes, key: str | bytes) -> tuple[bytes, str]:
    """Check the HMAC; returns ``(compressed payload, "hex" | "raw")`` or raises :class:`BadHMAC`.

    Both candidate digests are computed and compared in constant time, as
    Octavia does (hex first, then the raw legacy form).
    """
    k = key_bytes(key)
    if len(packet) > HEX_DIGEST_LEN:
        payload, mac = packet[:-HEX_DIGEST_LEN], packet[-HEX_DIGEST_LEN:]
        if hmac.compare_digest(mac, hex_hmac(payload, k)):
            return payload, "hex"
    if len(packet) > RAW_DIGEST_LEN:
        payload, mac = packet[:-RAW_DIGEST_LEN], packet[-RAW_DIGEST_LEN:]
        if hmac.compare_digest(mac, raw_hmac(payload, k)):
            return payload, "raw"
    raise BadHMAC("HMAC does not match")


def inflate(payload: bytes, limit: int = MAX_INFLATED_BYTES) -> Any:
    """Decompress and parse an authenticated payload; raises :class:`BadPayload`."""
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(payload, limit)
        if inflater.unconsumed_tail:
            raise BadPayload(f"inflates to more than {limit} bytes")
        if not inflater.eof:
            raise BadPayload("truncated zlib stream")
        return json.loads(data.decode("utf-8"))
    except BadPayload:
        raise
    except (zlib.error, UnicodeDecodeError, ValueError) as e:
        raise BadPayload(f"not zlib-compressed JSON: {e.__class__.__name__}") from None


def unwrap(packet: bytes, key: str | bytes) -> Any:
    """The beat carried by ``packet``; raises :class:`BadHMAC` or :class:`BadPayload`."""
    payload, _form = verify(packet, key)
    return inflate(payload)
