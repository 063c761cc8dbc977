"""Acceptance: the amphora-wide calls (server certificate rotation, agent configuration
updates, interface lookup) made by Octavia's own client code against real twistd agents:
Octavia 19.0.0 at /1.0 and Octavia 4.0.0 at /0.5.

The agents are subprocesses (so they can be restarted); each serves a private copy of
the session's server certificate, which the rotation replaces.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509

from amphora import devpki
from tests.helpers import TwistdAgent, free_port, write_config
from tests.octavia.support import assert_passed, by_call, run_driver_blocking, summary


class Agent:
    """A twistd agent with its own copy of the server certificate and an Octavia base_path."""

    def __init__(self, pki, root: str, extra: dict | None = None):
        self.pki, self.root = pki, root
        os.makedirs(root, exist_ok=True)
        self.port = free_port()
        self.server_pem = os.path.join(root, "server.pem")
        shutil.copy(pki.paths["server"], self.server_pem)
        os.chmod(self.server_pem, 0o600)
        self.base_path = os.path.join(root, "octavia")
        conf = {"tls": {"server_cert": self.server_pem}}
        for section, values in (extra or {}).items():
            conf.setdefault(section, {}).update(values)
        self.config = write_config(pki, root, self.port, conf)
        self.log_path = os.path.join(root, "twistd.log")
        self.proc: TwistdAgent | None = None

    def start(self) -> "Agent":
        self.proc = TwistdAgent(self.config, self.log_path).start()
        self.proc.wait_listening(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def params(agent: Agent, work: str, version: str, scenario: str, **extra) -> dict:
    os.makedirs(work, exist_ok=True)
    client_pem = os.path.join(work, "controller.pem")
    with open(client_pem, "wb") as f:
        f.write(agent.pki.client.cert_pem + agent.pki.client.key_pem)
    return {"version": version, "scenario": scenario, "port": agent.port, "amphora_id": agent.pki.amphora_id,
            "ca": agent.pki.paths["ca"], "client_pem": client_pem, "base_path": agent.base_path,
            "base_cert_dir": os.path.join(agent.base_path, "certs"), "work": work, **extra}


def calls(agent: Agent, work: str, version: str, steps: list[dict]) -> list[dict]:
    results = run_driver_blocking(params(agent, work, version, "amphora_calls", steps=steps))
    print(summary(version, results))
    return results


def served_serial(port: int) -> int:
    """The serial of the certificate a NEW TLS connection is served (no client certificate)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


class OpenConnection:
    """One mutual-TLS keep-alive connection, kept open across calls."""

    def __init__(self, pki, port: int):
        context = ssl.create_default_context(cafile=pki.paths["ca"])
        context.check_hostname = False
        context.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
        self.tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))

    def get(self, path: str) -> int:
        self.tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.tls.recv(4096)
            assert chunk, "connection closed"
            head += chunk
        headers, _, body = head.partition(b"\r\n\r\n")
        lines = [line.lower() for line in headers.split(b"\r\n")]
        if b"transfer-encoding: chunked" in lines:
            while not body.endswith(b"0\r\n\r\n"):
                body += self.tls.recv(4096)
        else:
            length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length:")))
            while len(body) < length:
                body += self.tls.recv(4096)
        return int(headers.split()[1])

    @property
    def serial(self) -> int:
        return x509.load_der_x509_certificate(self.tls.getpeercert(binary_form=True)).serial_number

    def close(self):
        self.tls.close()


def new_server_pem(pki) -> tuple[bytes, int]:
    issued = devpki.issue(pki.ca, pki.amphora_id, server=True, dns=("localhost", pki.amphora_id),
                          ips=("127.0.0.1",))
    return issued.cert_pem + issued.key_pem, issued.cert.serial_number


@pytest.fixture
def agent(pki, tmp_path):
    a = Agent(pki, str(tmp_path / "agent"))
    yield a
    a.kill()


def test_certificate_rotation_through_octavia_19(agent, pki, tmp_path):
    agent.start()
    old_serial = served_serial(agent.port)
    held = OpenConnection(pki, agent.port)
    try:
        assert held.get("/1.0/info") == 200 and held.serial == old_serial
        pem, new_serial = new_server_pem(pki)
        good = pki.write("rotated.pem", pem)
        bad = pki.write("bad.pem", b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        wrong_key = pki.write("wrong-key.pem", pem.split(b"-----BEGIN RSA")[0] + pki.client.key_pem)
        before = open(agent.server_pem, "rb").read()

        results = calls(agent, str(tmp_path / "ctl1"), "19.0.0", [
            {"call": "get_info"},
            {"call": "update_cert_for_rotation", "file": bad, "label": "rotate(bad PEM)"},
            {"call": "update_cert_for_rotation", "file": wrong_key, "label": "rotate(key of another cert)"},
        ])
        assert "InvalidRequest" in by_call(results)["rotate(bad PEM)"]["error"]
        assert "InvalidRequest" in by_call(results)["rotate(key of another cert)"]["error"]
        assert served_serial(agent.port) == old_serial  # refused: the old certificate still serves
        assert open(agent.server_pem, "rb").read() == before

        started = time.monotonic()
        results = calls(agent, str(tmp_path / "ctl2"), "19.0.0", [
            {"call": "get_info"},
            {"call": "update_cert_for_rotation", "file": good, "label": "rotate"},
            {"call": "get_info", "label": "get_info (same session)"},
            {"call": "get_info", "fresh": True, "label": "get_info (new connection, new certificate)"},
        ])
        assert_passed(results, ["get_info", "rotate", "get_info (same session)",
                                "get_info (new connection, new certificate)"])
        assert served_serial(agent.port) == new_serial
        print(f"rotation: new certificate served {time.monotonic() - started:.2f}s after the driver "
              "started (includes the driver's own start-up)")
        # The connection opened before the rotation still works, on the old certificate.
        assert held.get("/1.0/info") == 200 and held.serial == old_serial
        assert open(agent.server_pem, "rb").read() == pem
        assert os.stat(agent.server_pem).st_mode & 0o777 == 0o600
    finally:
        held.close()
    # A restart serves the stored one.
    agent.stop()
    agent.start()
    assert served_serial(agent.port) == new_serial
    assert "server certificate replaced" in agent.log()


def _receive(agent, work, port, key, beats=2, timeout=60):
    out = {}
    p = params(agent, work, "19.0.0", "heartbeat_1_0", heartbeat_port=port, heartbeat_key=key, beats=beats,
               heartbeat_timeout=timeout)
    def receive():
        try:
            out["results"] = run_driver_blocking(p)
        except BaseException as e:  # shown by the test's assertion
            out["results"] = [{"call": "receiver", "ok": False, "error": repr(e)[-2000:]}]

    thread = threading.Thread(target=receive)
    thread.start()
    return thread, out


def _config_body(agent, port, key, interval=1, **more) -> bytes:
    lines = ["[DEFAULT]", "debug = False", "",
             "[haproxy_amphora]", f"base_path = {agent.base_path}", "bind_port = 9443", "",
             "[health_manager]", f"controller_ip_port_list = 127.0.0.1:{port}",
             f"heartbeat_interval = {interval}", f"heartbeat_key = {key}", "",
             "[amphora_agent]", f"amphora_id = {agent.pki.amphora_id}", "agent_tls_protocol = TLSv1.2", "",
             "[controller_worker]", "loadbalancer_topology = SINGLE", ""]
    return "\n".join(lines).encode() + b"".join(f"{k} = {v}\n".encode() for k, v in more.items())


def test_configuration_update_moves_heartbeats_through_octavia_19(pki, tmp_path):
    first_port, new_port = free_port(), free_port()
    agent = Agent(pki, str(tmp_path / "agent"), {
        "heartbeat": {"controllers": f"127.0.0.1:{first_port}", "key": "first-key", "interval": "30"}})
    try:
        agent.start()
        thread, out = _receive(agent, str(tmp_path / "hb1"), new_port, "second-key")
        time.sleep(1.0)  # the receiver binds its port
        malformed = pki.write("malformed.conf", b"[health_manager\ncontroller_ip_port_list = x\n")
        bad_value = pki.write("bad-value.conf", _config_body(agent, "notaport", "k"))
        good = pki.write("agent.conf", _config_body(agent, new_port, "second-key"))
        results = calls(agent, str(tmp_path / "ctl"), "19.0.0", [
            {"call": "update_agent_config", "file": malformed, "label": "update(malformed)"},
            {"call": "update_agent_config", "file": bad_value, "label": "update(bad port)"},
            {"call": "update_agent_config", "file": good, "label": "update"},
        ])
        assert "InvalidRequest" in by_call(results)["update(malformed)"]["error"]
        assert "InvalidRequest" in by_call(results)["update(bad port)"]["error"]
        assert_passed(results, ["update"])
        thread.join(60)
        beats = out["results"]
        print(summary("19.0.0", beats))
        assert len(beats) == 2 and all(b["ok"] for b in beats), beats  # signed with the new key
        assert beats[0]["result"]["id"] == pki.amphora_id and beats[0]["result"]["listeners"] == {}
        log = agent.log()
        assert "second-key" not in log and "first-key" not in log
        assert "kept for the record, not applied: DEFAULT.debug, amphora_agent.agent_tls_protocol" in log

        # An agent restart keeps the update: beats still go to the new address with the new key.
        agent.stop()
        thread, out = _receive(agent, str(tmp_path / "hb2"), new_port, "second-key", beats=1)
        time.sleep(1.0)
        agent.start()
        thread.join(60)
        assert [b["ok"] for b in out["results"]] == [True], out["results"]
    finally:
        agent.kill()


def test_interface_lookup_through_octavia_19(agent, tmp_path):
    agent.start()
    results = calls(agent, str(tmp_path / "ctl"), "19.0.0", [
        {"call": "get_interface", "args": ["127.0.0.1"], "label": "interface(127.0.0.1)"},
        {"call": "get_interface", "args": ["0:0:0:0:0:0:0:1"], "label": "interface(::1 spelt long)"},
        {"call": "get_interface", "args": ["192.0.2.77"], "label": "interface(absent)"},
        {"call": "get_interface", "args": ["not-an-ip"], "label": "interface(invalid)"},
    ])
    found = by_call(results)
    assert found["interface(127.0.0.1)"]["result"] == {"message": "OK", "interface": "lo"}
    assert found["interface(::1 spelt long)"]["result"] == {"message": "OK", "interface": "lo"}
    assert "NotFound" in found["interface(absent)"]["error"]
    assert "InvalidRequest" in found["interface(invalid)"]["error"]


def test_the_same_calls_at_0_5_through_octavia_4(agent, pki, tmp_path):
    agent.start()
    pem, new_serial = new_server_pem(pki)
    good = pki.write("rotated-0.5.pem", pem)
    bad = pki.write("bad-0.5.pem", b"garbage")
    conf = pki.write("agent-0.5.conf", _config_body(agent, free_port(), "k05", interval=10))
    vrrp_bad = pki.write("vrrp-bad.conf", b"vrrp_instance x {\n    interface no-such-if\n}\n")
    results = calls(agent, str(tmp_path / "ctl"), "4.0.0", [
        {"call": "get_interface", "args": ["127.0.0.1"], "label": "get_interface"},
        {"call": "get_interface", "args": ["192.0.2.77"], "label": "get_interface(absent)"},
        {"call": "update_cert_for_rotation", "file": bad, "label": "rotate(bad)"},
        {"call": "update_cert_for_rotation", "file": good, "label": "rotate"},
        {"call": "get_info", "fresh": True, "label": "get_info (new certificate)"},
        {"call": "update_agent_config", "file": conf, "label": "update_agent_config"},
        {"call": "upload_vrrp_config", "file": vrrp_bad, "label": "upload_vrrp_config(refused by keepalived -t)"},
        {"call": "start_vrrp", "label": "start_vrrp(nothing uploaded)"},
    ])
    found = by_call(results)
    assert_passed(results, ["get_interface", "rotate", "get_info (new certificate)", "update_agent_config"])
    assert found["get_interface"]["result"] == {"message": "OK", "interface": "lo"}
    assert "NotFound" in found["get_interface(absent)"]["error"]
    assert "InvalidRequest" in found["rotate(bad)"]["error"]
    assert "InvalidRequest" in found["upload_vrrp_config(refused by keepalived -t)"]["error"]
    assert "InvalidRequest" in found["start_vrrp(nothing uploaded)"]["error"]
    assert served_serial(agent.port) == new_serial


# -- ACTIVE_STANDBY driven by the controller ------------------------------------------

def _vrrp_agent(pki, root, namespace):
    return Agent(pki, root, {"network": {"namespace": namespace}, "keepalived": {"advert_int": "1"}})


def _curl(agent, method, path, body=None):
    import json
    import subprocess

    argv = ["curl", "-sS", "--max-time", "20", "-X", method, "--cacert", agent.pki.paths["ca"],
            "--cert", agent.pki.paths["client_cert"], "--key", agent.pki.paths["client_key"],
            "-w", "\n%{http_code}", f"https://localhost:{agent.port}{path}"]
    if body is not None:
        argv[1:1] = ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    text, _, code = out.rpartition("\n")
    return int(code), (json.loads(text) if text.strip() else None)


def test_active_standby_driven_by_octavia_19(pki, tmp_path):
    import uuid

    from tests.topology_support import Lab, keepalived_pids, kill_keepalived, wait_for

    lb_id = str(uuid.uuid4())
    with Lab() as lab:
        a = _vrrp_agent(pki, str(tmp_path / "a"), lab.ns_a)
        b = _vrrp_agent(pki, str(tmp_path / "b"), lab.ns_b)
        run_dirs = [os.path.join(x.root, "run") for x in (a, b)]
        try:
            a.start()
            b.start()
            cidr = f"10.88.{lab.subnet}.0/24"
            for name, amp, mine, peer, priority in (("a", a, lab.ip_a, lab.ip_b, 100), ("b", b, lab.ip_b, lab.ip_a, 90)):
                results = run_driver_blocking(params(
                    amp, str(tmp_path / f"ctl-{name}"), "19.0.0", "vrrp_19", vrrp_ip=mine, peer_ip=peer,
                    priority=priority, vip=lab.ha_ip, cidr=cidr, lb_id=lb_id, auth_pass="a1b2c3d"))
                print(summary("19.0.0", results))
                assert_passed(results, ["check (GET //)", "get_interface", "update_vrrp_conf", "start_vrrp_service"])
                assert by_call(results)["get_interface"]["result"] == {"message": "OK", "interface": "eth1"}
                if name == "a":
                    wait_for(lambda: lab.holders() == ["a"], 20, what="A holds the VIP")
            stored = open(os.path.join(a.base_path, "vrrp", "octavia-keepalived.conf")).read()
            assert f"vrrp_instance {lb_id.replace('-', '')}" in stored and "check_script.sh" in stored
            assert os.access(os.path.join(a.base_path, "vrrp", "check_script.sh"), os.X_OK)
            time.sleep(3)
            assert lab.holders() == ["a"], "exactly one holds the VIP"
            # The controller owns keepalived: /v0.1/topology reports it and refuses changes.
            wait_for(lambda: _curl(a, "GET", "/v0.1/topology")[1]["role"] == "ACTIVE", 10, what="A reports ACTIVE")
            doc_b = _curl(b, "GET", "/v0.1/topology")[1]
            assert doc_b["topology"] == "ACTIVE-STANDBY" and doc_b["role"] == "STANDBY" and doc_b["ha_ip"] == lab.ha_ip
            code, doc = _curl(b, "POST", "/v0.1/topology", {"topology": "SINGLE"})
            assert code == 409, doc
            # A second start of a running keepalived does not restart it.
            pids = keepalived_pids(run_dirs[0])
            results = calls(a, str(tmp_path / "ctl-a2"), "19.0.0", [{"call": "start_vrrp", "label": "start again"},
                                                                   {"call": "get_interface", "args": [lab.ha_ip]}])
            assert_passed(results, ["start again", "get_interface"])
            assert keepalived_pids(run_dirs[0]) == pids and lab.holders() == ["a"]
            results = calls(b, str(tmp_path / "ctl-b2"), "19.0.0", [{"call": "get_interface", "args": [lab.ha_ip]}])
            assert "NotFound" in by_call(results)["get_interface"]["error"]  # how a failover picks the BACKUP

            # An agent restart detaches from keepalived and adopts it again (no failover).
            a.stop()
            assert all(os.path.exists(f"/proc/{p}") for p in pids) and lab.holders() == ["a"]
            a.start()
            wait_for(lambda: _curl(a, "GET", "/v0.1/topology")[1]["role"] == "ACTIVE", 10, what="A adopted as ACTIVE")
            assert keepalived_pids(run_dirs[0]) == pids and lab.holders() == ["a"]
            assert "adopted running keepalived" in a.log()

            # kill -9 of the MASTER's keepalived: the BACKUP takes the VIP.
            started = time.monotonic()
            assert kill_keepalived(run_dirs[0])
            wait_for(lambda: lab.holders() == ["b"], 15, interval=0.02, what="B alone holds the VIP")
            print(f"takeover after kill -9 of the MASTER's keepalived: {time.monotonic() - started:.2f}s "
                  "(controller's configuration: advert_int 1, nopreempt)")
            wait_for(lambda: _curl(b, "GET", "/v0.1/topology")[1]["role"] == "ACTIVE", 10, what="B reports ACTIVE")
            wait_for(lambda: len(keepalived_pids(run_dirs[0])) == 2, 15, what="A's keepalived restarted")
            time.sleep(2)
            assert lab.holders() == ["b"], "nopreempt: A does not take the VIP back"

            # vrrp stop releases the VIP (and keepalived goes back to /v0.1/topology).
            results = calls(b, str(tmp_path / "ctl-b3"), "19.0.0", [{"call": "stop_vrrp"}])
            assert_passed(results, ["stop_vrrp"])
            wait_for(lambda: lab.holders() == ["a"], 15, what="A takes the VIP from a stopped B")
            assert keepalived_pids(run_dirs[1]) == [] or not any(os.path.exists(f"/proc/{p}")
                                                                  for p in keepalived_pids(run_dirs[1]))
            assert _curl(b, "GET", "/v0.1/topology")[1]["topology"] == "SINGLE"
            results = calls(a, str(tmp_path / "ctl-a3"), "19.0.0", [{"call": "stop_vrrp"}])
            assert_passed(results, ["stop_vrrp"])
            wait_for(lambda: lab.holders() == [], 15, what="no VIP left")
        finally:
            for amp in (a, b):
                amp.kill()
            for run_dir in run_dirs:
                for pid in keepalived_pids(run_dir):
                    try:
                        with open(f"/proc/{pid}/comm") as f:
                            if f.read().strip() == "keepalived":
                                os.kill(pid, 9)
                    except OSError:
                        pass
