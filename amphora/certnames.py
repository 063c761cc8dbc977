"""Certificate file names: the strict rule that keeps every name a plain file in one directory.

Nothing a client sends becomes a path unless it passes ``check_name``.
"""

from __future__ import annotations

import re

from amphora.errors import InvalidRequest

NAME_MAX_BYTES = 255
# Dot-separated labels of letters, digits, '-' and '_', then ".pem": no leading
# dot (hidden files, our own ".tmp-" files), no "..", no empty stem, ASCII only.
# The spec's "WILDCARD.example.com.pem" (for "*.example.com") is just such a name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.pem")


def check_name(raw: object) -> str:
    """The certificate file name, or 400 "Invalid certificate file name"."""
    if not isinstance(raw, str) or not NAME_PATTERN.fullmatch(raw) or len(raw.encode()) > NAME_MAX_BYTES:
        shown = raw if isinstance(raw, str) and len(raw) <= 300 else f"{str(raw)[:300]}..."
        raise InvalidRequest(
            f"{shown!r}: a certificate file name is letters, digits, '-', '_' and single dots, "
            f"ending in .pem, at most {NAME_MAX_BYTES} bytes (use WILDCARD for '*')",
            message="Invalid certificate file name")
    return raw
