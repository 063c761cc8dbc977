"""Request parsers: what a client sent -> a domain spec, or a 400 naming the field.

Every value a route takes from a URL, a query or a JSON body is checked here,
before anything is touched, and turned into what the domain works with:

- ``plug``: ``parse_vip_request(face, ip, body)`` and ``parse_network_request(face,
  body)`` -> ``PlugSpec`` (amphora.netspec) for the plugger, with each face's
  error messages (v0.1 and 0.5: ``parse_vip`` / ``parse_vip_body`` /
  ``parse_network_body``; 1.0: Octavia's bodies and words);
- ``topology``: ``parse_topology`` -> ``TopologySpec`` (amphora.topology);
- ``values``: bounded integers (``integer``, ``parse_lines``).

Addresses obey one rule wherever they come from (``address_problem`` in
amphora.netspec, whose field parsers the plugger's state file shares). Errors
are ``InvalidRequest`` / ``InvalidVIP`` with the spec's message and the field in
``details``. Pure functions: no I/O, no HTTP objects but the query arguments
``parse_lines`` reads.
"""

from amphora.api.requests.plug import (FACES, V0_1, V0_5, V1_0, parse_network_body, parse_network_request,
                                       parse_vip, parse_vip_body, parse_vip_request)
from amphora.api.requests.topology import parse_topology
from amphora.api.requests.values import integer, parse_lines

__all__ = ["FACES", "V0_1", "V0_5", "V1_0", "integer", "parse_lines", "parse_network_body",
           "parse_network_request", "parse_topology", "parse_vip", "parse_vip_body", "parse_vip_request"]
