"""Acceptance: a SINGLE load balancer with HTTP (health-monitored) and TCP listeners,
built with Octavia 19.0.0's data models, its configuration rendered by Octavia's own
template (Octavia's paths under the agent's [octavia] base_path), driven through
Octavia's own driver against a real agent and real haproxy: create, traffic to each
listener, heartbeats decoded and counted with Octavia's code, start and reload as the
failover flows call them, listener deletes down to DELETE /1.0/listeners/<lb>."""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted

from tests import certificates_support as cs
from tests.helpers import free_port
from tests.listener_support import Backend, eventually, http_get, new_id, port_open, tcp_echo
from tests.octavia.support import assert_passed, by_call, controller_params, run_driver, summary

VERSION = "19.0.0"
HEARTBEAT_KEY = "octavia-acceptance-key"


@pytest.fixture
def heartbeat_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the driver binds it as the controller
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def base_path():
    """A short [octavia] base_path: the stats socket <base_path>/<lb>.sock must fit a unix
    socket path (108 bytes), as /var/lib/octavia does."""
    from tests.listener_support import remove_dir, short_dir

    path = short_dir("oct")
    yield path
    remove_dir(path)


@pytest.fixture
def agent_config_extra(run_dir, heartbeat_port, base_path):
    return {"agent": {"run_dir": run_dir}, "octavia": {"base_path": base_path},
            "haproxy": {"stop_timeout": "5", "start_timeout": "30"},
            "heartbeat": {"controllers": f"127.0.0.1:{heartbeat_port}", "key": HEARTBEAT_KEY,
                          "interval": "1", "fanout": "round-robin"}}


def certificate(cn: str) -> dict:
    bundle = cs.bundle(cn)
    return {"cert": bundle.cert.decode(), "key": bundle.key.decode(), "chain": [c.decode() for c in bundle.chain]}


def tls_get(port: int, server_name: str) -> tuple[str, int, str]:
    """The CN of the certificate a TLS listener presents for ``server_name``, and a GET's answer."""
    import socket
    import ssl

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test CA is not this client's; the CN says which certificate
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            tls.sendall(b"GET / HTTP/1.0\r\nHost: " + server_name.encode() + b"\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return cn, int(answer.split(b" ", 2)[1]), answer.decode(errors="replace")


def lb_spec(http_backend: Backend, tcp_backend: Backend) -> dict:
    return {"id": new_id(), "vip": "127.0.0.1", "listeners": [
        {"id": new_id(), "protocol": "HTTP", "port": free_port(),
         "pool": {"id": new_id(), "protocol": "HTTP", "monitor": True, "monitor_id": new_id(),
                  "members": [{"id": new_id(), "address": "127.0.0.1", "port": http_backend.port}]}},
        {"id": new_id(), "protocol": "TCP", "port": free_port(),
         "pool": {"id": new_id(), "protocol": "TCP",
                  "members": [{"id": new_id(), "address": "127.0.0.1", "port": tcp_backend.port}]}},
        # Default and SNI certificates, uploaded by the driver as <sha1>.pem files and a crt-list.
        {"id": new_id(), "protocol": "TERMINATED_HTTPS", "port": free_port(),
         "certificates": [certificate("www.example.com"), certificate("sni.example.com")],
         "pool": {"id": new_id(), "protocol": "HTTP",
                  "members": [{"id": new_id(), "address": "127.0.0.1", "port": http_backend.port}]}},
    ]}


@pytest_twisted.ensureDeferred
async def test_single_load_balancer_life_cycle(agent, pki, tmp_path, heartbeat_port, octavia_cleanup):
    from twisted.internet.threads import deferToThread

    work = str(tmp_path / "ctl")
    with Backend("http-member") as http_backend, Backend("tcp-member", mode="tcp") as tcp_backend:
        spec = lb_spec(http_backend, tcp_backend)
        http_listener, tcp_listener, https_listener = spec["listeners"]

        def params(scenario, **extra):
            return controller_params(pki, agent, work, VERSION, scenario, lb=spec, **extra)

        async def traffic(expect_http=True, expect_tcp=True, expect_https=True):
            if expect_http:
                code, body = await deferToThread(http_get, http_listener["port"])
                assert code == 200 and "http-member" in body
            else:
                assert not await deferToThread(port_open, http_listener["port"])
            if expect_tcp:
                assert (await deferToThread(tcp_echo, tcp_listener["port"])).startswith(b"tcp-member")
            else:
                assert not await deferToThread(port_open, tcp_listener["port"])
            if expect_https:
                for name, cn in (("sni.example.com", "sni.example.com"), ("other.example.com", "www.example.com")):
                    served, status, body = await deferToThread(tls_get, https_listener["port"], name)
                    assert (served, status) == (cn, 200) and "http-member" in body

        # Listener create: update_amphora_listeners (info, details, upload, reload).
        results = await run_driver(params("lb_update"))
        print(summary(VERSION, results))
        assert_passed(results, ["update_amphora_listeners"])
        await eventually(lambda: deferToThread(port_open, tcp_listener["port"]), 30, message="listeners up")
        await traffic()

        # Heartbeats, decoded with Octavia's own code: one entry per frontend, pools by
        # "<pool_id>:<listener_id>", as Octavia's health manager counts them.
        results = await run_driver(params("heartbeat_1_0", heartbeat_port=heartbeat_port,
                                          heartbeat_key=HEARTBEAT_KEY, beats=3))
        assert_passed(results, ["unwrap_envelope"])
        beat = [r for r in results if r["ok"]][-1]["result"]
        assert beat["id"] == pki.amphora_id and beat["ver"] == 3
        assert sorted(beat["listeners"]) == sorted(li["id"] for li in spec["listeners"])
        assert sorted(beat["pools"]) == sorted(f"{li['pool']['id']}:{li['id']}" for li in spec["listeners"])
        member = http_listener["pool"]["members"][0]["id"]
        pool = beat["pools"][f"{http_listener['pool']['id']}:{http_listener['id']}"]
        assert pool["status"] == "UP" and pool["members"][member].split()[0] == "UP"

        # The failover flows: ListenersStart (start on a running LB: no-op) and reload.
        results = await run_driver(params("lb_failover_calls"))
        print(summary(VERSION, results))
        assert_passed(results, ["start", "reload"])
        await traffic()

        # Listener deletes: the TERMINATED_HTTPS listener (its certificate files deleted,
        # then an update) ...
        cert_dir = os.path.join(agent.config.octavia.cert_dir, spec["id"])
        assert len(os.listdir(cert_dir)) == 3  # two <sha1>.pem and the crt-list <listener>.pem
        results = await run_driver(params("lb_delete_listener", delete=https_listener["id"]))
        assert_passed(results, ["delete"])
        assert os.listdir(cert_dir) == [f"{https_listener['id']}.pem"]  # Octavia leaves its crt-list
        spec["listeners"].remove(https_listener)
        await eventually(lambda: deferToThread(lambda: not port_open(https_listener["port"])), 30,
                         message="TERMINATED_HTTPS listener gone")
        await traffic(expect_https=False)

        # ... the TCP listener ...
        results = await run_driver(params("lb_delete_listener", delete=tcp_listener["id"]))
        assert_passed(results, ["delete"])
        spec["listeners"].remove(tcp_listener)
        await eventually(lambda: deferToThread(lambda: not port_open(tcp_listener["port"])), 30,
                         message="TCP listener gone")
        await traffic(expect_tcp=False, expect_https=False)

        # ... then the last one: DELETE /1.0/listeners/<lb>.
        results = await run_driver(params("lb_delete_listener", delete=http_listener["id"]))
        assert_passed(results, ["delete"])
        await eventually(lambda: deferToThread(lambda: not port_open(http_listener["port"])), 30,
                         message="load balancer gone")
        assert agent.listeners.kind(spec["id"]) is None
        assert not os.path.exists(os.path.join(agent.config.octavia.cert_dir, spec["id"]))
        assert by_call(results)["delete"]["ok"]
