"""The controller side of the heartbeat: verify, decode and de-duplicate beats.

As a library: :class:`HeartbeatReceiver` is a Twisted ``DatagramProtocol``
that calls ``on_beat(beat)`` for every accepted packet and counts rejected
ones by reason in ``rejected``; :func:`listen` binds it (with a buffer for
whole 64 KiB datagrams: Twisted's default would truncate big beats).

- ``bad_hmac``: too short, or neither the 64-byte hex HMAC nor the legacy
  32-byte raw digest matches (constant-time compares);
- ``bad_payload``: authentic but not zlib-compressed JSON;
- ``bad_body``: JSON that is not a beat (no string ``id``, no integer ``seq``);
- ``replay``: the same ``seq`` as the last accepted beat of that amphora;
- ``old_seq``: a lower ``seq`` than the last accepted beat of that amphora.

The sequence check is what Octavia's health manager lacks: a captured
packet replayed later cannot make a dead amphora look alive.

As a command::

    python -m amphora.heartbeat.receiver --bind 127.0.0.1:5555 --key KEY

prints one JSON line per accepted beat on stdout
(``{"source", "received", "bytes", "digest", "beat"}``) and one JSON line
per rejected packet on stderr with the running counts. ``--key-file`` or
the environment variable ``AMPHORA_HEARTBEAT_KEY`` keep the key out of the
process list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from amphora.heartbeat import envelope

log = Logger()

# Read whole datagrams: Twisted's default buffer (8192) would truncate big beats,
# which then fail the HMAC check. 65535 is the largest UDP payload.
MAX_DATAGRAM = 65535
REASONS = ("bad_hmac", "bad_payload", "bad_body", "replay", "old_seq")


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


@dataclass
class Beat:
    """One accepted heartbeat."""

    body: dict
    source: tuple
    digest: str          # "hex" (current) or "raw" (legacy 32-byte digest)
    size: int
    received: float

    @property
    def amphora_id(self) -> str:
        return self.body["id"]

    @property
    def seq(self) -> int:
        return self.body["seq"]

    def document(self) -> dict:
        host, port = self.source[0], self.source[1]
        source = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return {"source": source, "received": self.received, "bytes": self.size,
                "digest": self.digest, "beat": self.body}


class HeartbeatReceiver(DatagramProtocol):
    """Accepts authentic, fresh beats; see the module docstring for the rejection reasons."""

    noisy = False

    def __init__(self, key: str | bytes, on_beat: Callable[[Beat], Any] | None = None,
                 on_reject: Callable[[Rejected, tuple], Any] | None = None, clock=None):
        self._key = envelope.key_bytes(key)
        if not self._key:
            raise ValueError("an empty heartbeat key accepts forged packets")
        self.on_beat = on_beat
        self.on_reject = on_reject
        self.clock = clock
        self.accepted = 0
        self.rejected: Counter = Counter()
        self.last_seq: dict[str, int] = {}

    def __repr__(self):  # never show the key
        return f"<HeartbeatReceiver accepted={self.accepted} rejected={dict(self.rejected)}>"

    def check(self, packet: bytes, source: tuple = ("", 0)) -> Beat:
        """Verify and decode ``packet``; raises :class:`Rejected`. Does not record the seq."""
        try:
            payload, form = envelope.verify(packet, self._key)
        except envelope.BadHMAC:
            raise Rejected("bad_hmac") from None
        try:
            body = envelope.inflate(payload)
        except envelope.BadPayload as e:
            raise Rejected("bad_payload", str(e)) from None
        if not isinstance(body, dict):
            raise Rejected("bad_body", "not a JSON object")
        amphora_id, seq = body.get("id"), body.get("seq")
        if not isinstance(amphora_id, str) or not amphora_id:
            raise Rejected("bad_body", "no amphora id")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise Rejected("bad_body", "no integer seq")
        last = self.last_seq.get(amphora_id)
        if last is not None and seq == last:
            raise Rejected("replay", f"seq {seq} of {amphora_id} already accepted")
        if last is not None and seq < last:
            raise Rejected("old_seq", f"seq {seq} of {amphora_id} is older than {last}")
        now = self.clock.seconds() if self.clock is not None else time.time()
        return Beat(body=body, source=tuple(source), digest=form, size=len(packet), received=now)

    def accept(self, packet: bytes, source: tuple = ("", 0)) -> Beat | None:
        """Check ``packet``, record it, and call the hooks; returns the beat or None."""
        try:
            beat = self.check(packet, source)
        except Rejected as e:
            self.rejected[e.reason] += 1
            if self.on_reject is not None:
                self.on_reject(e, source)
            return None
        self.last_seq[beat.amphora_id] = beat.seq
        self.accepted += 1
        if self.on_beat is not None:
            self.on_beat(beat)
        return beat

    def datagramReceived(self, data, addr):
        try:
            self.accept(data, addr)
        except Exception:
            log.failure("heartbeat receiver: handler failed")


def listen(reactor, receiver: HeartbeatReceiver, host: str = "127.0.0.1", port: int = 0):
    """Bind ``receiver`` on UDP ``host:port``; returns the listening port.

    Every listening tool (this module's command, ``amphora-ctl heartbeats``, the
    tests) binds through here, so none reads a beat cut at Twisted's 8 KiB default.
    """
    return reactor.listenUDP(port, receiver, interface=host, maxPacketSize=MAX_DATAGRAM)


def parse_bind(raw: str) -> tuple[str, int]:
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
    else:
        host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or [V6]:PORT, got {raw!r}")
    return host or "0.0.0.0", int(port)


def read_key(key: str | None = None, key_file: str | None = None) -> str:
    """The HMAC key from ``key_file`` (stripped), else ``key``, else ``AMPHORA_HEARTBEAT_KEY``;
    "" when none is given. Raises OSError for an unreadable file."""
    if key_file:
        with open(key_file, encoding="utf-8") as f:
            return f.read().strip()
    return key or os.environ.get("AMPHORA_HEARTBEAT_KEY", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m amphora.heartbeat.receiver",
        description="Receive amphora heartbeats (Octavia format): one JSON line per accepted beat.")
    parser.add_argument("--bind", type=parse_bind, default=("127.0.0.1", 5555),
                        help="HOST:PORT or [V6]:PORT to listen on (default 127.0.0.1:5555)")
    parser.add_argument("--key", help="the [heartbeat] key (visible in ps: prefer --key-file)")
    parser.add_argument("--key-file", help="file holding the key")
    args = parser.parse_args(argv)
    try:
        key = read_key(args.key, args.key_file)
    except OSError as e:
        parser.error(f"--key-file: {e.strerror}")
    if not key:
        parser.error("a key is required (--key, --key-file or AMPHORA_HEARTBEAT_KEY)")

    from twisted.internet import reactor

    def on_beat(beat: Beat) -> None:
        sys.stdout.write(json.dumps(beat.document(), sort_keys=True) + "\n")
        sys.stdout.flush()

    def on_reject(error: Rejected, source) -> None:
        sys.stderr.write(json.dumps({"rejected": error.reason, "detail": error.detail,
                                     "source": f"{source[0]}:{source[1]}",
                                     "counts": dict(receiver.rejected)}, sort_keys=True) + "\n")
        sys.stderr.flush()

    receiver = HeartbeatReceiver(key, on_beat=on_beat, on_reject=on_reject, clock=None)
    host, port = args.bind
    try:
        listening = listen(reactor, receiver, host, port)
    except Exception as e:
        sys.stderr.write(f"cannot listen on {host}:{port}: {e}\n")
        return 1
    address = listening.getHost()
    sys.stderr.write(f"listening on {address.host}:{address.port}\n")
    sys.stderr.flush()
    reactor.run()
    sys.stderr.write(json.dumps({"accepted": receiver.accepted, "rejected": dict(receiver.rejected)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
