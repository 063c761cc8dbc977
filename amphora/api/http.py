"""The HTTP/1.1 connection in front of the site: every malformed request is
answered at once, in the one JSON error shape, and the connection closed.

Twisted's ``HTTPChannel`` answers framing errors itself with a bare
``400 Bad Request`` (or, for an over-long line, closes nothing until a
timeout). ``AgentChannel`` keeps its parser and replaces those answers:

- a request line over ``MAX_LENGTH`` -> 414, a header line over it, more than
  ``maxHeaders`` headers or more than ``totalHeadersSize`` header bytes -> 431;
- a malformed request line (``HTTP/2.0``, extra spaces), header, duplicate
  ``Content-Length``, bad chunk -> 400;
- a ``Content-Length`` above the body cap -> 413 as soon as the headers are in,
  before any body byte; with ``Expect: 100-continue`` the route's own cap
  applies, and ``100 Continue`` is only sent for a body the route can take;
- a body that has not fully arrived ``body_deadline`` seconds after its
  headers -> 408 (the idle timeout restarts with every byte, so a client
  dripping its body could otherwise hold a request open for hours).

Each refusal is logged once (method and path as text) and the connection is
closed after the answer: the rest of such a request cannot be trusted to be
framed right.
"""

from __future__ import annotations

import json
import re

from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel

from amphora.errors import AgentError, InvalidRequest, PayloadTooLarge

log = Logger(namespace="amphora.http")


def _error(name: str, status: int, message: str) -> type[AgentError]:
    return type(name, (AgentError,), {"status": status, "message": message})


RequestTimeout = _error("RequestTimeout", 408, "Request Timeout")
URITooLong = _error("URITooLong", 414, "URI Too Long")
HeadersTooLarge = _error("HeadersTooLarge", 431, "Request Header Fields Too Large")


def text(value) -> str:
    """A method, path or header value for a log line or a message: text, never ``b'...'``."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "backslashreplace")
    value = str(value)
    return value if len(value) <= 200 else value[:200] + "..."


# RFC 3986 host[:port]: a registered name (unreserved, pct-encoded, sub-delims),
# an IPv4 address or a bracketed IPv6 literal; at most 255 characters for the name.
_HOST = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2}){1,255}|\[[0-9A-Fa-f:.]{2,45}\]")
_PORT = re.compile(rb"[0-9]{1,5}")


def host_problem(value: bytes | None) -> str | None:
    """Why a ``Host`` header value is unusable, or None (absent is fine: HTTP/1.0)."""
    if value is None or value in _GOOD_HOSTS:
        return None
    problem = _host_problem(value)
    if problem is None and len(_GOOD_HOSTS) < 64:
        _GOOD_HOSTS.add(value)  # clients send the same few Host values again and again
    return problem


_GOOD_HOSTS: set[bytes] = set()


def _host_problem(value: bytes) -> str | None:
    host, sep, port = value.rpartition(b":") if not value.endswith(b"]") else (value, b"", b"")
    if not sep:
        host = value
    if not _HOST.fullmatch(host) or (sep and not _PORT.fullmatch(port)):
        return f"the Host header is not host[:port]: {text(value)!r}"
    return None


class BodyLimits:
    """The body cap of a request, known from its method and path alone.

    ``default`` is the site-wide cap (every body above it is refused at once);
    the routes that take large bodies have their own, smaller, caps, applied
    before ``100 Continue`` is sent.
    """

    # v0.1 and 0.5 (/0.5/listeners/[<amphora>/]<listener>/haproxy), 1.0 (/1.0/loadbalancer/<amphora>/<lb>/haproxy).
    _CONFIG = re.compile(rb"(?:/v0\.1/listeners/[^/?]+|/0\.5/listeners(?:/[^/?]+){1,2}"
                         rb"|/1\.0/loadbalancer/[^/?]+/[^/?]+)/haproxy/?(\?.*)?"
                         rb"|/1\.0/listeners/[^/?]+/[^/?]+/udp_listener/?(\?.*)?")  # keepalived LVS (amphora.lvs)
    _CERTIFICATE = re.compile(rb"/(?:(?:v0\.1|0\.5)/listeners|1\.0/loadbalancer)/[^/?]+/certificates/.*")

    def __init__(self, default: int, config_bytes: int | None = None,
                 certificate_bytes: int | None = None, json_bytes: int = 64 * 1024):
        self.default = default
        self.config_bytes = config_bytes or default
        self.certificate_bytes = certificate_bytes or default
        self.json_bytes = min(json_bytes, default)

    def __call__(self, method: bytes, path: bytes) -> int:
        if self._CONFIG.fullmatch(path):
            return min(self.config_bytes, self.default)
        if self._CERTIFICATE.fullmatch(path):
            return min(self.certificate_bytes, self.default)
        return self.json_bytes


class AgentChannel(HTTPChannel):
    """HTTPChannel whose every refusal is JSON, at once, followed by a close."""

    MAX_LENGTH = 16 * 1024  # one request line or header line (LineReceiver's default, made explicit)

    _refused = False
    _body_call = None
    _last_line = b""

    # -- Twisted's own refusals, in our shape -------------------------------------------

    def lineReceived(self, line):
        self._last_line = line  # what a malformed request line is quoted as
        return super().lineReceived(line)

    def lineLengthExceeded(self, line):
        if hasattr(self, "_command"):
            self.refuse(HeadersTooLarge(f"a header line exceeds {self.MAX_LENGTH} bytes"))
        else:
            self.refuse(URITooLong(f"the request line exceeds {self.MAX_LENGTH} bytes"))

    def _respondToBadRequestAndDisconnect(self):
        if self._receivedHeaderCount > self.maxHeaders:
            self.refuse(HeadersTooLarge(f"more than {self.maxHeaders} header fields"))
        elif self._receivedHeaderSize > self.totalHeadersSize:
            self.refuse(HeadersTooLarge(f"the request line and headers exceed {self.totalHeadersSize} bytes"))
        elif not hasattr(self, "_command"):
            # Twisted sets _command once a request line is parsed (and drops it when the
            # request is complete): without it, the line refused was a request line.
            self.refuse(InvalidRequest(
                "malformed request line: expected METHOD SP /path SP HTTP/1.1 (or HTTP/1.0), got "
                f"{text(self._last_line)!r}"))
        elif self.requests and getattr(self.requests[-1], "method", None) is not None:
            self.refuse(InvalidRequest("malformed request body (form data)"))
        else:
            self.refuse(InvalidRequest(
                "malformed request framing: a bad header line, a duplicate or invalid Content-Length "
                "or Transfer-Encoding, or a bad chunk"))

    # -- the body: its cap and its deadline ---------------------------------------------

    def allHeadersReceived(self):
        method, path = self._command, self._path
        limit = self.site.max_body_bytes
        expect = self.requests[-1].requestHeaders.getRawHeaders(b"expect") or []
        if expect and expect[0].lower() == b"100-continue":
            route_limit = getattr(self.site, "body_limit", None)
            if route_limit is not None:
                limit = min(limit, route_limit(method, path.split(b"?", 1)[0]))
        if self.length is not None and self.length > limit:
            self.refuse(PayloadTooLarge(f"request body of {self.length} bytes exceeds {limit} bytes"))
            return
        super().allHeadersReceived()
        if self.length != 0 and getattr(self.site, "body_deadline", None):
            self._body_call = self.site.clock.callLater(self.site.body_deadline, self._body_too_slow)

    def allContentReceived(self):
        self._cancel_body_deadline()
        super().allContentReceived()

    def _body_too_slow(self) -> None:
        self._body_call = None
        self.refuse(RequestTimeout(f"the request body did not arrive within {self.site.body_deadline:g} s "
                                   "of its headers"))

    def _cancel_body_deadline(self) -> None:
        if self._body_call is not None and self._body_call.active():
            self._body_call.cancel()
        self._body_call = None

    # -- the refusal itself ---------------------------------------------------------------

    def dataReceived(self, data):
        if self._refused:
            return  # nothing after a refused request is read as a request
        super().dataReceived(data)

    def rawDataReceived(self, data):
        if self._refused:
            return
        super().rawDataReceived(data)

    def refuse(self, error: AgentError) -> None:
        """Answer ``error`` in JSON, log it, close the connection; at most once per connection."""
        if self._refused:
            return
        self._refused = True
        self._cancel_body_deadline()
        self.persistent = False
        body = json.dumps(error.body()).encode()
        reason = RESPONSES.get(error.status, b"Error")
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (error.status, reason, len(body)))
        log.info("refused {method} {path}: {status} {details}",
                 method=text(getattr(self, "_command", "-")), path=text(getattr(self, "_path", "-")),
                 status=error.status, details=error.details)
        transport = self.transport
        if transport is None:
            return
        transport.write(head + body)
        self.loseConnection()

    def connectionLost(self, reason):
        self._cancel_body_deadline()
        super().connectionLost(reason)


_LISTENERS = b"/v0.1/listeners/"


def listener_allow(path: bytes) -> tuple[str, ...] | None:
    """The methods of a path under ``/v0.1/listeners/<id>`` (its ``Allow``), or None
    when no route has that path: the answer to a wrong method or ``OPTIONS`` there
    names that path's methods only, never the catch-all's."""
    if not path.startswith(_LISTENERS):
        return None
    lid, sep, rest = path[len(_LISTENERS):].partition(b"/")
    if not lid:
        return None
    if not sep:
        return ("DELETE", "GET")
    word, more, _ = rest.partition(b"/")
    if word == b"certificates":
        return ("DELETE", "GET", "PUT")
    if more or not word:
        return None
    return {b"haproxy": ("GET", "PUT"), b"logs": ("GET",)}.get(word, ("PUT",))  # else an action
