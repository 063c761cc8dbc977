"""Every route's real answers, success and error, validated against docs/openapi.yaml.

One agent, real haproxy; each request goes through ``tests.openapi_support.call``,
which fails when the status code is not documented for that operation, the
Content-Type is not one the document names, or the body does not match the
schema.
"""

import hashlib
import signal
import uuid

import psutil
import pytest
import pytest_twisted

from amphora import devpki
from tests.helpers import free_port
from tests.openapi_support import call

V = "/v0.1"


def kill_haproxy_of(root: str) -> None:
    for proc in psutil.process_iter(["cmdline"]):
        if any(root in part for part in proc.info["cmdline"] or ()):
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass


@pytest.fixture
def agent_config_extra():
    return {"haproxy": {"max_config_bytes": "4096"}}


def config(lid: str) -> bytes:
    pool, member = uuid.uuid4(), uuid.uuid4()
    return f"""global
    maxconn 100
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend {lid}
    bind 127.0.0.1:{free_port()}
    default_backend {pool}
backend {pool}
    server {member} 127.0.0.1:{free_port()}
""".encode()


@pytest_twisted.ensureDeferred
async def test_listener_routes_match_the_contract(agent, client, url, tmp_path):
    lid = str(uuid.uuid4())
    base = f"{url}{V}/listeners/{lid}"
    try:
        code, listed = await call(client, "GET", url + V + "/listeners")
        assert code == 200 and listed == []
        assert (await call(client, "GET", base))[0] == 404
        assert (await call(client, "GET", f"{url}{V}/listeners/not-a-uuid"))[0] == 400
        assert (await call(client, "GET", base + "/haproxy"))[0] == 404
        assert (await call(client, "DELETE", base))[0] == 404
        assert (await call(client, "PUT", base + "/start"))[0] == 404

        assert (await call(client, "PUT", base + "/haproxy", data=b"global\n  bogus_amp9\n"))[0] == 400
        assert (await call(client, "PUT", base + "/haproxy", data=b"#" * 5000))[0] == 413
        code, body = await call(client, "PUT", base + "/haproxy", data=config(lid))
        assert code == 201, body
        code, text = await call(client, "GET", base + "/haproxy")
        assert code == 200 and text.startswith("global")
        assert (await call(client, "PUT", base + "/BAD_TEST_DATA"))[0] == 400
        for action in ("start", "reload"):
            code, body = await call(client, "PUT", f"{base}/{action}")
            assert code == 202, body
        code, doc = await call(client, "GET", base)
        assert code == 200 and doc["status"] == "ACTIVE" and doc["type"] == "TCP"
        code, listed = await call(client, "GET", url + V + "/listeners")
        assert code == 200 and [item["uuid"] for item in listed] == [lid]
        code, details = await call(client, "GET", url + V + "/details")
        assert code == 200 and details["haproxy_count"] == 1
        assert (await call(client, "GET", base + "/logs", params={"lines": "5"}))[0] == 200
        assert (await call(client, "GET", base + "/logs", params={"lines": "1001"}))[0] == 400
        code, body = await call(client, "PUT", f"{base}/stop")
        assert code == 202, body
        assert (await call(client, "GET", base))[1]["status"] == "STOPPED"
        assert (await call(client, "DELETE", base))[0] == 200
        assert (await call(client, "GET", base + "/logs"))[0] == 404
    finally:
        try:
            await client.delete(base)
        finally:
            kill_haproxy_of(str(tmp_path))


@pytest_twisted.ensureDeferred
async def test_certificate_routes_match_the_contract(agent, client, url, pki):
    lid = str(uuid.uuid4())
    base = f"{url}{V}/listeners/{lid}/certificates"
    leaf = devpki.issue(pki.ca, "www.example.com", server=True, dns=("www.example.com",))
    pem = leaf.key_pem + leaf.cert_pem
    cert = f"{base}/www.example.com.pem"
    assert (await call(client, "GET", cert))[0] == 404
    code, _ = await call(client, "PUT", cert, data=pem)
    assert code == 201
    code, doc = await call(client, "GET", cert)
    assert code == 200 and doc["md5sum"] == hashlib.md5(pem).hexdigest()
    assert (await call(client, "PUT", cert, data=leaf.cert_pem))[0] == 400      # no key
    assert (await call(client, "PUT", cert, data=b"x" * 70000))[0] == 413
    assert (await call(client, "PUT", f"{base}/bad%2Fname.pem", data=pem))[0] == 400
    assert (await call(client, "PUT", f"{url}{V}/listeners/nope/certificates/a.pem", data=pem))[0] == 400
    assert (await call(client, "GET", f"{base}/other.pem"))[0] == 404
    assert (await call(client, "DELETE", cert))[0] == 200
    assert (await call(client, "DELETE", cert))[0] == 404


@pytest_twisted.ensureDeferred
async def test_plug_routes_refusals_match_the_contract(agent, client, url):
    """Refusals that come before any netlink change (the happy paths are in test_ctl_plug)."""
    assert (await call(client, "POST", url + V + "/plug/vip/not-an-ip"))[0] == 400
    assert (await call(client, "POST", url + V + "/plug/vip/not-an-ip/"))[0] == 400
    assert (await call(client, "POST", url + V + "/plug/network", json={"mtu": 0}))[0] == 400
    assert (await call(client, "POST", url + V + "/plug/network/", json={"mtu": 0}))[0] == 400
    code, _ = await call(client, "POST", url + V + "/plug/vip/203.0.113.2",
                         json={"mac_address": "fa:16:3e:00:79:99"})
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_topology_post_matches_the_contract(agent, client, url):
    code, _ = await call(client, "POST", url + V + "/topology", json={"topology": "SINGLE"})
    assert code == 200
    code, body = await call(client, "POST", url + V + "/topology", json={"topology": "BAD_TEST_DATA"})
    assert code == 400 and "BAD_TEST_DATA" in body["details"]
    code, body = await call(client, "POST", url + V + "/topology", data=b"not json")
    assert code == 400


@pytest_twisted.ensureDeferred
async def test_the_topology_gate_matches_the_contract(agent, client, url):
    """503 on every mutating route while a transition is in progress, each one documented."""
    from amphora.topology import STATUS_CHANGE, STATUS_OK

    lid = str(uuid.uuid4())
    agent.topology.status = STATUS_CHANGE
    try:
        for method, path in (("POST", "/topology"), ("PUT", f"/listeners/{lid}/haproxy"),
                             ("PUT", f"/listeners/{lid}/start"), ("DELETE", f"/listeners/{lid}"),
                             ("PUT", f"/listeners/{lid}/certificates/a.pem"),
                             ("DELETE", f"/listeners/{lid}/certificates/a.pem"),
                             ("POST", "/plug/vip/203.0.113.2"), ("POST", "/plug/network")):
            kwargs = {"json": {"topology": "SINGLE"}} if path == "/topology" else {"data": b"x"}
            code, body = await call(client, method, url + V + path, **kwargs)
            assert code == 503, (method, path, body)
            assert body["message"] == "Topology transition in progress"
        code, doc = await call(client, "GET", url + V + "/topology")
        assert code == 200 and doc["topology_status"] == "TOPOLOGY-CHANGE"
    finally:
        agent.topology.status = STATUS_OK
