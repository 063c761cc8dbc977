"""Property-based contract test: docs/openapi.yaml says what the agent really accepts.

Requests are generated from the document's own request schemas (Hypothesis with
our strategies from tests/schema_strategies.py, derandomized: the same examples
on every run, a few seconds in all) and sent
through the real Klein routes and the real validation (``json_body``,
``amphora.api.requests``: ``parse_topology``, ``parse_vip_body``, ``parse_network_body``); only
the effects (keepalived, netlink) are fakes, so nothing on the machine changes.

For each operation with a JSON body:

- a body the document accepts gets an answer the document lists for that
  operation, in its shape, and never a 500; where the document's schema is the
  whole rule (a topology other than ACTIVE-STANDBY, plug/network without
  fixed_ips) it is accepted;
- a body the document refuses (one field replaced by an arbitrary JSON value,
  or an unknown field where ``additionalProperties: false``) is answered 400.

Together: the schemas are neither looser nor stricter than the agent where
they can be exact, and every answer is documented.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq

from amphora.api.app import AgentAPI
from amphora.testing import FakeListeners, FakeNetwork
from amphora.topology import Outcome
from tests.openapi_support import contract, load_document
from tests.schema_strategies import strategy

# A fixed seed and a bounded count keep `make test` short and repeatable; a longer
# exploration: AMPHORA_PROPERTY_EXAMPLES=2000 .venv/bin/pytest tests/unit/test_openapi_properties.py
SETTINGS = settings(derandomize=True, max_examples=int(os.environ.get("AMPHORA_PROPERTY_EXAMPLES", 100)),
                    deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


class _Topology:
    def check_gate(self):
        pass

    def request(self, spec):
        # The route validated the body (parse_topology); the transition itself is not this test's.
        return Outcome.APPLIED


class _NoControllerVRRP:
    """No controller drives keepalived: /v0.1/topology is the topology's own."""

    def check_v0_1(self):
        pass

    def topology_document(self):
        return None


_STUB = StubTreq(AgentAPI(facts=None, topology=_Topology(), listeners=FakeListeners(), certificates=None,
                          network=FakeNetwork(), logs=None, sampler=None, max_config_bytes=0,
                          faces=lambda v0_1: {}, vrrp=_NoControllerVRRP()).app.resource())


def call(method: str, path: str, body) -> tuple[int, object]:
    """One request through the real routes; the answer is checked against the document."""
    results = []
    d = _STUB.request(method, "http://agent" + path, data=json.dumps(body).encode(),
                      headers={b"content-type": [b"application/json"]})
    d.addCallback(lambda response: _STUB.content(response).addCallback(
        lambda data: results.append((response.code, response.headers, data))))
    d.addErrback(results.append)
    _STUB.flush()
    assert len(results) == 1 and isinstance(results[0], tuple), results
    code, headers, data = results[0]
    flat = {k.decode().lower(): v[-1].decode() for k, v in headers.getAllRawHeaders()}
    value = contract().check(method, path, code, flat, data)  # documented status, content type and shape
    assert code != 500, (path, body, value)
    return code, value


def from_schema(name: str) -> st.SearchStrategy:
    """Bodies the document's schema ``name`` accepts (checked with the real validator)."""
    return strategy(load_document(), {"$ref": f"#/components/schemas/{name}"}).filter(
        lambda body: _valid(name, body))


def _valid(name: str, body) -> bool:
    return not list(contract().validator(f"/components/schemas/{name}").iter_errors(body))


def _properties(name: str) -> list[str]:
    return sorted(load_document()["components"]["schemas"][name]["properties"])


# Values a client might put anywhere: JSON of every type, and strings shaped like
# what the fields hold (addresses, CIDRs, netmasks, names) to probe the patterns.
_TRICKY = st.sampled_from([
    "", " ", [], {}, None, True, 0, -1, 67, 68, 1279, 1280, 65536, 1.5, "ACTIVE", "STANDBY", "SINGLE",
    "10.0.0.0/255.255.255.0", "10.0.0.1/33", "::3:1", "::/96", "fe80::1%eth0", "1.2.3.4%x",
    "eth0", "a" * 16, "eth0/1", "-eth0", "203.0.113.0/24", "2001:db8::/64", "fa:16:3e:00:00:01",
    "FA:16:3E:00:00:01", "fa-16-3e-00-00-01", " 203.0.113.2", "203.0.113.2 ", "x" * 1025,
])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 33, 2 ** 33) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.from_regex(r"[0-9a-fA-F:./%-]{0,20}", fullmatch=True) | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _mutated(name: str):
    """A document-valid body with one declared field replaced by an arbitrary JSON value."""
    return st.tuples(from_schema(name), st.sampled_from(_properties(name)), _JSON).map(
        lambda t: {**t[0], t[1]: t[2]})


# -- POST /v0.1/topology -----------------------------------------------------------------


@SETTINGS
@given(body=from_schema("TopologyRequest"))
def test_topology_bodies_the_document_accepts(body):
    code, _ = call("POST", "/v0.1/topology", body)
    if body["topology"] != "ACTIVE-STANDBY":
        assert code == 200, body  # nothing beyond the schema applies: it must be accepted


@SETTINGS
@given(body=_mutated("TopologyRequest"))
def test_topology_bodies_the_document_refuses_are_400(body):
    code, value = call("POST", "/v0.1/topology", body)
    if not _valid("TopologyRequest", body):
        assert code == 400, (body, value)


@SETTINGS
@given(body=from_schema("TopologyRequest"),
       unknown=st.text(min_size=1, max_size=10).filter(lambda k: k not in _properties("TopologyRequest")))
def test_topology_unknown_fields_are_400(body, unknown):
    assert load_document()["components"]["schemas"]["TopologyRequest"]["additionalProperties"] is False
    code, value = call("POST", "/v0.1/topology", {**body, unknown: 1})
    assert code == 400 and f"Unknown field: {unknown}" in value["details"], value


# -- POST /v0.1/plug/network ---------------------------------------------------------------


@SETTINGS
@given(body=from_schema("PlugNetworkRequest"))
def test_plug_network_bodies_the_document_accepts(body):
    code, _ = call("POST", "/v0.1/plug/network", body)
    if not body.get("fixed_ips"):
        assert code == 202, body  # mac_address and mtu alone: the schema is the whole rule


@SETTINGS
@given(body=_mutated("PlugNetworkRequest"))
def test_plug_network_bodies_the_document_refuses_are_400(body):
    code, value = call("POST", "/v0.1/plug/network/", body)
    if not _valid("PlugNetworkRequest", body):
        assert code == 400, (body, value)


# -- POST /v0.1/plug/vip/{ip} --------------------------------------------------------------


@SETTINGS
@given(ip=st.sampled_from(["203.0.113.9", "2001:db8::9"]), body=from_schema("PlugVipRequest"))
def test_plug_vip_bodies_the_document_accepts(ip, body):
    call("POST", f"/v0.1/plug/vip/{ip}", body)


@SETTINGS
@given(body=_mutated("PlugVipRequest"))
def test_plug_vip_bodies_the_document_refuses_are_400(body):
    code, value = call("POST", "/v0.1/plug/vip/203.0.113.9", body)
    if not _valid("PlugVipRequest", body):
        assert code == 400, (body, value)


@pytest.mark.parametrize("name", ["TopologyRequest", "PlugNetworkRequest", "PlugVipRequest"])
def test_the_examples_are_valid(name):
    for example in load_document()["components"]["schemas"][name].get("examples", []):
        assert _valid(name, example), example
