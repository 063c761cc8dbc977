"""The package inventory: dpkg-query parsing, the on-disk cache, refresh timing (Clock, fake query)."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from amphora import __version__
from amphora.fsutil import atomic_write_json
from amphora.packages import (
    AGENT_PACKAGE,
    CACHE_FORMAT,
    PackageInventory,
    QueryFailed,
    parse_dpkg_query,
    valid_names,
)

OUTPUT = (b"haproxy\t2.6.12-1+deb12u4\tii \n"
          b"iproute2\t6.1.0-3\tii \n"
          b"keepalived\t1:2.2.7-1+b2\thi \n"
          b"openssl\t3.0.19-1~deb12u2\trc \n"
          b"garbage line\n")


def test_parse_dpkg_query_keeps_installed_only():
    assert parse_dpkg_query(OUTPUT) == {
        "haproxy": "2.6.12-1+deb12u4", "iproute2": "6.1.0-3", "keepalived": "1:2.2.7-1+b2"}


def test_valid_names_defaults_first_then_extras_without_duplicates():
    assert valid_names(["nginx", "haproxy", "Bad Name", "x", "amphora-agent", "lib+c.6-dev"]) == [
        "haproxy", "keepalived", "openssl", "iproute2", "nginx", "lib+c.6-dev"]


class FakeQuery:
    def __init__(self):
        self.calls: list[Deferred] = []
        self.names = None

    def __call__(self, names):
        self.names = names
        d = Deferred()
        self.calls.append(d)
        return d


def inventory(tmp_path, clock, names=(), max_age=100.0, ready=None):
    inv = PackageInventory(clock, str(tmp_path), names, max_age, ready=ready)
    inv.query = FakeQuery()
    return inv


def test_document_before_any_answer_has_the_agent_only(tmp_path):
    inv = inventory(tmp_path, Clock())
    assert inv.document() == [{AGENT_PACKAGE: __version__}]


def test_refresh_writes_the_cache_and_orders_the_document(tmp_path):
    clock = Clock()
    clock.advance(1000)
    inv = inventory(tmp_path, clock, names=["nginx"])
    results = []
    inv.refresh().addCallback(results.append)
    inv.query.calls[0].callback({"nginx": "1.22", "haproxy": "2.6", "openssl": "3.0"})
    assert results == [True]
    assert inv.document() == [{"haproxy": "2.6"}, {"openssl": "3.0"}, {AGENT_PACKAGE: __version__},
                              {"nginx": "1.22"}]
    cached = json.loads((tmp_path / "packages.json").read_text())
    assert cached["packages"]["nginx"] == "1.22" and cached["generated"] == 1000
    assert cached["format"] == CACHE_FORMAT


def test_concurrent_refreshes_share_one_query(tmp_path):
    inv = inventory(tmp_path, Clock())
    results = []
    inv.refresh().addCallback(results.append)
    inv.refresh().addCallback(results.append)
    assert len(inv.query.calls) == 1 and inv.queries == 1
    inv.query.calls[0].callback({"haproxy": "2.6"})
    assert results == [True, True]


def test_failed_query_keeps_previous_versions(tmp_path):
    inv = inventory(tmp_path, Clock())
    inv.refresh()
    inv.query.calls[0].callback({"haproxy": "2.6"})
    results = []
    inv.refresh().addCallback(results.append)
    inv.query.calls[1].errback(QueryFailed("dpkg-query exit 2"))
    assert results == [False]
    assert {"haproxy": "2.6"} in inv.document()


def test_start_serves_the_cache_and_queries_only_once_ready(tmp_path):
    clock = Clock()
    clock.advance(5000)
    atomic_write_json(str(tmp_path / "packages.json"),
                      {"format": CACHE_FORMAT, "generated": 4990.0, "names": [], "packages": {"haproxy": "2.4"}})
    ready = Deferred()
    inv = inventory(tmp_path, clock, ready=lambda: ready)
    inv.startService()
    try:
        assert {"haproxy": "2.4"} in inv.document()  # from the cache, before anything ran
        assert inv.query.calls == []
        clock.advance(10)
        assert inv.query.calls == []  # still not serving: still no query
        ready.callback(None)
        assert len(inv.query.calls) == 1  # once serving: refresh (packages may have changed)
        inv.query.calls[0].callback({"haproxy": "2.6"})
        assert {"haproxy": "2.6"} in inv.document()
        clock.advance(99)
        assert len(inv.query.calls) == 1
        clock.advance(1)  # max_age after the last refresh
        assert len(inv.query.calls) == 2
        inv.query.calls[1].errback(QueryFailed("boom"))
        clock.advance(99)  # a failure retries after min(max_age, 300 s)
        assert len(inv.query.calls) == 2
        clock.advance(1)
        assert len(inv.query.calls) == 3
    finally:
        inv.stopService()
    assert not clock.getDelayedCalls()


def test_broken_or_foreign_cache_is_ignored(tmp_path):
    (tmp_path / "packages.json").write_text("{not json")
    inv = inventory(tmp_path, Clock())
    assert inv.load_cache() is False
    (tmp_path / "packages.json").write_text(json.dumps({"format": 99, "generated": 1, "packages": {}}))
    assert inv.load_cache() is False
    assert inv.document() == [{AGENT_PACKAGE: __version__}]


def test_stop_before_ready_never_queries(tmp_path):
    clock = Clock()
    ready = Deferred()
    inv = inventory(tmp_path, clock, ready=lambda: ready)
    inv.startService()
    inv.stopService()
    ready.callback(None)
    assert inv.query.calls == []


def test_query_that_cannot_spawn_fails_cleanly(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    class NoSpawn(MemoryReactorClock):
        def spawnProcess(self, *a, **kw):
            raise OSError("no such file")

    inv = PackageInventory(NoSpawn(), str(tmp_path), ())
    results = []
    inv.refresh().addCallback(results.append)
    assert results == [False]
    assert inv.document() == [{AGENT_PACKAGE: __version__}]
