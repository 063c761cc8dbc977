"""Test helpers for topology: a two-amphora VRRP lab in network namespaces, haproxy in it.

Layout (``Lab``), all names unique to this run::

    ns <p>a (amphora A)          ns <p>c (client + switch)          ns <p>b (amphora B)
      eth1 10.88.N.1/24 ----------- pa  [br0 10.88.N.254/24]  pb ----------- eth1 10.88.N.2/24
                                   (the "VIP link": one L2 segment)

The agents themselves run in the root namespace on loopback; only their
keepalived and haproxy run inside the amphora namespaces.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import uuid

from amphora.netns import exec_argv

PREFIX = "amp8"
HAPROXY = "/usr/sbin/haproxy"


def sh(*argv, check=True, timeout=10) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, timeout=timeout, capture_output=True, text=True)


class Lab:
    def __init__(self):
        token = secrets.token_hex(2)
        self.ns_a, self.ns_b, self.ns_c = (f"{PREFIX}{token}{x}" for x in "abc")
        self.subnet = 100 + secrets.randbelow(100)
        self.ip_a = f"10.88.{self.subnet}.1"
        self.ip_b = f"10.88.{self.subnet}.2"
        self.ip_c = f"10.88.{self.subnet}.254"
        self.ha_ip = f"10.88.{self.subnet}.100"

    def __enter__(self):
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc):
        self.destroy()

    def create(self):
        for ns in (self.ns_a, self.ns_b, self.ns_c):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        c = self.ns_c
        sh("ip", "-n", c, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", c, "addr", "add", f"{self.ip_c}/24", "dev", "br0")
        sh("ip", "-n", c, "link", "set", "br0", "up")
        for ns, port, ip in ((self.ns_a, "pa", self.ip_a), (self.ns_b, "pb", self.ip_b)):
            # Created directly inside the namespaces: no names ever appear in the root namespace.
            sh("ip", "-n", c, "link", "add", port, "type", "veth", "peer", "name", "eth1", "netns", ns)
            sh("ip", "-n", c, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth1")
            sh("ip", "-n", ns, "link", "set", "eth1", "up")

    def destroy(self):
        for ns in (self.ns_a, self.ns_b, self.ns_c):
            sh("ip", "netns", "del", ns, check=False)

    def holds(self, ns: str, ip: str) -> bool:
        out = sh("ip", "-n", ns, "-o", "addr", "show", "dev", "eth1").stdout
        return f" {ip}/" in out

    def holders(self) -> list[str]:
        return [name for name, ns in (("a", self.ns_a), ("b", self.ns_b)) if self.holds(ns, self.ha_ip)]

    def get(self, port: int, timeout: float = 1.0) -> str | None:
        """GET http://ha_ip:port/ from the client namespace: the body, or None."""
        argv = exec_argv(self.ns_c, ["/usr/bin/curl", "-s", "--max-time", str(timeout),
                                     f"http://{self.ha_ip}:{port}/"])
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return None
        return result.stdout.strip() if result.returncode == 0 else None


class Haproxy:
    """One haproxy in a namespace answering ``body`` on ``port``, with its pid file where the
    agent's keepalived check looks (``<run_dir>/listeners/<uuid>/haproxy.pid``)."""

    def __init__(self, namespace: str, run_dir: str, port: int, body: str):
        self.namespace = namespace
        self.dir = os.path.join(run_dir, "listeners", str(uuid.uuid4()))
        self.port = port
        self.body = body
        self.proc: subprocess.Popen | None = None

    @property
    def pidfile(self) -> str:
        return os.path.join(self.dir, "haproxy.pid")

    def start(self) -> "Haproxy":
        os.makedirs(self.dir, exist_ok=True)
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 100
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 0.0.0.0:{self.port}
    http-request return status 200 content-type text/plain string "{self.body}\\n"
""")
        argv = exec_argv(self.namespace, [HAPROXY, "-db", "-f", cfg])
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        with open(self.pidfile, "w") as f:
            f.write(f"{self.proc.pid}\n")
        return self

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Blocking poll for use in tests whose agents are subprocesses (never inside the reactor)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def keepalived_pids(run_dir: str) -> list[int]:
    pids = []
    for name in ("keepalived.pid", "vrrp.pid"):
        try:
            with open(os.path.join(run_dir, "keepalived", name)) as f:
                pids.append(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return pids


def kill_keepalived(run_dir: str) -> list[int]:
    """SIGKILL keepalived (VRRP child first, then the parent): the harshest death, VIP left behind."""
    pids = keepalived_pids(run_dir)
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids
