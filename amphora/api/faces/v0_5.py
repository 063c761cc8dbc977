"""The 0.5 face: ``/0.5/...``, the dialect of Octavia controllers 0.5 to 11.x.

These controllers manage one haproxy per listener, like v0.1: every route they
share with v0.1 is served by the v0.1 tree itself (the request is handed to it
as ``/v0.1/<rest>``, so behaviour, validation and errors are v0.1's). This
tree only adds what those controllers send beyond v0.1:

- ``PUT /0.5/listeners/<amphora_id>/<listener_id>/haproxy`` (controllers from
  2016 on name the amphora in the upload path);
- ``GET /0.5/info`` (``api_version`` "0.5").
"""

from __future__ import annotations

from amphora.api.base import new_app, plain_read
from amphora.api.faces.v1_0 import Face
from amphora.api.params import listener_id
from amphora.api.site import render_json

API_VERSION = "0.5"


class Face0_5(Face):
    app = new_app()

    def __init__(self, *, v0_1, **common):
        super().__init__(**common)
        self.v0_1 = v0_1

    @app.route("/info", methods=["GET"])
    @plain_read
    def info(self, request):
        return render_json(request, self.report.info(API_VERSION))

    @app.route("/listeners/<amphora_id>/<lid>/haproxy", methods=["PUT"])
    async def upload(self, request, amphora_id, lid):
        lid = listener_id(lid)
        body = self.upload_body(request, amphora_id)
        details = await self.registry.upload(lid, body)
        return render_json(request, {"message": "OK", "details": details}, 202)

    @app.route("/", branch=True, strict_slashes=False)
    def v0_1_routes(self, request):
        """Everything else is the v0.1 tree's, answered as /v0.1/<the same rest>."""
        request.postpath = [b"v0.1", *request.postpath]
        request.prepath = []
        return self.v0_1
