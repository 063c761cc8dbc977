"""The API contract (docs/openapi.yaml) as a test tool.

- ``served_routes()`` / ``documented_routes()``: (path template, METHOD) pairs
  from the Klein routing table and from the document, with parameter names
  erased (``/v0.1/listeners/{}``) so a route is the same route whatever its
  variables are called on either side.
- ``Contract.check(method, url, code, headers, body)``: validates one real
  response against the document: the status code must be documented for that
  operation, the Content-Type must be one the document names, and the body must
  match the schema (JSON Schema 2020-12 with formats checked).
- ``checked(response, method, url)``: the same for a treq response; returns the
  parsed body (JSON) or text, so tests read and validate in one step.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from urllib.parse import urlsplit

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.helpers import REPO

YAML_PATH = os.path.join(REPO, "docs", "openapi.yaml")
BASE_URI = "urn:amphora-agent:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

_KLEIN_VAR = re.compile(r"<(?:[^:<>]+:)?[^<>]+>")
_OAS_VAR = re.compile(r"\{[^{}/]+\}")


@cache
def load_document() -> dict:
    with open(YAML_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _is_catch_all(rule) -> bool:
    """A rule with a plain ``<path:...>`` variable matches any number of segments:
    it is a fallback that turns malformed paths into 400/404 JSON (werkzeug tries
    it after every specific rule), not an operation of the API. (Named
    converters, even multi-segment ones such as a certificate-name converter,
    stay operations.)"""
    return "<path:" in rule.rule


def catch_all_routes() -> set[tuple[str, str]]:
    from amphora.api.app import AgentAPI

    return {(rule.rule, method) for rule in AgentAPI.app.url_map.iter_rules() if _is_catch_all(rule)
            for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}


# Rules of the v0.1 app that belong to the Octavia faces (docs/openapi-1.0.yaml /
# docs/openapi-0.5.yaml): version discovery and the branches that mount /1.0 and /0.5.
FACE_ENDPOINTS = ("discovery", "discovery_slash", "face_1_0", "face_0_5")


def _is_face_rule(rule) -> bool:
    return rule.endpoint.removesuffix("_branch") in FACE_ENDPOINTS


def served_routes(app=None, prefix: str = "") -> set[tuple[str, str]]:
    """Every (template, METHOD) a Klein app routes (the v0.1 app by default, whose
    face mounts are left out; a face's app with its mount ``prefix``); HEAD/OPTIONS
    that werkzeug adds implicitly, and catch-all fallbacks, are left out."""
    from amphora.api.app import AgentAPI

    routes = set()
    for rule in (app or AgentAPI.app).url_map.iter_rules():
        if _is_catch_all(rule) or (app is None and _is_face_rule(rule)):
            continue
        template = _KLEIN_VAR.sub("{}", prefix + rule.rule)
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            routes.add((template, method))
    return routes


def face_routes(version: str) -> set[tuple[str, str]]:
    """What the 1.0 face serves: discovery, and its tree under /1.0."""
    from amphora.api.app import AgentAPI
    from amphora.api.faces.v0_5 import Face0_5
    from amphora.api.faces.v1_0 import Face1_0
    from amphora.api.octavia_optional import OptionalRoutes

    if version == "0.5":
        return served_routes(Face0_5.app, "/0.5") - {("/0.5/", "GET"), ("/0.5/", "PUT"), ("/0.5/", "POST"),
                                                     ("/0.5/", "DELETE")}
    discovery = {(rule.rule, method) for rule in AgentAPI.app.url_map.iter_rules()
                 if rule.endpoint.startswith("discovery") for method in rule.methods or ()
                 if method not in ("HEAD", "OPTIONS")}
    return served_routes(Face1_0.app, "/1.0") | served_routes(OptionalRoutes.app, "/1.0") | discovery


def documented_routes(doc: dict | None = None) -> set[tuple[str, str]]:
    doc = doc or load_document()
    routes = set()
    for path, item in doc["paths"].items():
        template = _OAS_VAR.sub("{}", path)
        for method in HTTP_METHODS:
            if method in item:
                routes.add((template, method.upper()))
    return routes


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class ContractViolation(AssertionError):
    pass


class Contract:
    """Matches concrete requests to the document's operations and validates responses."""

    def __init__(self, doc: dict | None = None):
        self.doc = doc or load_document()
        self.registry = Registry().with_resource(
            BASE_URI, Resource.from_contents(self.doc, default_specification=DRAFT202012))
        self._paths = []
        for path in self.doc["paths"]:
            pattern = re.escape(path)
            pattern = re.sub(r"\\\{([^{}/]+)\\\}", r"(?P<\1>[^/]+)", pattern)
            # concrete segments win over templated ones (OpenAPI's matching rule)
            self._paths.append((path.count("{"), path, re.compile(pattern + r"\Z")))
        self._paths.sort(key=lambda entry: entry[0])

    def match(self, method: str, path: str) -> tuple[str, dict]:
        for _, template, regex in self._paths:
            if regex.match(path) and method.lower() in self.doc["paths"][template]:
                return template, self.doc["paths"][template][method.lower()]
        raise ContractViolation(f"{method} {path}: no operation in docs/openapi.yaml")

    def _resolve(self, obj: dict) -> tuple[dict, str | None]:
        """Follows a Response Object ``$ref``; returns it and its JSON pointer when referenced."""
        if "$ref" in obj:
            ref = obj["$ref"]
            assert ref.startswith("#/"), ref
            target = self.doc
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            return target, ref[1:]
        return obj, None

    def validator(self, schema_pointer: str):
        return jsonschema.Draft202012Validator(
            {"$ref": BASE_URI + "#" + schema_pointer}, registry=self.registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

    def check(self, method: str, url: str, code: int, headers: dict[str, str], body: bytes):
        """Validates one response; returns the parsed JSON body (or the text)."""
        path = urlsplit(url).path
        template, operation = self.match(method, path)
        responses = operation["responses"]
        where = f"{method} {path} -> {code}"
        if str(code) not in responses:
            raise ContractViolation(f"{where}: status not documented for {method} {template} "
                                    f"(documented: {sorted(responses)}); body {body[:300]!r}")
        response, pointer = self._resolve(responses[str(code)])
        if pointer is None:
            pointer = _pointer("paths", template, method.lower(), "responses", str(code))
        for name, header in response.get("headers", {}).items():
            value = headers.get(name.lower())
            if value is not None:
                hdr, hdr_pointer = self._resolve(header)
                hdr_pointer = hdr_pointer or pointer + _pointer("headers", name)
                self._validate(hdr_pointer + "/schema", value, f"{where}: header {name}")
        content = response.get("content")
        if not content:
            return body
        ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in content:
            raise ContractViolation(f"{where}: Content-Type {ctype!r} not documented ({sorted(content)})")
        schema_pointer = pointer + _pointer("content", ctype, "schema")
        if ctype == "application/json":
            try:
                value = json.loads(body)
            except ValueError as e:
                raise ContractViolation(f"{where}: body is not JSON ({e}): {body[:300]!r}") from None
        else:
            value = body.decode("utf-8", "replace")
        self._validate(schema_pointer, value, where)
        return value

    def _validate(self, schema_pointer: str, value, where: str) -> None:
        errors = sorted(self.validator(schema_pointer).iter_errors(value), key=lambda e: list(e.path))
        if errors:
            lines = "\n".join(f"  at {'/'.join(map(str, e.path)) or '(root)'}: {e.message}"
                              for e in errors[:10])
            raise ContractViolation(f"{where}: response does not match the document:\n{lines}\n"
                                    f"value: {json.dumps(value)[:600]}")


@cache
def load_face_document(version: str) -> dict:
    """The document of an Octavia face: docs/openapi-1.0.yaml; for 0.5 the v0.1
    document under /0.5 (the 0.5 tree hands those routes to v0.1) with
    docs/openapi-0.5.yaml's own operations on top."""
    with open(os.path.join(REPO, "docs", f"openapi-{version}.yaml"), encoding="utf-8") as f:
        own = yaml.safe_load(f)
    if version != "0.5":
        return own
    doc = json.loads(json.dumps(load_document()))
    doc["paths"] = {"/0.5" + path[len("/v0.1"):]: item for path, item in doc["paths"].items()
                    if path.startswith("/v0.1/")}
    doc["paths"].update(own["paths"])
    for section, entries in own.get("components", {}).items():
        doc.setdefault("components", {}).setdefault(section, {}).update(entries)
    return doc


@cache
def contract(face: str = "v0.1") -> Contract:
    return Contract(load_face_document(face) if face != "v0.1" else None)


def face_of(path: str) -> str | None:
    """Which document covers an agent path: "v0.1", "1.0", "0.5", or None (not the agent's API)."""
    if path in ("/", "//") or path == "/1.0" or path.startswith("/1.0/"):
        return "1.0"
    if path == "/0.5" or path.startswith("/0.5/"):
        return "0.5"
    if path == "/info" or path.startswith("/v0.1/"):
        return "v0.1"
    return None


def _headers(response) -> dict[str, str]:
    return {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}


async def checked(response, method: str, url: str):
    """Reads a treq response and validates it against the contract; returns JSON or text."""
    body = await response.content()
    return contract().check(method, url, response.code, _headers(response), body)


async def call(client, method: str, url: str, **kwargs):
    """One request through ``client`` (treq); returns (status, validated body)."""
    response = await client.request(method, url, **kwargs)
    return response.code, await checked(response, method, url)


def check_error(code: int, headers: dict[str, str], body: bytes, face: str = "v0.1") -> dict:
    """Validates an error answered outside any documented operation (unknown path,
    wrong method) against the document's one error shape."""
    ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ContractViolation(f"{code}: error Content-Type is {ctype!r}, not application/json")
    value = json.loads(body)
    contract(face)._validate("/components/schemas/Error", value, f"error {code}")
    return value


async def checked_error(response) -> dict:
    return check_error(response.code, _headers(response), await response.content())
