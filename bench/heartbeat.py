#!/usr/bin/env python3
"""Cost and size of one heartbeat: build + sign, for 1 / 50 / 200 listeners x 10 / 100 members.

For each shape (one pool per listener, synthetic ``show stat`` answers with
random UUIDs, as real ones are) it prints the median time to

- parse the ``show stat`` CSV answers (done once per beat in the agent),
- summarize + build the v3 body (deltas against the previous beat),
- sign: compact JSON + zlib (envelope.COMPRESS_LEVEL/WBITS) + hex HMAC-SHA256 (``fit``, which also
  reduces the beat when it exceeds the limit — then the time includes the
  search, in one compression pass; "+measure" is the same for the beat whose
  size warning is logged, which compresses the rest of the full beat to
  report its size),

the full packet size and the size actually sent, and, as a baseline measured
in the same run, Octavia's own encoding of the same body (``json.dumps``
with default separators, zlib 9, hex HMAC) with the time and size ratios.
Then, per listener count, the largest member count per listener that still
fits one 65000-byte packet without reduction (bisection on real packets).
Last, on a real reactor, the longest stall of a 2 ms ticker while the
heartbeat service runs whole beats (200 listeners x 100 members, rows
already parsed: the listener manager's CSV parsing is not counted) with the
build and signing in the thread pool (what the agent does) vs inline (the
baseline).

    python bench/heartbeat.py [--repeat 7] [--limit 65000]
    python bench/heartbeat.py --against main [--repeat 15]   # old vs new, ratios within one run
    python bench/heartbeat.py --cpu ...   # CPU time of the timed thread, not wall clock (busy machine)

All work here is what the agent does on its reactor thread once per interval.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import statistics
import sys
import time
import uuid
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from amphora.heartbeat import envelope  # noqa: E402
from amphora.heartbeat import message as msg  # noqa: E402
from amphora.listeners.stats import parse_show_stat  # noqa: E402
from tests.heartbeat_support import synthetic_csv  # noqa: E402

KEY = "bench-key-" + "x" * 22


def answers_for(listeners: int, members: int) -> dict[str, str]:
    out = {}
    for i in range(listeners):
        lid = str(uuid.uuid4())
        statuses = ("UP", "UP", "UP", "DOWN", "DRAIN", "no check")
        pool = {str(uuid.uuid4()): statuses[j % len(statuses)] for j in range(members)}
        out[lid] = synthetic_csv(lid, {str(uuid.uuid4()): pool}, scur=i, stot=1000 + i, bin=10**6 + i,
                                 bout=10**7 + i, ereq=i % 3)
    return out


def octavia_encode(body: dict) -> bytes:
    payload = zlib.compress(json.dumps(body).encode("utf-8"), 9)
    return payload + hmac.new(KEY.encode(), payload, hashlib.sha256).hexdigest().encode()


# --cpu: this thread's CPU time instead of the wall clock (on a machine shared with other
# benchmarks, waiting for a core is not the beat's cost).
CLOCK = time.perf_counter


def timed(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = CLOCK()
        result = fn()
        times.append(CLOCK() - t0)
    return statistics.median(times), result


def one_shape(listeners: int, members: int, repeat: int, limit: int) -> dict:
    answers = answers_for(listeners, members)
    t_parse, rows = timed(lambda: {lid: parse_show_stat(a, msg.STAT_COLUMNS) for lid, a in answers.items()},
                          repeat)
    previous = {lid: {"bin": 10, "bout": 10, "stot": 1, "ereq": 0} for lid in answers}

    def build():
        samples = {lid: msg.summarize(lid, r) for lid, r in rows.items()}
        return msg.build(str(uuid.uuid4()), 12345, samples, previous,
                         extra={"topology": "SINGLE", "role": "ACTIVE", "topology_status": "OK"})[0]

    t_build, body = timed(build, repeat)
    # As the agent signs a beat whose size warning is not due (the full size is measured
    # only for the beat that logs it): see "sign+measure" for that one.
    t_sign, (packet, reduction) = timed(lambda: msg.fit(body, KEY, limit, measure=False), repeat)
    t_measure, (_, measured) = timed(lambda: msg.fit(body, KEY, limit), repeat)
    t_octavia, octavia = timed(lambda: octavia_encode(body), repeat)
    full = measured.full_bytes if measured else len(packet)
    t_plain, _ = timed(lambda: envelope.wrap(body, KEY), repeat)
    # The same body with zlib's default 32 KB window at level 9 (this agent's settings until
    # envelope.COMPRESS_WBITS): its full size and the members its reduction leaves out.
    full9 = len(zlib.compress(envelope.encode_body(body), 9)) + envelope.HEX_DIGEST_LEN
    settings = envelope.COMPRESS_LEVEL, envelope.COMPRESS_WBITS
    envelope.COMPRESS_LEVEL, envelope.COMPRESS_WBITS = 9, 15
    try:
        reduction9 = msg.fit(body, KEY, limit, measure=False)[1]
    finally:
        envelope.COMPRESS_LEVEL, envelope.COMPRESS_WBITS = settings
    return {"listeners": listeners, "members": members, "parse_ms": t_parse * 1e3, "build_ms": t_build * 1e3,
            "sign_ms": t_sign * 1e3, "measure_ms": t_measure * 1e3, "plain_sign_ms": t_plain * 1e3,
            "full_bytes": full, "full9_bytes": full9,
            "sent_bytes": len(packet), "dropped": reduction.members_dropped if reduction else 0,
            "dropped9": reduction9.members_dropped if reduction9 else 0,
            "reduced": reduction is not None, "octavia_ms": t_octavia * 1e3, "octavia_bytes": len(octavia)}


def largest_fitting(listeners: int, limit: int) -> int:
    """Largest member count per listener whose full beat fits ``limit`` (bisection on real packets)."""
    def fits(members: int) -> bool:
        answers = answers_for(listeners, members)
        samples = {lid: msg.summarize(lid, parse_show_stat(a)) for lid, a in answers.items()}
        body = msg.build(str(uuid.uuid4()), 1, samples, {})[0]
        return len(envelope.wrap(body, KEY)) <= limit

    if not fits(0):
        return -1
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 100000:
            return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def reactor_stall(beats: int = 3) -> dict:
    """Longest gap of a 2 ms ticker during whole beats, offloaded vs inline (real reactor, real UDP)."""
    import tempfile
    from types import SimpleNamespace

    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.protocol import DatagramProtocol
    from twisted.internet.task import LoopingCall

    from amphora.config import HeartbeatSection
    from amphora.heartbeat.emitter import HeartbeatService
    from amphora.testing import FakeKeepalived, FakeListeners

    from twisted.internet.defer import succeed
    from twisted.internet.task import deferLater

    # Rows parsed once: the listener manager's own CSV parsing is not the heartbeat's cost.
    rows = {lid: parse_show_stat(text) for lid, text in answers_for(200, 100).items()}

    class Parsed(FakeListeners):
        def show_stat(self, lid):
            return succeed(rows[lid])

    results = {}

    async def run(reactor):
        sink = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        for offload in (True, False):
            with tempfile.TemporaryDirectory(prefix="amp6-bench-") as state:
                settings = HeartbeatSection(controllers=(("127.0.0.1", sink.getHost().port),), key=KEY)
                topology = SimpleNamespace(topology=None, role=None, status=None)
                service = HeartbeatService(reactor, settings, amphora_id=str(uuid.uuid4()), state_dir=state,
                                           listeners=Parsed(running=rows), topology=topology,
                                           keepalived=FakeKeepalived(), offload=offload)
                service.controllers[0].address = (2, "127.0.0.1", sink.getHost().port)
                service.running = True   # beat() by hand, without the LoopingCall
                gaps, last = [], [time.perf_counter()]

                def tick():
                    now = time.perf_counter()
                    gaps.append(now - last[0])
                    last[0] = now

                ticker = LoopingCall(tick)
                ticker.start(0.002)
                t0 = time.perf_counter()
                for _ in range(beats):
                    await ensureDeferred(service.beat())
                    await deferLater(reactor, 0.02, lambda: None)   # beats are an interval apart
                elapsed = time.perf_counter() - t0 - beats * 0.02
                ticker.stop()
                assert service.beats_sent == beats, "every beat must really be sent"
                results[offload] = {"max_gap_ms": max(gaps) * 1e3, "beat_ms": elapsed / beats * 1e3}
        await sink.stopListening()

    failures = []

    def go():
        done = ensureDeferred(run(reactor))
        done.addErrback(failures.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if failures:
        failures[0].raiseException()
    return results


OLD_MODULES = ("amphora/__init__.py", "amphora/fsutil.py", "amphora/listeners/__init__.py",
               "amphora/listeners/stats.py", "amphora/listeners/pools.py", "amphora/heartbeat/__init__.py",
               "amphora/heartbeat/message.py", "amphora/heartbeat/envelope.py", "amphora/heartbeat/packing.py")


def against(rev: str, shapes, rounds: int, limit: int) -> None:
    """This tree's parse + build + sign vs revision ``rev``'s, alternating in one process (ratios per round).

    ``rev``'s modules are extracted with ``git show`` under another package name
    (``oldamp``), so both run in the same process, on the same inputs, under the
    same load; each round times one beat of each.
    """
    import importlib
    import inspect
    import subprocess
    import tempfile

    tmp = tempfile.mkdtemp(prefix="amp-hb-")
    for path in OLD_MODULES:
        shown = subprocess.run(["git", "-C", os.path.dirname(HERE), "show", f"{rev}:{path}"],
                               capture_output=True, text=True)
        if shown.returncode != 0:
            continue   # a module that revision does not have
        dest = os.path.join(tmp, path.replace("amphora/", "oldamp/", 1))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            f.write(shown.stdout.replace("from amphora.", "from oldamp.").replace("import amphora.", "import oldamp."))
    sys.path.insert(0, tmp)
    old_msg = importlib.import_module("oldamp.heartbeat.message")
    old_parse = importlib.import_module("oldamp.listeners.stats").parse_show_stat
    old_columns = getattr(old_msg, "STAT_COLUMNS", None)

    def beat(parse, message, columns, answers, previous, **fit):
        rows = {lid: parse(a, columns) if columns else parse(a) for lid, a in answers.items()}
        body = message.build("x", 1, {lid: message.summarize(lid, r) for lid, r in rows.items()}, previous)[0]
        return message.fit(body, KEY, limit, **fit)

    # Both sign as on a beat whose size warning is not due, when rev's fit() knows the difference.
    old_fit = {"measure": False} if "measure" in inspect.signature(old_msg.fit).parameters else {}

    clock = "CPU" if CLOCK is time.thread_time else "wall-clock"
    print(f"this tree vs {rev}, parse + build + sign of one beat, alternating, {rounds} rounds ({clock} ms):")
    for listeners, members in shapes:
        answers = answers_for(listeners, members)
        previous = {lid: {"bin": 10, "bout": 10, "stot": 1, "ereq": 0} for lid in answers}
        old, new = [], []
        for _ in range(rounds):
            for fn, acc in ((lambda: beat(old_parse, old_msg, old_columns, answers, previous, **old_fit), old),
                            (lambda: beat(parse_show_stat, msg, msg.STAT_COLUMNS, answers, previous,
                                          measure=False), new)):
                t0 = CLOCK()
                fn()
                acc.append(CLOCK() - t0)
        ratios = sorted(n / o for o, n in zip(old, new))
        print(f"  {listeners:>3} x {members:>3}: {rev} median {statistics.median(old) * 1e3:7.1f} min "
              f"{min(old) * 1e3:7.1f} | this median {statistics.median(new) * 1e3:7.1f} min {min(new) * 1e3:7.1f}"
              f" | ratio per round: median {statistics.median(ratios):.2f}, quartiles "
              f"{ratios[len(ratios) // 4]:.2f}-{ratios[3 * len(ratios) // 4]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--limit", type=int, default=65000)
    parser.add_argument("--against", metavar="REV",
                        help="only compare with git revision REV's code, alternating in one process")
    parser.add_argument("--cpu", action="store_true",
                        help="time with this thread's CPU time (time.thread_time) instead of the wall clock")
    args = parser.parse_args()
    global CLOCK
    if args.cpu:
        CLOCK = time.thread_time
    if args.against:
        import glob
        import shutil
        before = set(glob.glob("/tmp/amp-hb-*"))
        try:
            against(args.against, [(50, 100), (200, 100), (50, 10)], max(args.repeat, 9), args.limit)
        finally:
            for made in set(glob.glob("/tmp/amp-hb-*")) - before:
                shutil.rmtree(made, ignore_errors=True)
        return 0
    print(f"heartbeat build + sign, median of {args.repeat} ({'CPU' if args.cpu else 'wall-clock'} ms); "
          f"limit {args.limit} bytes; zlib {zlib.ZLIB_RUNTIME_VERSION} level {envelope.COMPRESS_LEVEL}"
          f" wbits {envelope.COMPRESS_WBITS}")
    header = (f"{'listeners':>9} {'members':>7} {'parse ms':>9} {'build ms':>9} {'sign ms':>9} "
              f"{'total ms':>9} {'+measure':>9} {'full B':>8} {'32K B':>8} {'sent B':>8} {'dropped':>7} {'32K':>5} | "
              f"{'octavia ms':>10} "
              f"{'octavia B':>9} {'time x':>7} {'size x':>7}")
    print(header)
    print("-" * len(header))
    for listeners in (1, 50, 200):
        for members in (10, 100):
            r = one_shape(listeners, members, args.repeat, args.limit)
            total = r["parse_ms"] + r["build_ms"] + r["sign_ms"]
            print(f"{listeners:>9} {members:>7} {r['parse_ms']:>9.2f} {r['build_ms']:>9.2f} {r['sign_ms']:>9.2f} "
                  f"{total:>9.2f} {r['measure_ms']:>9.2f} {r['full_bytes']:>8} {r['full9_bytes']:>8} "
                  f"{r['sent_bytes']:>8} "
                  f"{r['dropped'] if r['reduced'] else 'no':>7} {r['dropped9']:>5} | "
                  f"{r['octavia_ms']:>10.2f} {r['octavia_bytes']:>9} "
                  f"{r['plain_sign_ms'] / r['octavia_ms']:>7.2f} {r['full_bytes'] / r['octavia_bytes']:>7.3f}")
    print()
    print("parse: only the columns a beat reads; sign: as on a beat whose size warning is not due;")
    print("+measure: sign for the beat that logs the warning (the full beat compressed to report its size).")
    window = (1 << envelope.COMPRESS_WBITS) // 1024
    print(f"full B: the whole beat (zlib level {envelope.COMPRESS_LEVEL}, {window} KB window);"
          " 32K B: the same with zlib's default 32 KB window;")
    print("dropped: members left out of the sent packet to fit (no: not reduced), 32K: the same with a 32 KB window.")
    print("time x / size x: our unreduced signing (compact JSON) vs Octavia's encoding of the same body.")
    print()
    for listeners in (1, 50, 200):
        n = largest_fitting(listeners, args.limit)
        print(f"largest members per listener that fit {args.limit} bytes unreduced, {listeners:>3} listeners: "
              f"{n} ({n * listeners} members in all)")
    print()
    stall = reactor_stall()
    on, off = stall[True], stall[False]
    print("reactor stall during whole beats, 200 listeners x 100 members (2 ms ticker):")
    print(f"  build+sign in the thread pool: longest gap {on['max_gap_ms']:7.1f} ms, beat {on['beat_ms']:7.1f} ms")
    print(f"  inline (baseline):             longest gap {off['max_gap_ms']:7.1f} ms, beat {off['beat_ms']:7.1f} ms")
    print(f"  ratio of longest gaps: {on['max_gap_ms'] / off['max_gap_ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
