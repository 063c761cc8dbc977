"""Test helpers for anything that runs real haproxy listeners (reusable by other areas).

- ``Backend``: a tiny threaded HTTP server (answers its ``name``) or TCP echo
  server on an ephemeral loopback port. It runs in its own threads, so it
  keeps serving while the reactor thread is busy or blocked.
- ``http_config`` / ``tcp_config``: complete haproxy configurations the way
  Octavia names things (frontend = listener UUID, backend = ``<pool>:<listener>``,
  server = member UUID).
- ``http_get``, ``tcp_echo``, ``port_open``: blocking clients (run them with
  ``deferToThread`` from a reactor test).
- ``short_dir(prefix)``: a short private directory under /tmp (a ``run_dir``
  whose paths stay readable in ``ps``; any ``run_dir`` works).
- ``kill_listeners(run_dir)``: SIGKILL every haproxy whose pid file lies under
  ``run_dir`` (test clean-up, by pid and process group only).
- ``eventually(predicate)``: poll on the reactor until true.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import socketserver
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(float(self.path.partition("?")[2] or "1"))
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        prefix = self.server.name.encode() + b":"
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(prefix + data)


def _quiet_error(self, request, client_address):
    """A peer that resets (haproxy closing idle server connections) is not worth a traceback."""
    import sys
    if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
        socketserver.BaseServer.handle_error(self, request, client_address)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    handle_error = _quiet_error


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    handle_error = _quiet_error


class Backend:
    """``Backend("name")`` serves HTTP; ``Backend("name", mode="tcp")`` echoes ``name:`` + data."""

    def __init__(self, name: str = "backend", mode: str = "http"):
        self.name = name
        self.mode = mode
        cls, handler = (_HTTPServer, _HTTPHandler) if mode == "http" else (_TCPServer, _EchoHandler)
        self.server = cls(("127.0.0.1", 0), handler)
        self.server.name = name
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def start(self) -> "Backend":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def new_id() -> str:
    return str(uuid.uuid4())


def http_config(listener: str, port: int, pool: str, members: list[tuple[str, int]], check: bool = False,
                header: str = "", extra_global: str = "", bind_ip: str = "127.0.0.1") -> str:
    """An HTTP listener on ``bind_ip:port`` to ``members`` [(member uuid, port)] of ``pool``."""
    servers = "\n".join(
        f"    server {m} 127.0.0.1:{p}" + (" check inter 200 fall 1 rise 1" if check else "")
        for m, p in members)
    return f"""# Config file for {listener}
{header}global
    maxconn 1000
{extra_global}
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    retries 0

frontend {listener}
    bind {bind_ip}:{port}
    default_backend {pool}:{listener}

backend {pool}:{listener}
    balance roundrobin
{servers}
"""


def tcp_config(listener: str, port: int, pool: str, members: list[tuple[str, int]], check: bool = False,
               bind_ip: str = "127.0.0.1") -> str:
    servers = "\n".join(
        f"    server {m} 127.0.0.1:{p}" + (" check inter 200 fall 1 rise 1" if check else "")
        for m, p in members)
    return f"""# Config file for {listener}
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend {listener}
    bind {bind_ip}:{port}
    default_backend {pool}

backend {pool}
{servers}
"""


def http_get(port: int, path: str = "/", timeout: float = 3.0, host: str = "127.0.0.1") -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def tcp_echo(port: int, data: bytes = b"ping", timeout: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return s.recv(65536)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def short_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp")


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def listener_pids(run_dir: str) -> list[int]:
    """Master pids from the pid files of every listener under ``run_dir`` that still run haproxy."""
    pids = []
    root = os.path.join(run_dir, "listeners")
    for entry in os.listdir(root) if os.path.isdir(root) else ():
        try:
            with open(os.path.join(root, entry, "haproxy.pid")) as f:
                pid = int(f.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if run_dir.encode() not in f.read():
                    continue
        except (OSError, ValueError, IndexError):
            continue
        pids.append(pid)
    return pids


def kill_listeners(run_dir: str, extra_pids=()) -> None:
    """SIGKILL the haproxy masters (and their process groups) of ``run_dir``'s listeners."""
    for pid in {*listener_pids(run_dir), *extra_pids}:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = ""):
    """Poll ``predicate()`` (may return a Deferred/awaitable) on the reactor until it is true."""
    import inspect

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    last = None
    while True:
        value = predicate()
        if isinstance(value, Deferred) or inspect.isawaitable(value):
            value = await value
        last = value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {message or predicate} (last: {last!r})")
        await deferLater(reactor, interval, lambda: None)


async def reloaded_to(port: int, name: str, master: int, then: int = 5, timeout: float = 5.0) -> None:
    """After a reload's 202: the new worker serves, but the old one shares the listening socket
    and can still accept a new connection until it has processed its soft stop (a few ms; seen
    in CI, docs/api.rst). Waits until the old workers have left (``master`` has one child: these
    tests hold no connection that would keep one), then requires ``then`` answers from ``name``."""
    import psutil
    from twisted.internet.threads import deferToThread

    def one_worker():
        try:
            return len(psutil.Process(master).children()) == 1
        except psutil.NoSuchProcess:
            return False

    await eventually(one_worker, timeout=timeout, interval=0.01, message=f"the old workers of master {master} gone")
    answers = await deferToThread(lambda: [http_get(port) for _ in range(then)])
    assert answers == [(200, name)] * then, answers


class BlockingAPI:
    """A blocking mTLS client for an agent in another process (tests that are not reactor tests,
    benchmarks). Keeps one connection alive; ``call`` returns (status, JSON or bytes)."""

    def __init__(self, pki_paths: dict, port: int, timeout: float = 30.0):
        import ssl
        self.port = port
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=pki_paths["ca"])
        self.context.load_cert_chain(pki_paths["client_cert"], pki_paths["client_key"])
        self.conn = None

    def call(self, method: str, path: str, body: bytes | str | None = None):
        import json
        if isinstance(body, str):
            body = body.encode()
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection("localhost", self.port, context=self.context,
                                                        timeout=self.timeout)
            try:
                self.conn.request(method, "/v0.1" + path, body=body)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        ctype = response.getheader("content-type", "")
        return response.status, (json.loads(data) if ctype.startswith("application/json") else data)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class API:
    """The listener routes of a running agent, through a treq client: (code, JSON or bytes)."""

    def __init__(self, client, url):
        self.client = client
        self.url = url + "/v0.1"

    async def call(self, method, path, data=None):
        response = await self.client.request(method, self.url + path, data=data)
        body = await response.content()
        if response.headers.getRawHeaders(b"content-type", [b""])[0].startswith(b"application/json"):
            return response.code, json.loads(body)
        return response.code, body

    async def upload(self, lid, text):
        return await self.call("PUT", f"/listeners/{lid}/haproxy", text.encode() if isinstance(text, str) else text)

    async def action(self, lid, action):
        return await self.call("PUT", f"/listeners/{lid}/{action}")
