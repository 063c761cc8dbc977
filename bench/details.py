#!/usr/bin/env python3
"""GET /v0.1/details against GET /info on the same mTLS keep-alive connection,
and the agent's idle CPU use with the host samplers running.

Starts the real agent with ``twistd -n amphora-agent`` on loopback (optionally
with a ``[network] namespace`` of its own holding a veth, so the namespace
sampler runs too), then:

1. latency: one keep-alive mTLS connection alternates rounds of ``/info``
   and ``/v0.1/details`` (so both see the same machine state); prints p50,
   mean and p99 of each and the details/info ratio (goal: < 1.5x);
2. idle CPU: with no client connected, the agent process's CPU time over
   ``--idle`` seconds (psutil), as a percentage of one core.

    python bench/details.py [--seconds 6] [--idle 10] [--netns]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.helpers import TWISTD, make_pki, write_config  # noqa: E402

sys.path.insert(0, HERE)
from api_throughput import free_port, wait_port  # noqa: E402


def connect(port: int, paths: dict) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=paths["ca"])
    ctx.load_cert_chain(paths["client_cert"], paths["client_key"])
    conn = http.client.HTTPSConnection("localhost", port, context=ctx)
    conn.connect()
    return conn


def get(conn: http.client.HTTPSConnection, path: str) -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status}: {data!r}")
    return data


def summary(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    n = len(ordered)
    return {
        "requests": n,
        "p50_ms": ordered[n // 2] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
        "p99_ms": ordered[min(n - 1, int(n * 0.99))] * 1000,
    }


def latency(port: int, paths: dict, seconds: float, round_size: int = 100) -> dict:
    conn = connect(port, paths)
    try:
        for path in ("/info", "/v0.1/details"):  # warm up both routes
            for _ in range(20):
                get(conn, path)
        times: dict[str, list[float]] = {"/info": [], "/v0.1/details": []}
        sizes = {}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for path in times:
                for _ in range(round_size):
                    t0 = time.perf_counter()
                    sizes[path] = len(get(conn, path))
                    times[path].append(time.perf_counter() - t0)
        return {path: dict(summary(values), bytes=sizes[path]) for path, values in times.items()}
    finally:
        conn.close()


def idle_cpu(pid: int, seconds: float) -> dict:
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    t0 = time.monotonic()
    time.sleep(seconds)
    after = proc.cpu_times()
    elapsed = time.monotonic() - t0
    user = after.user - before.user
    system = after.system - before.system
    return {
        "seconds": elapsed,
        "cpu_percent_of_one_core": 100.0 * (user + system) / elapsed,
        "user_s": user,
        "system_s": system,
        "threads": proc.num_threads(),
        "rss_kb": proc.memory_info().rss // 1024,
    }


def tick_cost(namespace: str | None, n: int = 200) -> dict:
    """CPU cost of one sampler tick, measured in this process (finer than the idle figure)."""
    from twisted.internet.task import Clock

    from amphora.host import HostSampler, NamespaceCounters

    sampler = HostSampler(Clock(), now=time.monotonic)
    t0 = time.process_time()
    for _ in range(n):
        sampler.sample()
    host_ms = (time.process_time() - t0) / n * 1000
    result = {"host_tick_ms": host_ms}
    if namespace:
        reader = NamespaceCounters(None, namespace)
        reader._read()  # opens the socket once (a forked helper), then reuses it
        t0 = time.process_time()
        for _ in range(n):
            reader._read()
        result["namespace_read_ms"] = (time.process_time() - t0) / n * 1000
        reader._close_socket()
    return result


def make_netns(tag: str) -> tuple[str, list[str]]:
    ns, peer = f"amp5bench{tag}", f"amp5benchp{tag}"
    for args in (["netns", "add", ns], ["netns", "add", peer],
                 ["-n", ns, "link", "add", f"amp5bv{tag}"[:15], "type", "veth", "peer", "name",
                  f"amp5bp{tag}"[:15], "netns", peer],
                 ["-n", ns, "link", "set", "lo", "up"]):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)
    return ns, [ns, peer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="latency measurement time")
    parser.add_argument("--idle", type=float, default=10.0, help="idle CPU measurement time")
    parser.add_argument("--netns", action="store_true",
                        help="configure a [network] namespace (with a veth) so its sampler runs too")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="amp5-bench-details-")
    pki = make_pki(os.path.join(tmp, "pki"))
    port = free_port()
    namespaces: list[str] = []
    extra = {}
    try:
        if args.netns:
            ns, namespaces = make_netns(str(os.getpid() % 10000))
            extra = {"network": {"namespace": ns}}
        config = write_config(pki, os.path.join(tmp, "agent"), port, extra)
        env = dict(os.environ, PYTHONPATH=REPO)
        agent = subprocess.Popen([TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(tmp, "agent.log"),
                                  "amphora-agent", "--config", config], env=env)
        try:
            wait_port(port)
            time.sleep(1.5)  # first samples and the package refresh at start are done
            lat = latency(port, pki.paths, args.seconds)
            conn = connect(port, pki.paths)
            doc = json.loads(get(conn, "/v0.1/details"))
            conn.close()
            time.sleep(1.0)
            cpu = idle_cpu(agent.pid, args.idle)
            ticks = tick_cost(namespaces[0] if namespaces else None)
        finally:
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    finally:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    info, details = lat["/info"], lat["/v0.1/details"]
    print(f"one keep-alive mTLS connection, alternating rounds, {args.seconds:.0f}s, {os.cpu_count()} cores"
          f"{', [network] namespace sampled' if args.netns else ''}")
    print(f"{'route':>14} {'requests':>8} {'bytes':>6} {'p50 ms':>8} {'mean ms':>8} {'p99 ms':>8}")
    for name, r in (("/info", info), ("/v0.1/details", details)):
        print(f"{name:>14} {r['requests']:>8} {r['bytes']:>6} {r['p50_ms']:>8.3f} {r['mean_ms']:>8.3f}"
              f" {r['p99_ms']:>8.3f}")
    ratio_p50 = details["p50_ms"] / info["p50_ms"]
    ratio_mean = details["mean_ms"] / info["mean_ms"]
    print(f"ratio details/info: p50 {ratio_p50:.2f}x, mean {ratio_mean:.2f}x (goal < 1.5x)")
    print(f"idle agent CPU over {cpu['seconds']:.1f}s with samplers running: "
          f"{cpu['cpu_percent_of_one_core']:.3f}% of one core "
          f"(user {cpu['user_s']:.3f}s, system {cpu['system_s']:.3f}s, {cpu['threads']} threads, "
          f"RSS {cpu['rss_kb']} kB)")
    line = f"one sampler tick (in-process, CPU time): {ticks['host_tick_ms']:.3f} ms"
    if "namespace_read_ms" in ticks:
        line += f" + namespace read {ticks['namespace_read_ms']:.3f} ms (in its thread)"
    print(line + " every 5 s")
    print(f"interfaces reported: {sorted(doc['networks'])}")
    print(json.dumps({"latency": lat, "ratio_p50": ratio_p50, "ratio_mean": ratio_mean, "idle": cpu,
                      "tick": ticks}))


if __name__ == "__main__":
    main()
