"""The Octavia faces' OpenAPI documents: valid OpenAPI 3.1, and naming exactly the
routes their Klein trees serve (both directions, as tests/unit/test_openapi_contract.py
does for v0.1)."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from tests.openapi_support import documented_routes, face_routes, load_face_document


@pytest.mark.parametrize("version", ["1.0", "0.5"])
def test_document_is_valid_openapi(version):
    validate(load_face_document(version))


def test_1_0_routes_match_the_document():
    served, documented = face_routes("1.0"), documented_routes(load_face_document("1.0"))
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert ("//", "GET") in served and ("/1.0/info", "GET") in served


def test_0_5_own_routes_are_documented():
    documented = documented_routes(load_face_document("0.5"))
    assert face_routes("0.5") <= documented
    # The v0.1 operations are there under /0.5 too.
    assert ("/0.5/listeners/{}/{}", "PUT") in documented and ("/0.5/details", "GET") in documented
