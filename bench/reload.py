#!/usr/bin/env python3
"""Reload latency: PUT config + PUT reload until the new configuration serves, vs the floor.

Agent: the real agent (``twistd -n amphora-agent``) runs one listener; each
round uploads a configuration that points at the other backend (A <-> B),
reloads it, then polls the listener until the answer comes from the new
backend. Floor, same run: a hand-run haproxy with the same command line
(``-W -db -f cfg -f fragment -p -S``), where each round writes the file, runs
``haproxy -c`` and sends SIGUSR2 by hand, then polls the same way. Rounds
alternate (floor, agent, floor, ...) so both see the same load. Prints median
and p90 of both, the ratio agent/floor and the median phase times.

    python bench/reload.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.helpers import TwistdAgent, free_port, make_pki, write_config  # noqa: E402
from tests.listener_support import (Backend, BlockingAPI, http_config, kill_listeners, new_id,  # noqa: E402
                                    short_dir)

HAPROXY = "/usr/sbin/haproxy"


def serving(port: int, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/")
            body = conn.getresponse().read().decode()
            conn.close()
            if body == name:
                return
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"{name} not served on {port} within {timeout}s")


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def timed_round(steps) -> tuple[float, ...]:
    """Run ``steps`` (callables) in order; the time of each."""
    marks = [time.perf_counter()]
    for step in steps:
        step()
        marks.append(time.perf_counter())
    return tuple(b - a for a, b in zip(marks, marks[1:]))


@contextlib.contextmanager
def agent_listener(backends, work: str, run_dir: str):
    """A real agent serving one listener on backend A; yields ``round(i)`` -> phase times."""
    pki = make_pki(os.path.join(work, "pki"))
    port = free_port()
    config = write_config(pki, os.path.join(work, "agent"), port, {"agent": {"run_dir": run_dir}})
    agent = TwistdAgent(config, os.path.join(work, "agent.log")).start()
    try:
        agent.wait_listening(port)
        api = BlockingAPI(pki.paths, port)
        lid, lport, pool = new_id(), free_port(), new_id()
        a, b = backends
        assert api.call("PUT", f"/listeners/{lid}/haproxy", http_config(lid, lport, pool, [(new_id(), a.port)]))[0] == 201
        assert api.call("PUT", f"/listeners/{lid}/start")[0] == 202
        serving(lport, "A")

        def one_round(i: int) -> tuple[float, ...]:
            target = (b, a)[i % 2]
            text = http_config(lid, lport, pool, [(new_id(), target.port)])

            def upload():
                assert api.call("PUT", f"/listeners/{lid}/haproxy", text)[0] == 201

            def reload():
                code, body = api.call("PUT", f"/listeners/{lid}/reload")
                assert code == 202, body

            return timed_round([upload, reload, lambda: serving(lport, target.name)])

        yield one_round
        api.call("PUT", f"/listeners/{lid}/stop")
        api.close()
    finally:
        agent.stop()
        kill_listeners(run_dir)


@contextlib.contextmanager
def floor_listener(backends, run_dir: str):
    """haproxy run by hand the same way, serving backend A; yields ``round(i)`` -> phase times."""
    lid, lport, pool = new_id(), free_port(), new_id()
    a, b = backends
    cfg = os.path.join(run_dir, "floor.cfg")
    frag = os.path.join(run_dir, "floor-agent.cfg")
    with open(frag, "w") as f:
        f.write(f"global\n    stats socket {run_dir}/fs.sock mode 600 level admin expose-fd listeners\n")
    with open(cfg, "w") as f:
        f.write(http_config(lid, lport, pool, [(new_id(), a.port)]))
    proc = subprocess.Popen([HAPROXY, "-W", "-db", "-f", cfg, "-f", frag, "-p", f"{run_dir}/floor.pid",
                             "-S", f"{run_dir}/fm.sock"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        serving(lport, "A")

        def one_round(i: int) -> tuple[float, ...]:
            target = (b, a)[i % 2]

            def write_and_check():
                with open(cfg, "w") as f:
                    f.write(http_config(lid, lport, pool, [(new_id(), target.port)]))
                subprocess.run([HAPROXY, "-c", "-q", "-f", cfg, "-f", frag], check=True)

            return timed_round([write_and_check, lambda: proc.send_signal(signal.SIGUSR2),
                                lambda: serving(lport, target.name)])

        yield one_round
    finally:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="amp3-bench-")
    run_dir = short_dir("amp3")
    backends = (Backend("A").start(), Backend("B").start())
    floor, agent = [], []
    try:
        with floor_listener(backends, run_dir) as floor_round, \
                agent_listener(backends, work, run_dir) as agent_round:
            # Interleaved, so both see the same load on a shared machine.
            for i in range(args.rounds):
                floor.append(floor_round(i))
                agent.append(agent_round(i))
    finally:
        for backend in backends:
            backend.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    ft, at = [sum(p) for p in floor], [sum(p) for p in agent]
    fm, am = statistics.median(ft), statistics.median(at)
    print(f"rounds: {args.rounds}, interleaved (config change -> new backend serving)")
    print(f"floor (haproxy -c + SIGUSR2 by hand): median {fm * 1000:.0f} ms  p90 {pct(ft, 0.9) * 1000:.0f} ms")
    print(f"agent (PUT haproxy + PUT reload):     median {am * 1000:.0f} ms  p90 {pct(at, 0.9) * 1000:.0f} ms")
    print(f"ratio agent/floor (median): {am / fm:.2f}; median of per-round ratios: "
          f"{statistics.median(a / f for a, f in zip(at, ft)):.2f}")
    for name, phases in (("floor: write + haproxy -c / SIGUSR2 / until serving", floor),
                         ("agent: PUT haproxy / PUT reload / until serving", agent)):
        medians = [statistics.median(p[i] for p in phases) * 1000 for i in range(3)]
        print(f"{name}: " + " / ".join(f"{m:.0f}" for m in medians) + " ms (medians)")


if __name__ == "__main__":
    main()
