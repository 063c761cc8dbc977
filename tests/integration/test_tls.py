"""Real mutual TLS on a loopback ephemeral port, against an in-process agent."""

import json
import socket
import ssl

import pytest
import pytest_twisted
import treq as _treq  # noqa: F401 - the fixture's client is treq's HTTPClient
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from amphora import devpki
from amphora.client import make_client
from tests.helpers import expired_client


def _client_with(pki, tmp_path, issued, ca_path=None):
    cert = tmp_path / "c.pem"
    key = tmp_path / "k.pem"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    return make_client(reactor, ca_path or pki.paths["ca"], str(cert), str(key), server_name="localhost")


@pytest_twisted.ensureDeferred
async def test_info_with_valid_certificate(client, url, agent, pki):
    response = await client.get(url + "/info")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    body = json.loads(await response.content())
    assert body["uuid"] == pki.amphora_id
    assert body["api_version"] == "0.1"
    assert body["hostname"] == agent.facts.hostname
    assert body["haproxy_version"][0].isdigit()  # learned from the real haproxy -v


@pytest_twisted.ensureDeferred
async def test_topology_document(client, url, pki):
    response = await client.get(url + "/v0.1/topology")
    body = json.loads(await response.content())
    assert response.code == 200
    assert body["topology"] == "SINGLE" and body["uuid"] == pki.amphora_id


@pytest_twisted.ensureDeferred
async def test_no_client_certificate_is_401_json_on_every_route(url, pki):
    anonymous = make_client(reactor, pki.paths["ca"], server_name="localhost")
    try:
        for method, path in (("GET", "/info"), ("GET", "/v0.1/topology"), ("PUT", "/v0.1/nothing"),
                             ("DELETE", "/v0.1/listeners/x")):
            response = await anonymous.request(method, url + path)
            assert response.code == 401, path
            body = json.loads(await response.content())
            assert body["message"] == "Unauthorized" and body["details"]
    finally:
        await anonymous.pool.closeCachedConnections()


async def _refused(client, url):
    try:
        response = await client.get(url + "/info")
    except Exception as e:  # the handshake (or the first read after it, in TLS 1.3) fails
        return e
    finally:
        await client.pool.closeCachedConnections()
    raise AssertionError(f"request was answered with {response.code}")


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_is_refused(url, pki, tmp_path):
    stranger_ca = devpki.make_ca("stranger CA")
    stranger = devpki.issue(stranger_ca, "intruder", client=True)
    await _refused(_client_with(pki, tmp_path, stranger), url)


@pytest_twisted.ensureDeferred
async def test_expired_certificate_is_refused(url, pki, tmp_path):
    await _refused(_client_with(pki, tmp_path, expired_client(pki)), url)


def _stdlib_handshake(port, pki, version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.paths["ca"])
    ctx.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the *client* offer old versions
    ctx.minimum_version = version
    ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version()


@pytest_twisted.ensureDeferred
async def test_tls_1_1_is_refused_and_1_2_accepted(agent, pki):
    port = agent.api_port
    assert await deferToThread(_stdlib_handshake, port, pki, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        await deferToThread(_stdlib_handshake, port, pki, ssl.TLSVersion.TLSv1_1)


@pytest_twisted.ensureDeferred
async def test_unknown_route_and_wrong_method(client, url):
    response = await client.get(url + "/v0.1/no/such/thing")
    assert response.code == 404
    assert json.loads(await response.content())["message"] == "Not Found"
    response = await client.post(url + "/info")
    assert response.code == 405
    assert json.loads(await response.content())["message"] == "Method Not Allowed"


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_413_json(client, url, agent):
    response = await client.put(url + "/v0.1/anything", data=b"x" * (agent.site.max_body_bytes + 1))
    assert response.code == 413
    assert json.loads(await response.content())["message"] == "Payload Too Large"


@pytest_twisted.ensureDeferred
async def test_keep_alive_reuses_one_connection(client, url, agent):
    for _ in range(5):
        response = await client.get(url + "/info")
        await response.content()
    # Five requests, one TLS connection kept in the pool.
    assert sum(len(v) for v in client.pool._connections.values()) == 1


@pytest_twisted.ensureDeferred
async def test_non_utf8_path_is_json_400(client, url):
    for path in ("/v0.1/listeners/%FF", "/v0.1/listeners/%FF/haproxy", "/%C3%28"):
        response = await client.get(url + path)
        assert response.code == 400, path
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        assert json.loads(await response.content())["message"] == "Invalid request"
