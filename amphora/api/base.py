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
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import PathConverter

from amphora.api.http import text
from amphora.api.site import render_error
from amphora.errors import AgentError, MethodNotAllowed, NotFound, OperationFailed

log = Logger(namespace="amphora.api.app")


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
