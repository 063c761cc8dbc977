"""The server presents its whole chain: a client that trusts only the root still verifies it."""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from amphora import devpki
from amphora.agent import build_agent
from amphora.client import make_client
from amphora.config import load_config
from tests.helpers import write_config


@pytest_twisted.ensureDeferred
async def test_intermediate_chain_is_presented(pki, tmp_path):
    intermediate = devpki.make_ca("test intermediate", issuer=pki.ca)
    leaf = devpki.issue(intermediate, pki.amphora_id, server=True, dns=("localhost",))
    chain = pki.write("chain-server.pem", leaf.cert_pem + intermediate.cert_pem + leaf.key_pem)
    path = write_config(pki, str(tmp_path / "a"), 0, {"tls": {"server_cert": chain}})
    agent = build_agent(load_config(path), reactor)
    agent.privilegedStartService()
    agent.startService()
    client = make_client(reactor, pki.paths["ca"], pki.paths["client_cert"], pki.paths["client_key"],
                         server_name="localhost")
    try:
        await agent.when_ready()
        response = await client.get(f"https://127.0.0.1:{agent.api_port}/info")
        assert response.code == 200
        assert json.loads(await response.content())["uuid"] == pki.amphora_id
    finally:
        await client.pool.closeCachedConnections()
        await agent.stopService()
