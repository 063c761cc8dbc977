"""The contract test: the Klein routing table and docs/openapi.yaml name the same routes.

Both directions are checked. A route the agent serves but the document does not
name is an undocumented API; a route the document names but the agent does not
serve is a broken promise to controller authors. Parameter names are erased on
both sides (``/v0.1/listeners/{}``), so only shapes and methods are compared.
Catch-all fallbacks (``<path:...>`` rules that turn malformed paths into 400/404
JSON) are not operations and are left out; the document's description covers
them ("unknown paths answer 404").
"""

from werkzeug.routing import Map, Rule

from tests import openapi_support
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


def test_catch_all_rules_are_recognised():
    rules = Map([Rule("/v0.1/listeners/<path:rest>", methods=["GET"]), Rule("/v0.1/listeners/<lid>"),
                 Rule("/v0.1/listeners/<lid>/certificates/<path2:name>")],
                converters={"path2": __import__("werkzeug").routing.PathConverter}).iter_rules()
    flags = {rule.rule: openapi_support._is_catch_all(rule) for rule in rules}
    assert flags == {"/v0.1/listeners/<path:rest>": True, "/v0.1/listeners/<lid>": False,
                     "/v0.1/listeners/<lid>/certificates/<path2:name>": False}
