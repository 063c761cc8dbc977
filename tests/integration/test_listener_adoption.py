"""The agent restarts (real twistd processes) while haproxy serves: adopted, never restarted.

Plain blocking test: the agents are other processes and the backend runs in
threads, so nothing here needs the reactor.
"""

from __future__ import annotations

import os
import signal
import socket

import psutil

from tests.helpers import TwistdAgent, free_port, write_config
from tests.listener_support import (Backend, BlockingAPI, kill_listeners, listener_pids, new_id, remove_dir, short_dir,
                                    tcp_config)


def _call(pki, port, method, path, body=None):
    api = BlockingAPI(pki.paths, port)
    try:
        return api.call(method, path, body)
    finally:
        api.close()


def _masters(run_dir):
    """haproxy masters of this run_dir: haproxy processes whose parent is not one of them."""
    procs = [p for p in psutil.process_iter(["cmdline", "status", "ppid"])
             if p.info["cmdline"] and any(run_dir in a for a in p.info["cmdline"])
             and p.info["status"] != psutil.STATUS_ZOMBIE
             and os.path.basename(p.info["cmdline"][0]) == "haproxy"]
    pids = {p.pid for p in procs}
    return [p for p in procs if p.info["ppid"] not in pids]


def _echo(conn, data):
    conn.sendall(data)
    return conn.recv(1024)


def test_agent_restart_adopts_haproxy_and_keeps_connections(pki, tmp_path):
    run_dir = short_dir("amp3")
    port = free_port()
    config = write_config(pki, str(tmp_path), port, {"agent": {"run_dir": run_dir},
                                                    "haproxy": {"stop_timeout": "3"}})
    agents = []
    conn = None
    try:
        with Backend("T", mode="tcp") as backend:
            agents.append(TwistdAgent(config, str(tmp_path / "agent1.log")).start())
            agents[-1].wait_listening(port)
            lid, lport = new_id(), free_port()
            assert _call(pki, port, "PUT", f"/listeners/{lid}/haproxy",
                         tcp_config(lid, lport, new_id(), [(new_id(), backend.port)]).encode())[0] == 201
            code, body = _call(pki, port, "PUT", f"/listeners/{lid}/start")
            assert code == 202, body
            [pid] = listener_pids(run_dir)
            conn = socket.create_connection(("127.0.0.1", lport), timeout=5)
            assert _echo(conn, b"1") == b"T:1"

            # 1. The agent stops: haproxy stays, the open connection keeps working.
            assert agents[-1].stop() == 0, agents[-1].log()
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            assert _echo(conn, b"2") == b"T:2"

            # 2. A new agent adopts the same pid and starts nothing.
            agents.append(TwistdAgent(config, str(tmp_path / "agent2.log")).start())
            agents[-1].wait_listening(port)
            code, body = _call(pki, port, "GET", f"/listeners/{lid}")
            assert code == 200 and body["status"] == "ACTIVE", body
            assert [p.pid for p in _masters(run_dir)] == [pid]
            assert listener_pids(run_dir) == [pid]
            assert _echo(conn, b"3") == b"T:3"
            assert "adopted" in agents[-1].log()
            # It supervises what it adopted: a reload works on the adopted master.
            code, body = _call(pki, port, "PUT", f"/listeners/{lid}/reload")
            assert code == 202, body
            assert [p.pid for p in _masters(run_dir)] == [pid]
            assert _echo(conn, b"4") == b"T:4"  # the old worker finishes its connection

            # 3. haproxy dies while no agent runs: the next agent starts it again.
            assert agents[-1].stop() == 0
            conn.close()
            conn = None
            os.killpg(pid, signal.SIGKILL)
            agents.append(TwistdAgent(config, str(tmp_path / "agent3.log")).start())
            agents[-1].wait_listening(port)
            code, body = _call(pki, port, "GET", f"/listeners/{lid}")
            assert code == 200 and body["status"] == "ACTIVE", (body, agents[-1].log())
            [new_pid] = listener_pids(run_dir)
            assert new_pid != pid
            with socket.create_connection(("127.0.0.1", lport), timeout=5) as c:
                assert _echo(c, b"5") == b"T:5"
            code, body = _call(pki, port, "PUT", f"/listeners/{lid}/stop")
            assert code == 202, body
            assert _masters(run_dir) == []
    finally:
        if conn is not None:
            conn.close()
        for agent in agents:
            agent.kill()
        kill_listeners(run_dir)
        remove_dir(run_dir)
