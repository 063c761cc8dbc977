"""The short way for plain reads (amphora.api.base.AgentResource): same answers as Klein's
path, and every case it does not take goes through Klein's path whole."""

from __future__ import annotations

import json

import pytest
from OpenSSL import crypto
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from amphora import devpki
from amphora.api.base import AgentResource, new_app, plain_read
from amphora.api.site import AgentSite, render_json
from amphora.errors import NotFound

_CA = devpki.make_ca("plain-read CA")
CLIENT = crypto.load_certificate(crypto.FILETYPE_PEM, devpki.issue(_CA, "controller", client=True).cert_pem)


class Routes:
    app = new_app()

    def __init__(self):
        self.calls = []

    @app.route("/doc/<name>", methods=["GET"])
    @plain_read
    def doc(self, request, name):
        self.calls.append(("doc", name, list(request.prepath), list(request.postpath)))
        if name == "missing":
            raise NotFound(f"no {name}")
        return render_json(request, {"name": name})

    @app.route("/later", methods=["GET"])
    @plain_read
    def later(self, request):
        self.calls.append(("later",))
        return succeed(render_json(request, {"later": True}))

    @app.route("/slow", methods=["GET"])
    def not_marked(self, request):
        self.calls.append(("slow",))
        return render_json(request, {"slow": True})

    @app.route("/doc/<name>", methods=["PUT"])
    def put_doc(self, request, name):
        self.calls.append(("put", name))
        return render_json(request, {"put": name}, 201)

    @app.route("/branch", branch=True, strict_slashes=False)
    @plain_read
    def branch(self, request):
        self.calls.append(("branch",))
        return self.child.app.resource()


class Child:
    app = new_app()

    def __init__(self):
        self.calls = []

    @app.route("/leaf", methods=["GET"])
    @plain_read
    def leaf(self, request):
        self.calls.append(("leaf", list(request.prepath), list(request.postpath)))
        return render_json(request, {"leaf": True})


class _Transport(StringTransport):
    def getPeerCertificate(self):
        return CLIENT


def ask(routes, raw: bytes, short: bool = True) -> tuple[int, dict, bytes]:
    """One request through a real AgentSite; ``short=False`` answers it with Klein's path only."""
    resource = routes.app.resource()
    assert isinstance(resource, AgentResource)
    if not short:
        resource.render = super(AgentResource, resource).render  # Klein's own render
    site = AgentSite(resource, clock=Clock(), max_body_bytes=100_000, header_deadline=0)
    site.access_log = False
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
                           hostAddress=IPv4Address("TCP", "127.0.0.1", 9443))
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    headers.pop(b"Date", None)
    return int(lines[0].split()[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost:9443\r\nContent-Length: 0\r\n\r\n".encode()


@pytest.fixture
def routes():
    r = Routes()
    r.child = Child()
    return r


@pytest.mark.parametrize("raw", [get("/doc/a"), get("/doc/missing"), get("/later"), get("/slow"),
                                 get("/nowhere"), get("/doc/a", "PUT"), get("/doc/a", "DELETE"),
                                 get("/doc/a", "HEAD"), get("/branch/leaf"), get("/branch/nowhere"),
                                 get("/doc/%ff")])
def test_the_short_way_answers_what_kleins_path_answers(routes, raw):
    assert ask(routes, raw) == ask(routes, raw, short=False)


def test_a_plain_read_runs_once_on_the_short_way_with_kleins_prepath(routes):
    status, headers, body = ask(routes, get("/doc/a"))
    assert (status, json.loads(body)) == (200, {"name": "a"})
    assert headers[b"Content-Length"] == str(len(body)).encode()
    assert routes.calls == [("doc", "a", [b"doc", b"a"], [])]
    routes.calls.clear()
    ask(routes, get("/doc/a"), short=False)
    assert routes.calls == [("doc", "a", [b"doc", b"a"], [])]


def test_a_failing_plain_read_is_answered_by_the_error_handlers_after_a_second_run(routes):
    status, _, body = ask(routes, get("/doc/missing"))
    assert (status, json.loads(body)["details"]) == (404, "no missing")
    # The short way gave up, put prepath/postpath back, and Klein's path ran the route again.
    assert routes.calls == [("doc", "missing", [b"doc", b"missing"], [])] * 2


def test_a_plain_read_that_answers_later_takes_kleins_path(routes):
    status, _, body = ask(routes, get("/later"))
    assert (status, json.loads(body)) == (200, {"later": True})
    assert routes.calls == [("later",), ("later",)]


def test_unmarked_routes_and_other_methods_run_once(routes):
    assert ask(routes, get("/slow"))[0] == 200
    assert ask(routes, get("/doc/b", "PUT"))[0] == 201
    assert routes.calls == [("slow",), ("put", "b")]


def test_a_branch_renders_its_child_on_the_short_way(routes):
    status, _, body = ask(routes, get("/branch/leaf"))
    assert (status, json.loads(body)) == (200, {"leaf": True})
    assert routes.calls == [("branch",)]
    assert routes.child.calls == [("leaf", [b"branch", b"leaf"], [])]
