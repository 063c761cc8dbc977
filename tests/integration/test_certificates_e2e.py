"""TERMINATED_HTTPS end to end through the agent's API: certificates and listeners together.

Upload a certificate, then a configuration whose ``bind ... ssl crt`` uses it,
start it, and a real TLS client through haproxy sees that certificate and the
backend behind it. Replace the certificate: a NEW connection sees the new one
with no reload (same haproxy master, same worker); reload: still the new one;
replace again after the reload: live again. Deleting the listener deletes its
certificates.
"""

from __future__ import annotations

import os

import psutil
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests import certificates_support as cs
from tests.helpers import free_port
from tests.listener_support import Backend, new_id

NAME = "www.example.com.pem"


@pytest.fixture
def agent_config_extra(run_dir):
    return {"agent": {"run_dir": run_dir}, "haproxy": {"stop_timeout": "3", "start_timeout": "5"}}


def https_config(lid: str, port: int, crt: str, pool: str, member: str, backend_port: int) -> str:
    return f"""# TERMINATED_HTTPS listener {lid}
global
    maxconn 1000

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    retries 0

frontend {lid}
    bind 127.0.0.1:{port} ssl crt {crt}
    default_backend {pool}:{lid}

backend {pool}:{lid}
    server {member} 127.0.0.1:{backend_port}
"""


async def call(client, url, method, path, data=None):
    import json

    response = await client.request(method, f"{url}/v0.1{path}", data=data)
    body = await response.content()
    if response.headers.getRawHeaders(b"content-type", [b""])[0].startswith(b"application/json"):
        return response.code, json.loads(body)
    return response.code, body


def workers(master: int) -> set[int]:
    return {child.pid for child in psutil.Process(master).children()}


async def fetch(port, cn, cafile):
    cert, answer = await deferToThread(cs.tls_get, port, cn, cafile)
    return cs.cn_of(cert), answer.rsplit(b"\r\n\r\n", 1)[-1].decode()


@pytest_twisted.ensureDeferred
async def test_terminated_https_end_to_end(agent, listeners, client, url, run_dir, tmp_path):
    root_ca = tmp_path / "root.pem"
    root_ca.write_bytes(cs.root_ca().cert_pem)
    lid, port, pool, member = new_id(), free_port(), new_id(), new_id()
    first, second, third = cs.bundle("a.example.com"), cs.bundle("b.example.com", key_kind="ec"), \
        cs.bundle("c.example.com")
    crt = os.path.join(agent.config.agent.certs_dir, lid, NAME)

    with Backend("member-1") as backend:
        # the certificate first: the configuration check needs the file
        code, body = await call(client, url, "PUT", f"/listeners/{lid}/certificates/{NAME}", first.pem())
        assert code == 201, body
        assert "not applied live" in body["details"]
        code, body = await call(client, url, "PUT", f"/listeners/{lid}/haproxy",
                                https_config(lid, port, crt, pool, member, backend.port).encode())
        assert code == 201, body
        code, body = await call(client, url, "PUT", f"/listeners/{lid}/start")
        assert code == 202, body
        code, body = await call(client, url, "GET", f"/listeners/{lid}")
        assert code == 200 and body["type"] == "TERMINATED_HTTPS" and body["status"] == "ACTIVE", body
        assert await fetch(port, "a.example.com", str(root_ca)) == ("a.example.com", "member-1")
        master = listeners._procs[lid].pid
        before = workers(master)
        assert before

        # replace: live, no reload
        code, body = await call(client, url, "PUT", f"/listeners/{lid}/certificates/{NAME}", second.pem())
        assert code == 201 and "applied live" in body["details"], body
        assert await fetch(port, "b.example.com", str(root_ca)) == ("b.example.com", "member-1")
        assert listeners._procs[lid].pid == master and workers(master) == before  # same processes

        # reload: the stored file is the same certificate
        code, body = await call(client, url, "PUT", f"/listeners/{lid}/reload")
        assert code == 202, body
        assert await fetch(port, "b.example.com", str(root_ca)) == ("b.example.com", "member-1")
        after_reload = workers(master)
        assert after_reload - before  # a new worker really took over

        # and live again after the reload (the new worker holds the same file)
        code, body = await call(client, url, "PUT", f"/listeners/{lid}/certificates/{NAME}",
                                third.cert + b"".join(third.chain) + third.key)
        assert code == 201 and "applied live" in body["details"], body
        assert await fetch(port, "c.example.com", str(root_ca)) == ("c.example.com", "member-1")
        assert listeners._procs[lid].pid == master and workers(master) <= after_reload

        # deleting the listener deletes its certificates
        code, body = await call(client, url, "DELETE", f"/listeners/{lid}")
        assert code == 200, body
        assert not os.path.exists(os.path.dirname(crt))
        code, body = await call(client, url, "GET", f"/listeners/{lid}/certificates/{NAME}")
        assert code == 404 and body["message"] == "Listener Not Found"
