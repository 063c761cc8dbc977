"""A pytest plugin that validates EVERY agent response any test receives through
treq against its face's document: docs/openapi.yaml (``/info``, ``/v0.1/...``),
docs/openapi-1.0.yaml (``/``, ``//``, ``/1.0/...``), docs/openapi-0.5.yaml
together with the v0.1 operations under ``/0.5`` (``/0.5/...``).

Enable it for a run with ``pytest -p tests.openapi_plugin`` (or list it in
``pytest_plugins``). It wraps ``treq.client.HTTPClient.request``: when a
response comes from an agent route (``/info`` or ``/v0.1/...`` over https), its
body is read (treq buffers it, so the test still reads it afterwards) and
checked: the status code must be documented for that operation, the
Content-Type named, the body valid. Answers outside any operation (404 for an
unknown path, 405) must have the one error shape. A violation fails the test
that received the response, with the route, the code and what is wrong.

Responses that are not the agent's (haproxy frontends, backends) are left alone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import treq
from treq.client import HTTPClient

from tests.openapi_support import ContractViolation, _headers, check_error, contract, face_of

_violations: list[str] = []
_checked = {"responses": 0, "routes": set()}


def _is_agent_route(url: str) -> bool:
    parts = urlsplit(url if isinstance(url, str) else url.decode())
    # "/" is also what tests ask a TERMINATED_HTTPS listener for: discovery at "/" is
    # validated by the tests that call it (tests/octavia/test_faces.py); "//" is the agent's.
    return parts.scheme == "https" and parts.path != "/" and face_of(parts.path) is not None


async def _validate(method: str, url: str, response) -> None:
    body = await treq.content(response)
    headers = _headers(response)
    path = urlsplit(url).path
    face = face_of(path)
    _checked["responses"] += 1
    try:
        try:
            template, _ = contract(face).match(method, path)
        except ContractViolation:
            if response.code >= 400:
                check_error(response.code, headers, body, face)
            else:
                raise
            return
        _checked["routes"].add((face, method, template, response.code))
        contract(face).check(method, url, response.code, headers, body)
    except (ContractViolation, ValueError) as e:
        _violations.append(f"{method} {url}: {e}")


def pytest_configure(config):
    original = HTTPClient.request

    def request(self, method, url, **kwargs):
        d = original(self, method, url, **kwargs)
        if kwargs.get("unbuffered"):
            return d
        text_url = url if isinstance(url, str) else getattr(url, "to_text", lambda: url.decode())()
        method_text = method if isinstance(method, str) else method.decode()
        if not _is_agent_route(text_url):
            return d

        def check(response):
            from twisted.internet.defer import ensureDeferred

            return ensureDeferred(_validate(method_text.upper(), text_url, response)).addCallback(
                lambda _: response)

        return d.addCallback(check)

    HTTPClient.request = request


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    del _violations[:]
    outcome = yield
    if _violations and outcome.excinfo is None:
        found = list(_violations)
        del _violations[:]
        outcome.force_exception(ContractViolation(
            f"{len(found)} response(s) do not match their OpenAPI document:\n" + "\n".join(found[:10])))


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"openapi plugin: {_checked['responses']} agent responses validated against docs/openapi*.yaml "
        f"({len(_checked['routes'])} distinct operation/status pairs)")
