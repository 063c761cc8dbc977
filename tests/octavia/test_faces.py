"""The Octavia faces over real mutual TLS against an in-process agent: discovery,
JSON 404s, host documents, the plain certificate store, the 0.5 routes.
(Load-balancer life cycles with Octavia's own client: tests/octavia/test_acceptance_*.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.test_certificates_api import raw_request
from tests.openapi_support import contract

LB = str(uuid.uuid4())


async def call(client, method, url, data=None):
    response = await client.request(method, url, data=data)
    body = await response.content()
    ctype = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return response, (json.loads(body) if ctype.startswith(b"application/json") and body else body)


@pytest_twisted.ensureDeferred
async def test_discovery_answers_on_slash_and_double_slash(agent, pki):
    for target in (b"/", b"//"):
        code, headers, body = await deferToThread(raw_request, pki, agent.api_port, "GET", target)
        assert code == 200, (target, body)
        assert json.loads(body) == {"api_version": "1.0"}
        contract("1.0").check("GET", "https://localhost" + target.decode(), code, {k.lower(): v for k, v in headers.items()}, body)


@pytest_twisted.ensureDeferred
async def test_unknown_routes_are_json_404(client, url):
    for path in ("/1.0/nothing", "/1.0/loadbalancer", "/1.0", "/0.5/nothing", "/1.0/listeners/x/y/z"):
        response, body = await call(client, "GET", url + path)
        assert response.code == 404, path
        assert set(body) == {"message", "details"}, (path, body)


@pytest_twisted.ensureDeferred
async def test_info_1_0(client, url, agent):
    response, body = await call(client, "GET", url + "/1.0/info")
    assert response.code == 200
    assert body["api_version"] == "1.0"
    assert body["hostname"] == agent.facts.hostname
    major, minor = body["haproxy_version"].split(".")[:2]
    assert int(major) >= 1 and minor.isdigit()
    assert set(body) == {"hostname", "haproxy_version", "api_version", "keepalived_version",
                         "ipvsadm_version"}


@pytest_twisted.ensureDeferred
async def test_info_aliases(client, url):
    plain = (await call(client, "GET", url + "/info"))[1]
    alias = (await call(client, "GET", url + "/v0.1/info"))[1]
    assert alias == plain
    response, body = await call(client, "GET", url + "/0.5/info")
    assert response.code == 200 and body["api_version"] == "0.5"


@pytest_twisted.ensureDeferred
async def test_0_5_serves_the_v0_1_routes(client, url):
    response, body = await call(client, "GET", url + "/0.5/listeners")
    assert response.code == 200 and body == []
    response, body = await call(client, "GET", url + "/0.5/details")
    assert response.code == 200 and "haproxy_count" in body
    response, body = await call(client, "GET", url + f"/0.5/listeners/{LB}")
    assert response.code == 404 and body["message"] == "Listener Not Found"


@pytest.mark.parametrize("path", ["/0.5/listeners/{other}/{id}/haproxy", "/1.0/loadbalancer/{other}/{id}/haproxy"])
@pytest_twisted.ensureDeferred
async def test_uploads_name_this_amphora(client, url, path):
    other = str(uuid.uuid4())
    response, body = await call(client, "PUT", url + path.format(other=other, id=LB), b"global\n")
    assert response.code == 400
    assert other in body["details"]


@pytest_twisted.ensureDeferred
async def test_certificate_store_keeps_any_content(client, url, agent):
    root = agent.config.octavia.cert_dir
    crt_list = f"{root}/{LB}/abc.pem\n".encode()
    for name, data in (("0123abcd.pem", b"-----BEGIN X509 CRL-----\nnot checked\n-----END X509 CRL-----\n"),
                       (f"{uuid.uuid4()}.pem", crt_list)):
        cert = f"{url}/1.0/loadbalancer/{LB}/certificates/{name}"
        response, body = await call(client, "GET", cert)
        assert response.code == 404 and body["message"] == "Certificate Not Found"
        assert name in body["details"]
        response, body = await call(client, "PUT", cert, data)
        md5 = hashlib.md5(data).hexdigest()
        assert response.code == 200 and body == {"message": "OK"}
        assert response.headers.getRawHeaders(b"etag") == [md5.encode()]
        path = os.path.join(root, LB, name)
        with open(path, "rb") as f:
            assert f.read() == data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        response, body = await call(client, "GET", cert)
        assert response.code == 200 and body == {"md5sum": md5}
        for _ in range(2):  # absent the second time: still 200
            response, body = await call(client, "DELETE", cert)
            assert response.code == 200 and body == {"message": "OK"}
        assert not os.path.exists(path)


@pytest_twisted.ensureDeferred
async def test_certificate_names_that_could_escape_are_refused(client, url, agent, pki):
    for name in ("test.bla", "..pem", ".hidden.pem", "a%2F..%2F..%2Fx.pem", "a/b.pem", "%2e%2e"):
        response, body = await call(client, "PUT", f"{url}/1.0/loadbalancer/{LB}/certificates/{name}", b"x")
        assert response.code in (400, 404), name
        if response.code == 400:
            assert body["message"] in ("Filename has wrong format", "Invalid request"), (name, body)
    code, _, body = await deferToThread(raw_request, pki, agent.api_port, "PUT",
                                        f"/1.0/loadbalancer/{LB}/certificates/../../x.pem".encode(), b"x")
    assert code in (400, 404)
    response, body = await call(client, "PUT", f"{url}/1.0/loadbalancer/not-a-uuid/certificates/a.pem", b"x")
    assert response.code == 400
    assert not os.path.exists(os.path.join(os.path.dirname(agent.config.octavia.cert_dir), "x.pem"))


@pytest_twisted.ensureDeferred
async def test_delete_unknown_load_balancer_is_200(client, url):
    response, body = await call(client, "DELETE", f"{url}/1.0/listeners/{uuid.uuid4()}")
    assert response.code == 200 and body == {"message": "OK"}


@pytest_twisted.ensureDeferred
async def test_details_and_listeners_1_0(client, url):
    response, body = await call(client, "GET", url + "/1.0/details")
    assert response.code == 200 and body["api_version"] == "1.0" and body["listeners"] == []
    response, body = await call(client, "GET", url + "/1.0/listeners")
    assert response.code == 200 and body == []


@pytest_twisted.ensureDeferred
async def test_configuration_uploads_get_the_configuration_cap(client, url, pki):
    """A 1.0 or 0.5 configuration is as large as a v0.1 one may be (not the 64 kB JSON cap):
    haproxy -c sees it (400 with its output), the front door does not refuse it (413)."""
    body = b"global\n" + b"# padding\n" * 20000 + b"not a keyword\n"
    lid = str(uuid.uuid4())
    for path in (f"/1.0/loadbalancer/{pki.amphora_id}/{LB}/haproxy", f"/0.5/listeners/{pki.amphora_id}/{lid}/haproxy",
                 f"/0.5/listeners/{lid}/haproxy"):
        response, answer = await call(client, "PUT", url + path, body)
        assert response.code == 400, (path, answer)
        assert "ALERT" in json.dumps(answer), path  # haproxy -c's words, not the front door's 413
