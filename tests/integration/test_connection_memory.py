"""Nothing of a served connection outlives it: its header-deadline timer is
cancelled by its first request, and a connection that closes before that is
not kept alive by its timer."""

import gc
import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.http import HTTPChannel


def _deadline_calls(site):
    return [c for c in reactor.getDelayedCalls() if c.func == site._enforce_header_deadline]


def _connect_and_close(port):
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _channels():
    return sum(1 for o in gc.get_objects() if isinstance(o, HTTPChannel))


@pytest_twisted.ensureDeferred
async def test_deadline_timer_is_cancelled_by_the_first_request(agent, client, url):
    before = len(_deadline_calls(agent.site))
    response = await client.get(url + "/info")
    await response.content()
    assert response.code == 200
    assert len(_deadline_calls(agent.site)) == before  # the connection's timer is gone, not pending for 30 s


@pytest_twisted.ensureDeferred
async def test_connection_closed_before_a_request_is_not_kept_by_its_timer(agent):
    gc.collect()
    channels = _channels()
    for _ in range(5):
        await deferToThread(_connect_and_close, agent.api_port)
    await deferLater(reactor, 0.3, lambda: None)
    assert len(_deadline_calls(agent.site)) >= 5  # their deadlines are still ahead...
    gc.collect()
    assert _channels() <= channels  # ...but hold nothing of the closed connections
