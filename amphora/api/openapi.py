"""The agent's OpenAPI 3.1 document, served at ``GET /v0.1/openapi.json``.

The source is ``docs/openapi.yaml`` (written by hand, reviewed like code). The
agent ships and serves ``amphora/api/openapi.json``, generated from it with::

    python -m amphora.api.openapi docs/openapi.yaml

so that the agent needs no YAML parser at run time and a wheel carries exactly
the bytes it serves. A unit test fails when the two files differ.

The document is read once, at first use, and its serialised bytes are kept:
serving it costs no parsing or encoding per request.
"""

from __future__ import annotations

import functools
import json
import os
import sys

JSON_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")


@functools.cache
def document_bytes() -> bytes:
    """The JSON document, as served (compact, UTF-8)."""
    with open(JSON_PATH, "rb") as f:
        raw = f.read()
    # Re-encode compactly: validates the file once at start and halves the bytes on the wire.
    return json.dumps(json.loads(raw), separators=(",", ":")).encode()


def document() -> dict:
    """A fresh parsed copy of the document (callers may mutate it)."""
    return json.loads(document_bytes())


def render_yaml_as_json(yaml_text: str) -> str:
    """The JSON text ``openapi.json`` must hold for this YAML source (needs PyYAML)."""
    import yaml  # development-time only

    return json.dumps(yaml.safe_load(yaml_text), indent=1, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m amphora.api.openapi docs/openapi.yaml\n")
        return 2
    with open(argv[0], encoding="utf-8") as f:
        text = render_yaml_as_json(f.read())
    tmp = JSON_PATH + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, JSON_PATH)
    sys.stdout.write(f"wrote {JSON_PATH}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
