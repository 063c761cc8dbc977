#!/usr/bin/env python3
"""The agent's own share of a keep-alive request, without TLS or sockets.

``bench/api_throughput.py`` measures whole servers; on a 2-core box shared
with other work its keep-alive ratios swing by 10-20 % between rounds. This
script isolates what differs between the agent and bare Klein: the HTTP
parse, the site's checks, routing, the route, JSON rendering and the access
log. Each server is a real ``Site`` in this process (the agent's built by
``amphora.agent.build_parts`` from a test configuration, over a memory reactor
and a fake listener registry) fed pipelined ``GET /info`` requests through a
fake transport that presents the client certificate. Rounds alternate
between the servers; the table gives µs per request (median of the rounds)
and the agent's ratio to bare Klein.

    python bench/request_path.py [--requests 5000] [--rounds 21] [--profile agent]

The access log goes to a real text observer writing to /dev/null (the
agent's default observer, ``amphora.logging.text_observer``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from OpenSSL import crypto  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402

from klein_baseline import klein_site  # noqa: E402
from tests.helpers import make_pki, write_config  # noqa: E402

KLEIN_BODY = (b'{"hostname": "xxxxxxxx", "uuid": null, "haproxy_version": "2.6.12-1+deb12u4", '
              b'"api_version": "0.1"}')
REQUEST = b"GET /info HTTP/1.1\r\nHost: localhost:9443\r\nAccept-Encoding: identity\r\n\r\n"


class CertTransport(StringTransport):
    """A StringTransport that presents a client certificate, as a TLS transport would."""

    def __init__(self, cert):
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
                         hostAddress=IPv4Address("TCP", "127.0.0.1", 9443))
        self._cert = cert

    def getPeerCertificate(self):
        return self._cert


def agent_site(tmp, pki, access_log=True):
    from twisted.application.service import MultiService

    from amphora.agent import Ready, build_parts
    from amphora.config import load_config
    from amphora.testing import FakeListeners

    extra = {"agent": {"access_log": "true" if access_log else "false"}}
    config = load_config(write_config(pki, os.path.join(tmp, f"agent-{access_log}"), 9443, extra))
    parts = build_parts(config, MemoryReactorClock(), MultiService(), Ready(), listeners=FakeListeners())
    return parts.site


def run(site, cert, requests: int) -> float:
    """CPU seconds of this process (all threads: the log writer too) for ``requests``
    pipelined requests on one connection, in batches of 50."""
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    # The idle timeout's calls on a Clock: the global reactor does not run here, and
    # cancelled calls would pile up in it (a heap the collector then walks).
    protocol.callLater = Clock().callLater
    transport = CertTransport(cert)
    protocol.makeConnection(transport)
    batch = REQUEST * 50
    start = time.process_time()
    for _ in range(requests // 50):
        protocol.dataReceived(batch)
        transport.clear()
    elapsed = time.process_time() - start
    protocol.connectionLost(None)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="per round and server")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--profile", choices=("agent", "klein"), help="cProfile one server instead")
    args = parser.parse_args()

    from amphora.logging import text_observer

    observer = text_observer(open(os.devnull, "w"))
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)

    tmp = tempfile.mkdtemp(prefix="bench-path-")
    pki = make_pki(os.path.join(tmp, "pki"))
    cert = crypto.load_certificate(crypto.FILETYPE_PEM, pki.client.cert_pem)
    sites = {"klein": klein_site(KLEIN_BODY), "agent": agent_site(tmp, pki), "agent-nolog": agent_site(tmp, pki, False)}
    for site in sites.values():  # warm up: routes compiled, caches filled
        run(site, cert, 1000)
    check = CertTransport(cert)
    probe = sites["agent"].buildProtocol(None)
    probe.makeConnection(check)
    probe.dataReceived(REQUEST)
    assert check.value().startswith(b"HTTP/1.1 200"), check.value()[:200]

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(sites[args.profile], cert, args.requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("TOP", "35")))
        return

    times = {name: [] for name in sites}
    for _ in range(args.rounds):
        for name, site in sites.items():
            times[name].append(run(site, cert, args.requests) / args.requests * 1e6)
    observer.writer.close()
    print(f"in-process keep-alive GET /info, {args.requests} pipelined requests x {args.rounds} rounds "
          f"(no TLS, no sockets); load average {os.getloadavg()[0]:.1f}")
    print_table(times, "req")


def print_table(times: dict, unit: str) -> None:
    """µs per ``unit`` of each server: the best round and the median, and their ratios to klein's."""
    klein = times["klein"]
    print("best: the fastest round of each (other load on the machine only adds time); "
          "median: of the per-round ratios (min-max)")
    print(f"{'server':>12} {'best us/' + unit:>12} {'/klein':>6} {'median us/' + unit:>14} {'/klein':>18}")
    for name, values in times.items():
        ratios = [v / k for v, k in zip(values, klein)]
        print(f"{name:>12} {min(values):12.1f} {min(values) / min(klein):6.3f} {statistics.median(values):14.1f} "
              f"{statistics.median(ratios):6.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
