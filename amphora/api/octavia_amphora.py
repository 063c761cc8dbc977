"""The amphora-wide calls of the Octavia faces, the same on ``/1.0`` and ``/0.5``:

- ``PUT certificate``: rotate the agent's server certificate (``amphora.servercert``);
- ``PUT config``: agent configuration update (``amphora.agentconf``);
- ``PUT vrrp/upload``, ``PUT vrrp/<start|stop|reload>``: keepalived driven by the
  controller (``amphora.vrrp``);
- ``GET interface/<ip>``: the interface holding an address (``amphora.addrlookup``).

Bodies and answers follow ``../shared/spec/octavia-amphora-api-1.0.md`` §3, §4.4,
§4.7, §4.16, §4.17; Octavia 4.0.0's client sends the same bodies to ``/0.5`` and
reads the same answers. ``install`` adds these routes to a face's Klein app; the
face instance carries the collaborators as its ``amphora`` attribute
(``AmphoraCalls``, set by ``amphora.api.faces.build_faces``).
"""

from __future__ import annotations

from dataclasses import dataclass

from amphora.api.faces.v1_0 import read_limited
from amphora.api.site import render_json
from amphora.certfiles import md5_hex

MAX_AGENT_CONFIG_BYTES = 64 * 1024


@dataclass
class AmphoraCalls:
    server_certificate: object   # amphora.servercert.ServerCertificate
    agent_config: object         # amphora.agentconf.AgentConfigUpdates
    addresses: object            # amphora.addrlookup.AddressLookup
    vrrp: object                 # amphora.vrrp.ControllerVRRP
    max_certificate_bytes: int
    max_config_bytes: int


def install(app) -> None:
    """Add the routes to ``app`` (a face's Klein app, whose instances have ``amphora``)."""

    @app.route("/certificate", methods=["PUT"], endpoint="amphora_certificate")
    def put_server_certificate(face, request):
        calls = face.amphora
        body = read_limited(request, calls.max_certificate_bytes, "server certificate")
        calls.server_certificate.rotate(body)
        return render_json(request, {"message": "OK"}, 202)

    @app.route("/config", methods=["PUT"], endpoint="amphora_config")
    def put_agent_config(face, request):
        body = read_limited(request, MAX_AGENT_CONFIG_BYTES, "agent configuration")
        face.amphora.agent_config.update(body)
        return render_json(request, {"message": "OK"}, 202)

    @app.route("/interface/<ip>", methods=["GET"], endpoint="amphora_interface")
    async def get_interface(face, request, ip):
        name = await face.amphora.addresses.interface_of(ip)
        return render_json(request, {"message": "OK", "interface": name})

    @app.route("/vrrp/upload", methods=["PUT"], endpoint="amphora_vrrp_upload")
    async def put_vrrp_config(face, request):
        calls = face.amphora
        body = read_limited(request, calls.max_config_bytes, "keepalived configuration")
        await calls.vrrp.upload(body)
        request.setHeader(b"etag", md5_hex(body).encode())
        return render_json(request, {"message": "OK"})

    @app.route("/vrrp/<action>", methods=["PUT"], endpoint="amphora_vrrp_action")
    async def put_vrrp_action(face, request, action):
        details = await face.amphora.vrrp.action(action)
        return render_json(request, {"message": "OK", "details": details}, 202)
