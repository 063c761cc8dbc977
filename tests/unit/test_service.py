"""Plugin discovery, makeService, and the API's error shapes (StubTreq, no sockets)."""

import json

import pytest
from treq.testing import StubTreq
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins

from amphora import tap
from amphora.api.site import AgentSite
from amphora.api.tlsconn import AgentTLSFactory
from amphora.config import load_config
from tests.helpers import write_config


def test_plugin_is_discovered():
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "amphora-agent" in makers
    assert makers["amphora-agent"].module == "amphora.tap"


def test_options_load_config(pki, tmp_path):
    path = write_config(pki, str(tmp_path))
    options = tap.Options()
    options.parseOptions(["--config", path])
    assert options["agent_config"].agent.amphora_id == pki.amphora_id


def test_options_config_error_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.conf"
    bad.write_text("[agent]\namphora_id = nope\n")
    options = tap.Options()
    with pytest.raises(SystemExit) as e:
        options.parseOptions(["--config", str(bad)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "agent.amphora_id" in err and "Traceback" not in err


def test_make_service_builds_the_tree(pki, tmp_path):
    options = tap.Options()
    options.parseOptions(["--config", write_config(pki, str(tmp_path))])
    reactor = MemoryReactorClock()
    service = tap.makeService(options, reactor=reactor)
    assert isinstance(service, MultiService)
    service.privilegedStartService()
    assert reactor.sslServers == []  # TLS is the factory's (amphora.api.tlsconn), over TCP
    assert len(reactor.tcpServers) == 1
    port, factory, _backlog, interface = reactor.tcpServers[0]
    assert interface == "127.0.0.1"
    assert isinstance(factory, AgentTLSFactory) and isinstance(factory.wrappedFactory, AgentSite)
    # the context of every new connection is the holder's current one (rotation applies)
    assert factory._creatorCallable(None).get_context() is service.tls_context.getContext()


@pytest.fixture
def stub(pki, tmp_path):
    from amphora.agent import build_agent
    agent = build_agent(load_config(write_config(pki, str(tmp_path))), MemoryReactorClock())
    agent.facts.haproxy_version = "2.6.0"
    return agent, StubTreq(agent.api.app.resource())




def test_info_document(stub):
    agent, treq = stub
    response = treq.get("https://x/info").result
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    body = json.loads(treq.content(response).result)
    assert body == {"hostname": agent.facts.hostname, "uuid": agent.config.agent.amphora_id,
                    "haproxy_version": "2.6.0", "api_version": "0.1"}


def test_unknown_route_is_json_404(stub):
    _, treq = stub
    response = treq.get("https://x/v0.1/nothing-here").result
    assert response.code == 404
    assert json.loads(treq.content(response).result)["message"] == "Not Found"


def test_wrong_method_is_json_405_with_allow(stub):
    _, treq = stub
    response = treq.delete("https://x/info").result
    assert response.code == 405
    assert "GET" in response.headers.getRawHeaders("allow")[0]
    assert json.loads(treq.content(response).result)["message"] == "Method Not Allowed"


def test_unexpected_exception_is_json_500_without_traceback(stub):
    agent, treq = stub

    class Broken:
        def document(self):
            raise RuntimeError("secret internals")

    agent.api.topology = Broken()
    response = treq.get("https://x/v0.1/topology").result
    assert response.code == 500
    body = treq.content(response).result
    assert b"Traceback" not in body and b"secret internals" not in body
    assert json.loads(body)["message"] == "Internal Server Error"


@pytest.mark.parametrize("length", [10, 150_000, None])
def test_request_bodies_stay_in_memory_and_anonymous_ones_are_dropped(length):
    """Never Twisted's temporary file (a body may hold a private key); nothing kept from a
    client without a certificate (it is answered 401)."""
    import io

    from twisted.web.resource import Resource
    from twisted.web.test.requesthelper import DummyChannel

    from amphora.api.site import AgentRequest, AgentSite

    site = AgentSite(Resource(), clock=MemoryReactorClock(), max_body_bytes=200_000)
    for subject, kept in (("CN=controller", True), (None, False)):
        channel = DummyChannel()
        channel.site = site
        channel.amphora_client_subject = subject
        request = AgentRequest(channel)
        request.gotLength(length)
        request.handleContentChunk(b"k" * 1000)
        assert isinstance(request.content, io.BytesIO)
        request.content.seek(0)
        assert request.content.read() == (b"k" * 1000 if kept else b"")


def test_deeply_nested_json_is_400_not_500(stub):
    _, treq = stub
    body = b'{"a":' * 5000 + b"1" + b"}" * 5000
    response = treq.post("https://x/v0.1/topology", data=body).result
    assert response.code == 400
    assert "nested too deeply" in json.loads(treq.content(response).result)["details"]


def test_os_error_is_500_naming_the_cause(stub):
    agent, treq = stub

    class FullDisk:
        def document(self):
            raise OSError(28, "No space left on device")

    agent.api.topology = FullDisk()
    response = treq.get("https://x/v0.1/topology").result
    assert response.code == 500
    body = json.loads(treq.content(response).result)
    assert body == {"message": "Internal Server Error", "details": "No space left on device (errno 28)"}


def test_ready_fires_waiters_before_and_after():
    from amphora.agent import Ready

    ready, got = Ready(), []
    ready.wait().addCallback(got.append)
    assert got == [] and not ready.fired
    ready.fire("agent")
    ready.wait().addCallback(got.append)
    assert got == ["agent", "agent"] and ready.fired
