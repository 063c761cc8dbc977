"""Fixtures shared by every test.

- ``pki``: one CA, an agent certificate and a controller certificate (session-wide).
- ``agent``: a real agent in this process, on the test reactor, with mutual TLS
  on an ephemeral loopback port; ``client``: a treq client with the controller
  certificate; ``url``: the agent's base URL.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from tests.helpers import make_pki, write_config


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def agent_config_extra():
    """Override in a test module to add configuration ({section: {key: value}})."""
    return {}


@pytest.fixture
def agent_config(pki, tmp_path, agent_config_extra):
    from amphora.config import load_config
    return load_config(write_config(pki, str(tmp_path / "agent"), 0, agent_config_extra))


@pytest_twisted.async_yield_fixture
async def agent(agent_config):
    from twisted.internet import reactor

    from amphora.agent import build_agent

    service = build_agent(agent_config, reactor)
    service.privilegedStartService()
    service.startService()
    try:
        await service.when_ready()
        yield service
    finally:
        await service.stopService()


@pytest.fixture
def url(agent):
    return f"https://127.0.0.1:{agent.api_port}"


@pytest.fixture
def run_dir():
    """A short, private run_dir for tests that run real listeners; removed afterwards."""
    from tests.listener_support import remove_dir, short_dir

    path = short_dir("amp-run")
    yield path
    remove_dir(path)


@pytest.fixture
def listeners(agent, run_dir):
    """The agent's listener manager; every haproxy it ran is killed by pid afterwards.

    The agent only detaches from haproxy when it stops (so a restarted agent can
    adopt it); tests must not leave those processes behind.
    """
    from tests.listener_support import kill_listeners

    manager = agent.listeners
    assert manager is not None
    yield manager
    pids = [p.pid for p in manager._procs.values() if p.pid]
    for proc in manager._procs.values():
        proc.detach()
    kill_listeners(run_dir, pids)


@pytest.fixture
def api(client, url, listeners):
    """The v0.1 listener routes through the real mTLS client (``tests.listener_support.API``)."""
    from tests.listener_support import API

    return API(client, url)


@pytest.fixture
def client(pki):
    from twisted.internet import reactor

    from amphora.client import make_client

    c = make_client(reactor, pki.paths["ca"], pki.paths["client_cert"], pki.paths["client_key"],
                    server_name="localhost")
    yield c
    pytest_twisted.blockon(c.pool.closeCachedConnections())


def pytest_collection_modifyitems(items):
    for item in items:
        if os.sep + "integration" + os.sep in str(item.fspath):
            item.add_marker(pytest.mark.integration)
