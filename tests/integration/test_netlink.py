"""The netlink / namespace adapter (amphora.netlink) against real namespaces and veths.

Checks go through tests.network_support (pyroute2's own namespace support), not
through the code under test.
"""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor

from amphora.netlink import (NetlinkQueries, default_route_devices, in_namespace, interfaces, iproute,
                             remove_address)
from tests.network_support import netlab  # noqa: F401 - fixture

def _namespace_inode():
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_in_namespace_runs_inside_and_leaves_the_caller_where_it_was(netlab):
    ns = netlab.namespace()
    before = _namespace_inode()
    assert in_namespace(ns, _namespace_inode) == netlab.inode(ns)
    assert _namespace_inode() == before
    assert in_namespace("", _namespace_inode) == before
    with pytest.raises(ValueError, match="boom"):  # errors come back to the caller
        in_namespace(ns, lambda: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(FileNotFoundError):
        in_namespace(netlab.name("x"), _namespace_inode)


def test_queries_see_the_namespace_links_addresses_and_default_route(netlab):
    ns = netlab.namespace()
    a, b = netlab.veth(ns, "", up_a=True)
    netlab.add_address(ns, a, "198.51.100.2/24")
    netlab.add_address(ns, a, "2001:db8:5::3:1/64")
    netlab.add_route(ns, a, "0.0.0.0/0", "198.51.100.1")
    found = {i.name: i for i in interfaces(ns)}
    assert set(found) == {"lo", a} and found["lo"].loopback and not found[a].loopback
    assert found[a].holds("198.51.100.2") and not found[a].holds("198.51.100.3")
    assert found[a].holds("2001:db8:5:0:0:0:3:1")  # compared as addresses, not strings
    assert [i.name for i in interfaces(ns, a)] == [a]
    assert default_route_devices(ns, 4) == [a] and default_route_devices(ns, 6) == []
    assert remove_address(ns, a, "198.51.100.2", 24) is True
    assert remove_address(ns, a, "198.51.100.2", 24) is False  # absent is fine
    assert remove_address(ns, "nosuchif0", "198.51.100.2") is False
    assert netlab.addresses(ns, a) == ["2001:db8:5::3:1/64"]
    with iproute(ns) as ipr:  # a socket opened inside stays there
        assert {m.get("ifname") for m in ipr.get_links()} == {"lo", a}


@pytest_twisted.ensureDeferred
async def test_reactor_side_queries_run_in_a_thread(netlab):
    ns = netlab.namespace()
    a, _ = netlab.veth(ns, "")
    netlab.add_address(ns, a, "203.0.113.9/32")
    queries = NetlinkQueries(reactor)
    (link,) = await queries.interfaces(ns, a)
    assert link.holds("203.0.113.9")
    assert await queries.remove_address(ns, a, "203.0.113.9") is True
    assert netlab.addresses(ns, a) == []
    family = await queries.run(ns, lambda: socket.socket(socket.AF_INET).family)
    assert family == socket.AF_INET
