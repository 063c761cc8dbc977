#!/usr/bin/env python3
"""GET /info throughput over mutual TLS: the agent against bare Klein, same run.

Starts (1) the real agent with ``twistd -n amphora-agent`` and (2) a baseline:
a bare Klein app answering a same-sized JSON document through the same TLS
context, both on loopback. Then N client processes, each with one keep-alive
mTLS connection, call the endpoint for a fixed time. Prints requests/s, p50
and p99 latency for each, and the agent/baseline ratio.

    python bench/api_throughput.py [--clients 1,4] [--seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.helpers import TWISTD, make_pki, write_config  # noqa: E402

BASELINE = r'''
import json, sys
from klein import Klein
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.web.server import Site
from amphora.api.tls import ServerContextFactory
from amphora.config import load_config

cfg = load_config(sys.argv[1])
port = int(sys.argv[2])
app = Klein()
body = json.dumps({"hostname": "x" * 8, "uuid": cfg.agent.amphora_id,
                   "haproxy_version": "2.6.12-1+deb12u4", "api_version": "0.1"}).encode()

@app.route("/info")
def info(request):
    request.setHeader(b"content-type", b"application/json")
    return body

site = Site(app.resource())
site.noisy = False
site.log = lambda request: None
SSL4ServerEndpoint(reactor, port, ServerContextFactory(cfg.tls), interface="127.0.0.1").listen(site)
reactor.run()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def worker(args) -> list[float]:
    port, paths, seconds = args
    ctx = ssl.create_default_context(cafile=paths["ca"])
    ctx.load_cert_chain(paths["client_cert"], paths["client_key"])
    conn = http.client.HTTPSConnection("localhost", port, context=ctx)
    latencies = []
    end = time.monotonic() + seconds
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        conn.request("GET", "/info")
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {data!r}")
        latencies.append(time.monotonic() - t0)
    conn.close()
    return latencies


def measure(port: int, paths: dict, clients: int, seconds: float) -> dict:
    with multiprocessing.Pool(clients) as pool:
        started = time.monotonic()
        results = pool.map(worker, [(port, paths, seconds)] * clients)
        elapsed = time.monotonic() - started
    all_lat = sorted(x for r in results for x in r)
    n = len(all_lat)
    return {
        "requests": n,
        "rps": n / seconds,
        "p50_ms": all_lat[n // 2] * 1000,
        "p99_ms": all_lat[min(n - 1, int(n * 0.99))] * 1000,
        "wall_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-api-")
    pki = make_pki(os.path.join(tmp, "pki"))
    agent_port, base_port = free_port(), free_port()
    quiet_port = free_port()
    config = write_config(pki, os.path.join(tmp, "agent"), agent_port)
    quiet_config = write_config(pki, os.path.join(tmp, "agent-quiet"), quiet_port,
                                {"agent": {"access_log": "false"}})
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = []
    try:
        procs.append(subprocess.Popen([TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(tmp, "agent.log"),
                                       "amphora-agent", "--config", config], env=env))
        procs.append(subprocess.Popen([TWISTD, "-n", "--pidfile=", "--logfile",
                                       os.path.join(tmp, "agent-quiet.log"), "amphora-agent",
                                       "--config", quiet_config], env=env))
        procs.append(subprocess.Popen([sys.executable, "-c", BASELINE, config, str(base_port)], env=env))
        wait_port(agent_port)
        wait_port(quiet_port)
        wait_port(base_port)
        rows = []
        for clients in [int(c) for c in args.clients.split(",")]:
            base = measure(base_port, pki.paths, clients, args.seconds)
            agent = measure(agent_port, pki.paths, clients, args.seconds)
            quiet = measure(quiet_port, pki.paths, clients, args.seconds)
            rows.append((clients, base, agent, quiet))
        print(f"GET /info over mTLS (RSA-2048), keep-alive, {args.seconds:.0f}s per run, {os.cpu_count()} cores")
        print(f"{'clients':>7} {'server':>11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for clients, base, agent, quiet in rows:
            for name, r in (("bare-klein", base), ("agent", agent), ("agent-nolog", quiet)):
                print(f"{clients:>7} {name:>11} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
            print(f"{clients:>7} {'ratio':>11} {agent['rps'] / base['rps']:>9.2f}  (agent / bare Klein req/s)")
            print(f"{clients:>7} {'ratio':>11} {quiet['rps'] / base['rps']:>9.2f}  "
                  "(agent with [agent] access_log = false / bare Klein)")
        print(json.dumps({"results": [{"clients": c, "baseline": b, "agent": a, "agent_no_access_log": q}
                                      for c, b, a, q in rows]}))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
