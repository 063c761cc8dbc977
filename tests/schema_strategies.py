"""Hypothesis strategies from docs/openapi.yaml's JSON schemas (the subset the document uses).

Our own small generator rather than a library: hypothesis-jsonschema reaches into
Hypothesis internals that current Hypothesis releases no longer have. Supported:
``$ref`` (to ``#/components/...``), ``anyOf`` (siblings merged into each branch),
``const``, ``enum``, ``type`` (one or a list), string ``pattern`` / ``format``
(ipv4, ipv6) / ``minLength`` / ``maxLength``, integer bounds, arrays
(``items``, ``maxItems``), objects (``properties``, ``required``,
``additionalProperties``) and ``if``/``then``/``else`` of the form
``if: {properties: {<field>: {const: <value>}}}``. Callers filter the result
with a real JSON Schema validator, so the generator only has to be close.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

_EXTRA_KEYS = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)
_EXTRA_VALUES = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6)


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        target = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        schema = {**{k: v for k, v in schema.items() if k != "$ref"}, **target}
    return schema


def strategy(doc: dict, schema: dict) -> st.SearchStrategy:
    schema = resolve(doc, schema)
    if "if" in schema:
        return _conditional(doc, schema)
    if "anyOf" in schema:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return st.one_of([strategy(doc, {**rest, **resolve(doc, branch)}) for branch in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([strategy(doc, {**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "integer":
        return st.integers(schema.get("minimum", -2 ** 31), schema.get("maximum", 2 ** 31))
    if kind == "string":
        return _string(schema)
    if kind == "array":
        return st.lists(strategy(doc, schema.get("items", {})), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 4), 4))
    if kind == "object" or "properties" in schema:
        return _object(doc, schema)
    return _EXTRA_VALUES


def _string(schema: dict) -> st.SearchStrategy:
    low, high = schema.get("minLength", 0), schema.get("maxLength", 40)
    if schema.get("format") in ("ipv4", "ipv6"):
        base = st.ip_addresses(v=int(schema["format"][-1])).map(str)
    elif "pattern" in schema:
        base = st.from_regex(schema["pattern"], fullmatch=True)
    else:
        return st.text(min_size=low, max_size=high)
    return base.filter(lambda s: low <= len(s) <= high)


def _object(doc: dict, schema: dict) -> st.SearchStrategy:
    properties = schema.get("properties", {})
    required = set(schema.get("required", ()))
    fixed = st.fixed_dictionaries(
        {k: strategy(doc, v) for k, v in properties.items() if k in required},
        optional={k: strategy(doc, v) for k, v in properties.items() if k not in required})
    if schema.get("additionalProperties", True) is False:
        return fixed
    extras = st.dictionaries(_EXTRA_KEYS.filter(lambda k: k not in properties), _EXTRA_VALUES, max_size=2)
    return st.tuples(extras, fixed).map(lambda t: {**t[0], **t[1]})


def _conditional(doc: dict, schema: dict) -> st.SearchStrategy:
    ((field, test),) = schema["if"]["properties"].items()
    base = {k: v for k, v in schema.items() if k not in ("if", "then", "else")}
    branches = []
    for branch, matches in ((schema.get("then", {}), True), (schema.get("else", {}), False)):
        properties = dict(base.get("properties", {}))
        properties.update(branch.get("properties", {}))
        choices = [v for v in resolve(doc, properties[field]).get("enum", [test["const"]])
                   if (v == test["const"]) == matches]
        if not choices:
            continue
        properties[field] = {"enum": choices}
        required = sorted(set(base.get("required", ())) | set(branch.get("required", ())) | {field})
        branches.append(_object(doc, {**base, "properties": properties, "required": required}))
    return st.one_of(branches)
