"""Helpers for the host details tests: a fast-sampling agent, polling, test namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater

# Short sampling for tests: rates within a fraction of a second, a 2 s window.
FAST_INTERVAL = 0.25
FAST_WINDOW = 2.0


async def start_fast_agent(config, interval: float = FAST_INTERVAL, window: float = FAST_WINDOW,
                           dpkg_query: str | None = None):
    """An in-process agent whose sampler ticks every ``interval`` s (knobs set before start)."""
    from amphora.agent import build_agent

    agent = build_agent(config, reactor)
    agent.sampler.interval = interval
    agent.sampler.window = window
    if dpkg_query is not None:
        agent.sampler.packages.dpkg_query = dpkg_query
    agent.privilegedStartService()
    agent.startService()
    try:
        await agent.when_ready()
    except BaseException:
        await agent.stopService()
        raise
    return agent


async def get_details(client, url: str) -> dict:
    response = await client.get(url + "/v0.1/details")
    body = await response.content()
    assert response.code == 200, body
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    return json.loads(body)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def poll(check, timeout: float = 10.0, step: float = 0.1):
    """Await ``check()`` (async, returns a value or None) until it is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await sleep(step)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


def ip(*args: str) -> None:
    """``ip ...`` for test setup/teardown (outside the code under test; short, bounded)."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/var/run/netns", name))


class VethPair:
    """Two namespaces of our own joined by a veth pair with a /30 between them.

    ``a`` (agent side, ``a_if`` = ``a_ip``) and ``b`` (peer side, ``b_if`` =
    ``b_ip``). Names carry the ``amp5`` prefix and the pid, so parallel runs
    on this machine never collide. ``delete()`` is safe to call at any stage.
    """

    def __init__(self, tag: str = ""):
        suffix = f"{os.getpid() % 100000}{tag}"
        self.a = f"amp5a{suffix}"
        self.b = f"amp5b{suffix}"
        self.a_if = f"amp5va{suffix}"[:15]
        self.b_if = f"amp5vb{suffix}"[:15]
        self.a_ip = "10.255.5.1"
        self.b_ip = "10.255.5.2"

    def create(self) -> "VethPair":
        try:
            ip("netns", "add", self.a)
            ip("netns", "add", self.b)
            ip("-n", self.a, "link", "add", self.a_if, "type", "veth", "peer", "name", self.b_if,
               "netns", self.b)
            for ns, ifname, addr in ((self.a, self.a_if, self.a_ip), (self.b, self.b_if, self.b_ip)):
                ip("-n", ns, "addr", "add", f"{addr}/30", "dev", ifname)
                ip("-n", ns, "link", "set", ifname, "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        for ns in (self.a, self.b):
            if netns_exists(ns):
                # Deleting a namespace deletes the veth end inside it (and so the pair).
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
