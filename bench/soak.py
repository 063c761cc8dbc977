#!/usr/bin/env python3
"""Memory under a mixed load: how much does the agent take, and does it plateau?

Starts the real agent (``twistd -n amphora-agent``, default configuration,
access log on, heartbeats every second to a local UDP receiver), samples its
memory idle, then with ``--listeners`` real haproxy listeners, then runs for
``--minutes``:

- ``--keepalive`` client processes: GET /info on one kept-alive mTLS connection;
- ``--newconn`` client processes: GET /info on a new TLS connection each time;
- one control process: every ``--period`` seconds a listener's configuration is
  uploaded again and reloaded (round robin over the listeners), and
  GET /v0.1/details and GET /v0.1/listeners are called;
- the UDP receiver counts the heartbeats.

Every ``--interval`` seconds it prints the agent's RSS, PSS and USS (private
pages), the requests served so far and the heartbeats received. PSS also moves
when *other* processes map or unmap the same libraries (the venv's .so files,
libpython): on a shared machine USS is the steadier figure of the agent's own
growth. Verdict: after a warm-up (the first third of the run, at least one
sample), the agent plateaus if the highest PSS of the last half exceeds the
highest PSS up to the end of the warm-up by at most ``--tolerance`` MiB
(default 2, the issue's figure for ten minutes); the same growth in USS is
printed next to it.

``--against REPO`` runs a second agent with the code of another checkout (e.g.
``/work/main``) at the same time, under the same load with its own clients,
and prints both side by side with the ratios; both share the machine, and
their shared library pages are split between them, so compare within one run.

    python bench/soak.py [--minutes 10] [--interval 30] [--listeners 10] [--against /path/to/checkout]
    python bench/soak.py --repo /path/to/other/checkout   # the same soak against other code only
    python bench/soak.py --minutes 0 --against /path/to/checkout   # only idle and with-listener figures
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


MEMORY_FIELDS = {"Rss:": "rss", "Pss:": "pss", "Private_Clean:": "uss", "Private_Dirty:": "uss"}


def memory_kib(pid: int) -> dict:
    """{"rss", "pss", "uss"} of a process in KiB (USS: its private pages, clean and dirty)."""
    out = {"rss": 0, "pss": 0, "uss": 0}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key = MEMORY_FIELDS.get(line.split(" ", 1)[0])
            if key:
                out[key] += int(line.split()[1])
    return out


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


def verdict(samples: list, tolerance_mib: float, key: str = "pss") -> tuple[bool, float]:
    values = [m[key] for _, m in samples]
    warm = max(1, len(values) // 3)
    growth = (max(values[len(values) // 2:]) - max(values[:warm])) / 1024
    return growth <= tolerance_mib, growth


class Run:
    """One agent (the code of ``repo``) with its listeners, clients and heartbeat receiver."""

    def __init__(self, name: str, repo: str, pki, backend, args):
        self.name, self.repo, self.pki, self.backend, self.args = name, os.path.abspath(repo), pki, backend, args
        self.work = tempfile.mkdtemp(prefix="amp-soak-")
        self.run_dir = short_dir("soak")
        self.beats = Heartbeats()
        self.port = free_port()
        config = write_config(pki, os.path.join(self.work, "agent"), self.port, {
            "agent": {"run_dir": self.run_dir},
            "heartbeat": {"controllers": f"127.0.0.1:{self.beats.port}", "interval": "1", "key": "soak-key"}})
        self.agent = Agent(config, os.path.join(self.work, "agent.log"), self.repo)
        self.stop_event = multiprocessing.Event()
        self.requests = multiprocessing.Value("q", 0)
        self.procs: list = []
        self.samples: list = []
        self.idle = self.loaded = None
        self.last = (0, 0.0)

    def memory(self) -> dict:
        return memory_kib(self.agent.proc.pid)

    def boot(self) -> None:
        self.agent.start()
        self.agent.wait_listening(self.port)

    def add_listeners(self) -> None:
        api = BlockingAPI(self.pki.paths, self.port)
        self.listeners = []
        for _ in range(self.args.listeners):
            lid, lport, pool = new_id(), free_port(), new_id()
            assert api.call("PUT", f"/listeners/{lid}/haproxy",
                            http_config(lid, lport, pool, [(new_id(), self.backend.port)]))[0] == 201
            assert api.call("PUT", f"/listeners/{lid}/start")[0] == 202
            self.listeners.append((lid, lport, pool))
        api.close()

    def load(self) -> None:
        """Sample the agent with its listeners, then start the clients."""
        self.loaded = self.memory()
        paths, args = self.pki.paths, self.args
        for new_conn, n in ((False, args.keepalive), (True, args.newconn)):
            for _ in range(n):
                self.procs.append(multiprocessing.Process(
                    target=client, args=(self.port, paths, new_conn, self.stop_event, self.requests)))
        self.procs.append(multiprocessing.Process(target=control, args=(
            self.port, paths, self.listeners, self.backend.port, args.period, self.stop_event, self.requests)))
        for p in self.procs:
            p.start()

    def sample(self, t: float) -> str:
        m, n = self.memory(), self.requests.value
        rate = f"{(n - self.last[0]) / (t - self.last[1]):>6.0f}" if t > self.last[1] else ""
        self.samples.append((t, m))
        self.last = (n, t)
        return (f"{m['rss'] / 1024:>7.1f} {m['pss'] / 1024:>7.1f} {m['uss'] / 1024:>7.1f} "
                f"{n:>8} {rate:>6} {self.beats.count:>6}")

    def summary(self, tolerance: float) -> str:
        text = (f"{self.name}: idle PSS {self.idle['pss'] / 1024:.1f} MiB (USS {self.idle['uss'] / 1024:.1f}), "
                f"{self.args.listeners} listeners PSS {self.loaded['pss'] / 1024:.1f} "
                f"(USS {self.loaded['uss'] / 1024:.1f})")
        if not self.samples:  # --minutes 0: only the idle and listener figures
            return text
        ok, growth = verdict(self.samples, tolerance)
        _, uss_growth = verdict(self.samples, tolerance, "uss")
        last = self.samples[-1][1]
        return (f"{text}, end PSS {last['pss'] / 1024:.1f} (USS {last['uss'] / 1024:.1f}); "
                f"verdict: {'PLATEAU' if ok else 'GROWING'} "
                f"(highest PSS of the last half {growth:+.1f} MiB over the highest of the warm-up, "
                f"USS {uss_growth:+.1f}; tolerance {tolerance} MiB; "
                f"{(last['pss'] - self.loaded['pss']) / 1024:+.1f} MiB PSS, "
                f"{(last['uss'] - self.loaded['uss']) / 1024:+.1f} MiB USS since the load began)")

    def stop(self) -> None:
        self.stop_event.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        if self.agent.proc is not None:
            self.agent.stop()
        kill_listeners(self.run_dir)
        self.beats.done = True
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def ratios(this: Run, base: Run) -> str:
    def r(a, b):
        return f"{a['pss'] / b['pss']:.2f}x PSS, {a['uss'] / b['uss']:.2f}x USS"
    text = f"ratio {this.name}/{base.name}: idle {r(this.idle, base.idle)}; with listeners {r(this.loaded, base.loaded)}"
    if this.samples and base.samples:
        text += f"; at the end {r(this.samples[-1][1], base.samples[-1][1])}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between memory samples")
    parser.add_argument("--listeners", type=int, default=10)
    parser.add_argument("--keepalive", type=int, default=1, help="keep-alive client processes (per agent)")
    parser.add_argument("--newconn", type=int, default=1, help="new-connection client processes (per agent)")
    parser.add_argument("--period", type=float, default=2.0, help="seconds between reload+details rounds")
    parser.add_argument("--tolerance", type=float, default=2.0, help="MiB of growth still called a plateau")
    parser.add_argument("--repo", default=REPO, help="the checkout whose agent runs (PYTHONPATH)")
    parser.add_argument("--against", help="another checkout whose agent runs at the same time (the baseline)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="amp-soak-pki-")
    pki = make_pki(os.path.join(work, "pki"))
    backend = Backend("A").start()
    runs = [Run("this", args.repo, pki, backend, args)]
    if args.against:
        runs.append(Run("against", args.against, pki, backend, args))
    try:
        # Each step for every agent before the next, so that each sample sees the same neighbours.
        for run in runs:
            run.boot()
        time.sleep(2)
        for run in runs:
            run.idle = run.memory()
        for run in runs:
            run.add_listeners()
        time.sleep(2)
        for run in runs:
            run.load()
        for run in runs:
            print(f"{run.name}: agent pid {run.agent.proc.pid}, code from {run.repo}")
        print(f"{args.listeners} listeners, {args.keepalive} keep-alive + {args.newconn} new-connection clients "
              f"per agent, reload+details every {args.period:.0f}s, heartbeats every 1s; MiB")
        columns = f"{'RSS':>7} {'PSS':>7} {'USS':>7} {'requests':>8} {'req/s':>6} {'beats':>6}"
        print(f"{'':>6} " + " | ".join(f"{run.name:^{len(columns)}}" for run in runs))
        print(f"{'t (s)':>6} " + " | ".join(columns for _ in runs), flush=True)
        started = time.monotonic()
        end = started + args.minutes * 60
        for run in runs:
            run.last = (run.requests.value, 0.0)
        print(f"{0:>6} " + " | ".join(run.sample(0.0) for run in runs), flush=True)
        while time.monotonic() < end:
            time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
            t = time.monotonic() - started
            print(f"{t:>6.0f} " + " | ".join(run.sample(t) for run in runs), flush=True)
        for run in runs:
            run.samples.pop(0)  # the verdict looks at the samples under load
            print(run.summary(args.tolerance))
        if len(runs) == 2:
            print(ratios(*runs))
    finally:
        for run in runs:
            run.stop()
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
