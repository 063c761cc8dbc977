"""Validation of what a client puts in a URL or body, before it touches anything."""

from __future__ import annotations

import json

from amphora.errors import InvalidRequest, PayloadTooLarge
from amphora.listeners.store import check_listener_id

# The one definition lives with the listener files it protects.
listener_id = check_listener_id


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
