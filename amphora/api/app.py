"""Klein routes: validate the request, call a domain object, render JSON.

Routes stay thin. Domain objects raise ``amphora.errors.AgentError``
subclasses; the handlers below turn every error (and every unknown route,
wrong method or unexpected exception) into ``{"message", "details"}`` JSON
with the right status. A 500 never carries a traceback.

Sections are grouped by domain, one block each, so work on one domain does not
touch another's routes.
"""

from __future__ import annotations

import functools

from amphora import API_VERSION
from amphora.api.base import new_app, not_allowed as _not_allowed, plain_read
from amphora.api.faces import DISCOVERY
from amphora.api.http import listener_allow
from amphora.api.openapi import document_bytes
from amphora.api.params import gated, json_body, listener_id, read_body
from amphora.api.requests import V0_1, parse_lines, parse_network_request, parse_topology, parse_vip, parse_vip_request
from amphora.api.site import render_accepted, render_json
from amphora.certificates import check_name
from amphora.errors import InvalidRequest, InvalidVIP, ListenerNotFound, NotFound, PayloadTooLarge
from amphora.topology import Outcome

V = "/v0.1"


def _allowed(path: bytes, allowed):
    """A 405 under /v0.1/listeners/ names that path's methods (see listener_allow), not the
    catch-all route's."""
    return listener_allow(path) if path.startswith(b"/v0.1/listeners/") else allowed


class AgentAPI:
    """The HTTP face of one agent, over the domain objects it is given (see amphora.agent):
    ``facts`` (HostFacts), ``topology``, ``listeners`` (IListenerRegistry), ``certificates``
    (CertificateStore), ``network`` (INetworkPlugger), ``logs`` (ListenerLogs), ``sampler``
    (HostSampler), ``max_config_bytes`` ([haproxy] max_config_bytes) and ``faces``
    (``faces(v0_1_resource) -> {prefix: resource}``, amphora.api.faces.build_faces)."""

    # The shared converter, URL rules and error handlers (amphora.api.base).
    app = new_app(allowed_for=_allowed)

    def __init__(self, *, facts, topology, listeners, certificates, network, logs, sampler,
                 max_config_bytes: int, faces, vrrp):
        self.facts, self.topology, self.listeners = facts, topology, listeners
        self.certificates, self.network, self.logs = certificates, network, logs
        self.sampler, self.max_config_bytes, self._build_faces = sampler, max_config_bytes, faces
        self.vrrp = vrrp

    @functools.cached_property
    def faces(self) -> dict:
        """The Octavia faces: separate route trees over the same domain objects (built at
        first use, over this tree's resource for /0.5)."""
        return self._build_faces(self.app.resource())

    # -- the Octavia faces (amphora.api.faces): version discovery, /1.0, /0.5 --

    @app.route("/", methods=["GET"])
    @app.route("//", methods=["GET"], endpoint="discovery_slash")  # what Octavia's client sends
    @plain_read
    def discovery(self, request):
        return render_json(request, DISCOVERY)

    @app.route("/1.0", branch=True, strict_slashes=False)
    @plain_read
    def face_1_0(self, request):
        return self.faces["1.0"]

    @app.route("/0.5", branch=True, strict_slashes=False)
    @plain_read
    def face_0_5(self, request):
        return self.faces["0.5"]

    # -- info and topology ----------------------------------------------------

    @app.route("/info", methods=["GET"])
    @app.route(V + "/info", methods=["GET"], endpoint="info_v0_1")
    @plain_read
    def info(self, request):
        facts = self.facts
        return render_json(request, {
            "hostname": facts.hostname,
            "uuid": facts.amphora_id,
            "haproxy_version": facts.haproxy_version,
            "api_version": API_VERSION,
        })

    @app.route(V + "/topology", methods=["GET"])
    @plain_read
    def get_topology(self, request):
        # While the controller drives keepalived (amphora.vrrp), its role is the one reported.
        return render_json(request, self.vrrp.topology_document() or self.topology.document())

    @app.route(V + "/topology", methods=["POST"])
    @gated
    def set_topology(self, request):
        self.vrrp.check_v0_1()  # 409 while the controller drives keepalived (amphora.vrrp)
        outcome = self.topology.request(parse_topology(json_body(request)))
        if outcome is Outcome.STARTED:
            return render_json(request, {"message": "OK", "details": "topology change in progress: "
                                         "GET /v0.1/topology shows TOPOLOGY-CHANGE until it is done"}, 202)
        return render_json(request, {"message": "OK"}, 200)

    # -- details (host) -------------------------------------------------------

    @app.route(V + "/details", methods=["GET"])
    @plain_read
    def details(self, request):
        # Only published samples are read here: nothing waits, forks or walks /proc.
        return render_json(request, self.sampler.document(self.facts, self.topology, self.listeners))

    # -- listeners ------------------------------------------------------------

    @app.route(V + "/listeners", methods=["GET"])
    @plain_read
    def list_listeners(self, request):
        return render_json(request, self.listeners.status_list())

    @app.route(V + "/listeners/<lid>", methods=["GET"])
    async def get_listener(self, request, lid):
        doc = await self.listeners.status(listener_id(lid))
        return render_json(request, doc)

    @app.route(V + "/listeners/<lid>", methods=["DELETE"])
    @gated
    async def delete_listener(self, request, lid):
        details = await self.listeners.delete(listener_id(lid), kind="listener")
        return render_json(request, {"message": "OK", "details": details})

    @app.route(V + "/listeners/<lid>/haproxy", methods=["PUT"])
    @gated
    async def put_haproxy(self, request, lid):
        lid = listener_id(lid)
        body = read_body(request, self.max_config_bytes)
        if not body.strip():  # the document says the body is required
            raise InvalidRequest("a haproxy configuration body is required")
        details = await self.listeners.upload(lid, body)
        return render_json(request, {"message": "OK", "details": details}, 201)

    @app.route(V + "/listeners/<lid>/haproxy", methods=["GET"])
    @plain_read
    def get_haproxy(self, request, lid):
        data = self.listeners.get_config(listener_id(lid), kind="listener")
        request.setHeader(b"content-type", b"text/plain")
        return data

    @app.route(V + "/listeners/<path:rest>", methods=["GET", "PUT", "DELETE"])
    def listener_fallback(self, request, rest):
        """Paths no listener route matched, e.g. an id with an encoded slash (``..%2F..``):
        a malformed id is 400, a wrong method on a listener path 405, anything else 404.
        Never a file path."""
        listener_id(rest.split("/", 1)[0])
        allowed = listener_allow(request.path)
        if allowed is not None:
            raise _not_allowed(request, allowed)
        raise NotFound(f"No route for {request.path.decode('ascii', 'replace')}")

    @app.route(V + "/listeners/<lid>/<action>", methods=["PUT"])
    @gated
    async def listener_action(self, request, lid, action):
        lid = listener_id(lid)
        allowed = listener_allow(request.path)
        if allowed is not None and "PUT" not in allowed:  # PUT .../logs is no action
            raise _not_allowed(request, allowed)
        details = await self.listeners.action(lid, action)
        return render_json(request, {"message": "OK", "details": details}, 202)

    # -- listener logs --

    @app.route(V + "/listeners/<string:lid>/logs", methods=["GET"])
    def get_listener_logs(self, request, lid):
        """The last ``?lines=N`` (1-1000, default 100) lines of a listener's haproxy log, text/plain."""
        lid, lines = listener_id(lid), parse_lines(request.args)
        logs = self.logs
        if not self.listeners.exists(lid):
            raise ListenerNotFound(lid)
        request.setHeader(b"content-type", b"text/plain")
        losses = logs.losses(lid)  # what was lost, for operators
        request.setHeader(b"x-log-file-dropped", b"%d" % losses.file_dropped)
        if losses.forward_lost is not None:
            request.setHeader(b"x-log-forward-lost", b"%d" % losses.forward_lost)
        return logs.tail(lid, lines)

    # -- certificates ---------------------------------------------------------

    # <rest:...> takes everything after certificates/, slashes and newlines too, so
    # every bad name reaches check_name and gets its 400 instead of a routing 404.
    _CERTIFICATE = V + "/listeners/<lid>/certificates/<rest:filename>"

    @app.route(_CERTIFICATE, methods=["PUT"])
    @gated
    async def put_certificate(self, request, lid, filename):
        lid, filename = listener_id(lid), check_name(filename)
        store = self.certificates
        try:
            data = read_body(request, store.max_bytes)
        except PayloadTooLarge:
            raise PayloadTooLarge(f"certificate body exceeds {store.max_bytes} bytes "
                                  "([agent] max_certificate_bytes)") from None
        result = await store.put(lid, filename, data)
        request.setHeader(b"etag", result.md5sum.encode())
        return render_json(request, {"message": "OK", "details": result.details}, 201)

    @app.route(_CERTIFICATE, methods=["GET"])
    @plain_read
    def get_certificate(self, request, lid, filename):
        lid, filename = listener_id(lid), check_name(filename)
        md5sum = self.certificates.md5sum(lid, filename)
        request.setHeader(b"etag", md5sum.encode())
        return render_json(request, {"md5sum": md5sum})

    @app.route(_CERTIFICATE, methods=["DELETE"])
    @gated
    async def delete_certificate(self, request, lid, filename):
        lid, filename = listener_id(lid), check_name(filename)
        details = await self.certificates.delete(lid, filename)
        return render_json(request, {"message": "OK", "details": details})

    # -- plug (network) -------------------------------------------------------

    # Both with and without the trailing slash (the spec writes /plug/network/),
    # answered directly: a redirect would make clients re-POST. Imports stay in
    # this section so that domains do not collide at the top of the module.
    plug_body_limit = 64 * 1024  # plug bodies are a few hundred bytes

    @app.route(V + "/plug/vip/<ip>", methods=["POST"], endpoint="plug_vip")
    @app.route(V + "/plug/vip/<ip>/", methods=["POST"], endpoint="plug_vip_slash")
    @gated
    def plug_vip(self, request, ip):
        vip = parse_vip(ip)  # before the body: a bad VIP is "Invalid VIP" whatever the body
        spec = parse_vip_request(V0_1, vip, json_body(request, self.plug_body_limit, required=False))
        return render_accepted(request, self.network.plug_vip(vip, spec))

    @app.route(V + "/plug/vip/<rest:rest>", methods=["POST"], endpoint="plug_vip_fallback")
    @gated
    def plug_vip_fallback(self, request, rest):
        """Paths the VIP routes did not match. One raw segment whose decoded form has a slash
        (``..%2F..%2Fetc``, ``%2F``) or that is empty is a VIP that is not an address: 400
        "Invalid VIP", like any other bad VIP. More raw segments (``/plug/vip/<ip>/more``) are
        an unknown route: 404."""
        raw = request.path.decode("ascii", "replace").split("/plug/vip/", 1)[-1]
        if "/" not in raw.rstrip("/"):
            shown = rest if len(rest) <= 100 else rest[:100] + "..."
            raise InvalidVIP(f"{shown!r} is not an IPv4 or IPv6 address")
        raise NotFound(f"No route for {request.path.decode('ascii', 'replace')}")

    @app.route(V + "/plug/network", methods=["POST"], endpoint="plug_network")
    @app.route(V + "/plug/network/", methods=["POST"], endpoint="plug_network_slash")
    @gated
    def plug_network(self, request):
        spec = parse_network_request(V0_1, json_body(request, self.plug_body_limit, required=False))
        return render_accepted(request, self.network.plug_network(spec))


    # -- operators ------------------------------------------------------------

    @app.route(V + "/openapi.json", methods=["GET"])
    def openapi(self, request):
        """The API contract (docs/openapi.yaml as JSON), behind the same mTLS as every route."""
        request.setHeader(b"content-type", b"application/json")
        return document_bytes()
