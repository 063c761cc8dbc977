"""The contract test: the Klein routing table and docs/openapi.yaml name the same routes.

Both directions are checked. A route the agent serves but the document does not
name is an undocumented API; a route the document names but the agent does not
serve is a broken promise to controller authors. Parameter names are erased on
both sides (``/v0.1/listeners/{}``), so only shapes and methods are compared.
"""

from tests.openapi_support import documented_routes, served_routes


def _fmt(routes):
    return "\n".join(f"  {method:6} {path}" for path, method in sorted(routes))


def test_every_served_route_is_documented():
    missing = served_routes() - documented_routes()
    assert not missing, "served but not in docs/openapi.yaml:\n" + _fmt(missing)


def test_every_documented_route_is_served():
    missing = documented_routes() - served_routes()
    assert not missing, "documented in docs/openapi.yaml but not served by the agent:\n" + _fmt(missing)


def test_route_tables_are_not_trivially_empty():
    assert ("/info", "GET") in served_routes()
    assert ("/v0.1/openapi.json", "GET") in served_routes()
    assert len(documented_routes()) >= 18
