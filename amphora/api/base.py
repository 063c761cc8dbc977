"""What every route tree of the agent shares: the Klein subclass, the path converter
and the error handlers that give every failure the one JSON shape.

The v0.1 tree (``amphora.api.app``) and the Octavia faces (``amphora.api.faces``)
are separate Klein apps; each calls ``install_error_handlers`` so an unknown
route, a wrong method, a domain error or an unexpected exception answers the
same way whichever tree it happened in.
"""

from __future__ import annotations

import inspect

from klein import Klein
from klein._resource import extractURLparts  # Klein's own URL parts, so the short way matches as Klein does
from klein.resource import KleinResource
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import PathConverter

from amphora.api.http import text
from amphora.api.site import render_error
from amphora.errors import AgentError, MethodNotAllowed, NotFound, OperationFailed

log = Logger(namespace="amphora.api.app")


def plain_read(f):
    """Marks a route as a plain read: synchronous, no side effects, safe to run twice. When
    it answers bytes (or a resource, for a branch) ``AgentResource`` serves that at once;
    anything else (a Deferred, an error) and the request goes through Klein's whole path,
    which runs the route again."""
    f.amphora_plain_read = True
    return f


class AgentResource(KleinResource):
    """Klein's resource, with a short way for the plain reads (``plain_read``).

    Klein answers every request through two ``maybeDeferred``, several callbacks,
    ``notifyFinish`` hooks and an adapter: most of what a keep-alive ``GET /info`` costs
    in Python (``bench/request_path.py``). A plain read that returns bytes needs none of
    it: the route is matched and called as Klein would (same URL parts, same
    prepath/postpath), and its bytes returned to Twisted. Everything else, and every
    failure, takes Klein's path from the start, so errors are rendered by the same
    handlers.
    """

    def render(self, request):
        app = self._app
        if request.method == b"GET" or request.method == b"HEAD":
            try:
                url_scheme, server_name, _port, path_info, script_name = extractURLparts(request)
                mapper = app.url_map.bind(server_name, script_name, path_info=path_info,
                                          default_method=request.method.decode("ascii"), url_scheme=url_scheme)
                rule, kwargs = mapper.match(return_rule=True)
                endpoint = app.endpoints[rule.endpoint]
            except Exception:  # unknown route, wrong method, bad URL: Klein's path answers it
                endpoint = None
            if endpoint is not None and getattr(endpoint, "amphora_plain_read", False):
                prepath, postpath = request.prepath, request.postpath
                count = endpoint.segment_count
                request.prepath, request.postpath = prepath + postpath[:count], postpath[count:]
                try:
                    result = app.execute_endpoint(rule.endpoint, request, **kwargs)
                except Exception:
                    result = None
                if isinstance(result, bytes):
                    return result
                if IResource.providedBy(result):  # a branch (the Octavia faces)
                    request.render(getChildForRequest(result, request))
                    return NOT_DONE_YET
                request.prepath, request.postpath = prepath, postpath
        return super().render(request)


class AgentKlein(Klein):
    """Klein, except that a client going away never cancels an operation.

    Klein cancels the Deferred of a route when the client disconnects. For a
    mutating call that would stop a start, stop or delete half-way (desired
    state written, haproxy not started; files left behind a killed haproxy).
    Here every route's work runs to its end; a disconnect only drops the
    answer, and a failure nobody will read is logged instead.
    """

    def execute_endpoint(self, endpoint, request, *args, **kwargs):
        result = super().execute_endpoint(endpoint, request, *args, **kwargs)
        if inspect.iscoroutine(result):
            result = ensureDeferred(result)
        if not isinstance(result, Deferred):
            return result
        answer: Deferred = Deferred()

        def forward(outcome):
            if not answer.called:
                if isinstance(outcome, Failure):
                    answer.errback(outcome)
                else:
                    answer.callback(outcome)
            elif isinstance(outcome, Failure) and not outcome.check(CancelledError):
                log.failure("{method} {path} failed after its client went away", outcome,
                            method=text(request.method), path=text(request.path))
            return None

        result.addBoth(forward)
        return answer

    def resource(self) -> AgentResource:
        return AgentResource(self)


class RestConverter(PathConverter):
    """The rest of the path, even empty, with slashes and newlines (percent-decoded
    ones too): routes that must see every malformed value to refuse it with 400."""

    regex = "(?s:.*)"
    part_isolating = False


def new_app(allowed_for=None) -> AgentKlein:
    """A Klein app for one route tree, with the shared converter, URL rules and error
    handlers (``allowed_for``: see ``install_error_handlers``)."""
    app = AgentKlein()
    app.url_map.converters["rest"] = RestConverter
    # werkzeug answers "//" in a path with a redirect exception, which would end as a 500;
    # an unknown path is a 404 like any other.
    app.url_map.merge_slashes = False
    install_error_handlers(app, allowed_for)
    return app


def not_allowed(request, allowed) -> MethodNotAllowed:
    """405 naming ``allowed`` in the Allow header and the details."""
    request.setHeader(b"allow", ", ".join(allowed).encode())
    return MethodNotAllowed(f"{text(request.method)} is not allowed here; allowed: {', '.join(allowed)}")


def _agent_error(_owner, request, failure):
    error = failure.value
    if error.status >= 500:
        log.warn("{method} {path} failed: {error}", method=text(request.method), path=text(request.path),
                 error=error)
    return render_error(request, error)


def _not_found(_owner, request, failure):
    return render_error(request, NotFound(f"No route for {request.path.decode('ascii', 'replace')}"))


def _os_error(_owner, request, failure):
    # A full disk, a read-only filesystem, a permission problem (the spec's
    # "usually indicates a permissions problem"): say which, without a traceback.
    error = failure.value
    log.error("{method} {path} failed: {error}", method=text(request.method), path=text(request.path),
              error=error)
    return render_error(request, OperationFailed(
        f"{error.strerror or type(error).__name__} (errno {error.errno})", message="Internal Server Error"))


def _unexpected(_owner, request, failure):
    log.failure("unhandled error in {method} {path}", failure=failure, method=text(request.method),
                path=text(request.path))
    return render_error(request, OperationFailed("unexpected error; see the agent log",
                                                 message="Internal Server Error"))


def install_error_handlers(app: Klein, allowed_for=None) -> None:
    """Every failure in ``app`` becomes ``{"message", "details"}`` JSON with its status.

    ``allowed_for(path, allowed) -> list | None`` (optional) may correct the methods a
    405 names (``allowed``: the routing table's), e.g. where a catch-all route matched;
    None there means 404.
    """

    def method_not_allowed(_owner, request, failure):
        allowed = sorted(failure.value.valid_methods or ())
        if allowed_for is not None:
            allowed = allowed_for(request.path, allowed)
            if allowed is None:
                return _not_found(_owner, request, failure)
        return render_error(request, not_allowed(request, allowed))

    app.handle_errors(AgentError)(_agent_error)
    app.handle_errors(WerkzeugNotFound)(_not_found)
    app.handle_errors(WerkzeugMethodNotAllowed)(method_not_allowed)
    app.handle_errors(OSError)(_os_error)
    app.handle_errors(_unexpected)
