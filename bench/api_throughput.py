#!/usr/bin/env python3
"""GET /info over mutual TLS: the agent against bare Klein and haproxy, same run.

Starts, on loopback, with the same certificates (RSA-2048 from tests.helpers):

- ``klein``: a bare Klein app answering a same-sized JSON document behind an
  equivalent pyOpenSSL context of its own (``bench/klein_baseline.py``);
- ``haproxy``: answering the same JSON with ``http-request return``
  (``verify required`` against the same CA);
- ``agent``: the real agent, ``twistd -n amphora-agent`` with its default
  configuration (access log on, twistd's default log observer to a file);
- ``agent-nolog`` (``--with-nolog``): the agent with ``[agent] access_log = false``;
- ``haproxy-1t`` (``--with-haproxy1``): haproxy with ``nbthread 1``, one core like the
  agent's reactor (packaged haproxy runs a thread per core);
- ``agent-other`` (``--compare CHECKOUT``): the agent of another checkout
  (PYTHONPATH), e.g. main, to see a change's effect in the same run.

Modes: ``keepalive`` (each client one connection, requests back to back),
``newconn`` (a new TLS connection, full handshake, per request) and
``resume`` (a new connection per request resuming the previous TLS session).
Each client is a process. For every (mode, clients) the servers are measured
one after the other, and that is repeated ``--rounds`` times (interleaved, so
a burst of load from elsewhere hits all of them alike); the table shows the
median of the rounds and the agent's ratios with their spread (min-max over
the rounds), which says how noisy the machine was. Server CPU per request is
the server process's user+system time over the run, divided by the requests.

    python bench/api_throughput.py [--clients 1,4] [--modes keepalive,newconn] [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.helpers import TWISTD, make_pki, write_config  # noqa: E402

HAPROXY = "/usr/sbin/haproxy"
DOC = {"hostname": "x" * 8, "uuid": None, "haproxy_version": "2.6.12-1+deb12u4", "api_version": "0.1"}

HAPROXY_CFG = """\
global
    maxconn 4000
{threads}
defaults
    mode http
    timeout client 30s
    timeout server 30s
    timeout connect 5s
frontend info
    bind 127.0.0.1:{port} ssl crt {server} ca-file {ca} verify required ssl-min-ver TLSv1.2
    http-request return status 200 content-type application/json string '{body}'
"""


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


def cpu_seconds(pid: int) -> float:
    """User + system time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


class _Resuming(http.client.HTTPSConnection):
    """An HTTPS connection that offers the TLS session of the previous one."""

    session = None

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host, session=_Resuming.session)


def worker(args) -> tuple[int, list[float], int, float]:
    port, paths, seconds, mode = args
    cpu0 = time.process_time()
    ctx = ssl.create_default_context(cafile=paths["ca"])
    ctx.load_cert_chain(paths["client_cert"], paths["client_key"])
    conn = http.client.HTTPSConnection("localhost", port, context=ctx)
    latencies, resumed = [], 0
    end = time.monotonic() + seconds
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        if mode == "newconn":
            conn = http.client.HTTPSConnection("localhost", port, context=ctx)
        elif mode == "resume":
            conn = _Resuming("localhost", port, context=ctx)
        conn.request("GET", "/info")
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {data!r}")
        if mode == "resume":
            resumed += conn.sock.session_reused
            _Resuming.session = conn.sock.session
        if mode != "keepalive":
            conn.close()
        latencies.append(time.monotonic() - t0)
    conn.close()
    return len(latencies), latencies, resumed, time.process_time() - cpu0


def measure(pid: int, port: int, paths: dict, clients: int, seconds: float, mode: str) -> dict:
    with multiprocessing.Pool(clients) as pool:
        cpu0, started = cpu_seconds(pid), time.monotonic()
        results = pool.map(worker, [(port, paths, seconds, mode)] * clients)
        elapsed, cpu1 = time.monotonic() - started, cpu_seconds(pid)
    lat = sorted(x for _, r, _, _ in results for x in r)
    n = len(lat)
    return {"rps": n / elapsed, "cpu_ms": (cpu1 - cpu0) * 1000.0 / n, "p50_ms": lat[n // 2] * 1000,
            "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000, "requests": n,
            "resumed": sum(r for _, _, r, _ in results),
            "client_cpu_ms": sum(c for *_, c in results) * 1000.0 / n}


def start_servers(tmp: str, pki, with_nolog: bool, compare: str | None,
                  with_haproxy1: bool = False) -> tuple[dict, list]:
    env = dict(os.environ, PYTHONPATH=REPO)
    body = json.dumps(dict(DOC, uuid=pki.amphora_id))
    servers, procs = {}, []

    def spawn(name, argv, port, code=REPO, **kw):
        proc = subprocess.Popen(argv, env=dict(env, PYTHONPATH=code), **kw)
        procs.append(proc)
        servers[name] = (proc.pid, port)

    port = free_port()
    spawn("klein", [sys.executable, os.path.join(HERE, "klein_baseline.py"), pki.paths["server"], pki.paths["ca"], str(port), body], port)
    # haproxy as packaged (a thread per core); haproxy-1t: one thread, like the agent's reactor.
    for name, threads in (("haproxy", ""), ("haproxy-1t", "    nbthread 1")):
        if threads and not with_haproxy1:
            continue
        port = free_port()
        cfg = os.path.join(tmp, name + ".cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(port=port, server=pki.paths["server"], ca=pki.paths["ca"], body=body,
                                       threads=threads))
        spawn(name, [HAPROXY, "-db", "-f", cfg], port, stdout=subprocess.DEVNULL)
    agents = [("agent", {}, REPO)]
    if with_nolog:
        agents.append(("agent-nolog", {"agent": {"access_log": "false"}}, REPO))
    if compare:
        agents.append(("agent-other", {}, os.path.abspath(compare)))
    for name, extra, code in agents:
        port = free_port()
        config = write_config(pki, os.path.join(tmp, name), port, extra)
        spawn(name, [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(tmp, name + ".log"),
                     "amphora-agent", "--config", config], port, code)
    for _, port in servers.values():
        wait_port(port)
    return servers, procs


def ratio_cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4", help="comma-separated client counts")
    parser.add_argument("--modes", default="keepalive,newconn", help="keepalive,newconn,resume")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--with-nolog", action="store_true", help="also the agent with access_log = false")
    parser.add_argument("--compare", metavar="CHECKOUT", help="also the agent of another checkout (agent-other)")
    parser.add_argument("--with-haproxy1", action="store_true",
                        help="also haproxy with nbthread 1 (haproxy-1t): one core, like the agent")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-api-")
    pki = make_pki(os.path.join(tmp, "pki"))
    servers, procs = start_servers(tmp, pki, args.with_nolog, args.compare, args.with_haproxy1)
    names = list(servers)
    try:
        time.sleep(1.0)
        pss_idle = pss_kib(servers["agent"][0])
        runs = {}  # (mode, clients) -> name -> [result per round]
        for mode in args.modes.split(","):
            for clients in [int(c) for c in args.clients.split(",")]:
                rounds = runs[(mode, clients)] = {name: [] for name in names}
                for _ in range(args.rounds):
                    for name in names:
                        pid, port = servers[name]
                        rounds[name].append(measure(pid, port, pki.paths, clients, args.seconds, mode))
        pss_after = pss_kib(servers["agent"][0])
        report(args, names, runs, pss_idle, pss_after)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def report(args, names, runs, pss_idle, pss_after) -> None:
    print(f"GET /info over mTLS (RSA-2048), loopback, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; median of {args.rounds} interleaved rounds of {args.seconds:.0f}s; "
          "ratio cells: median (min-max over the rounds)")
    head = "".join(f"{n:>13}" for n in names)
    print(f"{'mode':>9} {'cl':>2} {'figure':>12}{head} {'agent/klein':>18} {'agent/haproxy':>18}")
    summary = []
    for (mode, clients), rounds in runs.items():
        for figure, key in (("req/s", "rps"), ("cpu ms/req", "cpu_ms"), ("client ms/req", "client_cpu_ms"),
                            ("p50 ms", "p50_ms")):
            med = {n: statistics.median(r[key] for r in rounds[n]) for n in names}
            vs_k = [a[key] / k[key] for a, k in zip(rounds["agent"], rounds["klein"])]
            vs_h = [a[key] / h[key] for a, h in zip(rounds["agent"], rounds["haproxy"])]
            cells = "".join(f"{med[n]:>13.0f}" if key == "rps" else f"{med[n]:>13.3f}" for n in names)
            print(f"{mode:>9} {clients:>2} {figure:>12}{cells} {ratio_cell(vs_k):>18} {ratio_cell(vs_h):>18}")
            summary.append({"mode": mode, "clients": clients, "figure": key, "median": med,
                            "agent_over_klein": vs_k, "agent_over_haproxy": vs_h})
        if mode == "resume":
            print(f"{'':>9} {'':>2} {'resumed':>12}" + "".join(
                f"{sum(r['resumed'] for r in rounds[n]) / max(1, sum(r['requests'] for r in rounds[n])):>13.0%}"
                for n in names))
        for other, label in (("agent-nolog", "log cost"), ("agent-other", "vs other"), ("haproxy-1t", "1 thread")):
            if other in names:
                rps = [o["rps"] / a["rps"] for o, a in zip(rounds[other], rounds["agent"])]
                cpu = [a["cpu_ms"] / o["cpu_ms"] for o, a in zip(rounds[other], rounds["agent"])]
                print(f"{'':>9} {'':>2} {label:>12}  {other} / agent req/s: {ratio_cell(rps)}; "
                      f"agent / {other} cpu: {ratio_cell(cpu)}")
    print(f"agent PSS: {pss_idle / 1024:.1f} MiB idle, {pss_after / 1024:.1f} MiB after the runs")
    print(json.dumps({"results": summary, "agent_pss_kib": {"idle": pss_idle, "after": pss_after}}))


if __name__ == "__main__":
    main()
