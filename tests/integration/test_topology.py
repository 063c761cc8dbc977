"""Topology against the real thing: mTLS API, real keepalived in network namespaces, real
haproxy serving, real failover; the validation table; the 503 gate on every mutating route;
rollback; restart re-applies the topology.

Two amphorae: two twistd agents (root namespace, loopback API), each with
``[network] namespace`` = its own namespace; their keepalived and haproxy run
inside the namespaces, on one shared VIP link (see tests/topology_support.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from amphora.api.app import AgentAPI
from tests.helpers import TwistdAgent, free_port, write_config
from tests.listener_support import kill_listeners, listener_pids
from tests.topology_support import Lab, keepalived_pids, kill_keepalived, sh, wait_for

SECRET = "b20e06cf1abcf29c708d3b437f4a29892a0921d0-integration"
MUTATING = {"POST", "PUT", "DELETE", "PATCH"}


# -- helpers ---------------------------------------------------------------------------

class Api:
    """Blocking mTLS calls with curl (the agents are subprocesses; no reactor needed)."""

    def __init__(self, pki, port):
        self.pki, self.port = pki, port

    def call(self, method, path, body=None):
        argv = ["curl", "-sS", "--max-time", "20", "-X", method, "--cacert", self.pki.paths["ca"],
                "--cert", self.pki.paths["client_cert"], "--key", self.pki.paths["client_key"],
                "-w", "\n%{http_code}", f"https://localhost:{self.port}{path}"]
        data = None
        if isinstance(body, str):  # a haproxy configuration, byte for byte
            argv[1:1] = ["-H", "content-type: text/plain", "--data-binary", "@-"]
            data = body
        elif body is not None:
            argv[1:1] = ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30, input=data).stdout
        text, _, code = out.rpartition("\n")
        return int(code), (json.loads(text) if text.strip() else None)

    def topology(self):
        code, doc = self.call("GET", "/v0.1/topology")
        assert code == 200
        return doc

    def set(self, body):
        return self.call("POST", "/v0.1/topology", body)

    def wait_ok(self, timeout=30):
        return wait_for(lambda: (lambda d: d if d["topology_status"] == "OK" else None)(self.topology()),
                        timeout, what="topology_status OK")


class Amphora:
    def __init__(self, pki, root, namespace, name, extra=None):
        self.port = free_port()
        self.root = root
        self.run_dir = os.path.join(root, "run")
        conf = {"agent": {"amphora_id": str(uuid.uuid4()), "hostname": name},
                "network": {"namespace": namespace},
                "keepalived": {"advert_int": "1", "transition_timeout": "20"}}
        for section, values in (extra or {}).items():
            conf.setdefault(section, {}).update(values)
        self.config = write_config(pki, root, self.port, conf)
        self.log_path = os.path.join(root, "twistd.log")
        self.agent = TwistdAgent(self.config, self.log_path)
        self.api = Api(pki, self.port)

    def start(self):
        self.agent = TwistdAgent(self.config, self.log_path).start()
        self.agent.wait_listening(self.port)
        return self

    def stop(self):
        self.agent.stop()

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


def listener_config(lid: str, port: int, body: str) -> str:
    """A listener answering ``body`` itself on every address of the namespace (ha_ip included)."""
    return f"""global
    maxconn 100
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend {lid}
    bind 0.0.0.0:{port}
    http-request return status 200 content-type text/plain string "{body}\\n"
"""


def add_listener(amp, port, body) -> str:
    """Upload and start a listener through the agent's API: its haproxy runs in the namespace."""
    lid = str(uuid.uuid4())
    code, answer = amp.api.call("PUT", f"/v0.1/listeners/{lid}/haproxy", listener_config(lid, port, body))
    assert code in (201, 202), answer
    listener(amp, lid, "start")
    return lid


def listener(amp, lid, action):
    code, answer = amp.api.call("PUT", f"/v0.1/listeners/{lid}/{action}")
    assert code == 202, answer


def as_body(role, lab, **extra):
    body = {"topology": "ACTIVE-STANDBY", "role": role, "ha_ip": lab.ha_ip, "secret": SECRET}
    body.update(extra)
    return body


# -- two amphorae: roles, traffic, failover, restart -----------------------------------------

def test_active_standby_failover_and_restart(pki, tmp_path):
    port = 8080
    with Lab() as lab:
        a = Amphora(pki, str(tmp_path / "a"), lab.ns_a, "amp-a")
        b = Amphora(pki, str(tmp_path / "b"), lab.ns_b, "amp-b")
        try:
            a.start()
            b.start()
            add_listener(a, port, "amphora-a")
            add_listener(b, port, "amphora-b")
            # A finds the VIP interface itself (the subnet holding ha_ip); B is told. Unicast VRRP.
            assert a.api.set(as_body("ACTIVE", lab, peers=[lab.ip_b])) == (202, {
                "message": "OK", "details": "topology change in progress: GET /v0.1/topology shows "
                "TOPOLOGY-CHANGE until it is done"})
            assert a.api.topology()["topology_status"] in ("TOPOLOGY-CHANGE", "OK")
            a.api.wait_ok()
            wait_for(lambda: lab.holders() == ["a"], 15, what="A holds ha_ip")
            code, _ = b.api.set(as_body("STANDBY", lab, peers=[lab.ip_a], interface="eth1"))
            assert code == 202
            doc_b = b.api.wait_ok()
            assert doc_b["topology"] == "ACTIVE-STANDBY" and doc_b["ha_ip"] == lab.ha_ip
            assert doc_b["role"] == "STANDBY" and "last_error" not in doc_b
            doc_a = a.api.topology()
            assert doc_a["role"] == "ACTIVE" and doc_a["hostname"] == "amp-a"
            assert lab.holders() == ["a"]
            assert lab.get(port) == "amphora-a"
            assert "secret" not in doc_a and SECRET not in json.dumps(doc_a)
            # The same request again is a no-op.
            assert b.api.set(as_body("STANDBY", lab, peers=[lab.ip_a], interface="eth1")) == (200, {"message": "OK"})

            # 1. kill A's keepalived outright: B takes over, A's agent cleans the stale VIP.
            assert kill_keepalived(a.run_dir)
            wait_for(lambda: lab.holders() == ["b"], 15, what="B alone holds ha_ip")
            wait_for(lambda: b.api.topology()["role"] == "ACTIVE", 5, what="B reports ACTIVE")
            assert wait_for(lambda: lab.get(port), 5, what="traffic via ha_ip") == "amphora-b"
            # A's keepalived is restarted by its supervisor and stays BACKUP (nopreempt).
            wait_for(lambda: a.api.topology()["role"] == "STANDBY" and len(keepalived_pids(a.run_dir)) == 2,
                     15, what="A back as STANDBY")
            assert lab.holders() == ["b"]

            # 2. B's haproxy crash-loops (SIGKILL each time its supervisor brings it back): B's
            # check fails, it gives up MASTER (FAULT), A takes over. A single kill is usually
            # healed by the listener supervisor within a second, before the check's fall count.
            def crash_b():
                kill_listeners(b.run_dir)
                return lab.holders() == ["a"]
            wait_for(crash_b, 30, interval=0.05, what="A holds ha_ip while B's haproxy crash-loops")
            wait_for(lambda: a.api.topology()["role"] == "ACTIVE", 5, what="A reports ACTIVE")
            assert b.api.topology()["role"] == "STANDBY"
            assert wait_for(lambda: lab.get(port), 5, what="traffic via ha_ip") == "amphora-a"

            # 3. restart: the agent detaches from keepalived (no failover) and adopts it again.
            wait_for(lambda: listener_pids(b.run_dir), 30, what="B's haproxy restarted by its supervisor")
            wait_for(lambda: b.api.topology()["role"] == "STANDBY", 10, what="B out of FAULT")
            pids = keepalived_pids(a.run_dir)
            a.stop()
            assert all(os.path.exists(f"/proc/{p}") for p in pids), "keepalived stopped with the agent"
            assert lab.holders() == ["a"] and lab.get(port) == "amphora-a"
            a.start()
            doc_a = a.api.wait_ok()
            assert doc_a["topology"] == "ACTIVE-STANDBY" and doc_a["role"] == "ACTIVE", doc_a
            assert "last_error" not in doc_a, doc_a
            assert keepalived_pids(a.run_dir) == pids  # adopted, not restarted
            # ... and a keepalived that died while the agent was down is started afresh.
            a.stop()
            kill_keepalived(a.run_dir)
            wait_for(lambda: b.api.topology()["role"] == "ACTIVE", 25, what="B takes over")
            a.start()
            doc_a = a.api.wait_ok()
            assert doc_a["topology"] == "ACTIVE-STANDBY" and doc_a["ha_ip"] == lab.ha_ip
            assert "last_error" not in doc_a, doc_a
            wait_for(lambda: a.api.topology()["role"] == "STANDBY", 10, what="A restored as STANDBY")
            assert keepalived_pids(a.run_dir) != pids
            wait_for(lambda: lab.holders() == ["b"], 10, what="the stale VIP gone from A")
            assert lab.get(port) == "amphora-b"

            # 4. back to SINGLE: keepalived stops and ha_ip goes away.
            code, _ = b.api.set({"topology": "SINGLE"})
            assert code == 202
            doc_b = b.api.wait_ok()
            assert doc_b["topology"] == "SINGLE" and doc_b["ha_ip"] == "" and doc_b["role"] == "ACTIVE"
            wait_for(lambda: lab.holders() == ["a"], 15, what="A takes over from a B gone SINGLE")

            # 5. an agent that died mid-transition restarts with the stored (SINGLE) topology:
            # the keepalived it left behind must not keep holding ha_ip for nobody.
            a.stop()
            state = os.path.join(a.root, "state", "topology.json")
            with open(state, "w") as f:
                json.dump({"topology": "SINGLE", "role": "ACTIVE", "ha_ip": ""}, f)
            a.start()
            assert a.api.wait_ok()["topology"] == "SINGLE"
            wait_for(lambda: lab.holders() == [], 10, what="the leftover keepalived stopped")
            assert not any(os.path.exists(f"/proc/{p}") for p in keepalived_pids(a.run_dir))
        finally:
            for amp in (a, b):
                amp.agent.kill() if amp.agent.proc is not None else None
                for pid in keepalived_pids(amp.run_dir):
                    _kill_if_keepalived(pid)
                kill_listeners(amp.run_dir)
        for amp in (a, b):
            assert SECRET not in amp.log(), "the VRRP secret leaked into the agent log"


def _kill_if_keepalived(pid):
    """SIGKILL pid if it is a keepalived (or the fake one: `sleep 600`), never a recycled pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if os.path.basename(argv[0]) == b"keepalived" or argv[:2] == [b"sleep", b"600"]:
            os.kill(pid, 9)
    except (OSError, ProcessLookupError):
        pass


# -- one in-process agent: validation, the gate, rollback --------------------------------------

@pytest.fixture
def netns():
    from tests.topology_support import PREFIX
    import secrets
    name = f"{PREFIX}{secrets.token_hex(3)}g"
    sh("ip", "netns", "add", name)
    try:
        # No dummy driver here: a veth pair with both ends inside the namespace.
        sh("ip", "-n", name, "link", "add", "eth1", "type", "veth", "peer", "name", "eth2")
        sh("ip", "-n", name, "addr", "add", "10.89.0.1/24", "dev", "eth1")
        sh("ip", "-n", name, "link", "set", "eth1", "up")
        sh("ip", "-n", name, "link", "set", "eth2", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def slow_keepalived(tmp_path):
    """A 'keepalived' that passes the configuration check and then never reports a state."""
    path = tmp_path / "fake-keepalived"
    path.write_text('#!/bin/sh\nprev=\nfor a; do\n  [ "$a" = -t ] && exit 0\n'
                    '  [ "$prev" = -p ] && echo $$ > "$a"\n  prev=$a\ndone\nexec sleep 600\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture(autouse=True)
def no_keepalived_left(tmp_path):
    """Whatever happens in a test, no keepalived (real or fake) of its agent outlives it."""
    yield
    run_dir = os.path.join(str(tmp_path), "agent", "run")
    for pid in keepalived_pids(run_dir):
        _kill_if_keepalived(pid)


@pytest.fixture
def agent_config_extra(netns, slow_keepalived, request):
    # The gate test needs a transition that lasts: a keepalived that never reports.
    binary = slow_keepalived if "_gate_" in request.node.name else "/usr/sbin/keepalived"
    return {"network": {"namespace": netns},
            "keepalived": {"binary": binary, "transition_timeout": "3", "advert_int": "1"}}


async def _post(client, url, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(url + "/v0.1/topology", data=data,
                                 headers={"content-type": ["application/json"]})
    return response.code, await response.json()


async def _get(client, url):
    response = await client.get(url + "/v0.1/topology")
    assert response.code == 200
    return await response.json()


async def _sleep(seconds):
    await deferLater(reactor, seconds, lambda: None)


BAD_BODIES = [
    ({"topology": "BAD_TEST_DATA"}, ["Unknown topology: BAD_TEST_DATA"]),
    ({"topology": "SINGLE", "role": "ACTIVE", "ha_ip": "10.0.0.1"},
     ["role: only applicable", "ha_ip: only applicable"]),
    ({"topology": "ACTIVE-STANDBY", "role": "LEADER", "ha_ip": "10.0.0.300", "peers": ["10.0.0.2", "x"],
      "virtual_router_id": 256, "priority": "high", "interface": "a/b", "extra": 1},
     ["Unknown role: LEADER", "ha_ip: not an IP address", "secret: required", "peers[1]",
      "virtual_router_id:", "priority:", "interface:", "Unknown field: extra"]),
    ({"topology": "ACTIVE-STANDBY", "role": "ACTIVE", "ha_ip": "10.0.0.5", "secret": "s",
      "peers": ["fe80::1"]}, ["peers[0]: IPv6 peer for an IPv4 ha_ip"]),
    # The address rule of plugging: before it, these two became keepalived's virtual address.
    ({"topology": "ACTIVE-STANDBY", "role": "ACTIVE", "ha_ip": "255.255.255.255", "secret": "s"},
     ["ha_ip: not usable as a virtual address: 255.255.255.255"]),
    ({"topology": "ACTIVE-STANDBY", "role": "ACTIVE", "ha_ip": "0.1.2.3", "secret": "s"},
     ["ha_ip: not usable as a virtual address: 0.1.2.3"]),
    (b"not json", ["body is not valid JSON"]),
    (b"[1, 2]", ["body must be a JSON object"]),
]


@pytest_twisted.ensureDeferred
async def test_validation_table(agent, client, url):
    for body, expected in BAD_BODIES:
        code, doc = await _post(client, url, body)
        assert code == 400, (body, doc)
        assert doc["message"] == "Invalid request"
        for text in expected:
            assert text in doc["details"], (text, doc)
    assert (await _get(client, url))["topology"] == "SINGLE"
    # SINGLE <-> ACTIVE-ACTIVE apply at once.
    assert await _post(client, url, {"topology": "ACTIVE-ACTIVE"}) == (200, {"message": "OK"})
    doc = await _get(client, url)
    assert doc["topology"] == "ACTIVE-ACTIVE" and doc["topology_status"] == "OK" and doc["role"] == "ACTIVE"
    assert await _post(client, url, {"topology": "ACTIVE-ACTIVE"}) == (200, {"message": "OK"})
    assert await _post(client, url, {"topology": "SINGLE"}) == (200, {"message": "OK"})
    assert agent.topology.active is True


@pytest.mark.parametrize("case", ["invalid config", "bad binary"])
@pytest_twisted.ensureDeferred
async def test_failing_transition_rolls_back(agent, client, url, case):
    body = {"topology": "ACTIVE-STANDBY", "role": "ACTIVE", "ha_ip": "10.89.0.100", "secret": SECRET}
    if case == "invalid config":
        # The interface does not exist in the namespace: `keepalived -t` (run inside it) refuses.
        body["interface"] = "nosuch0"
        expected = ["configuration check failed", "nosuch0"]
    else:
        agent.keepalived.binary = "/nonexistent/keepalived"
        expected = ["configuration check failed", "cannot run /nonexistent/keepalived"]
    code, _ = await _post(client, url, body)
    assert code == 202
    for _ in range(100):
        doc = await _get(client, url)
        if doc["topology_status"] == "OK":
            break
        await _sleep(0.05)
    assert doc["topology"] == "SINGLE" and doc["topology_status"] == "OK" and doc["ha_ip"] == ""
    for text in expected:
        assert text in doc["last_error"], doc
    assert not agent.keepalived.running


def _routes():
    """Every (method, path template) in the Klein routing table that can change something."""
    rules = []
    for rule in AgentAPI.app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) & MUTATING):
            rules.append((method, rule.rule))
    return rules


def _fill(template: str) -> str:
    # Any argument gets a canonical UUID: valid for ids, and a plausible name for the rest.
    return re.sub(r"<(?:[^:>]+:)?[^>]+>", "5ad2e0d7-8b0c-4b3c-9f0e-4f1b2f0d6a11", template)


# Files written by timers and threads on their own (caches, counters), not by requests.
BACKGROUND = {"packages.json", "heartbeat.json"}


def _snapshot(*roots):
    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if os.path.basename(dirpath) == "keepalived":
                continue
            for name in filenames:
                if name in BACKGROUND and dirpath == roots[0]:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                seen[path] = (st.st_size, st.st_mtime_ns)
    return seen


def test_the_route_table_has_mutating_routes():
    assert ("POST", "/v0.1/topology") in _routes()


@pytest_twisted.ensureDeferred
async def test_gate_on_every_mutating_route_then_rollback_on_timeout(agent, client, url):
    body = {"topology": "ACTIVE-STANDBY", "role": "STANDBY", "ha_ip": "10.89.0.100", "secret": SECRET}
    code, _ = await _post(client, url, body)
    assert code == 202
    doc = await _get(client, url)
    assert doc["topology_status"] == "TOPOLOGY-CHANGE" and doc["topology"] == "ACTIVE-STANDBY"
    cfg = agent.config.agent
    before = _snapshot(cfg.state_dir, cfg.run_dir, cfg.certs_dir)
    routes = _routes()
    gated = []
    for method, template in routes:
        response = await client.request(method, url + _fill(template), data=b'{"x": 1}',
                                        headers={"content-type": ["application/json"]})
        answer = await response.json()
        if ("<path:" in template and (response.code == 404 and str(answer.get("details", "")).startswith(
                "No route for") or response.code == 405)):
            # A catch-all that only says "no such route" (e.g. /listeners/<path:rest>) or "not
            # this method here" (PUT /listeners/<id>, issue 17) is not a mutating call: it
            # changes nothing, with or without the gate.
            continue
        assert response.code == 503, (method, template, answer)
        assert answer["message"] == "Topology transition in progress", (method, template)
        gated.append((method, template))
    assert ("POST", "/v0.1/topology") in gated
    # GETs keep working, and nothing changed on disk.
    assert (await client.get(url + "/info")).code == 200
    assert (await _get(client, url))["topology_status"] == "TOPOLOGY-CHANGE"
    assert _snapshot(cfg.state_dir, cfg.run_dir, cfg.certs_dir) == before
    # The fake keepalived never reports: after transition_timeout (3 s) it is rolled back.
    for _ in range(100):
        doc = await _get(client, url)
        if doc["topology_status"] == "OK":
            break
        await _sleep(0.1)
    assert doc["topology"] == "SINGLE" and doc["topology_status"] == "OK"
    assert "no VRRP state from keepalived within 3s" in doc["last_error"]
    assert not agent.keepalived.running
    assert await _post(client, url, {"topology": "ACTIVE-ACTIVE"}) == (200, {"message": "OK"})
