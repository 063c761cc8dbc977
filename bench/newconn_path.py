#!/usr/bin/env python3
"""The server's share of a new mutual-TLS connection, without sockets.

``bench/api_throughput.py --modes newconn`` measures whole servers with
client processes on the same 2 cores, where scheduling and the clients' own
CPU move the figures by 10-20 %. This script isolates the server's work for
one new connection: Twisted's TLS layer (``TLSMemoryBIOFactory``, what
``listenSSL`` wraps a site in) with the server's pyOpenSSL context, the HTTP
channel, the site and its route, the answer, and the close. Each server runs
in this process over a fake transport; an in-process pyOpenSSL client (RSA-2048
certificate, TLS 1.3) makes the handshake, sends ``GET /info``, reads the
answer and closes; only the server's calls are timed (``time.thread_time``).

- ``klein``: bare Klein with the context of ``bench/klein_baseline.py``;
- ``agent``: the agent's site (``amphora.agent.build_parts`` over a memory
  reactor and a fake listener registry), its ``ServerContextFactory`` and its
  TLS factory (``amphora.api.tlsconn``), access log to a real text observer
  writing to /dev/null;
- ``agent-tw``: the same behind Twisted's own ``TLSMemoryBIOFactory``.

Rounds alternate between the servers; the table gives µs of server CPU per
connection (best and median of the rounds) and the agent's ratio to Klein.
``--profile agent`` profiles the server's calls of one round instead.

    python bench/newconn_path.py [--connections 400] [--rounds 15] [--profile agent|klein]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from OpenSSL import SSL  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402
from zope.interface import implementer  # noqa: E402
from twisted.internet.interfaces import IOpenSSLContextFactory  # noqa: E402

from klein_baseline import klein_site  # noqa: E402
from request_path import KLEIN_BODY, REQUEST, agent_site, print_table  # noqa: E402
from tests.helpers import TCPLike, drain_bio, make_pki  # noqa: E402

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 9443)


def klein_context(pki) -> SSL.Context:
    """bench/klein_baseline.py's context."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate_chain_file(pki.paths["server"])
    ctx.use_privatekey_file(pki.paths["server"])
    ctx.load_verify_locations(pki.paths["ca"])
    ctx.load_client_ca(pki.paths["ca"].encode())
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    ctx.set_session_id(b"bare-klein")
    return ctx


def client_context(pki) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.use_certificate_file(pki.paths["client_cert"])
    ctx.use_privatekey_file(pki.paths["client_key"])
    ctx.load_verify_locations(pki.paths["ca"])
    ctx.set_verify(SSL.VERIFY_PEER)
    return ctx


@implementer(IOpenSSLContextFactory)
class Holder:
    def __init__(self, ctx):
        self.ctx = ctx

    def getContext(self):
        return self.ctx


def one_connection(factory, client_ctx, profiler=None) -> tuple[float, bytes]:
    """One connection, handshake to close; (server CPU seconds, the answer)."""
    clock = time.thread_time
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    transport = TCPLike(peerAddress=PEER, hostAddress=HOST)
    spent = 0.0

    def server(call, *args):
        nonlocal spent
        if profiler is not None:
            profiler.enable()
        t0 = clock()
        call(*args)
        factory._clock.advance(0)  # the reactor's next iteration: BufferingTLSTransport's flush
        spent += clock() - t0
        if profiler is not None:
            profiler.disable()
        data = transport.value()
        transport.clear()
        return data

    protocol = None

    def build():
        nonlocal protocol
        protocol = factory.buildProtocol(PEER)
        protocol.makeConnection(transport)

    to_client = server(build)
    sent = False
    answer = b""
    for _ in range(20):
        if to_client:
            client.bio_write(to_client)
        try:
            client.do_handshake()
            if not sent:
                client.send(REQUEST)
                sent = True
        except SSL.WantReadError:
            pass
        to_server = drain_bio(client)
        for _ in range(4):  # a NewSessionTicket record yields no data: read on past it
            try:
                answer += client.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass
        if answer.endswith((b"}", b"0\r\n\r\n")):
            break
        to_client = server(protocol.dataReceived, to_server) if to_server else b""
    server(protocol.connectionLost, None)
    return spent, answer


def run(factory, client_ctx, connections: int, profiler=None) -> float:
    """µs of server CPU per connection."""
    total = 0.0
    for _ in range(connections):
        spent, answer = one_connection(factory, client_ctx, profiler)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {answer[:200]!r}")
        total += spent
    return total / connections * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=400, help="per round and server")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile", choices=("agent", "agent-tw", "klein"), help="cProfile one server's calls instead")
    args = parser.parse_args()

    from amphora.api.tls import ServerContextFactory
    from amphora.api.tlsconn import AgentTLSFactory
    from amphora.config import load_config
    from amphora.logging import text_observer

    observer = text_observer(open(os.devnull, "w"))
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)

    tmp = tempfile.mkdtemp(prefix="bench-newconn-")
    pki = make_pki(os.path.join(tmp, "pki"))
    site = agent_site(tmp, pki)
    from tests.helpers import write_config
    tls = load_config(write_config(pki, os.path.join(tmp, "agent-ctx"), 9443, {})).tls
    factories = {
        "klein": TLSMemoryBIOFactory(Holder(klein_context(pki)), False, klein_site(KLEIN_BODY), clock=Clock()),
        "agent": AgentTLSFactory(ServerContextFactory(tls), False, site, clock=Clock()),
        # the agent's site behind Twisted's own TLS factory (what listenSSL builds)
        "agent-tw": TLSMemoryBIOFactory(ServerContextFactory(tls), False, site, clock=Clock()),
    }
    for factory in factories.values():
        # The channels' idle timeouts on a Clock: no reactor runs here, and cancelled calls
        # would pile up in the global one (a heap the collector then walks).
        factory.wrappedFactory.reactor = Clock()
    client_ctx = client_context(pki)
    for factory in factories.values():  # warm up
        run(factory, client_ctx, 50)

    if args.profile:
        profiler = cProfile.Profile()
        run(factories[args.profile], client_ctx, args.connections, profiler)
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("TOP", "35")))
        return

    times = {name: [] for name in factories}
    for _ in range(args.rounds):
        for name, factory in factories.items():
            times[name].append(run(factory, client_ctx, args.connections))
    observer.writer.close()
    print(f"in-process new mTLS connection + GET /info (RSA-2048, TLS 1.3), server CPU only, "
          f"{args.connections} connections x {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    print_table(times, "conn")

if __name__ == "__main__":
    main()
