"""The package inventory against a real child process: cache across restarts, kill on stop, timeout.

A fake ``dpkg-query`` (a shell script) stands in for the real one: it logs
each run, answers the version written in a file, and can be held back (it
waits while a "block" file exists, bounded) to show what the agent serves
while a query is still running.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import pytest_twisted
from twisted.internet import reactor

from amphora import __version__
from amphora.config import load_config
from amphora.packages import PackageInventory, QueryFailed
from tests.details_support import get_details, poll, start_fast_agent
from tests.helpers import write_config

FAKE = """#!/bin/sh
echo $$ >> {dir}/calls
i=0
while [ -e {dir}/block ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
v=$(cat {dir}/version)
printf 'haproxy\\t%s\\tii \\n' "$v"
printf 'keepalived\\t1:2.2.7-1\\tii \\n'
printf 'openssl\\t3.0.0-1\\trc \\n'
echo "dpkg-query: no packages found matching iproute2" >&2
exit 1
"""


class FakeDpkg:
    def __init__(self, directory):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "dpkg-query")
        with open(self.path, "w") as f:
            f.write(FAKE.format(dir=self.dir))
        os.chmod(self.path, stat.S_IRWXU)
        self.set_version("1.0-cached")

    def set_version(self, version: str) -> None:
        with open(os.path.join(self.dir, "version"), "w") as f:
            f.write(version)

    def block(self, on: bool) -> None:
        path = os.path.join(self.dir, "block")
        if on:
            open(path, "w").close()
        elif os.path.exists(path):
            os.unlink(path)

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.dir, "calls")) as f:
                return [int(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def fake_dpkg(tmp_path):
    fake = FakeDpkg(tmp_path / "fake-dpkg")
    yield fake
    fake.block(False)  # a blocked script ends within a poll step
    for pid in fake.pids():
        if alive(pid):
            os.kill(pid, 9)


def versions(doc) -> dict:
    return {k: v for p in doc["packages"] for k, v in p.items()}


@pytest_twisted.ensureDeferred
async def test_second_start_serves_the_cache_before_any_query(pki, tmp_path, client, fake_dpkg):
    config = load_config(write_config(pki, str(tmp_path / "agent"), 0))
    cache = os.path.join(config.agent.state_dir, "packages.json")

    # First start: no cache; the query runs once the API serves, and its answer is cached.
    agent = await start_fast_agent(config, dpkg_query=fake_dpkg.path)
    try:
        url = f"https://127.0.0.1:{agent.api_port}"

        async def answered():
            return versions(await get_details(client, url)).get("haproxy") == "1.0-cached"
        await poll(answered)
        doc = await get_details(client, url)
        assert versions(doc) == {"haproxy": "1.0-cached", "keepalived": "1:2.2.7-1",
                                 "amphora-agent": __version__}  # openssl "rc": not installed
    finally:
        await agent.stopService()
        await client.pool.closeCachedConnections()
    assert len(fake_dpkg.pids()) == 1
    with open(cache) as f:
        assert json.load(f)["packages"]["haproxy"] == "1.0-cached"

    # Second start: the installed version changed and the query is held back.
    fake_dpkg.set_version("2.0-fresh")
    fake_dpkg.block(True)
    from amphora.agent import build_agent
    agent = build_agent(config, reactor)
    agent.sampler.packages.dpkg_query = fake_dpkg.path
    at_ready = []
    # Registered before start, so it runs first when the API starts accepting.
    agent.when_ready().addCallback(lambda a: at_ready.append(
        (a.sampler.packages.queries, len(fake_dpkg.pids()), versions({"packages": a.sampler.packages.document()}))))
    agent.privilegedStartService()
    agent.startService()
    try:
        await agent.when_ready()
        url = f"https://127.0.0.1:{agent.api_port}"
        # Accepting, and no query had been started: the answer came from the cache.
        assert at_ready == [(0, 1, {"haproxy": "1.0-cached", "keepalived": "1:2.2.7-1",
                                    "amphora-agent": __version__})]
        doc = await get_details(client, url)
        assert versions(doc)["haproxy"] == "1.0-cached"
        await poll(lambda: _succeed(len(fake_dpkg.pids()) == 2))  # the refresh at start runs now ...
        doc = await get_details(client, url)
        assert versions(doc)["haproxy"] == "1.0-cached"  # ... served meanwhile from the cache
        fake_dpkg.block(False)

        async def refreshed():
            return versions(await get_details(client, url)).get("haproxy") == "2.0-fresh"
        await poll(refreshed)
    finally:
        await agent.stopService()
    with open(cache) as f:
        assert json.load(f)["packages"]["haproxy"] == "2.0-fresh"


async def _succeed(value):
    return value


@pytest_twisted.ensureDeferred
async def test_stop_kills_and_reaps_a_running_query(tmp_path, fake_dpkg):
    fake_dpkg.block(True)
    inv = PackageInventory(reactor, str(tmp_path), (), 3600.0, dpkg_query=fake_dpkg.path)
    inv.startService()
    await poll(lambda: _succeed(fake_dpkg.pids()), timeout=5.0)
    pid = fake_dpkg.pids()[0]
    assert alive(pid)
    await inv.stopService()  # fires once the child is reaped
    assert not alive(pid)
    assert inv.document() == [{"amphora-agent": __version__}]
    assert not os.path.exists(os.path.join(str(tmp_path), "packages.json"))


@pytest_twisted.ensureDeferred
async def test_hung_query_is_killed_after_the_timeout(tmp_path, fake_dpkg):
    fake_dpkg.block(True)
    inv = PackageInventory(reactor, str(tmp_path), (), 3600.0, dpkg_query=fake_dpkg.path, timeout=0.5)
    assert await inv.refresh() is False  # fires once the killed child is reaped
    assert not alive(fake_dpkg.pids()[0])
    assert inv.document() == [{"amphora-agent": __version__}]


@pytest_twisted.ensureDeferred
async def test_query_error_is_reported_not_raised(tmp_path):
    inv = PackageInventory(reactor, str(tmp_path), (), 3600.0, dpkg_query="/bin/false")
    assert await inv.refresh() is False
    with pytest.raises(QueryFailed):
        await inv.query(inv.names)
    assert not os.path.exists(os.path.join(str(tmp_path), "packages.json"))
