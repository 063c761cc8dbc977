"""The response-validating plugin (tests/openapi_plugin.py, on by default via addopts)."""

import pytest
import pytest_twisted
from twisted.web.http_headers import Headers

from tests import openapi_plugin


@pytest.mark.parametrize("url,agent", [
    ("https://127.0.0.1:9443/info", True),
    ("https://localhost:1/v0.1/listeners", True),
    ("http://127.0.0.1:8080/v0.1/listeners", False),   # plain HTTP: a haproxy frontend
    ("https://127.0.0.1:8443/", False),                 # a TERMINATED_HTTPS listener
    ("https://127.0.0.1:8443/information", False),
])
def test_agent_routes_are_recognised(url, agent):
    assert openapi_plugin._is_agent_route(url) is agent


class FakeResponse:
    def __init__(self, code, ctype, body):
        self.code = code
        self.headers = Headers({"content-type": [ctype]})
        self._body = body
        self.length = len(body)

    def deliverBody(self, protocol):
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


@pytest.mark.parametrize("method,url,code,ctype,body,bad", [
    ("GET", "https://h/info", 200, "application/json",
     b'{"hostname":"h","uuid":"6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce","haproxy_version":"2.6",'
     b'"api_version":"0.1"}', False),
    ("GET", "https://h/info", 200, "application/json", b'{"hostname":"h"}', True),
    ("GET", "https://h/info", 418, "application/json", b'{"message":"teapot"}', True),
    ("GET", "https://h/v0.1/nowhere", 404, "application/json", b'{"message":"Not Found"}', False),
    ("GET", "https://h/v0.1/nowhere", 404, "text/html", b"<html>", True),
    ("GET", "https://h/v0.1/nowhere", 200, "application/json", b"{}", True),
])
@pytest_twisted.ensureDeferred
async def test_violations_are_recorded(method, url, code, ctype, body, bad):
    del openapi_plugin._violations[:]
    await openapi_plugin._validate(method, url, FakeResponse(code, ctype, body))
    assert bool(openapi_plugin._violations) is bad, openapi_plugin._violations
    del openapi_plugin._violations[:]
