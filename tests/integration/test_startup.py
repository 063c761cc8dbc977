"""The start-up sequence: one failing restore step never keeps the later ones from running."""

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import fail

from amphora.agent import build_agent


@pytest_twisted.ensureDeferred
async def test_failing_network_restore_still_restores_listeners(agent_config):
    agent = build_agent(agent_config, reactor)
    calls = []
    agent.network.restore = lambda: fail(RuntimeError("netlink exploded"))
    real_restore = agent.listeners.restore

    def listeners_restore():
        calls.append("listeners")
        return real_restore()

    agent.listeners.restore = listeners_restore
    agent.privilegedStartService()
    agent.startService()
    try:
        await agent.when_ready()
        assert calls == ["listeners"]
        assert agent.is_ready
    finally:
        await agent.stopService()
