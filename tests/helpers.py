"""Shared test helpers: a PKI, configurations, an in-process agent, a twistd subprocess."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from twisted.internet import tcp
from twisted.internet.testing import StringTransport
from zope.interface import implementedBy, implementer

from amphora import devpki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The venv's twistd; PYTHONPATH=REPO makes it run this checkout's code.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


@dataclass
class PKI:
    """Files for one agent identity and one controller, plus the means to make more."""

    dir: str
    amphora_id: str
    ca: devpki.Issued
    server: devpki.Issued
    client: devpki.Issued
    paths: dict = field(default_factory=dict)

    def write(self, name: str, data: bytes, mode: int = 0o600) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path


def make_pki(directory: str) -> PKI:
    os.makedirs(directory, exist_ok=True)
    amphora_id = str(uuid.uuid4())
    ca = devpki.make_ca("test CA")
    # Octavia's client checks the amphora id against the certificate's DNS names.
    server = devpki.issue(ca, amphora_id, server=True, dns=("localhost", amphora_id), ips=("127.0.0.1", "::1"))
    client = devpki.issue(ca, "test-controller", client=True)
    pki = PKI(directory, amphora_id, ca, server, client)
    pki.paths = {
        "ca": pki.write("ca.pem", ca.cert_pem, 0o644),
        "server": pki.write("server.pem", server.cert_pem + server.key_pem),
        "client_cert": pki.write("client.pem", client.cert_pem),
        "client_key": pki.write("client-key.pem", client.key_pem),
    }
    return pki


def expired_client(pki: PKI) -> devpki.Issued:
    now = datetime.datetime.now(datetime.timezone.utc)
    return devpki.issue(pki.ca, "expired-controller", client=True,
                        not_before=now - datetime.timedelta(days=30),
                        not_after=now - datetime.timedelta(days=1))


@implementer(*implementedBy(tcp.Server))  # what a server-side TCP connection provides
class TCPLike(StringTransport):
    """A ``StringTransport`` with a TCP connection's interfaces and options: in-memory TLS over it
    runs as ``listenSSL`` runs it over a real connection."""

    def setTcpNoDelay(self, enabled):
        pass

    def setTcpKeepAlive(self, enabled):
        pass

    def getHandle(self):
        return None


def drain_bio(conn) -> bytes:
    """Everything an in-memory pyOpenSSL ``Connection`` has written for its peer so far."""
    from OpenSSL import SSL

    out = []
    while True:
        try:
            out.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(out)


def config_text(pki: PKI, root: str, port: int = 0, extra: dict | None = None) -> str:
    """An INI configuration for an agent whose state lives under ``root``."""
    sections = {
        "agent": {
            "amphora_id": pki.amphora_id,
            "bind_host": "127.0.0.1",
            "bind_port": str(port),
            "state_dir": os.path.join(root, "state"),
            "run_dir": os.path.join(root, "run"),
            "certs_dir": os.path.join(root, "certs"),
            "log_dir": os.path.join(root, "log"),
        },
        "tls": {"server_cert": pki.paths["server"], "client_ca": pki.paths["ca"]},
        # The paths an Octavia controller names in what it uploads, inside the test's root.
        "octavia": {"base_path": os.path.join(root, "octavia")},
    }
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in values.items() if v is not None)
        lines.append("")
    return "\n".join(lines)


def write_config(pki: PKI, root: str, port: int = 0, extra: dict | None = None) -> str:
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "agent.conf")
    with open(path, "w") as f:
        f.write(config_text(pki, root, port, extra))
    return path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwistdAgent:
    """``twistd -n amphora-agent`` as a real child process, from this checkout."""

    def __init__(self, config_path: str, log_path: str):
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "TwistdAgent":
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "amphora-agent",
             "--config", self.config_path],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            start_new_session=True)
        return self

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        """Blocks until the port accepts (only for use outside the reactor)."""
        import socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"agent did not listen on {port}: {self.log()}")

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM), wait, SIGKILL if it lingers; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""
