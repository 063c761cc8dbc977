"""Real responses of a real agent (mutual TLS on loopback) validated against docs/openapi.yaml."""

import pytest_twisted
from twisted.internet import reactor

from amphora.client import make_client
from tests.openapi_support import call, checked, checked_error, load_document


@pytest_twisted.ensureDeferred
async def test_info_matches_the_contract(agent, client, url, pki):
    code, body = await call(client, "GET", url + "/info")
    assert code == 200
    assert body["uuid"] == pki.amphora_id and body["api_version"] == "0.1"


@pytest_twisted.ensureDeferred
async def test_topology_matches_the_contract(agent, client, url, pki):
    code, body = await call(client, "GET", url + "/v0.1/topology")
    assert code == 200
    assert body["uuid"] == pki.amphora_id
    assert body["topology"] in ("SINGLE", "ACTIVE-STANDBY", "ACTIVE-ACTIVE")


@pytest_twisted.ensureDeferred
async def test_openapi_json_is_served_and_is_the_document(agent, client, url):
    response = await client.get(url + "/v0.1/openapi.json")
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    served = await checked(response, "GET", url + "/v0.1/openapi.json")
    assert served == load_document()


@pytest_twisted.ensureDeferred
async def test_openapi_json_needs_a_client_certificate(agent, url, pki):
    anonymous = make_client(reactor, pki.paths["ca"], server_name="localhost")
    try:
        response = await anonymous.get(url + "/v0.1/openapi.json")
        assert response.code == 401
        body = await checked(response, "GET", url + "/v0.1/openapi.json")
        assert body["message"] == "Unauthorized"
        response = await anonymous.get(url + "/info")
        assert (await checked(response, "GET", url + "/info"))["message"] == "Unauthorized"
    finally:
        await anonymous.pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_errors_outside_operations_have_the_one_error_shape(agent, client, url):
    response = await client.get(url + "/v0.1/no-such-route")
    assert response.code == 404
    assert "no-such-route" in (await checked_error(response))["details"]
    response = await client.delete(url + "/info")
    assert response.code == 405
    assert (await checked_error(response))["message"] == "Method Not Allowed"


@pytest_twisted.ensureDeferred
async def test_details_matches_the_contract(agent, client, url, pki):
    code, body = await call(client, "GET", url + "/v0.1/details")
    assert code == 200
    assert body["uuid"] == pki.amphora_id and isinstance(body["active"], bool)
