"""Building the heartbeat body (Octavia message version 3) and fitting it in one packet.

Pure functions and one small state object; no I/O except :class:`BeatState`'s
atomic file. The emitter gathers ``show stat`` rows per running listener and
calls :func:`summarize` then :func:`build`; :func:`fit` signs the result and,
when it is too big, reduces it.

Body::

    {"id": <amphora uuid>, "seq": <int>, "ver": 3,
     "listeners": {<listener>: {"status": "OPEN" | "FULL" | "STOP" | ...,
                                "stats": {"tx", "rx", "conns", "totconns", "ereq"}}},
     "pools": {"<pool>:<listener>": {"status": "UP" | "DOWN",
                                     "members": {<member>: "UP" | "DOWN" | "DRAIN" | "MAINT" | "no check" | ...}}},
     "topology": ..., "role": ..., "topology_status": ...}

``tx`` (bytes out), ``rx`` (bytes in), ``totconns`` (sessions) and ``ereq``
(request errors) are deltas since the last beat sent; ``conns`` is the
current session count. These follow Octavia's health daemon, including its
two status rules: a server that haproxy reports ``UP`` with weight 0 is
``DRAIN`` (Octavia drains members by setting their weight to 0, and haproxy
still says UP), and the pool status is the BACKEND row's status. Which
backends are pools, DRAIN and DOWN come from ``amphora.listeners.pools``,
the model the v0.1 status route renders too.
"""

from __future__ import annotations

import bisect
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from twisted.logger import Logger

from amphora.fsutil import atomic_write_json, read_state
from amphora.heartbeat import envelope, packing
from amphora.listeners import pools

log = Logger()

MSG_VER = 3
UNKNOWN = "UNKNOWN"
# Published stats key -> haproxy "show stat" column, for the delta counters.
DELTA_METRICS = (("rx", "bin"), ("tx", "bout"), ("totconns", "stot"), ("ereq", "ereq"))
COUNTER_COLUMNS = tuple(column for _, column in DELTA_METRICS)
# Every ``show stat`` column a beat reads: the listener manager parses only these.
STAT_COLUMNS = pools.COLUMNS + ("scur",) + COUNTER_COLUMNS


def _int(value: Any) -> int:
    """haproxy leaves columns empty where they do not apply; those count as 0."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return number if number >= 0 else 0


def pool_entry(pool: pools.Pool) -> dict:
    """Octavia's pool vocabulary: UP / DOWN (its health manager derives DEGRADED from the members).
    A member is haproxy's raw status, except Octavia's DRAIN for exactly ``UP`` with weight 0."""
    # ``pools.Member.drained``'s rule, inlined over the tuple (thousands of members per beat).
    return {"status": "DOWN" if pool.down else "UP",
            "members": {name: (raw or UNKNOWN) if raw != "UP" else "DRAIN" if weight.strip() == "0" else raw
                        for name, raw, weight in pool.members}}


@dataclass
class Sample:
    """What one ``show stat`` answer says about one listener."""

    status: str
    counters: dict[str, int]          # absolute bin, bout, stot, ereq
    scur: int
    pools: dict[str, dict] = field(default_factory=dict)   # "<pool>:<listener>" -> {"status", "members"}


def _frontend_figures(chosen: list[dict]) -> tuple[str, dict[str, int], int]:
    """(status, absolute counters, current sessions) of the FRONTEND rows ``chosen``, summed."""
    counters = {c: sum(_int(r.get(c)) for r in chosen) for c in COUNTER_COLUMNS}
    scur = sum(_int(r.get("scur")) for r in chosen)
    statuses = [(r.get("status") or "").strip() for r in chosen]
    if not statuses:
        status = "STOP"
    elif "OPEN" in statuses:
        status = "OPEN"
    elif "FULL" in statuses:
        status = "FULL"
    else:
        status = statuses[0] or UNKNOWN
    return status, counters, scur


def summarize(listener_id: str, rows: list[dict]) -> Sample:
    """Reduce a listener's ``show stat`` rows to its frontend figures and its pools.

    The frontend named after the listener is used when present (Octavia's
    naming); otherwise every frontend of that haproxy is summed, since each
    haproxy serves exactly one listener. Backends named ``<pool>`` are keyed
    ``<pool>:<listener>`` like Octavia's.
    """
    model = pools.model(rows)
    named = [r for r in model.frontends if r.get("pxname") == listener_id]
    status, counters, scur = _frontend_figures(named or model.frontends)
    pool_entries = {(p.backend if p.listener_id is not None else f"{p.backend}:{listener_id}"): pool_entry(p)
                    for p in model.pools}
    return Sample(status=status, counters=counters, scur=scur, pools=pool_entries)


def summarize_loadbalancer(rows: list[dict]) -> dict[str, Sample]:
    """A 1.0 load balancer's rows: one sample per FRONTEND (an Octavia listener, by its name).

    Pools keep their backend names (``<pool_id>:<listener_id>``, Octavia's);
    each is carried by the sample of the frontend it names (else the first
    one), so the beat holds every pool once. No frontend, no entry: a load
    balancer without listeners reports none.
    """
    model = pools.model(rows)
    samples: dict[str, Sample] = {}
    for row in model.frontends:
        status, counters, scur = _frontend_figures([row])
        samples[row["pxname"]] = Sample(status=status, counters=counters, scur=scur)
    if samples:
        first = next(iter(samples.values()))
        for pool in model.pools:
            owner = samples.get(pool.listener_id or "", first)
            owner.pools[pool.backend] = pool_entry(pool)
    return samples


def delta(current: int, last: int) -> int:
    """Growth since ``last``; a counter that went down means haproxy restarted: count from zero."""
    return current - last if current >= last else current


def build(amphora_id: str, seq: int, samples: dict[str, Sample | None], previous: dict[str, dict],
          last_pools: dict[str, dict] | None = None, extra: dict | None = None) -> tuple[dict, dict]:
    """The beat for ``samples`` (one entry per running listener, ``None`` = no answer).

    ``previous`` maps listener -> the record last reported (absolute counters,
    ``scur``, ``status``). Returns ``(message, records)`` where ``records``
    holds the new record of every listener in the beat, to be committed once
    the beat is sent. A listener without an answer keeps its last known
    status, current sessions and pools, with zero deltas: its counters stay
    where they were, so the next good answer carries the whole growth.
    """
    last_pools = last_pools or {}
    message: dict[str, Any] = {"id": amphora_id, "seq": seq, "ver": MSG_VER, "listeners": {}, "pools": {}}
    records: dict[str, dict] = {}
    for lid in sorted(samples):
        sample = samples[lid]
        before = previous.get(lid) or {}
        if sample is None:
            stats = {name: 0 for name, _ in DELTA_METRICS}
            stats["conns"] = _int(before.get("scur"))
            message["listeners"][lid] = {"status": before.get("status") or UNKNOWN, "stats": stats}
            message["pools"].update(last_pools.get(lid, {}))
            if before:
                records[lid] = dict(before)
            continue
        stats = {name: delta(sample.counters[column], _int(before.get(column)))
                 for name, column in DELTA_METRICS}
        stats["conns"] = sample.scur
        message["listeners"][lid] = {"status": sample.status, "stats": stats}
        message["pools"].update(sample.pools)
        records[lid] = dict(sample.counters, scur=sample.scur, status=sample.status)
    if extra:
        for key, value in extra.items():
            message.setdefault(key, value)
    pools = message["pools"]   # in the order fit() encodes them (see there)
    message["pools"] = {k: pools[k] for k in reversed(reduction_order(pools))}
    return message, records


# -- size -------------------------------------------------------------------

@dataclass
class Reduction:
    """What :func:`fit` had to drop to get under the limit (for the warning)."""

    full_bytes: int | None     # None: not measured (fit(measure=False)), more than ``limit``
    sent_bytes: int
    limit: int
    pools: int
    pools_stripped: int = 0
    members_dropped: int = 0
    pools_dropped: int = 0
    fits: bool = True


def _stripped(message: dict, strip: Iterable[str], drop: Iterable[str] = ()) -> dict:
    strip, drop = set(strip), set(drop)
    pools = {}
    for key, pool in message["pools"].items():
        if key in drop:
            continue
        pools[key] = {"status": pool["status"], "members": {}} if key in strip else pool
    reduced = dict(message, pools=pools)
    reduced["members_omitted"] = len(strip - drop)
    if drop:
        reduced["pools_omitted"] = len(drop)
    return reduced


def _smallest_fitting(weights: list[int], first: int, limit: int, packet_of) -> tuple[int, bytes | None]:
    """Smallest k in 1..len(weights) with ``len(packet_of(k)) <= limit``, or ``(n, None)``.

    ``packet_of(k)`` is assumed to shrink as k grows, roughly in proportion
    to the cumulative ``weights`` (members or pools removed); ``first`` is
    the size at k = 0. Interpolation on that proportion usually lands next
    to the answer in two or three compressions (each one costs milliseconds);
    a step that does not halve the interval is followed by a
    bisection step, so the worst case stays logarithmic.
    """
    n = len(weights)
    cum = [0]
    for w in weights:
        cum.append(cum[-1] + max(1, w))
    last = packet_of(n)
    if len(last) > limit:
        return n, None
    lo, size_lo, hi, size_hi, best = 0, first, n, len(last), last
    bisect_next = False
    while hi - lo > 1:
        if bisect_next or size_lo <= size_hi:
            k = (lo + hi) // 2
        else:
            need = cum[lo] + (size_lo - limit) / (size_lo - size_hi) * (cum[hi] - cum[lo])
            k = min(max(bisect.bisect_left(cum, need, lo + 1, hi), lo + 1), hi - 1)
        width = hi - lo
        packet = packet_of(k)
        if len(packet) <= limit:
            hi, size_hi, best = k, len(packet), packet
        else:
            lo, size_lo = k, len(packet)
        bisect_next = (hi - lo) * 2 > width
    return hi, best


def reduction_order(pools: dict[str, dict]) -> list[str]:
    """The order in which pools lose their members: most members first, then by key."""
    return sorted(pools, key=lambda k: (-len(pools[k].get("members") or {}), k))


def _layout(message: dict, keep_first: list[str]):
    """``message`` as the pieces :func:`packing.fit` takes, pools in the order ``keep_first``.

    The pieces joined are ``encode_body`` of ``_stripped(message, ...)`` with
    the pools in that order (the same bytes, so the same packet). A pool in
    full is encoded only if the fitting pass reaches it: past the limit, an
    oversize beat's pools are not (nor compressed).
    """
    token = uuid.uuid4().hex
    text = envelope.encode_body(dict(message, pools=token))
    head, rest = text.split(b'"pools":"' + token.encode() + b'"')
    close = b"}" + rest

    def suffix(k: int) -> bytes:
        return close if k == 0 else close[:-1] + b',"members_omitted":%d}' % k

    starts, stripped = [], []
    for i, name in enumerate(keep_first):
        starts.append((b"," if i else b"") + envelope.encode_body(name) + b":")
        stripped.append(starts[-1] + envelope.encode_body({"status": message["pools"][name]["status"], "members": {}}))
    full = packing.Lazy(len(keep_first), lambda i: starts[i] + envelope.encode_body(message["pools"][keep_first[i]]))
    return head + b'"pools":{', full, stripped, suffix


def fit(message: dict, key: str | bytes, limit: int, measure: bool = True) -> tuple[bytes, Reduction | None]:
    """Sign ``message``; if the packet exceeds ``limit`` bytes, reduce it.

    Reduction keeps every listener and every pool status and empties the
    ``members`` of the largest pools first (by member count), as few as
    needed (found in one compression pass, :mod:`amphora.heartbeat.packing`).
    Members are emptied, not the key removed: Octavia's health
    manager reads ``pool["members"]`` unconditionally. Only if pool
    statuses alone still do not fit are whole pools dropped (largest
    first); listeners are never dropped — a controller that sees fewer
    listeners than it expects marks the amphora unhealthy. The returned
    packet can exceed ``limit`` only when the listeners alone do.

    The pools are encoded in the reverse of :func:`reduction_order` (those
    that may lose their members last), the order :func:`build` gives them.
    Without ``measure``, a beat that is reduced has no ``full_bytes`` (the
    part of the full beat past the limit is not compressed; the emitter
    measures it only for the beats whose warning it logs).
    """
    order = reduction_order(message["pools"])
    with_members = [k for k in order if message["pools"][k].get("members")]
    message = {k: v for k, v in message.items() if k not in ("members_omitted", "pools_omitted")}
    message["pools"] = {k: message["pools"][k] for k in reversed(order)}
    prefix, full, stripped, suffix = _layout(message, list(message["pools"]))
    packet, found = packing.fit(prefix, full, stripped, suffix, len(with_members), key, limit, measure)
    if found is not None and found[0] == 0:
        return packet, None
    full_bytes = len(packet) if packet is not None else None
    reduction = Reduction(full_bytes=full_bytes, sent_bytes=full_bytes or 0, limit=limit, pools=len(order))
    if found is not None:
        k, fitted = found
        reduction.pools_stripped = k
        reduction.members_dropped = sum(len(message["pools"][p]["members"]) for p in with_members[:k])
        reduction.sent_bytes = len(fitted)
        return fitted, reduction

    # Statuses alone are too big: drop whole pools, those that had most members first.
    reduction.pools_stripped = len(with_members)
    reduction.members_dropped = sum(len(message["pools"][p]["members"]) for p in with_members)
    stripped_all = envelope.wrap(_stripped(message, with_members), key)
    k, fitted = _smallest_fitting(
        [1] * len(order), len(stripped_all), limit,
        lambda k: envelope.wrap(_stripped(message, with_members, order[:k]), key)) if order else (0, None)
    if fitted is None:
        fitted = envelope.wrap(_stripped(message, with_members, order), key)
        reduction.fits = len(fitted) <= limit
    reduction.pools_dropped = k
    reduction.sent_bytes = len(fitted)
    return fitted, reduction


@dataclass
class Composed:
    samples: dict[str, Sample | None]
    message: dict
    records: dict[str, dict]
    packet: bytes
    reduction: Reduction | None
    unreadable: list[str]


def compose(amphora_id: str, seq: int, answers: dict[str, list | None], previous: dict[str, dict],
            last_pools: dict[str, dict], extra: dict, key: str | bytes, limit: int,
            frontends: dict[str, list[str] | None] | None = None, measure: bool = True) -> Composed:
    """One beat from the instances' ``show stat`` rows (``None`` = no answer) to the packet.

    ``frontends`` maps a 1.0 load balancer's id to its frontend names (its
    entries in the beat, one per Octavia listener); an id absent or mapped to
    None is a v0.1 listener (one entry under its own id). Pure and
    self-contained, so the emitter can run it in a thread. Rows that cannot be
    summarized count as no answer and are listed in ``unreadable``. ``measure``
    is :func:`fit`'s.
    """
    samples: dict[str, Sample | None] = {}
    unreadable = []
    for lid, rows in answers.items():
        names = (frontends or {}).get(lid)
        try:
            if names is not None:
                found = summarize_loadbalancer(rows) if rows is not None else {}
                samples.update({name: found.get(name) for name in names})
                samples.update(found)
            else:
                samples[lid] = summarize(lid, rows) if rows is not None else None
        except Exception:
            samples.update({name: None for name in (names if names is not None else [lid])})
            unreadable.append(lid)
    message, records = build(amphora_id, seq, samples, previous, last_pools, extra)
    packet, reduction = fit(message, key, limit, measure)
    return Composed(samples, message, records, packet, reduction, unreadable)


# -- persisted state ----------------------------------------------------------

class BeatState:
    """``seq`` and the last reported absolutes per listener, in ``<state_dir>/heartbeat.json``.

    Written atomically, so an agent restart (or crash) resumes the sequence
    and the delta counters where the last beat left them: nothing is counted
    twice and nothing is lost.
    """

    def __init__(self, state_dir: str, now=time.time):
        self.path = os.path.join(state_dir, "heartbeat.json")
        stored, problem = read_state(self.path, _valid_beat_state, {}, now=now)
        if problem:
            # The last sequence number sent is lost: move on past it from a time base (one beat
            # per second at most, so ``int(now())`` is above any count of beats sent since 1970).
            self.seq = int(now())
            log.warn("heartbeat: sequence continues at {seq} (time base) after an unusable state file",
                     seq=self.seq)
        else:
            self.seq = stored.get("seq", 0)
        listeners = stored.get("listeners", {})
        self.listeners: dict[str, dict] = {
            lid: rec for lid, rec in listeners.items() if isinstance(rec, dict)}

    def save(self) -> None:
        atomic_write_json(self.path, {"seq": self.seq, "listeners": self.listeners}, mode=0o600)


def _valid_beat_state(doc) -> str | None:
    """None when ``doc`` is a usable ``heartbeat.json``, else why not."""
    if not isinstance(doc, dict):
        return f"holds {type(doc).__name__}, expected an object"
    seq = doc.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return f"has an unusable seq {seq!r}"
    if not isinstance(doc.get("listeners", {}), dict):
        return "has 'listeners' that is not an object"
    return None
