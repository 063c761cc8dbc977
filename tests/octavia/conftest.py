"""Fixtures of the Octavia acceptance tests."""

from __future__ import annotations

import pytest

from tests.octavia.support import kill_haproxies_under


@pytest.fixture
def octavia_cleanup(agent, listeners, run_dir):
    """Every haproxy the agent ran for this test (listeners and load balancers) is
    killed by pid afterwards, whatever the test did."""
    yield
    kill_haproxies_under(agent.config.octavia.base_path, run_dir, agent.config.agent.state_dir)


@pytest.fixture
def agent_config_extra(run_dir):
    return {"agent": {"run_dir": run_dir}, "haproxy": {"stop_timeout": "5", "start_timeout": "30"}}
