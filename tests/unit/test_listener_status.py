"""Pure listener logic: status and type derivation, pool/member mapping, show proc, binds."""

from __future__ import annotations

import os
import socket

import pytest

from amphora.listeners.haproxy import (Bind, bind_addresses, find_bind_conflicts, fragment_text,
                                       listener_type, member_status, parse_show_proc, pool_status,
                                       pools_document)
from amphora.listeners.manager import listener_status
from amphora.listeners.stats import parse_show_stat
from amphora.listeners.store import ListenerStore, is_listener_id
from amphora.process import BACKOFF, FAILED, RUNNING, STARTING, STOPPED, STOPPING

L = "e2dfddc0-5b9e-11e4-8ed6-0800200c9a66"
P = "399bbf4b-5f6c-4370-a61e-ed2ff2fc9387"
M1 = "73f6d278-ae1c-4248-ad02-0bfd50d69aab"
M2 = "2edca57c-5890-4bcb-ae67-4ef75776cc67"


@pytest.mark.parametrize("desired,state,expected", [
    ("started", RUNNING, "ACTIVE"),
    ("stopped", RUNNING, "ACTIVE"),
    (None, RUNNING, "ACTIVE"),
    ("started", BACKOFF, "ERROR"),
    ("started", FAILED, "ERROR"),
    ("started", STARTING, "ERROR"),
    ("started", None, "ERROR"),
    ("stopped", STOPPED, "STOPPED"),
    ("stopped", STOPPING, "STOPPED"),
    (None, None, "STOPPED"),
])
def test_listener_status(desired, state, expected):
    assert listener_status(desired, state) == expected


@pytest.mark.parametrize("text,expected", [
    ("defaults\n mode http\nfrontend f\n bind :80\n", "HTTP"),
    ("defaults\n mode tcp\nfrontend f\n bind :80\n", "TCP"),
    ("frontend f\n bind :80\n", "TCP"),
    ("defaults\n mode tcp\nfrontend f\n mode http\n bind :80\n", "HTTP"),
    ("defaults\n mode http\nfrontend f\n mode tcp\n bind :443\n", "TCP"),
    ("defaults\n mode http\nfrontend f\n bind :443 ssl crt /c/x.pem\n", "TERMINATED_HTTPS"),
    ("frontend f\n  bind 1.2.3.4:443 ssl crt-list /c/l # ssl\n mode http\n", "TERMINATED_HTTPS"),
    ("frontend f\n bind :443 # ssl crt x\n mode http\n", "HTTP"),
    ("listen l\n mode http\n bind :80\n", "HTTP"),
    ("defaults\n mode http\nbackend b\n server s 1.2.3.4:80 ssl\nfrontend f\n mode tcp\n bind :1\n", "TCP"),
])
def test_listener_type(text, expected):
    assert listener_type(text) == expected
    assert listener_type(text.encode()) == expected


def test_bind_addresses():
    text = """frontend a
    bind 127.0.0.1:80,:::81 ssl crt /x
    bind ipv6@[::1]:90-91
    bind unix@/tmp/x
    bind /tmp/sock
    bind *:8080 transparent
    bind ${ADDR}:1
    bind name.example:5
listen l 0.0.0.0:22
backend b
    bind 10.0.0.1:99
"""
    assert [str(b) for b in bind_addresses(text)] == [
        "127.0.0.1:80", "[::]:81", "[::1]:90", "[::1]:91", "*:8080", "*:22"]
    assert [b.freebind for b in bind_addresses(text)][4] is True


@pytest.mark.parametrize("raw,expected", [
    ("UP", "UP"), ("UP 1/3", "UP"), ("DOWN", "DOWN"), ("DOWN 1/2", "DOWN"), ("NOLB", "DRAIN"),
    ("DRAIN", "DRAIN"), ("MAINT", "MAINT"), ("MAINT (via b/s)", "MAINT"), ("MAINT(resolution)", "MAINT"),
    ("no check", "NO_CHECK"), ("", "NO_CHECK"),
])
def test_member_status(raw, expected):
    assert member_status(raw) == expected


def test_pool_status():
    assert pool_status("UP", ["UP", "UP"]) == "UP"
    assert pool_status("UP", ["UP", "DOWN"]) == "DEGRADED"
    assert pool_status("UP", ["UP", "MAINT", "DRAIN", "NO_CHECK"]) == "UP"
    assert pool_status("DOWN", ["DOWN", "DOWN"]) == "DOWN"
    assert pool_status("DOWN", []) == "DOWN"
    assert pool_status(None, ["DOWN"]) == "DOWN"
    assert pool_status(None, ["UP", "DOWN"]) == "DEGRADED"


def test_pools_document_from_show_stat():
    csv = f"""# pxname,svname,qcur,status,type,
{L},FRONTEND,,OPEN,0,
{P}:{L},{M1},0,UP,2,
{P}:{L},{M2},0,DOWN,2,
{P}:{L},BACKEND,0,UP,1,
stats,FRONTEND,,OPEN,0,
stats,BACKEND,0,UP,1,
"""
    assert pools_document(parse_show_stat(csv)) == [
        {"uuid": P, "status": "DEGRADED", "members": [{M1: "UP"}, {M2: "DOWN"}]}]


SHOW_PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
10831           master          2 [failed: 1]   0d00h00m04s     2.6.12-1+deb12u4
# workers
10989           worker          1               0d00h00m01s     2.6.12-1+deb12u4
# old workers
10834           worker          3               0d00h00m09s     2.6.12-1+deb12u4
# programs

"""


def test_parse_show_proc():
    info = parse_show_proc(SHOW_PROC.encode())
    assert (info.master_pid, info.reloads, info.failed) == (10831, 2, 1)
    assert info.workers == [(10989, 1)] and info.old_workers == [(10834, 3)]
    assert info.all_pids == {10831, 10989, 10834}
    with pytest.raises(ValueError):
        parse_show_proc(b"Unknown command.\n")


def test_fragment_text():
    text = fragment_text(L, "/run/x/stats.sock", ["global\n    log 127.0.0.1 local0\n", ""])
    assert "stats socket unix@/run/x/stats.sock mode 600 level admin expose-fd listeners" in text
    assert text.endswith("global\n    log 127.0.0.1 local0\n")


def test_bind_conflicts_against_real_sockets():
    foreign = socket.socket()
    foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    foreign.bind(("127.0.0.1", 0))
    foreign.listen()
    port = foreign.getsockname()[1]
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    try:
        problems = find_bind_conflicts([Bind("127.0.0.1", port, socket.AF_INET)], [])
        assert len(problems) == 1 and f"already in use by pid {os.getpid()}" in problems[0]
        # the wildcard overlaps it too
        assert find_bind_conflicts([Bind("", port, socket.AF_INET)], [])
        # our own socket is allowed (the reload takes it over)
        assert find_bind_conflicts([Bind("127.0.0.1", port, socket.AF_INET)], [os.getpid()]) == []
        assert find_bind_conflicts([Bind("127.0.0.1", free_port, socket.AF_INET)], []) == []
        # an address that is not local cannot be bound
        problems = find_bind_conflicts([Bind("192.0.2.1", free_port, socket.AF_INET)], [])
        assert problems and "Cannot assign requested address" in problems[0]
    finally:
        foreign.close()


def test_sock_diag_dump_matches_proc_net_tcp():
    """The plain-netlink dump of listening sockets sees what /proc/net/tcp{,6} lists."""
    from amphora.listeners.binds import _listening_sockets_diag, _listening_sockets_proc
    held = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"), (socket.AF_INET6, "::")):
        s = socket.socket(family)
        s.bind((host, 0))
        s.listen()
        held.append(s)
    try:
        diag, proc = _listening_sockets_diag(), _listening_sockets_proc()  # other processes come and go
        for s in held:
            ip, port = s.getsockname()[:2]
            mine = [entry for entry in diag if entry[1:3] == (ip, port)]
            assert len(mine) == 1 and mine[0] in proc and mine[0][0] == s.family
    finally:
        for s in held:
            s.close()


def test_store_paths_refuse_anything_but_uuids(tmp_path):
    store = ListenerStore(str(tmp_path / "s"), str(tmp_path / "r"), str(tmp_path / "c"))
    for bad in ("../x", L.upper(), L + "/..", "", "..", L + "\x00"):
        assert not is_listener_id(bad)
        with pytest.raises(ValueError):
            store.config_path(bad)
    assert store.config_path(L) == str(tmp_path / "s" / "listeners" / L / "haproxy.cfg")
    assert store.ids() == []
    candidate, created = store.stage_upload(L, b"x")
    assert created and store.ids() == []
    store.commit_upload(L, candidate)
    assert store.ids() == [L] and store.read_config(L) == b"x"
    assert os.listdir(store.state_dir(L)) == ["haproxy.cfg"]
    store.set_desired(L, "started")
    assert store.desired(L) == "started"
    assert store.remove(L) == [] and store.ids() == []


def test_manager_interface_without_haproxy(pki, tmp_path):
    """The shared interface on a manager with stored files only (no haproxy started)."""
    from twisted.internet.task import Clock

    from amphora.config import load_config
    from amphora.listeners.manager import ListenerManager
    from tests.helpers import write_config

    config = load_config(write_config(pki, str(tmp_path / "a"), 0, {"agent": {"run_dir": str(tmp_path / "r")}}))
    manager = ListenerManager(config, Clock())
    store = manager.store
    candidate, _ = store.stage_upload(L, b"frontend f\n    bind :443 ssl crt /certs/x/www.pem,/certs/x/b.pem\n"
                                         b"    mode http\n")
    store.commit_upload(L, candidate)
    manager.restore()  # nothing to adopt, nothing desired: no process
    assert manager.listener_ids() == [L] and manager.exists(L) and not manager.exists(P)
    assert manager.running_ids() == [] and manager.running_count() == 0
    assert manager.stats_socket(L) == os.path.join(str(tmp_path / "r"), "listeners", L, "stats.sock")
    assert manager.uses_file(L, "/certs/x/www.pem") and manager.uses_file(L, "/certs/x/b.pem")
    assert not manager.uses_file(L, "/certs/x/w") and not manager.uses_file(P, "/certs/x/www.pem")
    assert manager.status_list() == [{"status": "STOPPED", "uuid": L, "type": "TERMINATED_HTTPS"}]
    failures = []
    manager.show_stat(L).addErrback(failures.append)
    manager.runtime(P, "show info").addErrback(failures.append)
    assert "not running" in str(failures[0].value) and "No listener" in str(failures[1].value)


@pytest.fixture
def _cleanup():
    actions = []
    yield actions
    for action in actions:
        action()


def test_operations_serialise_per_listener_and_run_in_parallel_across(pki, tmp_path, _cleanup):
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from amphora.config import load_config
    from amphora.errors import InvalidRequest
    from amphora.listeners.manager import ListenerManager
    from tests.helpers import write_config

    from tests.listener_support import remove_dir, short_dir

    run_dir = short_dir("amp3")  # the fragment names the stats socket: the path must be short
    config = load_config(write_config(pki, str(tmp_path / "a"), 0, {"agent": {"run_dir": run_dir}}))
    manager = ListenerManager(config, Clock())
    pending = []
    _cleanup.append(lambda: remove_dir(run_dir))

    def check(config_path, fragment, cwd=None, timeout=None):
        with open(config_path, "rb") as f:
            pending.append((f.read(), d := Deferred()))
        return d

    manager.haproxy.check = check
    r1, r2, r3 = [], [], []
    manager.upload(L, b"one\n").addBoth(r1.append)
    manager.upload(L, b"two\n").addBoth(r2.append)    # same listener: waits for the first
    manager.upload(P, b"three\n").addBoth(r3.append)  # another listener: runs at once
    assert [data for data, _ in pending] == [b"one\n", b"three\n"]
    pending[1][1].callback((True, "Configuration file is valid"))
    assert r3 == ["Configuration file is valid"] and r1 == []
    pending[0][1].callback((True, "Configuration file is valid"))
    assert r1 == ["Configuration file is valid"]
    assert [data for data, _ in pending][2] == b"two\n"
    pending[2][1].callback((False, "[ALERT] parsing [haproxy.cfg:1] : unknown keyword 'two'"))
    assert isinstance(r2[0].value, InvalidRequest) and "unknown keyword" in r2[0].value.details
    assert manager.store.read_config(L) == b"one\n"  # byte-identical after the refused upload
    assert manager.listener_ids() == sorted([L, P])
    # a refused first upload leaves neither files nor a lock behind
    q = "5c1a2f7e-0000-4000-8000-000000000001"
    r4 = []
    manager.upload(q, b"bad\n").addBoth(r4.append)
    pending[3][1].callback((False, "[ALERT] bad"))
    assert isinstance(r4[0].value, InvalidRequest)
    assert q not in manager._locks and not manager.exists(q)
    assert not os.path.exists(manager.store.state_dir(q)) and not os.path.exists(manager.store.run_dir(q))
