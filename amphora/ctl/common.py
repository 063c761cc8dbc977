"""What amphora-ctl's commands have in common: exit statuses, the two local errors."""

from __future__ import annotations

EXIT_OK = 0
EXIT_LOCAL = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_CLIENT_ERROR = 4
EXIT_SERVER_ERROR = 5

DEFAULT_URL = "https://localhost:9443"
V = "/v0.1"


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


class LocalError(Exception):
    """A local problem such as an unreadable file (exit 1)."""


def exit_code_for(status: int) -> int:
    if 200 <= status < 300:
        return EXIT_OK
    if 400 <= status < 500:
        return EXIT_CLIENT_ERROR
    if status >= 500:
        return EXIT_SERVER_ERROR
    return EXIT_LOCAL
