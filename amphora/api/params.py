"""What every route checks before it touches anything: the 503 gate, body size, JSON shape, ids."""

from __future__ import annotations

import functools
import json

from amphora.errors import InvalidRequest, PayloadTooLarge
from amphora.listeners.store import check_listener_id

# The one definition lives with the listener files it protects.
listener_id = check_listener_id


def gated(route):
    """The spec's 503 "Topology transition in progress" for a mutating route, checked before
    the route reads anything of the request. For methods of a class with ``self.agent``
    (the composition root: ``agent.topology``); every face's mutating routes use it."""

    @functools.wraps(route)
    def gate(self, request, *args, **kwargs):
        self.agent.topology.check_gate()
        return route(self, request, *args, **kwargs)

    return gate


def read_body(request, limit: int) -> bytes:
    """The request body, or 413 when it is larger than ``limit`` bytes."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes")
    return data


def json_body(request, limit: int = 64 * 1024, required: bool = True) -> dict | None:
    """The body as a JSON object; an empty body is None when not ``required``."""
    data = read_body(request, limit)
    if not data.strip():
        if required:
            raise InvalidRequest("a JSON object body is required")
        return None
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidRequest("body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return body
