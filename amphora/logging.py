"""Log observers for twistd's ``--logger`` option: JSON lines for log shippers.

    twistd -n --pidfile= --logger amphora.logging.json_observer amphora-agent --config FILE

writes every twisted.logger event as one JSON object per line on standard
output (systemd's journal, a container runtime, or a pipe to a shipper picks it
up). The agent's events carry their fields as keys: the access log
(``log_namespace`` ``amphora.access``) has ``method``, ``path``, ``status``,
``duration_ms`` and ``client`` (the certificate subject); domain events carry
``listener``, ``action``, ``pid`` and the like. ``log_format`` keeps the
human-readable template and ``log_time`` the UNIX time.

Events are written with ``twisted.logger.jsonFileLogObserver`` and no record
separator, so the stream is plain JSON Lines rather than RFC 7464 sequences.
Fields that cannot be serialised are written as their ``repr`` by Twisted,
never dropped silently. Bodies and key material are never put in events, so
they never reach this stream.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver


def _stdout():
    """The process's real standard output, line-buffered.

    twistd replaces ``sys.stdout`` with a logging file once logging starts;
    writing log lines there would feed them back into the log. A duplicate of
    file descriptor 1 is immune to that."""
    return io.open(os.dup(sys.__stdout__.fileno() if sys.__stdout__ else 1), "w",
                   encoding="utf-8", errors="backslashreplace", buffering=1)


def json_observer() -> FileLogObserver:
    """``--logger amphora.logging.json_observer``: JSON Lines on standard output."""
    return jsonFileLogObserver(_stdout(), recordSeparator="")

