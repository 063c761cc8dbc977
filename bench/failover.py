#!/usr/bin/env python3
"""ACTIVE-STANDBY failover time: kill the MASTER's keepalived, time until ha_ip answers from the peer.

Builds the two-amphora lab of the integration tests (three network
namespaces, one L2 VIP link, a client namespace), starts two real agents
(``twistd -n amphora-agent``) and a haproxy per amphora answering its own
name, sets ACTIVE / STANDBY through the API, then repeatedly SIGKILLs the
current MASTER's keepalived (VRRP child and parent: the VIP is left behind
until the agent removes it) and polls ``http://ha_ip/`` from the client
namespace every 20 ms until the other amphora answers. The killed
keepalived is restarted by its agent and comes back as BACKUP (nopreempt),
so the next run kills the other side.

Runs with ``advert_int`` 1 s (VRRPv2) and a sub-second interval (VRRPv3), in
the same run, and prints median / max for each and their ratio. A graceful
stop (SIGTERM: keepalived sends priority 0) is measured as the floor.

    python bench/failover.py [--runs 10] [--fast-advert 0.1]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from amphora.netns import exec_argv  # noqa: E402
from tests.helpers import make_pki  # noqa: E402
from tests.integration.test_topology import Amphora, as_body  # noqa: E402
from tests.topology_support import Haproxy, Lab, keepalived_pids, kill_keepalived, wait_for  # noqa: E402

PORT = 8080

# Runs inside the client namespace for one measurement: waits for "go" on stdin, then asks
# ha_ip every 10 ms (50 ms connect/read timeout) and prints the seconds until `want` answers.
PROBE = r"""
import socket, sys, time
host, port, want = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
start = time.monotonic()
while time.monotonic() - start < 60:
    try:
        with socket.create_connection((host, port), timeout=0.05) as s:
            s.settimeout(0.05)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        if data.rstrip().endswith(want.encode()):
            print(f"{time.monotonic() - start:.4f}", flush=True)
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
print("timeout", flush=True)
"""


def probe(lab, want: str) -> subprocess.Popen:
    argv = exec_argv(lab.ns_c, [sys.executable, "-c", PROBE, lab.ha_ip, str(PORT), want])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def restarted(run_dir: str, killed) -> bool:
    """keepalived runs again: both pid files name live processes other than the killed ones."""
    pids = keepalived_pids(run_dir)
    return len(pids) == 2 and not set(pids) & set(killed) and all(
        os.path.exists(f"/proc/{pid}/comm") and open(f"/proc/{pid}/comm").read().strip() == "keepalived"
        for pid in pids)


def measure(advert: float, runs: int, graceful: bool, workdir: str) -> list[float]:
    pki = make_pki(os.path.join(workdir, "pki"))
    times = []
    with Lab() as lab:
        extra = {"keepalived": {"advert_int": str(advert)}}
        amps = {"a": Amphora(pki, os.path.join(workdir, "a"), lab.ns_a, "amp-a", extra),
                "b": Amphora(pki, os.path.join(workdir, "b"), lab.ns_b, "amp-b", extra)}
        haproxies = [Haproxy(lab.ns_a, amps["a"].run_dir, PORT, "amp-a").start(),
                     Haproxy(lab.ns_b, amps["b"].run_dir, PORT, "amp-b").start()]
        try:
            for amp in amps.values():
                amp.start()
            amps["a"].api.set(as_body("ACTIVE", lab, peers=[lab.ip_b], interface="eth1"))
            amps["a"].api.wait_ok()
            wait_for(lambda: lab.holders() == ["a"], 20, what="A holds ha_ip")
            amps["b"].api.set(as_body("STANDBY", lab, peers=[lab.ip_a], interface="eth1"))
            amps["b"].api.wait_ok()
            for _ in range(runs):
                (master,) = wait_for(lambda: lab.holders() if len(lab.holders()) == 1 else None, 20,
                                     what="one holder")
                other = "b" if master == "a" else "a"
                # The other side must be a settled BACKUP with its keepalived up before we kill.
                wait_for(lambda: restarted(amps[other].run_dir, ())
                         and amps[other].api.topology()["role"] == "STANDBY", 20, what="a ready BACKUP")
                assert lab.get(PORT) == f"amp-{master}"
                prober = probe(lab, f"amp-{other}")
                prober.stdin.write("go\n")
                prober.stdin.flush()
                killed = keepalived_pids(amps[master].run_dir)
                if graceful:
                    os.kill(killed[0], signal.SIGTERM)
                else:
                    kill_keepalived(amps[master].run_dir)
                answer = prober.stdout.readline().strip()
                prober.wait(10)
                if answer == "timeout":
                    raise SystemExit(f"no failover to {other} within 60 s")
                times.append(float(answer))
                # Let the killed side come back (restarted by its agent) before the next run.
                wait_for(lambda: restarted(amps[master].run_dir, killed)
                         and amps[master].api.topology()["role"] == "STANDBY", 30, what="restart")
        finally:
            for amp in amps.values():
                amp.stop()
                # Agents leave keepalived running on purpose (the next agent adopts it).
                for pid in keepalived_pids(amp.run_dir):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for h in haproxies:
                h.kill()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--fast-advert", type=float, default=0.1)
    args = parser.parse_args()
    results = {}
    for label, advert, graceful in (("advert_int 1 s, SIGKILL (VRRPv2)", 1.0, False),
                                    (f"advert_int {args.fast_advert:g} s, SIGKILL (VRRPv3)", args.fast_advert, False),
                                    ("advert_int 1 s, SIGTERM (priority 0)", 1.0, True)):
        with tempfile.TemporaryDirectory(prefix="amp8-bench-") as workdir:
            times = measure(advert, args.runs, graceful, workdir)
        results[label] = times
        print(f"{label:40s} runs {len(times):2d}  median {statistics.median(times) * 1000:7.0f} ms"
              f"  max {max(times) * 1000:7.0f} ms", flush=True)
    slow, fast = (statistics.median(t) for t in list(results.values())[:2])
    print(f"ratio (1 s / {args.fast_advert:g} s, median): {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
