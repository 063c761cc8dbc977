"""docs/openapi.yaml itself: valid OpenAPI 3.1, consistent, and the JSON copy the agent serves is in sync."""

import json

import jsonschema
import pytest
from openapi_spec_validator import validate

from amphora.api import openapi
from tests.openapi_support import HTTP_METHODS, YAML_PATH, Contract, load_document

MUTATING = ("put", "post", "delete")


def operations(doc):
    for path, item in doc["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item, item[method]


def test_document_is_valid_openapi_3_1():
    doc = load_document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_served_json_is_generated_from_the_yaml():
    with open(YAML_PATH, encoding="utf-8") as f:
        expected = json.loads(openapi.render_yaml_as_json(f.read()))
    assert openapi.document() == expected, (
        "amphora/api/openapi.json is stale: run `python -m amphora.api.openapi docs/openapi.yaml`")


def test_every_operation_documents_auth_and_server_errors():
    for path, method, _, op in operations(load_document()):
        assert {"401", "500"} <= set(op["responses"]), f"{method} {path}"
        assert op.get("operationId"), f"{method} {path}"


def test_every_mutating_operation_documents_the_topology_gate():
    for path, method, _, op in operations(load_document()):
        if method in MUTATING:
            assert "503" in op["responses"], f"{method} {path} lacks 503"


def test_operation_ids_are_unique():
    ids = [op["operationId"] for _, _, _, op in operations(load_document())]
    assert len(ids) == len(set(ids))


def test_every_path_parameter_is_declared_with_a_constraining_schema():
    doc = load_document()
    for path, method, item, op in operations(doc):
        params = {}
        for p in item.get("parameters", []) + op.get("parameters", []):
            if "$ref" in p:
                p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
            params[(p["in"], p["name"])] = p
        for name in __import__("re").findall(r"\{([^}]+)\}", path):
            assert ("path", name) in params, f"{method} {path}: {name} undeclared"
            schema = params[("path", name)]["schema"]
            if "$ref" in schema:
                schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            assert {"pattern", "enum", "anyOf"} & set(schema), f"{path}: {name} is unconstrained"


def _schema_pointers(doc):
    for name, schema in doc["components"]["schemas"].items():
        yield f"/components/schemas/{name}", schema


def test_schema_examples_validate():
    contract = Contract()
    seen = 0
    for pointer, schema in _schema_pointers(contract.doc):
        for example in schema.get("examples", []):
            contract._validate(pointer, example, pointer)
            seen += 1
    assert seen >= 7


@pytest.mark.parametrize("name,value", [
    ("UUID", "6E2BC8A0-2548-4FB7-A5F0-FB1EF4A696CE"),
    ("UUID", "6e2bc8a02548-4fb7-a5f0-fb1ef4a696ce"),
    ("IPAddress", "203.0.113.999"),
    ("IPAddress", "not-an-ip"),
    ("Info", {"hostname": "h", "uuid": "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce", "haproxy_version": "2.6",
              "api_version": "0.2"}),
    ("Topology", {"hostname": "h", "uuid": "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce", "topology": "SINGLE",
                  "role": "ACTIVE", "ha_ip": "", "secret": "leaked"}),
    ("Error", {"details": "no message"}),
    ("Md5sum", {"md5sum": "D41D8CD98F00B204E9800998ECF8427E"}),
])
def test_schemas_reject_wrong_values(name, value):
    """The schemas constrain: a validator that accepts everything would make the integration checks vacuous."""
    with pytest.raises(AssertionError):
        Contract()._validate(f"/components/schemas/{name}", value, name)


def test_certificate_file_name_pattern():
    doc = load_document()
    pattern = doc["components"]["parameters"]["filename"]["schema"]
    validator = jsonschema.Draft202012Validator(pattern)
    for good in ("www.example.com.pem", "WILDCARD.example.com.pem", "a.pem", "cert_1-2.pem"):
        assert validator.is_valid(good), good
    for bad in (".pem", "../x.pem", "a/b.pem", "a..pem", "x.PEM", "x.pem.txt", "x y.pem", "%2e%2e.pem",
                "x" * 252 + ".pem"):
        assert not validator.is_valid(bad), bad


def test_served_bytes_are_compact_json_of_the_document():
    raw = openapi.document_bytes()
    assert json.loads(raw) == openapi.document()
    assert b"\n" not in raw
