"""The access log: one structured event per API request, cheap enough to leave on.

Every request the site answers becomes one ``twisted.logger`` event in the
namespace ``amphora.access`` with the fields ``method``, ``path`` (no query
string), ``status``, ``duration_ms`` and ``client`` (the verified client
certificate's subject, or None); never bodies, headers or key material. Any
observer sees it as it would a ``Logger.info`` event (same keys, same
``log_format``).

What made it expensive was not the event but its rendering: Twisted's text
observer formats the time zone and the template of every event and flushes the
file after each (about 150 µs per line on a 2-core box, half a keep-alive
request's cost). So:

- the event is built here as a plain dict and handed to the global publisher,
  without ``Logger.emit``'s generic path;
- the agent's observers (``amphora.logging``: the default text one and the
  JSON one) render access events with :func:`text_line` / :func:`json_line`,
  which skip Twisted's formatter, and write through a buffered writer thread
  flushed on a short timer and at exit: a slow disk never blocks the reactor.
"""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring_ascii

from twisted.logger import LogLevel, Logger, eventAsJSON, globalLogPublisher

NAMESPACE = "amphora.access"
FORMAT = "{method} {path} {status} {duration_ms}ms {client}"

_logger = Logger(namespace=NAMESPACE)
_SYSTEM = f" [{NAMESPACE}#info] "
# The JSON form of LogLevel.info as Twisted's JSON observer writes it (with the
# class marker that lets eventsFromJSONLogFile turn it back into a LogLevel).
_JSON_LEVEL = json.loads(eventAsJSON({"log_level": LogLevel.info}))["log_level"]
_string = encode_basestring_ascii
_JSON_TAIL = (f'"log_level": {json.dumps(_JSON_LEVEL)}, "log_namespace": "{NAMESPACE}", "log_source": null, '
              f'"log_format": {json.dumps(FORMAT)}, "log_time": ')


class AccessLog:
    """Emits the access events of one site; ``clock`` times the requests."""

    def __init__(self, clock, publisher=None):
        self.clock = clock
        self.publisher = publisher if publisher is not None else globalLogPublisher

    def record(self, request, status: int) -> None:
        self.publisher({
            "method": request.method.decode("ascii", "replace"),
            "path": request.path.decode("ascii", "replace"),
            "status": status,
            "duration_ms": round((self.clock.seconds() - request.started) * 1000.0, 2),
            "client": getattr(request, "client_subject", None),
            "log_logger": _logger,
            "log_level": LogLevel.info,
            "log_namespace": NAMESPACE,
            "log_source": None,
            "log_format": FORMAT,
            "log_time": time.time(),
        })


def is_access(event) -> bool:
    """An access event this module made (and that nobody gave a ``log_system``)."""
    return event.get("log_logger") is _logger and "log_system" not in event


def text_line(event, stamp: str) -> str:
    """The classic twistd text line of an access event, ``stamp`` being its
    formatted time: exactly what Twisted's text observer would write."""
    text = (f"{stamp}{_SYSTEM}{event['method']} {event['path']} {event['status']} "
            f"{event['duration_ms']}ms {event['client']}\n")
    return text if text.count("\n") == 1 else text[:-1].replace("\n", "\n\t") + "\n"


def json_line(event) -> str:
    """One JSON line with the keys Twisted's JSON observer writes for the event
    (``log_logger`` and ``log_flattened`` left out: the fields are all there),
    assembled from C-escaped strings rather than by a generic encoder."""
    client = event["client"]
    return (f'{{"method": {_string(event["method"])}, "path": {_string(event["path"])}, '
            f'"status": {int(event["status"])}, "duration_ms": {float(event["duration_ms"])!r}, '
            f'"client": {"null" if client is None else _string(str(client))}, {_JSON_TAIL}'
            f'{float(event["log_time"])!r}}}\n')
