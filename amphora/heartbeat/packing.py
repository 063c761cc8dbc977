"""Fitting a beat in one packet with one compression pass.

A beat too big for one datagram loses the members of its largest pools
(``message.fit``). Finding how many used to cost a compression of the whole
beat per guess, and compressing hundreds of kilobytes of UUIDs costs
milliseconds each. Here the pools are laid out so that the ones that may lose
their members come last, in the order they would lose them backwards; then
"the first ``m`` pools in full, the rest stripped" is one common prefix plus a
short tail, for every ``m``. One pass compresses the whole beat (its full size
is reported) and keeps a few copies of the compressor along the way
(``zlib``'s ``copy()``: over a hundred kilobytes each, at most
``CHECKPOINTS + 1`` at once); each guess then only compresses its tail from
the nearest copy. The packets are byte for byte what ``envelope.wrap`` gives
for the same body: a compressor fed piece by piece emits what one
``zlib.compress`` of the whole emits (with ``envelope``'s settings).

Pure (no I/O), so it runs in the emitter's thread like the rest of the beat.
"""

from __future__ import annotations

from typing import Callable, Sequence

from amphora.heartbeat import envelope

CHECKPOINTS = 8
# Uncompressed bytes per compressed byte that a beat is assumed to reach at most, for the
# first stride (a beat of UUIDs is about 2; a wrong guess costs a few copies or probes).
RATIO_GUESS = 3
# After a packet estimated past the limit turned out to fit, how much further (a fraction of
# the limit) the estimate must go before the next packet is compressed to check.
SLACK = 0.01


def _bound(raw: int) -> int:
    """The largest packet ``raw`` bytes of JSON can make (zlib's compressBound, plus the HMAC)."""
    return raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13 + envelope.HEX_DIGEST_LEN


class Lazy:
    """A sequence of ``length`` items, item ``i`` being ``make(i)``, made when first asked for."""

    def __init__(self, length: int, make: Callable[[int], bytes]):
        self.items: list[bytes | None] = [None] * length
        self.make = make

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> bytes:
        item = self.items[i]
        if item is None:
            item = self.items[i] = self.make(i)
        return item


class _Stream:
    """A compressor and the bytes it has emitted so far; ``fork`` copies both."""

    def __init__(self, compressor, chunks: list[bytes] | None = None, size: int = 0):
        self.compressor, self.chunks, self.size = compressor, chunks or [], size

    def feed(self, data: bytes) -> None:
        out = self.compressor.compress(data)
        if out:
            self.chunks.append(out)
            self.size += len(out)

    def fork(self) -> "_Stream":
        return _Stream(self.compressor.copy(), list(self.chunks), self.size)

    def finish(self, data: bytes) -> bytes:
        self.feed(data)
        return b"".join(self.chunks) + self.compressor.flush()


def fit(prefix: bytes, full: Sequence[bytes], stripped: list[bytes], suffix: Callable[[int], bytes],
        strippable: int, key: str | bytes, limit: int, measure: bool = True,
        watch: bool | None = None) -> tuple[bytes | None, tuple[int, bytes] | None]:
    """``(full packet, (k, packet) | None)``.

    The body is ``prefix``, then entry ``i`` as ``full[i]`` (the first ``m``)
    or ``stripped[i]`` (the rest), then ``suffix(k)`` with ``k = len(full) - m``
    stripped entries; only the last ``strippable`` entries may be stripped.
    When the full packet fits, the second item is ``(0, full packet)``;
    otherwise it is the smallest ``k`` whose packet fits (assuming a packet
    grows with ``m``, as it does: a pool in full is longer than stripped),
    or None when even ``k = strippable`` does not fit. Without ``measure``,
    the full packet is None when it is certain not to fit before the end
    (its size is only for a log line: the rest of it is not compressed).
    """
    n = len(full)
    first = n - strippable

    def payload_at(stream: _Stream, m: int) -> bytes:
        """The compressed body with the first ``m`` entries in full; ``stream`` has been fed up to
        entry ``m``. Its packet is ``HEX_DIGEST_LEN`` bytes longer: the HMAC (a tenth of a
        millisecond over a full packet) is computed only for the packet sent."""
        return stream.fork().finish(b"".join(stripped[m:]) + suffix(n - m))

    room = limit - envelope.HEX_DIGEST_LEN   # the most compressed bytes a packet can hold

    stream = _Stream(envelope.compressor())
    stream.feed(prefix)
    for i in range(first):
        stream.feed(full[i])
    # Copies only when the beat might not fit, and only where a packet might (its bytes so
    # far, a lower bound, still fit): at every stride-th entry, the stride doubling to keep
    # at most CHECKPOINTS of them. The first stride spreads CHECKPOINTS copies over the
    # entries a packet could hold if the beat compressed RATIO_GUESS to one, not one per
    # entry: a copy is over a hundred kilobytes of fresh memory (up to a tenth of a ms),
    # and most of those made at a stride of 1 were thrown away when it doubled.
    # (Entries in full are read in order and only as far as needed: ``full`` may be Lazy.)
    known = 0   # entries read to tell whether the beat might not fit
    if watch is None:
        raw = len(prefix) + len(suffix(0))
        while known < n and _bound(raw) <= limit:
            raw += len(full[known])
            known += 1
        watch = _bound(raw) > limit
    marks: list[tuple[int, _Stream]] = []
    fed = len(prefix) + sum(len(full[i]) for i in range(first))   # bytes fed to the stream
    typical = sum(len(full[i]) for i in range(known)) / known if known else len(full[first]) if first < n else 1
    entries = min(n - first, max(0, int((limit * RATIO_GUESS - fed) / max(typical, 1))))
    stride, beyond = max(1, entries // CHECKPOINTS), None   # beyond: the first position known not to fit
    # The compressor emits its output a block (tens of kilobytes of input) at a time, so its
    # bytes so far pass the limit well after the packet does. Where the packet's estimated
    # size (the ratio of compression when a block last came out, times the bytes of the body
    # up to there with a stripped tail) passes the limit, one packet compressed on a copy
    # tells for sure, and the pass can stop there.
    ratio, emitted, check_above = 0.0, stream.size, room
    tail = [len(suffix(0))] * (n + 1)   # tail[m]: about the stripped entries m.. and the suffix
    for i in range(n - 1, first - 1, -1):
        tail[i] = tail[i + 1] + len(stripped[i])

    def past(m: int) -> bool:
        """Whether the packet with the first ``m`` entries in full is known not to fit."""
        nonlocal check_above
        if stream.size > room:
            return True
        if ratio * (fed + tail[m]) <= check_above:
            return False
        if len(payload_at(stream, m)) > room:
            return True
        check_above *= 1 + SLACK   # it fits after all: check again further on
        return False

    for m in range(first, n + 1):
        if watch and beyond is None:
            if past(m):
                beyond = m
                if not measure:
                    break
            elif (m - first) % stride == 0 and m < n:
                marks.append((m, stream.fork()))
                if len(marks) > CHECKPOINTS:
                    stride *= 2
                    marks = [(p, s) for p, s in marks if (p - first) % stride == 0]
        if m < n:
            stream.feed(full[m])
            fed += len(full[m])
            if stream.size != emitted:
                ratio, emitted = stream.size / fed, stream.size
    whole = None
    if beyond is None or measure:
        whole = envelope.sealed(stream.finish(suffix(0)), key)
        if len(whole) <= limit:
            return whole, (0, whole)
        if not watch:   # cannot happen (the bound is zlib's), but never strip blindly
            return fit(prefix, full, stripped, suffix, strippable, key, limit, measure, watch=True)
    # The last copy whose packet fits, then a bisection up to the next position that does not.
    for index in range(len(marks) - 1, -1, -1):
        lo, lo_stream = marks[index]
        lo_payload = payload_at(lo_stream, lo)
        if len(lo_payload) <= room:
            break
    else:
        return whole, None
    hi = marks[index + 1][0] if index + 1 < len(marks) else n if beyond is None else beyond
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probe = lo_stream.fork()
        for i in range(lo, mid):
            probe.feed(full[i])
        payload = payload_at(probe, mid)
        if len(payload) <= room:
            lo, lo_stream, lo_payload = mid, probe, payload
        else:
            hi = mid
    return whole, (n - lo, envelope.sealed(lo_payload, key))
