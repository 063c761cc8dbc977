#!/usr/bin/env python3
"""Listener log collection throughput: the agent's collector against a bare reader, same run.

A sender process writes N haproxy-like RFC 5424 datagrams (about 250 bytes) to
a UNIX datagram socket with *blocking* sends (so the sender waits for the
reader instead of dropping), and we time how long the reader takes to take
them all:

1. baseline: a Twisted reactor whose DatagramProtocol only counts;
2. agent: ``ListenerLogs`` (parse, append to the rotating file, format RFC 5424
   and forward over UDP to a local sink).

A third run sends with *non-blocking* sends, as haproxy does, and reports how
many lines the kernel refused (queue limit ``net.unix.max_dgram_qlen``).
Prints lines/s for each and the agent/baseline ratio.

    python bench/logs_throughput.py [--lines 100000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

LINE = (b'<134>1 2026-11-28T17:32:03.322307+00:00 - haproxy 8343 - - 127.0.0.1:46688 '
        b'[28/Nov/2026:17:32:03.322] fe be/srv-7 0/0/0/1/1 200 73 - - ---- 1/1/0/0/0 0/0 '
        b'"GET /index.html?user=42&page=3 HTTP/1.1"\n')


def sender(path: str, lines: int, blocking: bool, result) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setblocking(blocking)
    refused = 0
    for _ in range(lines):
        try:
            s.sendto(LINE, path)
        except BlockingIOError:
            refused += 1
    result.put(refused)


def sink(ready, stop) -> None:
    """A UDP syslog sink in its own process (so it does not load the agent's reactor)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    ready.put(s.getsockname()[1])
    while stop.empty():
        try:
            s.recv(16384)
        except socket.timeout:
            pass


def run(kind: str, lines: int, blocking: bool = True) -> tuple[float, int, int]:
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    tmp = tempfile.mkdtemp(prefix="amp10-bench-", dir="/tmp")
    try:
        received = [0]
        if kind == "baseline":
            class Count(DatagramProtocol):
                def datagramReceived(self, data, addr):
                    received[0] += 1
            path = os.path.join(tmp, "b.sock")
            port = reactor.listenUNIXDatagram(path, Count(), maxPacketSize=9216)
            count = lambda: received[0]  # noqa: E731
            logs = None
        else:
            from amphora.config import parse_config
            from amphora.listeners.logs import ListenerLogs
            from amphora.testing import FakeListeners
            from tests.helpers import config_text, make_pki
            ready, stop = multiprocessing.Queue(), multiprocessing.Queue()
            sinkproc = multiprocessing.Process(target=sink, args=(ready, stop))
            sinkproc.start()
            sink_port = ready.get()
            pki = make_pki(os.path.join(tmp, "pki"))
            config = parse_config(config_text(pki, tmp, 0, {"logs": {
                "forward": f"udp://127.0.0.1:{sink_port}", "max_bytes": str(50 * 1024 * 1024),
                "backups": "1"}}))
            lid = str(uuid.uuid4())
            logs = ListenerLogs(config, reactor, FakeListeners(existing=[lid]))
            logs.startService()
            logs.config_hook(lid)
            path = logs.socket_path(lid)
            count = lambda: logs._collectors[lid].received  # noqa: E731
            port = None
        queue = multiprocessing.Queue()
        proc = multiprocessing.Process(target=sender, args=(path, lines, blocking, queue))
        result = {}

        def poll():
            if "refused" not in result and not queue.empty():
                result["refused"] = queue.get()
            if "refused" in result and count() >= lines - result["refused"]:
                result["end"] = time.perf_counter()
                reactor.stop()
            elif time.perf_counter() - result["start"] > 60:
                result["end"] = time.perf_counter()
                reactor.stop()
            else:
                reactor.callLater(0.001, poll)

        def begin():
            result["start"] = time.perf_counter()
            proc.start()
            poll()

        reactor.callWhenRunning(begin)
        reactor.run(installSignalHandlers=False) if not reactor.running else None
        proc.join()
        got = count()
        if logs is not None:
            logs.stopService()
            stop.put(True)
            sinkproc.join()
        if port is not None:
            port.stopListening()
        return result["end"] - result["start"], got, result.get("refused", 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def child(kind: str, lines: int, blocking: bool, out) -> None:
    out.put(run(kind, lines, blocking))


def measure(kind: str, lines: int, blocking: bool = True):
    # one process per run: a Twisted reactor runs once per process
    out = multiprocessing.Queue()
    p = multiprocessing.Process(target=child, args=(kind, lines, blocking, out))
    p.start()
    value = out.get()
    p.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100000)
    args = parser.parse_args()
    qlen = open("/proc/sys/net/unix/max_dgram_qlen").read().strip()
    print(f"{args.lines} lines of {len(LINE)} bytes; net.unix.max_dgram_qlen = {qlen}")
    base_t, base_n, _ = measure("baseline", args.lines)
    agent_t, agent_n, _ = measure("agent", args.lines)
    base_rate, agent_rate = base_n / base_t, agent_n / agent_t
    print(f"baseline (reactor, count only):          {base_rate:10.0f} lines/s ({base_n} in {base_t:.2f}s)")
    print(f"agent (parse + file + RFC 5424 UDP fwd): {agent_rate:10.0f} lines/s ({agent_n} in {agent_t:.2f}s)")
    print(f"agent / baseline: {agent_rate / base_rate:.2f}")
    nb_t, nb_n, refused = measure("agent", args.lines, blocking=False)
    print(f"non-blocking sender (as haproxy): {refused} of {args.lines} refused by the kernel "
          f"({100.0 * refused / args.lines:.1f} %), {nb_n} collected")


if __name__ == "__main__":
    main()
