"""Reloads through the real mTLS API on real haproxy: what follows a reload confirmed early."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.helpers import free_port
from tests.listener_support import Backend, http_config, new_id


@pytest.fixture
def agent_config_extra(run_dir):
    return {"agent": {"run_dir": run_dir}, "haproxy": {"stop_timeout": "3", "start_timeout": "5"}}


@pytest_twisted.ensureDeferred
async def test_a_stop_right_after_a_reload_ends_haproxy_by_its_signal(agent, api):
    """A reload is confirmed by the new worker while haproxy 2.6's re-executed master still sets
    up, and a signal it gets then is lost: a stop right after a reload waits for the master's CLI,
    so SIGUSR1 ends it (no SIGTERM after stop_timeout)."""
    escalated = []

    def observe(event):
        if "still running after stop signal" in (event.get("log_format") or ""):
            escalated.append(event)
    globalLogPublisher.addObserver(observe)
    try:
        with Backend("A") as a, Backend("B") as b:
            lid, port = new_id(), free_port()
            for round_ in range(3):
                assert (await api.upload(lid, http_config(lid, port, new_id(), [(new_id(), a.port)])))[0] == 201
                assert (await api.action(lid, "start"))[0] == 202
                assert (await api.upload(lid, http_config(lid, port, new_id(), [(new_id(), b.port)])))[0] == 201
                assert (await api.action(lid, "reload"))[0] == 202
                code, body = await api.action(lid, "stop")
                assert code == 202, body
                assert not escalated, f"round {round_}: SIGUSR1 was lost, the stop escalated to SIGTERM"
    finally:
        globalLogPublisher.removeObserver(observe)
