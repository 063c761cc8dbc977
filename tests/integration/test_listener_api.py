"""Listeners on real haproxy, through the real mTLS API, with real traffic on loopback."""

from __future__ import annotations

import os
import socket

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.helpers import free_port
from tests.listener_support import (Backend, eventually, http_config, http_get, new_id, port_open, reloaded_to, tcp_config,
                                    tcp_echo)


@pytest.fixture
def agent_config_extra(run_dir):
    return {"agent": {"run_dir": run_dir}, "haproxy": {"stop_timeout": "3", "start_timeout": "5"}}


@pytest.fixture
def listeners(listeners):
    """Fast supervision, so crash-and-restart tests take about a second."""
    listeners.supervision.update(backoff_initial=0.2, backoff_max=1.0, stable_after=5.0, poll_interval=0.2)
    return listeners


def files_of(agent, lid):
    cfg = agent.config.agent
    found = []
    # the listener manager's directories, the certificates, and the log socket and files
    for root in (os.path.join(cfg.state_dir, "listeners"), os.path.join(cfg.run_dir, "listeners"),
                 cfg.certs_dir, os.path.join(cfg.run_dir, "logs"), cfg.log_dir):
        for dirpath, dirnames, filenames in os.walk(root):
            found += [os.path.join(dirpath, n) for n in dirnames + filenames if lid in os.path.join(dirpath, n)]
    return found


@pytest_twisted.ensureDeferred
async def test_life_cycle_with_http_and_tcp_traffic(agent, api):
    pool, m1, m2 = new_id(), new_id(), new_id()
    with Backend("A") as a, Backend("B") as b, Backend("T", mode="tcp") as t:
        lid, port = new_id(), free_port()
        text = http_config(lid, port, pool, [(m1, a.port)])
        code, body = await api.upload(lid, text)
        assert (code, body) == (201, {"message": "OK", "details": "Configuration file is valid"})
        code, body = await api.call("GET", f"/listeners/{lid}/haproxy")
        assert code == 200 and body == text.encode()
        code, body = await api.call("GET", "/listeners")
        assert body == [{"status": "STOPPED", "uuid": lid, "type": "HTTP"}]

        code, body = await api.action(lid, "start")
        assert code == 202, body
        assert body["message"] == "OK" and f"haproxy daemon for {lid} started" in body["details"]
        assert "Configuration file is valid" in body["details"]
        assert await deferToThread(http_get, port) == (200, "A")
        code, body = await api.call("GET", f"/listeners/{lid}")
        assert code == 200
        assert body == {"status": "ACTIVE", "uuid": lid, "type": "HTTP",
                        "pools": [{"uuid": pool, "status": "UP", "members": [{m1: "NO_CHECK"}]}]}
        master = agent.listeners._procs[lid].pid

        # A new upload changes nothing until the reload.
        code, body = await api.upload(lid, http_config(lid, port, pool, [(m2, b.port)]))
        assert code == 201
        assert await deferToThread(http_get, port) == (200, "A")
        code, body = await api.action(lid, "reload")
        assert code == 202, body
        assert "reloaded" in body["details"]
        await reloaded_to(port, "B", master)
        assert agent.listeners._procs[lid].pid == master  # hitless: same master

        # A TCP listener beside it.
        tid, tport = new_id(), free_port()
        assert (await api.upload(tid, tcp_config(tid, tport, new_id(), [(new_id(), t.port)])))[0] == 201
        assert (await api.action(tid, "start"))[0] == 202
        assert await deferToThread(tcp_echo, tport, b"ping") == b"T:ping"
        code, body = await api.call("GET", "/listeners")
        assert sorted((d["uuid"], d["status"], d["type"]) for d in body) == sorted(
            [(lid, "ACTIVE", "HTTP"), (tid, "ACTIVE", "TCP")])
        assert agent.listeners.running_count() == 2

        code, body = await api.action(lid, "stop")
        assert code == 202, body
        assert not port_open(port)
        assert (await api.call("GET", f"/listeners/{lid}"))[1]["status"] == "STOPPED"
        assert not psutil.pid_exists(master) or psutil.Process(master).status() == psutil.STATUS_ZOMBIE
        # reload of a stopped listener starts it; stop again
        code, body = await api.action(lid, "reload")
        assert code == 202 and "started" in body["details"], body
        assert await deferToThread(http_get, port) == (200, "B")
        assert (await api.action(lid, "stop"))[0] == 202
        assert (await api.action(lid, "stop"))[0] == 202  # idempotent
        assert not port_open(port)

        for x in (lid, tid):
            code, body = await api.call("DELETE", f"/listeners/{x}")
            assert code == 200 and body["message"] == "OK"
            assert files_of(agent, x) == []
            assert (await api.call("GET", f"/listeners/{x}"))[0] == 404
        assert not port_open(tport)
        assert (await api.call("GET", "/listeners"))[1] == []


async def _serving(api, backend, pool=None, member=None, check=False, members=None):
    """Upload and start one HTTP listener to ``backend``; returns (lid, port, text)."""
    lid, port = new_id(), free_port()
    text = http_config(lid, port, pool or new_id(), members or [(member or new_id(), backend.port)], check=check)
    assert (await api.upload(lid, text))[0] == 201
    code, body = await api.action(lid, "start")
    assert code == 202, body
    return lid, port, text


@pytest_twisted.ensureDeferred
async def test_invalid_config_is_refused_and_nothing_changes(agent, api):
    with Backend("A") as a:
        lid, port, text = await _serving(api, a)
        pid = agent.listeners._procs[lid].pid
        code, body = await api.upload(lid, text.replace("maxconn 1000", "maxconn 1000\n    BAD_LINE"))
        assert code == 400
        assert body["message"] == "Invalid request"
        assert "BAD_LINE" in body["details"] and "unknown keyword" in body["details"]
        assert (await api.call("GET", f"/listeners/{lid}/haproxy"))[1] == text.encode()
        assert await deferToThread(http_get, port) == (200, "A")
        assert agent.listeners._procs[lid].pid == pid
        # A reload afterwards still runs the good configuration.
        assert (await api.action(lid, "reload"))[0] == 202
        assert await deferToThread(http_get, port) == (200, "A")
        # An invalid first upload leaves no listener behind.
        other = new_id()
        assert (await api.upload(other, "garbage\n"))[0] == 400
        assert (await api.call("GET", f"/listeners/{other}/haproxy"))[0] == 404
        assert files_of(agent, other) == []
        assert not agent.logs.collecting(other)  # no log socket bound for a listener that never was


@pytest_twisted.ensureDeferred
async def test_killed_master_is_error_then_restarted(agent, api):
    with Backend("A") as a:
        lid, port, _ = await _serving(api, a)
        proc = agent.listeners._procs[lid]
        old = proc.pid
        os.kill(old, 9)
        await eventually(lambda: agent.listeners.status_list()[0]["status"] == "ERROR", timeout=2,
                         interval=0.005, message="ERROR after kill -9")
        await eventually(lambda: agent.listeners.status_list()[0]["status"] == "ACTIVE", timeout=10,
                         message="ACTIVE again")
        assert proc.pid != old
        assert await deferToThread(http_get, port) == (200, "A")
        assert (await api.call("GET", f"/listeners/{lid}"))[1]["status"] == "ACTIVE"


@pytest_twisted.ensureDeferred
async def test_member_down_makes_pool_degraded(agent, api):
    up, down, pool = new_id(), new_id(), new_id()
    with Backend("A") as a:
        lid, port, _ = await _serving(api, a, pool=pool, check=True,
                                      members=[(up, a.port), (down, free_port())])

        async def pool_state():
            body = (await api.call("GET", f"/listeners/{lid}"))[1]
            return body["pools"] and body["pools"][0]["status"] == "DEGRADED" and body

        body = await eventually(pool_state, timeout=10, interval=0.2)
        assert body["status"] == "ACTIVE"
        assert body["pools"] == [{"uuid": pool, "status": "DEGRADED", "members": [{up: "UP"}, {down: "DOWN"}]}]
        rows = await agent.listeners.show_stat(lid)
        assert any(r["svname"] == down for r in rows)


@pytest_twisted.ensureDeferred
async def test_port_held_by_another_process_is_refused(agent, api):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the worst case: haproxy would share it
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        with Backend("A") as a, Backend("B") as b:
            lid, port, text = await _serving(api, a)
            pool = new_id()
            bad = http_config(lid, port, pool, [(new_id(), b.port)]).replace(
                f"bind 127.0.0.1:{port}", f"bind 127.0.0.1:{port}\n    bind 127.0.0.1:{taken}")
            assert (await api.upload(lid, bad))[0] == 201  # haproxy -c does not try binds
            loads = deferToThread(lambda: [http_get(port) for _ in range(20)])
            code, body = await api.action(lid, "reload")
            assert code == 500, body
            assert f"127.0.0.1:{taken}" in body["details"] and "already in use" in body["details"]
            assert str(os.getpid()) in body["details"]  # names the holder
            assert all(r == (200, "A") for r in await loads)
            assert await deferToThread(http_get, port) == (200, "A")
            # start of a fresh listener on that port is refused the same way
            other = new_id()
            assert (await api.upload(other, http_config(other, taken, pool, [(new_id(), b.port)])))[0] == 201
            code, body = await api.action(other, "start")
            assert code == 500 and "already in use" in body["details"], body
            assert (await api.call("GET", f"/listeners/{other}"))[1]["status"] == "ERROR"
    finally:
        holder.close()


@pytest_twisted.ensureDeferred
async def test_bad_ids_unknown_listeners_and_limits(agent, api):
    unknown = new_id()
    for bad in ("not-a-uuid", "..%2F..%2Fetc", unknown.upper(), unknown + "0", "%2e%2e"):
        for method, path in (("GET", f"/listeners/{bad}"), ("PUT", f"/listeners/{bad}/haproxy"),
                             ("GET", f"/listeners/{bad}/haproxy"), ("PUT", f"/listeners/{bad}/start"),
                             ("DELETE", f"/listeners/{bad}")):
            code, body = await api.call(method, path, b"x" if method == "PUT" else None)
            assert code == 400, (method, path, code, body)
            assert "Invalid listener id" in body["details"]
    for method, path in (("GET", f"/listeners/{unknown}"), ("GET", f"/listeners/{unknown}/haproxy"),
                         ("PUT", f"/listeners/{unknown}/start"), ("PUT", f"/listeners/{unknown}/stop"),
                         ("PUT", f"/listeners/{unknown}/reload"), ("DELETE", f"/listeners/{unknown}")):
        code, body = await api.call(method, path)
        assert code == 404, (method, path)
        assert body == {"message": "Listener Not Found", "details": f"No listener with UUID: {unknown}"}
    code, body = await api.action(unknown, "BAD_TEST_DATA")
    assert (code, body) == (400, {"message": "Invalid request", "details": "Unknown action: BAD_TEST_DATA"})
    limit = agent.config.haproxy.max_config_bytes
    code, body = await api.upload(unknown, b"#" * (limit + 1))
    assert code == 413
    assert not agent.listeners.exists(unknown)
    agent.topology.status = "TOPOLOGY-CHANGE"
    try:
        assert (await api.upload(unknown, b"global\n"))[0] == 503
        assert (await api.action(unknown, "start"))[0] == 503
        assert (await api.call("DELETE", f"/listeners/{unknown}"))[0] == 503
    finally:
        agent.topology.status = "OK"


@pytest_twisted.ensureDeferred
async def test_reload_that_fails_to_load_returns_to_the_last_good_config(agent, api):
    """``haproxy -c`` passes, the real load fails (a socket in a missing directory): roll back."""
    with Backend("A") as a, Backend("B") as b:
        pool, member = new_id(), new_id()
        lid, port, text = await _serving(api, a, pool=pool, member=member)
        proc = agent.listeners._procs[lid]
        master = proc.pid
        broken = http_config(lid, port, pool, [(member, b.port)],
                             extra_global=f"    stats socket /nonexistent-amp3-{lid}/x.sock mode 600")
        assert (await api.upload(lid, broken))[0] == 201
        loads = deferToThread(lambda: [http_get(port) for _ in range(30)])
        code, body = await api.action(lid, "reload")
        assert code == 500, body
        assert body["message"] == "Error reloading haproxy"
        assert "Loading failure" in body["details"] and "nonexistent-amp3" in body["details"]
        assert all(r == (200, "A") for r in await loads)
        assert proc.pid == master and proc.state == "RUNNING"
        assert (await api.call("GET", f"/listeners/{lid}"))[1]["status"] == "ACTIVE"
        # the last good one runs (with the agent's load-server-state-from-file line)
        running = agent.listeners._instances[lid].running_text(text.encode())
        assert agent.listeners.store.read_running(lid) == running
        # the master is healthy: the next good configuration reloads fine
        assert (await api.upload(lid, http_config(lid, port, pool, [(member, b.port)])))[0] == 201
        code, body = await api.action(lid, "reload")
        assert code == 202, body
        await reloaded_to(port, "B", master)
        assert proc.pid == master


@pytest_twisted.ensureDeferred
async def test_stop_lets_open_requests_finish(agent, api):
    with Backend("A") as a:
        lid, port, _ = await _serving(api, a)
        slow = deferToThread(http_get, port, "/slow?1.0", 5.0)
        await deferLater(reactor, 0.3, lambda: None)
        code, body = await api.action(lid, "stop")
        assert code == 202, body
        assert await slow == (200, "A")  # finished although the stop came during it
        assert not port_open(port)


@pytest_twisted.ensureDeferred
async def test_a_slow_check_does_not_delay_other_requests(agent, api, client, url):
    """An upload whose haproxy -c is held back does not hold /info, the listing or other listeners."""
    from twisted.internet.defer import Deferred, ensureDeferred

    gates = []
    real_check = agent.listeners.haproxy.check

    def held_check(*args, **kwargs):
        gate = Deferred()
        gates.append(gate)
        return gate.addCallback(lambda _: real_check(*args, **kwargs))

    agent.listeners.haproxy.check = held_check
    try:
        lid, other = new_id(), new_id()
        upload = ensureDeferred(api.upload(lid, http_config(lid, free_port(), new_id(), [(new_id(), 1)])))
        await eventually(lambda: gates, timeout=5)
        assert (await client.get(url + "/info")).code == 200
        assert (await api.call("GET", "/listeners"))[0] == 200
        second = ensureDeferred(api.upload(other, http_config(other, free_port(), new_id(), [(new_id(), 1)])))
        await eventually(lambda: len(gates) == 2, timeout=5)  # the other listener's check runs meanwhile
        assert not upload.called and not second.called
        for gate in gates:
            gate.callback(None)
        assert (await upload)[0] == 201 and (await second)[0] == 201
    finally:
        agent.listeners.haproxy.check = real_check


@pytest_twisted.ensureDeferred
async def test_start_that_fails_to_load_is_500_with_haproxys_output(agent, api):
    """``haproxy -c`` passes, the real start fails (a socket in a missing directory): the
    spec's 500 ``Error starting haproxy`` carries haproxy's own words, and nothing runs."""
    with Backend("A") as a:
        lid, port = new_id(), free_port()
        broken = http_config(lid, port, new_id(), [(new_id(), a.port)],
                             extra_global=f"    stats socket /nonexistent-amp3-{lid}/x.sock mode 600")
        assert (await api.upload(lid, broken))[0] == 201
        code, body = await api.action(lid, "start")
        assert code == 500, body
        assert body["message"] == "Error starting haproxy"
        assert f"/nonexistent-amp3-{lid}/x.sock" in body["details"] and "ALERT" in body["details"], body
        assert (await api.call("GET", f"/listeners/{lid}"))[1]["status"] == "ERROR"
        assert agent.listeners.running_count() == 0 and not port_open(port)
        assert agent.listeners.store.read_pid(lid) is None
