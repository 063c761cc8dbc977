"""The 1.0 face: ``/1.0/...``, the dialect of Octavia controllers 12.0 and later.

A thin adapter: it parses what a 1.0 controller sends, calls the domain (the
haproxy registry, the plain certificate store, the host report) and renders
1.0's shapes and status codes (``../shared/spec/octavia-amphora-api-1.0.md``
§3-4). The unit of management is the load balancer: one haproxy with every
listener as a frontend. Every unknown route under /1.0 is a JSON 404, so the
controller never mistakes it for an agent that is not up yet.
"""

from __future__ import annotations

from amphora.api.base import new_app, plain_read
from amphora.api.params import json_body, read_body
from amphora.api.requests import V1_0, parse_network_request, parse_vip, parse_vip_request
from amphora.api.site import render_accepted, render_json
from amphora.certfiles import check_lb_id, md5_hex
from amphora.errors import InvalidRequest, NotFound, PayloadTooLarge

API_VERSION = "1.0"
LOADBALANCER = "loadbalancer"


def loadbalancer_not_found(lb_id: str) -> NotFound:
    return NotFound(f"No loadbalancer with UUID: {lb_id}", message="Loadbalancer Not Found")


def check_amphora(raw: str, ours: str) -> None:
    """The amphora id a controller names in an upload must be this agent's: a
    configuration meant for another amphora (a stale address after a failover)
    must not be installed here."""
    if raw != ours:
        shown = raw if len(raw) <= 100 else raw[:100] + "..."
        raise InvalidRequest(f"amphora id {shown!r} is not this amphora ({ours})")


def read_limited(request, limit: int, what: str) -> bytes:
    try:
        return read_body(request, limit)
    except PayloadTooLarge:
        raise PayloadTooLarge(f"{what} exceeds {limit} bytes") from None


class Face:
    """What both Octavia faces hold: the haproxy registry, the host report, the topology
    gate (503 during a transition), this amphora's id and the configuration size cap."""

    def __init__(self, *, registry, report, gate, amphora_id: str, max_config_bytes: int):
        self.registry = registry
        self.report = report
        self.gate = gate
        self.amphora_id = amphora_id
        self.max_config_bytes = max_config_bytes

    def upload_body(self, request, amphora_id: str) -> bytes:
        """The checks of a configuration upload that names an amphora, then its body."""
        self.gate.check_gate()
        check_amphora(amphora_id, self.amphora_id)
        return read_limited(request, self.max_config_bytes, "haproxy configuration")


class Face1_0(Face):
    app = new_app()

    def __init__(self, *, certificates, plugger, **common):
        super().__init__(**common)
        self.certificates = certificates
        self.plugger = plugger

    # -- host ----------------------------------------------------------------------

    @app.route("/info", methods=["GET"])
    @plain_read
    def info(self, request):
        return render_json(request, self.report.info(API_VERSION))

    @app.route("/details", methods=["GET"])
    @plain_read
    def details(self, request):
        return render_json(request, self.report.details(API_VERSION, self.registry.frontends()))

    @app.route("/listeners", methods=["GET"])
    @plain_read
    def listeners(self, request):
        """One entry per frontend of every haproxy (Octavia listener ids)."""
        return render_json(request, self.registry.frontends())

    # -- load balancers ------------------------------------------------------------

    @app.route("/loadbalancer/<amphora_id>/<lb_id>/haproxy", methods=["PUT"])
    async def upload(self, request, amphora_id, lb_id):
        lb_id = check_lb_id(lb_id)
        body = self.upload_body(request, amphora_id)
        await self.registry.upload_loadbalancer(lb_id, amphora_id, body)
        request.setHeader(b"etag", md5_hex(body).encode())
        return render_json(request, {"message": "OK"}, 202)

    @app.route("/loadbalancer/<lb_id>/haproxy", methods=["GET"])
    def get_config(self, request, lb_id):
        lb_id = check_lb_id(lb_id)
        if self.registry.kind(lb_id) != LOADBALANCER:
            raise loadbalancer_not_found(lb_id)
        data = self.registry.get_config(lb_id)
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"etag", md5_hex(data).encode())
        return data

    @app.route("/loadbalancer/<lb_id>/<action>", methods=["PUT"])
    async def action(self, request, lb_id, action):
        """start | stop | reload. Reload starts a stopped load balancer; start on a
        running one succeeds without a restart (the domain's 1.0 semantics)."""
        self.gate.check_gate()
        lb_id = check_lb_id(lb_id)
        details = await self.registry.loadbalancer_action(lb_id, action)
        return render_json(request, {"message": "OK", "details": details}, 202)

    @app.route("/listeners/<lb_id>", methods=["DELETE"])
    async def delete(self, request, lb_id):
        """Deletes a load balancer (the controller sends its id when its last listener
        goes): its haproxy, its files and its certificates. Unknown ids are 200 too."""
        self.gate.check_gate()
        lb_id = check_lb_id(lb_id)
        if self.registry.kind(lb_id) is not None:
            await self.registry.delete(lb_id)
        self.certificates.delete_all(lb_id)
        return render_json(request, {"message": "OK"})

    # -- certificates (a plain file store) ------------------------------------------

    _CERTIFICATE = "/loadbalancer/<lb_id>/certificates/<rest:name>"

    @app.route(_CERTIFICATE, methods=["PUT"])
    def put_certificate(self, request, lb_id, name):
        self.gate.check_gate()
        store = self.certificates
        store.path(lb_id, name)  # 400 for a bad id or name before the body is read
        data = read_limited(request, store.max_bytes, "certificate body ([agent] max_certificate_bytes)")
        md5sum = store.put(lb_id, name, data)
        request.setHeader(b"etag", md5sum.encode())
        return render_json(request, {"message": "OK"})

    @app.route(_CERTIFICATE, methods=["GET"])
    def get_certificate(self, request, lb_id, name):
        md5sum = self.certificates.md5sum(lb_id, name)
        request.setHeader(b"etag", md5sum.encode())
        return render_json(request, {"md5sum": md5sum})

    @app.route(_CERTIFICATE, methods=["DELETE"])
    def delete_certificate(self, request, lb_id, name):
        self.gate.check_gate()
        self.certificates.delete(lb_id, name)
        return render_json(request, {"message": "OK"})

    # -- plug (network): the 1.0 bodies, parsed by amphora.api.requests ---------------

    plug_body_limit = 64 * 1024  # plug bodies are a few hundred bytes

    @app.route("/plug/vip/<ip>", methods=["POST"])
    def plug_vip(self, request, ip):
        """Octavia's body (vrrp_ip, mtu, host_routes, additional_vips): in SINGLE the agent
        holds the VIPs itself, in ACTIVE_STANDBY keepalived does (the plugger's rule)."""
        self.gate.check_gate()
        spec = parse_vip_request(V1_0, ip, json_body(request, self.plug_body_limit, required=False))
        return render_accepted(request, self.plugger.plug_vip(parse_vip(ip), spec))

    @app.route("/plug/network", methods=["POST"])
    def plug_network(self, request):
        self.gate.check_gate()
        spec = parse_network_request(V1_0, json_body(request, self.plug_body_limit, required=False))
        return render_accepted(request, self.plugger.plug_network(spec))

