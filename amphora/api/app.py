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
    # werkzeug answers "//" in a path with a redirect exception, which would end as a 500;
    # an unknown path is a 404 like any other.
    app.url_map.merge_slashes = False

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

    # -- details (host) -------------------------------------------------------

    @app.route(V + "/details", methods=["GET"])
    def details(self, request):
        # Only published samples are read here: nothing waits, forks or walks /proc.
        return render_json(request, self.agent.sampler.document(self.agent))

    # -- listeners ------------------------------------------------------------

    # -- certificates ---------------------------------------------------------

    # Imports stay inside this section (one block per domain keeps merges apart).
    from werkzeug.routing import PathConverter as _PathConverter

    class _CertificateName(_PathConverter):
        """Everything after ``certificates/``, slashes and newlines too, so every bad
        name reaches ``check_name`` and gets its 400 instead of a routing 404."""

        regex = "(?s:.*)"
        part_isolating = False

    app.url_map.converters["certname"] = _CertificateName
    _CERTIFICATE = V + "/listeners/<lid>/certificates/<certname:filename>"
    del _PathConverter, _CertificateName

    @app.route(_CERTIFICATE, methods=["PUT"])
    async def put_certificate(self, request, lid, filename):
        from amphora.api.params import listener_id, read_body
        from amphora.certificates import check_name
        from amphora.errors import PayloadTooLarge

        self.agent.topology.check_gate()
        lid, filename = listener_id(lid), check_name(filename)
        store = self.agent.certificates
        try:
            data = read_body(request, store.max_bytes)
        except PayloadTooLarge:
            raise PayloadTooLarge(f"certificate body exceeds {store.max_bytes} bytes "
                                  "([agent] max_certificate_bytes)") from None
        result = await store.put(lid, filename, data)
        request.setHeader(b"etag", result.md5sum.encode())
        return render_json(request, {"message": "OK", "details": result.details}, 201)

    @app.route(_CERTIFICATE, methods=["GET"])
    def get_certificate(self, request, lid, filename):
        from amphora.api.params import listener_id
        from amphora.certificates import check_name

        lid, filename = listener_id(lid), check_name(filename)
        md5sum = self.agent.certificates.md5sum(lid, filename)
        request.setHeader(b"etag", md5sum.encode())
        return render_json(request, {"md5sum": md5sum})

    @app.route(_CERTIFICATE, methods=["DELETE"])
    async def delete_certificate(self, request, lid, filename):
        from amphora.api.params import listener_id
        from amphora.certificates import check_name

        self.agent.topology.check_gate()
        lid, filename = listener_id(lid), check_name(filename)
        details = await self.agent.certificates.delete(lid, filename)
        return render_json(request, {"message": "OK", "details": details})

    # -- plug (network) -------------------------------------------------------
