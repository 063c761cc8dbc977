"""Helpers for the heartbeat tests: canned and synthetic ``show stat``, fakes, real haproxy.

``RealHAProxy`` starts a real haproxy (foreground, its own stats socket) and
kills it by pid; the listener registry's fake is ``amphora.testing.FakeListeners``
(real stats sockets or canned answers).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import time
import uuid
import zlib

from twisted.internet import defer
from twisted.internet.task import Clock


HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
          "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,"
          "sid,throttle,lbtot,tracked,type,")


def frontend_line(name: str, scur=0, stot=0, bin=0, bout=0, ereq=0, status="OPEN") -> str:
    return f"{name},FRONTEND,,,{scur},{scur},100,{stot},{bin},{bout},0,0,{ereq},,,,,{status},,,,,,,,,1,2,0,,,,0,"


def server_line(backend: str, name: str, status="UP", weight=1) -> str:
    return f"{backend},{name},0,0,0,1,,5,500,1000,,0,,0,0,0,0,{status},{weight},1,0,0,0,10,0,,1,3,1,,5,,2,"


def backend_line(backend: str, status="UP") -> str:
    return f"{backend},BACKEND,0,0,0,1,10,5,500,1000,0,0,,0,0,0,0,{status},1,1,0,,0,10,0,,1,3,0,,5,,1,"


def synthetic_csv(listener: str, pools: dict[str, dict[str, str]], suffix=True, **frontend) -> str:
    """A show-stat answer: one frontend and, per pool, its servers {member: status} and BACKEND."""
    lines = [HEADER, frontend_line(listener, **frontend)]
    for pool, members in pools.items():
        backend = f"{pool}:{listener}" if suffix else pool
        for member, status in members.items():
            weight = 0 if status == "DRAIN" else 1
            lines.append(server_line(backend, member, "UP" if status == "DRAIN" else status, weight))
        any_up = any(s in ("UP", "DRAIN", "no check") for s in members.values()) or not members
        lines.append(backend_line(backend, "UP" if any_up else "DOWN"))
    return "\n".join(lines) + "\n"


def octavia_unwrap(packet: bytes, key: str):
    """What Octavia's health manager does with a packet (status_message.unwrap_envelope, hex
    digest, then decode_obj): HMAC over the compressed bytes, zlib.decompress, json.loads.
    Nothing in it depends on the compression level."""
    payload, expected = packet[:-64], packet[-64:]
    calculated = hmac.new(key.encode("utf-8"), payload, hashlib.sha256).hexdigest().encode()
    assert hmac.compare_digest(expected, calculated)
    return json.loads(zlib.decompress(payload).decode("utf-8"))


def uuids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


class FakePort:
    def __init__(self, reactor, interface):
        self.reactor = reactor
        self.interface = interface
        self.sent: list[tuple[bytes, tuple]] = []
        self.fail: dict = {}   # address -> exception
        self.closed = False

    def write(self, data, addr):
        if addr in self.fail:
            raise self.fail[addr]
        self.sent.append((data, addr))

    def stopListening(self):
        self.closed = True
        return defer.succeed(None)


class FakeReactor(Clock):
    """A Clock that also hands out fake UDP ports (recording every datagram)."""

    def __init__(self):
        super().__init__()
        self.ports: list[FakePort] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        p = FakePort(self, interface)
        self.ports.append(p)
        return p

    @property
    def sent(self) -> list[tuple[bytes, tuple]]:
        return [item for port in self.ports for item in port.sent]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HAPROXY_CFG = """\
global
    stats socket {sock} mode 600 level admin
    maxconn 100
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend {listener}
    bind 127.0.0.1:{port}
    default_backend {pool}:{listener}
backend {pool}:{listener}
    option httpchk GET /
    server {up} 127.0.0.1:{web} check inter 300 rise 1 fall 1
    server {drain} 127.0.0.1:{web} check inter 300 rise 1 fall 1 weight 0
    server {down} 127.0.0.1:{dead} check inter 300 rise 1 fall 1
    server {maint} 127.0.0.1:{web} disabled
    server {nocheck} 127.0.0.1:{web}
backend {pool2}
    server {up2} 127.0.0.1:{web} check inter 300 rise 1 fall 1
"""


class RealHAProxy:
    """One real haproxy serving one listener, with an admin stats socket; killed by pid."""

    def __init__(self, directory: str, web_port: int, binary: str = "/usr/sbin/haproxy"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.listener = str(uuid.uuid4())
        self.pool, self.pool2 = str(uuid.uuid4()), str(uuid.uuid4())
        self.members = {name: str(uuid.uuid4()) for name in ("up", "drain", "down", "maint", "nocheck", "up2")}
        self.port = free_port()
        self.socket = os.path.join(directory, "stats.sock")
        self.config = os.path.join(directory, "haproxy.cfg")
        self.web_port = web_port
        self.binary = binary
        self.proc: subprocess.Popen | None = None

    def expected_members(self) -> dict[str, str]:
        m = self.members
        return {m["up"]: "UP", m["drain"]: "DRAIN", m["down"]: "DOWN", m["maint"]: "MAINT",
                m["nocheck"]: "no check"}

    def start(self) -> "RealHAProxy":
        with open(self.config, "w") as f:
            f.write(HAPROXY_CFG.format(sock=self.socket, listener=self.listener, port=self.port,
                                       pool=self.pool, pool2=self.pool2, web=self.web_port,
                                       dead=free_port(), **{k: v for k, v in self.members.items()}))
        self.log = open(os.path.join(self.dir, "haproxy.log"), "wb")
        self.proc = subprocess.Popen([self.binary, "-db", "-f", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited {self.proc.returncode}: {self.output()}")
            if os.path.exists(self.socket):
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    pass
            time.sleep(0.02)
        raise AssertionError(f"haproxy did not start: {self.output()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()

    def output(self) -> str:
        try:
            with open(os.path.join(self.dir, "haproxy.log"), "rb") as f:
                return f.read().decode(errors="replace")[-2000:]
        except OSError:
            return ""


def heartbeat_receiver(key: str):
    """A real receiver on a loopback port collecting decoded beats in ``.beats`` (generator: a fixture body)."""
    import pytest_twisted
    from twisted.internet import reactor

    from amphora.heartbeat.receiver import HeartbeatReceiver, listen

    r = HeartbeatReceiver(key)
    r.beats = []
    r.on_beat = r.beats.append
    port = listen(reactor, r, "127.0.0.1", 0)
    r.port = port.getHost().port
    yield r
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
