"""The optional 1.0 routes (spec §4.14, §4.15): interface rules and UDP/SCTP listeners.

- ``PUT /1.0/interface/<ip>/rules``: the VIP interface's nftables rules
  (``amphora.nftables``);
- ``PUT /1.0/listeners/<amphora_id>/<listener_id>/udp_listener`` and
  ``GET /1.0/listeners/<listener_id>/udp_listener``: a UDP/SCTP listener's
  keepalived LVS configuration (``amphora.lvs``);
- ``PUT /1.0/loadbalancer/<listener_id>/{start,stop,reload}`` and
  ``DELETE /1.0/listeners/<listener_id>`` when the id is a stored UDP listener
  (the controller sends the load-balancer calls with a UDP listener's id).

A tree of its own, layered over the 1.0 face by ``with_optional``: a request
this tree *claims* (its own paths, or an action/delete naming a UDP listener)
is answered here, every other one by the 1.0 face unchanged.
"""

from __future__ import annotations

from twisted.web.resource import Resource

from amphora.api.base import new_app
from amphora.api.faces.v1_0 import check_amphora, read_limited
from amphora.api.site import render_json
from amphora.certfiles import md5_hex
from amphora.errors import InvalidRequest
from amphora.listeners.store import is_listener_id

RULES_BYTES = 64 * 1024


def check_listener_id(raw: str) -> str:
    if not is_listener_id(raw):
        shown = raw if len(raw) <= 100 else raw[:100] + "..."
        raise InvalidRequest(f"Invalid listener id: {shown!r} is not a canonical UUID")
    return raw


class OptionalRoutes:
    app = new_app()

    def __init__(self, *, rules, udp, gate, amphora_id: str, max_config_bytes: int):
        self.rules = rules
        self.udp = udp
        self.gate = gate
        self.amphora_id = amphora_id
        self.max_config_bytes = max_config_bytes

    def claims(self, request) -> bool:
        """This tree answers ``request`` (its path below /1.0), else the 1.0 face does."""
        parts = [p.decode("utf-8", "replace") for p in request.postpath]
        if len(parts) == 3 and parts[0] == "interface" and parts[2] == "rules":
            return True
        if parts[:1] == ["listeners"] and parts[-1:] == ["udp_listener"] and len(parts) in (3, 4):
            return True
        named = (parts[1] if len(parts) == 3 and parts[0] == "loadbalancer" and request.method == b"PUT"
                 else parts[1] if len(parts) == 2 and parts[0] == "listeners" and request.method == b"DELETE"
                 else None)
        return named is not None and is_listener_id(named) and self.udp.knows(named)

    # -- interface rules -----------------------------------------------------------

    @app.route("/interface/<ip>/rules", methods=["PUT"])
    async def put_rules(self, request, ip):
        self.gate.check_gate()
        body = read_limited(request, RULES_BYTES, "interface rules")
        await self.rules.put(ip, body)
        return render_json(request, {"message": "OK"})

    # -- UDP / SCTP listeners ------------------------------------------------------

    @app.route("/listeners/<amphora_id>/<listener_id>/udp_listener", methods=["PUT"])
    async def upload(self, request, amphora_id, listener_id):
        self.gate.check_gate()
        check_amphora(amphora_id, self.amphora_id)
        listener_id = check_listener_id(listener_id)
        body = read_limited(request, self.max_config_bytes, "keepalived configuration")
        await self.udp.upload(listener_id, body)
        request.setHeader(b"etag", md5_hex(body).encode())
        return render_json(request, {"message": "OK"})

    @app.route("/listeners/<listener_id>/udp_listener", methods=["GET"])
    def get_config(self, request, listener_id):
        data = self.udp.get_config(check_listener_id(listener_id))
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"etag", md5_hex(data).encode())
        return data

    @app.route("/loadbalancer/<listener_id>/<action>", methods=["PUT"])
    async def action(self, request, listener_id, action):
        self.gate.check_gate()
        details = await self.udp.action(check_listener_id(listener_id), action)
        return render_json(request, {"message": "OK", "details": details}, 202)

    @app.route("/listeners/<listener_id>", methods=["DELETE"])
    async def delete(self, request, listener_id):
        self.gate.check_gate()
        await self.udp.delete(check_listener_id(listener_id))
        return render_json(request, {"message": "OK"})


class Layered(Resource):
    """``optional``'s resource for the requests it claims, ``face``'s for the rest."""

    isLeaf = True

    def __init__(self, optional: OptionalRoutes, face):
        super().__init__()
        self.optional = optional
        self.optional_resource = optional.app.resource()
        self.face = face

    def render(self, request):
        chosen = self.optional_resource if self.optional.claims(request) else self.face
        return chosen.render(request)


def with_optional(face_resource, *, rules, udp, gate, amphora_id: str, max_config_bytes: int):
    """The 1.0 face's resource with the optional routes over it (when the agent has them)."""
    if rules is None or udp is None:
        return face_resource
    optional = OptionalRoutes(rules=rules, udp=udp, gate=gate, amphora_id=amphora_id,
                              max_config_bytes=max_config_bytes)
    return Layered(optional, face_resource)
