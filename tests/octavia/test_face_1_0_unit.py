"""The 1.0 route tree over a fake haproxy registry (the API the domain provides):
status codes, bodies, ETags and what reaches the domain. Responses go through the
OpenAPI plugin like every other agent answer."""

from __future__ import annotations

import hashlib
import json
import types
import uuid

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.defer import fail, succeed
from twisted.web.resource import Resource

from amphora.api.faces.report import HostReport
from amphora.api.faces.v1_0 import Face1_0
from amphora.certfiles import CertificateFiles
from amphora.errors import InvalidRequest, NotFound

AMPHORA = str(uuid.uuid4())
LB = str(uuid.uuid4())
BASE = "https://amphora"


class FakeRegistry:
    def __init__(self):
        self.configs: dict[str, bytes] = {}
        self.calls: list[tuple] = []

    def upload_loadbalancer(self, lb_id, amphora_id, body):
        self.calls.append(("upload", lb_id, amphora_id))
        if b"bad" in body:
            return fail(InvalidRequest("[ALERT] parsing error", message="Invalid request"))
        self.configs[lb_id] = body
        return succeed(None)

    def loadbalancer_action(self, lb_id, action):
        self.calls.append(("action", lb_id, action))
        if action.lower() not in ("start", "stop", "reload"):
            return fail(InvalidRequest(f"Unknown action: {action}", message="Invalid Request"))
        if lb_id not in self.configs:
            return fail(NotFound(f"No loadbalancer with UUID: {lb_id}", message="Loadbalancer Not Found"))
        return succeed(f"Listener {lb_id} {action.lower()}ed")

    def delete(self, lb_id):
        self.calls.append(("delete", lb_id))
        self.configs.pop(lb_id, None)
        return succeed("deleted")

    def get_config(self, lb_id):
        return self.configs[lb_id]

    def kind(self, lb_id):
        return "loadbalancer" if lb_id in self.configs else None

    def frontends(self):
        return [{"status": "ACTIVE", "uuid": f"{n}-{lb}", "type": "HTTP"} for lb in self.configs for n in (1, 2)]

    def running_count(self):
        return len(self.configs)


class FakePlugger:
    def __init__(self):
        self.specs = []

    def plug_vip(self, vip, spec):
        self.specs.append((vip, spec))
        return succeed(f"VIP {vip} plugged on interface eth1")

    def plug_network(self, spec):
        self.specs.append((None, spec))
        return succeed("Plugged on interface eth2")


class Gate:
    topology, status = "SINGLE", "OK"

    def check_gate(self):
        pass


@pytest.fixture
def registry():
    return FakeRegistry()


@pytest.fixture
def face(registry, tmp_path):
    sampler = types.SimpleNamespace(
        cpu={"total": 1.0, "user": 0.5, "system": 0.5, "soft_irq": 0.0},
        memory={"total": 1000, "free": 500, "buffers": 10, "cached": 100, "swap_used": 0, "shared": 1,
                "slab": 2, "available": 600},
        disk={"used": 1, "available": 2}, load=[0.1, 0.2, 0.3],
        host_window=types.SimpleNamespace(samples=[(1.0, {"lo": (1, 10, 20)})]),
        namespace_window=types.SimpleNamespace(samples=[]),
        packages=types.SimpleNamespace(versions={"haproxy": "2.6.12-1+deb12u4", "keepalived": "1:2.2.7-1"}))
    facts = types.SimpleNamespace(hostname="amp", haproxy_version="2.6.12-1+deb12u4", amphora_id=AMPHORA)
    report = HostReport(facts, sampler, Gate(), registry, tuned_profile_path=str(tmp_path / "none"))
    return Face1_0(registry=registry, certificates=CertificateFiles(str(tmp_path / "certs")), report=report,
                   gate=Gate(), amphora_id=AMPHORA, max_config_bytes=1000, plugger=FakePlugger())


@pytest.fixture
def http(face):
    root = Resource()
    root.putChild(b"1.0", face.app.resource())
    return StubTreq(root)


async def call(http, method, path, data=None):
    response = await http.request(method, BASE + path, data=data)
    body = await response.content()
    ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    return response, (json.loads(body) if ctype == b"application/json" else body)


@pytest_twisted.ensureDeferred
async def test_upload_then_reload_start_get_and_delete(http, registry):
    config = b"# Configuration for loadbalancer\nglobal\n"
    response, body = await call(http, "PUT", f"/1.0/loadbalancer/{AMPHORA}/{LB}/haproxy", config)
    assert (response.code, body) == (202, {"message": "OK"})
    assert response.headers.getRawHeaders(b"etag") == [hashlib.md5(config).hexdigest().encode()]
    assert registry.calls == [("upload", LB, AMPHORA)]
    for action in ("reload", "START", "stop"):
        response, body = await call(http, "PUT", f"/1.0/loadbalancer/{LB}/{action}")
        assert response.code == 202 and body["message"] == "OK" and LB in body["details"]
    response, body = await call(http, "GET", f"/1.0/loadbalancer/{LB}/haproxy")
    assert (response.code, body) == (200, config)
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain"]
    assert response.headers.getRawHeaders(b"etag") == [hashlib.md5(config).hexdigest().encode()]
    response, body = await call(http, "GET", "/1.0/listeners")
    assert [entry["uuid"] for entry in body] == [f"1-{LB}", f"2-{LB}"]
    response, body = await call(http, "GET", "/1.0/details")
    assert body["listeners"] == [f"1-{LB}", f"2-{LB}"] and body["haproxy_count"] == 1
    assert body["memory"] == {"total": 1000, "free": 500, "buffers": 10, "cached": 100, "swap_used": 0,
                              "shared": 1, "slab": 2}
    assert body["disk"] == {"used": 1024, "available": 2048}
    assert body["networks"] == {"lo": {"network_tx": 10, "network_rx": 20}}
    assert body["load"] == ["0.1", "0.2", "0.3"] and body["active_tuned_profiles"] == ""
    assert body["keepalived_version"] == "1:2.2.7-1" and body["ipvsadm_version"] is None
    response, body = await call(http, "DELETE", f"/1.0/listeners/{LB}")
    assert (response.code, body) == (200, {"message": "OK"})
    assert registry.calls[-1] == ("delete", LB)


@pytest_twisted.ensureDeferred
async def test_errors_keep_the_domain_s_words(http, registry):
    response, body = await call(http, "PUT", f"/1.0/loadbalancer/{AMPHORA}/{LB}/haproxy", b"bad")
    assert response.code == 400 and body == {"message": "Invalid request", "details": "[ALERT] parsing error"}
    response, body = await call(http, "PUT", f"/1.0/loadbalancer/{LB}/restart")
    assert response.code == 400 and body["details"] == "Unknown action: restart"
    response, body = await call(http, "PUT", f"/1.0/loadbalancer/{LB}/reload")
    assert response.code == 404 and body["message"] == "Loadbalancer Not Found"
    response, body = await call(http, "GET", f"/1.0/loadbalancer/{LB}/haproxy")
    assert response.code == 404 and body["message"] == "Loadbalancer Not Found"
    response, body = await call(http, "PUT", f"/1.0/loadbalancer/{AMPHORA}/{LB}/haproxy", b"x" * 1001)
    assert response.code == 413


@pytest_twisted.ensureDeferred
async def test_unknown_delete_is_200_without_touching_the_domain(http, registry):
    response, body = await call(http, "DELETE", f"/1.0/listeners/{uuid.uuid4()}")
    assert (response.code, body) == (200, {"message": "OK"})
    assert registry.calls == []


@pytest_twisted.ensureDeferred
async def test_upload_for_another_amphora_is_refused(http, registry):
    other = str(uuid.uuid4())
    response, body = await call(http, "PUT", f"/1.0/loadbalancer/{other}/{LB}/haproxy", b"global\n")
    assert response.code == 400 and other in body["details"]
    assert registry.calls == []


@pytest_twisted.ensureDeferred
async def test_bad_ids_are_400(http, registry):
    for method, path in (("PUT", "/1.0/loadbalancer/x/reload"), ("DELETE", "/1.0/listeners/.."),
                         ("GET", "/1.0/loadbalancer/NOT-A-UUID/haproxy")):
        response, body = await call(http, method, path)
        assert response.code == 400, path
    assert registry.calls == []


@pytest_twisted.ensureDeferred
async def test_plug_routes_take_octavia_bodies(http, face):
    body = {"subnet_cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "mac_address": "fa:16:3e:00:00:01",
            "vrrp_ip": "203.0.113.5", "mtu": 1500, "host_routes": [], "additional_vips": [], "is_sriov": False}
    response = await http.post(BASE + "/1.0/plug/vip/203.0.113.10", data=json.dumps(body).encode(),
                                headers={b"content-type": [b"application/json"]})
    assert response.code == 202 and (await response.json())["message"] == "OK"
    assert face.plugger.specs[0][0] == "203.0.113.10"
    response = await http.post(BASE + "/1.0/plug/vip/203.0.113.10", data=b"{}")
    assert response.code == 400 and (await response.json())["message"] == "Invalid subnet information"
    port = {"mac_address": "fa:16:3e:00:00:02", "fixed_ips": [
        {"ip_address": "198.51.100.5", "subnet_cidr": "198.51.100.0/24", "host_routes": [], "gateway": None}],
        "mtu": 1500, "is_sriov": False}
    response = await http.post(BASE + "/1.0/plug/network", data=json.dumps(port).encode())
    assert response.code == 202 and len(face.plugger.specs) == 2
