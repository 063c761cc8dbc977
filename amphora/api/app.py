"""Klein routes: validate the request, call a domain object, render JSON.

Routes stay thin. Domain objects raise ``amphora.errors.AgentError``
subclasses; the handlers below turn every error (and every unknown route,
wrong method or unexpected exception) into ``{"message", "details"}`` JSON
with the right status. A 500 never carries a traceback.

Sections are grouped by domain, one block each, so work on one domain does not
touch another's routes.
"""

from __future__ import annotations

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from amphora import API_VERSION
from amphora.api.site import render_error, render_json
from amphora.errors import AgentError, MethodNotAllowed, NotFound, OperationFailed

log = Logger()

V = "/v0.1"


class AgentAPI:
    """The HTTP face of one agent; ``agent`` is the composition root (amphora.agent)."""

    app = Klein()

    def __init__(self, agent):
        self.agent = agent

    # -- errors ---------------------------------------------------------------

    @app.handle_errors(AgentError)
    def _agent_error(self, request, failure):
        error = failure.value
        if error.status >= 500:
            log.warn("{method} {path} failed: {error}", method=request.method, path=request.path,
                     error=error)
        return render_error(request, error)

    @app.handle_errors(WerkzeugNotFound)
    def _not_found(self, request, failure):
        return render_error(request, NotFound(f"No route for {request.path.decode('ascii', 'replace')}"))

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def _method_not_allowed(self, request, failure):
        allowed = sorted(failure.value.valid_methods or ())
        request.setHeader(b"allow", ", ".join(allowed).encode())
        return render_error(request, MethodNotAllowed(
            f"{request.method.decode('ascii', 'replace')} is not allowed here; allowed: {', '.join(allowed)}"))

    @app.handle_errors
    def _unexpected(self, request, failure):
        log.failure("unhandled error in {method} {path}", failure=failure,
                    method=request.method, path=request.path)
        return render_error(request, OperationFailed("unexpected error; see the agent log",
                                                     message="Internal Server Error"))

    # -- info and topology ----------------------------------------------------

    @app.route("/info", methods=["GET"])
    def info(self, request):
        facts = self.agent.facts
        return render_json(request, {
            "hostname": facts.hostname,
            "uuid": facts.amphora_id,
            "haproxy_version": facts.haproxy_version,
            "api_version": API_VERSION,
        })

    @app.route(V + "/topology", methods=["GET"])
    def get_topology(self, request):
        return render_json(request, self.agent.topology.document())

    @app.route(V + "/topology", methods=["POST"])
    def set_topology(self, request):
        from amphora.api.params import json_body  # local: keeps the shared import block merge-free
        topology = self.agent.topology
        topology.check_gate()
        code = topology.request(json_body(request))
        if code == 202:
            return render_json(request, {"message": "OK", "details": "topology change in progress: "
                                         "GET /v0.1/topology shows TOPOLOGY-CHANGE until it is done"}, 202)
        return render_json(request, {"message": "OK"}, code)

    # -- details (host) -------------------------------------------------------

    @app.route(V + "/details", methods=["GET"])
    def details(self, request):
        # Only published samples are read here: nothing waits, forks or walks /proc.
        return render_json(request, self.agent.sampler.document(self.agent))

    # -- listeners ------------------------------------------------------------
    # (params is imported inside each route: this section then merges without touching the imports)

    @app.route(V + "/listeners", methods=["GET"])
    def list_listeners(self, request):
        return render_json(request, self.agent.listeners.status_list())

    @app.route(V + "/listeners/<lid>", methods=["GET"])
    async def get_listener(self, request, lid):
        from amphora.api import params
        doc = await self.agent.listeners.status(params.listener_id(lid))
        return render_json(request, doc)

    @app.route(V + "/listeners/<lid>", methods=["DELETE"])
    async def delete_listener(self, request, lid):
        from amphora.api import params
        self.agent.topology.check_gate()
        details = await self.agent.listeners.delete(params.listener_id(lid))
        return render_json(request, {"message": "OK", "details": details})

    @app.route(V + "/listeners/<lid>/haproxy", methods=["PUT"])
    async def put_haproxy(self, request, lid):
        from amphora.api import params
        self.agent.topology.check_gate()
        lid = params.listener_id(lid)
        body = params.read_body(request, self.agent.config.haproxy.max_config_bytes)
        details = await self.agent.listeners.upload(lid, body)
        return render_json(request, {"message": "OK", "details": details}, 201)

    @app.route(V + "/listeners/<lid>/haproxy", methods=["GET"])
    def get_haproxy(self, request, lid):
        from amphora.api import params
        data = self.agent.listeners.get_config(params.listener_id(lid))
        request.setHeader(b"content-type", b"text/plain")
        return data

    @app.route(V + "/listeners/<path:rest>", methods=["GET", "PUT", "DELETE"])
    def listener_fallback(self, request, rest):
        """Paths no listener route matched, e.g. an id with an encoded slash (``..%2F..``):
        a malformed id is 400, anything else 404. Never a file path."""
        from amphora.api import params
        params.listener_id(rest.split("/", 1)[0])
        raise NotFound(f"No route for {request.path.decode('ascii', 'replace')}")

    @app.route(V + "/listeners/<lid>/<action>", methods=["PUT"])
    async def listener_action(self, request, lid, action):
        from amphora.api import params
        self.agent.topology.check_gate()
        details = await self.agent.listeners.action(params.listener_id(lid), action)
        return render_json(request, {"message": "OK", "details": details}, 202)

    # -- certificates ---------------------------------------------------------

    # -- plug (network) -------------------------------------------------------
