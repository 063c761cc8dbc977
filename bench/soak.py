#!/usr/bin/env python3
"""Memory under a mixed load: does the agent's RSS/PSS plateau?

Starts the real agent (``twistd -n amphora-agent``, default configuration,
access log on, heartbeats every second to a local UDP receiver) with
``--listeners`` real haproxy listeners, then runs for ``--minutes``:

- ``--keepalive`` client processes: GET /info on one kept-alive mTLS connection;
- ``--newconn`` client processes: GET /info on a new TLS connection each time;
- one control process: every ``--period`` seconds a listener's configuration is
  uploaded again and reloaded (round robin over the listeners), and
  GET /v0.1/details and GET /v0.1/listeners are called;
- the UDP receiver counts the heartbeats.

Every ``--interval`` seconds it prints the agent's RSS and PSS, the requests
served so far and the heartbeats received. Verdict: after a warm-up (the
first third of the run, at least one sample), the agent plateaus if the
highest PSS of the last half exceeds the highest PSS up to the end of the
warm-up by at most ``--tolerance`` MiB (default 2, the issue's figure for ten
minutes).

    python bench/soak.py [--minutes 10] [--interval 30] [--listeners 10]
    python bench/soak.py --repo /path/to/other/checkout   # the same soak against other code
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.helpers import TWISTD, TwistdAgent, free_port, make_pki, write_config  # noqa: E402
from tests.listener_support import Backend, BlockingAPI, http_config, kill_listeners, new_id, short_dir  # noqa: E402


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def _context(paths: dict) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=paths["ca"])
    ctx.load_cert_chain(paths["client_cert"], paths["client_key"])
    return ctx


def client(port: int, paths: dict, new_connections: bool, stop, counter) -> None:
    ctx = _context(paths)
    conn = None
    while not stop.is_set():
        try:
            if conn is None or new_connections:
                conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
            conn.request("GET", "/info")
            conn.getresponse().read()
            if new_connections:
                conn.close()
            with counter.get_lock():
                counter.value += 1
        except (OSError, http.client.HTTPException):
            conn = None
            time.sleep(0.1)


def control(port: int, paths: dict, listeners: list, backend_port: int, period: float, stop, counter) -> None:
    api = BlockingAPI(paths, port)
    i = 0
    while not stop.wait(period):
        lid, lport, pool = listeners[i % len(listeners)]
        i += 1
        calls = [("PUT", f"/listeners/{lid}/haproxy", http_config(lid, lport, pool, [(new_id(), backend_port)])),
                 ("PUT", f"/listeners/{lid}/reload", None), ("GET", "/details", None), ("GET", "/listeners", None)]
        for method, path, body in calls:
            try:
                api.call(method, path, body)
                with counter.get_lock():
                    counter.value += 1
            except OSError:
                pass
    api.close()


class Heartbeats:
    """Counts the UDP datagrams the agent sends."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done:
            try:
                self.sock.recv(65536)
                self.count += 1
            except OSError:
                pass


class Agent(TwistdAgent):
    """TwistdAgent running the code of ``repo`` (first on PYTHONPATH)."""

    def __init__(self, config_path: str, log_path: str, repo: str):
        super().__init__(config_path, log_path)
        self.repo = repo

    def start(self):
        env = dict(os.environ, PYTHONPATH=self.repo)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "amphora-agent", "--config", self.config_path],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.repo,
                                     start_new_session=True)
        return self


def verdict(samples: list, tolerance_mib: float) -> tuple[bool, float]:
    pss = [s[2] for s in samples]
    warm = max(1, len(pss) // 3)
    growth = (max(pss[len(pss) // 2:]) - max(pss[:warm])) / 1024
    return growth <= tolerance_mib, growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between memory samples")
    parser.add_argument("--listeners", type=int, default=10)
    parser.add_argument("--keepalive", type=int, default=1, help="keep-alive client processes")
    parser.add_argument("--newconn", type=int, default=1, help="new-connection client processes")
    parser.add_argument("--period", type=float, default=2.0, help="seconds between reload+details rounds")
    parser.add_argument("--tolerance", type=float, default=2.0, help="MiB of growth still called a plateau")
    parser.add_argument("--repo", default=REPO, help="the checkout whose agent runs (PYTHONPATH)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="amp-soak-")
    run_dir = short_dir("soak")
    pki = make_pki(os.path.join(work, "pki"))
    beats = Heartbeats()
    port = free_port()
    config = write_config(pki, os.path.join(work, "agent"), port, {
        "agent": {"run_dir": run_dir},
        "heartbeat": {"controllers": f"127.0.0.1:{beats.port}", "interval": "1", "key": "soak-key"}})
    backend = Backend("A").start()
    agent = Agent(config, os.path.join(work, "agent.log"), os.path.abspath(args.repo))
    procs = []
    stop = multiprocessing.Event()
    requests = multiprocessing.Value("q", 0)
    try:
        agent.start()
        agent.wait_listening(port)
        api = BlockingAPI(pki.paths, port)
        listeners = []
        for _ in range(args.listeners):
            lid, lport, pool = new_id(), free_port(), new_id()
            assert api.call("PUT", f"/listeners/{lid}/haproxy",
                            http_config(lid, lport, pool, [(new_id(), backend.port)]))[0] == 201
            assert api.call("PUT", f"/listeners/{lid}/start")[0] == 202
            listeners.append((lid, lport, pool))
        api.close()
        time.sleep(2)
        pid = agent.proc.pid
        rss0, pss0 = memory_kib(pid)
        print(f"agent pid {pid}, {args.listeners} listeners, {args.keepalive} keep-alive + {args.newconn} "
              f"new-connection clients, reload+details every {args.period:.0f}s, heartbeats every 1s; "
              f"code from {args.repo}")
        print(f"{'t (s)':>6} {'RSS MiB':>8} {'PSS MiB':>8} {'requests':>9} {'req/s':>6} {'beats':>6}")
        print(f"{0:>6} {rss0 / 1024:>8.1f} {pss0 / 1024:>8.1f} {0:>9} {'':>6} {beats.count:>6}", flush=True)
        for new_conn, n in ((False, args.keepalive), (True, args.newconn)):
            for _ in range(n):
                procs.append(multiprocessing.Process(target=client, args=(port, pki.paths, new_conn, stop, requests)))
        procs.append(multiprocessing.Process(target=control, args=(port, pki.paths, listeners, backend.port,
                                                                   args.period, stop, requests)))
        for p in procs:
            p.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        samples, last_n, last_t = [], 0, started
        while time.monotonic() < end:
            time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
            now, n = time.monotonic(), requests.value
            rss, pss = memory_kib(pid)
            samples.append((now - started, rss, pss))
            print(f"{now - started:>6.0f} {rss / 1024:>8.1f} {pss / 1024:>8.1f} {n:>9} "
                  f"{(n - last_n) / (now - last_t):>6.0f} {beats.count:>6}", flush=True)
            last_n, last_t = n, now
        ok, growth = verdict(samples, args.tolerance)
        print(f"verdict: {'PLATEAU' if ok else 'GROWING'} (highest PSS of the last half is {growth:+.1f} MiB "
              f"over the highest of the warm-up; tolerance {args.tolerance} MiB; "
              f"{samples[-1][2] / 1024 - pss0 / 1024:+.1f} MiB since idle)")
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        agent.stop()
        kill_listeners(run_dir)
        backend.stop()
        beats.done = True
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
