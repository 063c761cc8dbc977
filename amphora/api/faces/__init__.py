"""The Octavia faces: route trees for the API dialects Octavia controllers speak.

- ``/1.0/...`` (``amphora.api.faces.v1_0``): controllers 12.0 and later; one
  haproxy per load balancer.
- ``/0.5/...`` (``amphora.api.faces.v0_5``): controllers 0.5 to 11.x; the v0.1
  routes under another prefix, plus the two routes those controllers add.
- ``GET /`` (sent as ``GET //``): version discovery, ``{"api_version": "1.0"}``.

Each tree is its own Klein app with the shared error handlers
(``amphora.api.base``), mounted by ``amphora.api.app`` as a branch. A tree takes
explicit collaborators (the haproxy registry, a certificate store, the host
facts and sampler, the topology, the network plugger), never the whole agent: ``build_faces`` is the
one place that hands them out (``amphora.agent.build_parts`` gives it its own).
"""

from __future__ import annotations

from amphora.api.faces.v0_5 import Face0_5
from amphora.api.faces.report import HostReport
from amphora.api.faces.v1_0 import Face1_0
from amphora.api.octavia_amphora import AmphoraCalls, install
from amphora.certfiles import CertificateFiles

# The amphora-wide calls (certificate, config, vrrp, interface), the same on both faces.
install(Face1_0.app)
install(Face0_5.app)

# What Octavia's client reads at GET // to pick its client class; only "1.0" exists.
DISCOVERY = {"api_version": "1.0"}


def build_faces(config, v0_1_resource, *, facts, sampler, topology, listeners, network, amphora,
                interface_rules=None, udp_listeners=None) -> dict:
    """The mounted resources of the Octavia faces, keyed by their path prefix."""
    report = HostReport(facts, sampler, topology, listeners, config.network.namespace)
    report.udp = udp_listeners
    common = {"registry": listeners, "report": report, "gate": topology,
              "amphora_id": config.agent.amphora_id, "max_config_bytes": config.haproxy.max_config_bytes}
    face_1_0 = Face1_0(certificates=CertificateFiles(config.octavia.cert_dir, config.agent.max_certificate_bytes),
                       plugger=network, **common)
    face_0_5 = Face0_5(v0_1=v0_1_resource, **common)
    face_1_0.amphora = face_0_5.amphora = amphora
    from amphora.api.octavia_optional import with_optional  # it imports v1_0's helpers

    resource_1_0 = with_optional(face_1_0.app.resource(), rules=interface_rules, udp=udp_listeners,
                                 gate=topology, amphora_id=config.agent.amphora_id,
                                 max_config_bytes=config.haproxy.max_config_bytes)  # §4.14, §4.15
    return {"1.0": resource_1_0, "0.5": face_0_5.app.resource()}
