"""The HTTP site in front of the Klein routes.

Three things happen here, before any route runs, for every request:

- the mTLS check: no verified client certificate -> 401 JSON (handshake
  failures never get this far);
- the body cap: a body above ``max_body_bytes`` is not kept in memory or on
  disk; the request is answered 413 JSON. Bodies are never spooled to a
  temporary file (Twisted's default for chunked or >100 kB bodies): a
  certificate upload holds a private key, which must not reach persistent
  storage (certs_dir is a memory filesystem for that reason). A client
  without a certificate (answered 401) has its body discarded;
- the access log: one structured event per request (method, path, status,
  duration, client subject); never bodies, headers or key material.

Malformed framing never reaches a request: ``amphora.api.http.AgentChannel``
answers it. Here, a ``Host`` header that is not host[:port] and a request
target that is not a path (``GET *``) are 400 JSON, and anything that still
escapes a resource is a 500 JSON without a traceback, never Twisted's HTML.
"""

from __future__ import annotations

import io
import json
import weakref
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from amphora.api.accesslog import AccessLog
from amphora.api.http import AgentChannel, host_problem, text
from amphora.api.tls import peer_subject
from amphora.errors import AgentError, InvalidRequest, PayloadTooLarge, Unauthorized

log = Logger(namespace="amphora.access")  # failures of a request; access events: amphora.api.accesslog


class ErrorResource(Resource):
    """Answers every method with one JSON error."""

    isLeaf = True

    def __init__(self, error: AgentError):
        super().__init__()
        self.error = error

    def render(self, request):
        return render_error(request, self.error)


_encode = json.JSONEncoder(check_circular=False).encode  # our documents never refer to themselves
_JSON = [b"application/json"]


def render_json(request, obj, code: int = 200) -> bytes:
    """``obj`` as the JSON answer, with its length: Twisted then writes it in one piece
    rather than as chunks (cheaper for both ends, see bench/request_path.py)."""
    body = _encode(obj).encode()
    request.setResponseCode(code)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", _JSON)
    headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
    return body


def render_accepted(request, deferred):
    """202 ``{"message": "OK", "details": <what deferred fires with>}``: the plug routes of every face."""
    return deferred.addCallback(lambda details: render_json(request, {"message": "OK", "details": details}, 202))


def render_error(request, error: AgentError) -> bytes:
    return render_json(request, error.body(), error.status)


class _Discard(io.BytesIO):
    """A body sink for requests already known to be too large."""

    def write(self, data):
        return len(data)


class AgentRequest(Request):
    """A Request that refuses to keep an oversized body and times itself."""

    body_too_large = False
    _body_seen = 0

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        # The agent takes JSON, PEM and haproxy configurations, never HTML forms: a
        # form body is not parsed into args (where a malformed multipart one would be
        # answered by Twisted itself), it reaches the route like any other body.
        self._parsePOSTFormSubmission = False
        self.started = channel.site.clock.seconds() if hasattr(channel, "site") else 0.0

    def _limit(self) -> int:
        return self.channel.site.max_body_bytes

    def gotLength(self, length):
        # The headers are complete: this connection has made a request in time.
        self.channel.amphora_requests = getattr(self.channel, "amphora_requests", 0) + 1
        deadline = getattr(self.channel, "amphora_deadline", None)
        if deadline is not None:
            self.channel.amphora_deadline = None
            if deadline.active():
                deadline.cancel()
        if length is not None and length > self._limit():
            self.body_too_large = True
            self.content = _Discard()
            return
        if _client_subject(self.channel) is None:
            self.content = _Discard()  # the answer is 401: keep nothing of an anonymous body
            return
        # In memory, never Twisted's temporary file (see the module docstring); the
        # cap in handleContentChunk bounds it, Content-Length or not.
        self.content = io.BytesIO()

    def connectionLost(self, reason):
        site = getattr(self.channel, "site", None)
        finished = self.finished
        super().connectionLost(reason)
        if site is not None and not finished and getattr(self, "client_subject", None) is not None:
            # The client went away before the answer: the operation still runs to
            # its end (see AgentKlein); the access log says who left.
            site.log_access(self, status=499)

    def process(self):
        if not self.path.startswith(b"/"):
            # "*" (Twisted answers it itself, 405 or an empty 200) or an absolute URI:
            # no route takes either.
            self.site = self.channel.site
            self.prepath, self.postpath = [], []
            self.channel.persistent = False
            self.setHeader(b"connection", b"close")
            self.render(ErrorResource(InvalidRequest(
                f"the request target must be a path starting with /, got {text(self.uri)!r}")))
            return
        super().process()

    def processingFailed(self, reason):
        # Whatever escaped a resource (Klein catches the routes' own errors): one JSON
        # 500, logged once in text, never Twisted's HTML page with its traceback.
        log.failure("{method} {path} failed", failure=reason, method=text(self.method), path=text(self.path))
        if not self.finished and not self.startedWriting:
            body = render_error(self, AgentError("unexpected error; see the agent log"))
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
        if not self.finished:
            self.finish()
        return reason

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        self._body_seen += len(data)
        if self._body_seen > self._limit():
            self.body_too_large = True
            self.content.close()
            self.content = _Discard()
            return
        super().handleContentChunk(data)


_UNSET = object()


def _client_subject(channel) -> str | None:
    """The verified client certificate's subject on this connection (read once: it cannot change)."""
    subject = getattr(channel, "amphora_client_subject", _UNSET)
    if subject is _UNSET:
        subject = channel.amphora_client_subject = peer_subject(channel.transport)
    return subject


class AgentSite(Site):
    requestFactory = AgentRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource, clock, max_body_bytes: int, header_deadline: float = 30.0,
                 body_deadline: float = 60.0, body_limit=None, **kwargs):
        super().__init__(resource, **kwargs)
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.header_deadline = header_deadline
        self.access = AccessLog(clock)
        # A body must be complete this long after its headers (amphora.api.http).
        self.body_deadline = body_deadline
        # (method, path) -> the route's body cap, checked before "100 Continue".
        self.body_limit = body_limit

    def protocol(self):
        # Site.buildProtocol calls this: our HTTP/1.1 channel, no HTTP/2 (no ALPN is offered).
        return AgentChannel()

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        if protocol is not None and self.header_deadline:
            # Cancelled by the first request's headers (gotLength), and holding the
            # connection only weakly: a connection that closes before is freed at
            # once, not kept until its deadline.
            channel = getattr(protocol, "_channel", protocol)
            channel.amphora_deadline = self.clock.callLater(
                self.header_deadline, self._enforce_header_deadline, weakref.ref(protocol))
        return protocol

    def _enforce_header_deadline(self, ref) -> None:
        """A connection that has not completed a request's headers within the
        deadline (TLS handshake included) is dropped.

        The idle timeout alone restarts with every byte, so a client dripping a
        byte now and then, with or without a certificate, could hold a
        connection open indefinitely.
        """
        protocol = ref()
        if protocol is None:
            return
        channel = getattr(protocol, "_channel", protocol)
        if getattr(channel, "amphora_requests", 0):
            return
        transport = getattr(channel, "transport", None)
        if transport is not None:
            try:
                transport.abortConnection()
            except Exception:  # already gone: nothing to drop
                pass

    def getResourceFor(self, request):
        subject = request.client_subject = _client_subject(request.channel)
        if subject is None:
            # Nothing more is served on a connection without a certificate: close it
            # once the 401 is written, rather than let it idle.
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")
            return ErrorResource(Unauthorized("a client certificate signed by the controller CA is required"))
        problem = host_problem(request.getHeader(b"host"))
        if problem is not None:
            # Klein would fail on it (a 500 and a traceback); no such request is served.
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")
            return ErrorResource(InvalidRequest(problem))
        path = request.path
        if b"%" in path or not path.isascii():  # a plain ASCII path is valid UTF-8 as it is
            try:
                unquote_to_bytes(path).decode("utf-8")
            except UnicodeDecodeError:
                # Klein would answer this with an HTML page; keep the one error shape.
                return ErrorResource(InvalidRequest("the URL path is not valid UTF-8 once percent-decoded"))
        if request.body_too_large:
            return ErrorResource(PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes"))
        return super().getResourceFor(request)

    access_log = True

    def log(self, request):
        if self.access_log:
            self.access.record(request, request.code)

    def log_access(self, request, status: int) -> None:
        self.access.record(request, status)  # amphora.api.accesslog: cheap, structured
