"""A 1.0 load balancer on real haproxy: one configuration, two frontends (HTTP and TCP), pools named
``<pool>:<listener>``, run through the registry's domain API by a real agent.

The configuration is written by hand in the shape Octavia renders (``daemon``, ``user nobody``,
log targets under /run/rsyslog/octavia, ``stats socket <base_path>/<lb>.sock``, ``server-state-file
<base_path>/<lb>/servers-state``, a global ``maxconn`` of 375,000), with base_path a private
temporary directory.
"""

from __future__ import annotations

import os
import resource

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from amphora.listeners.loadbalancer import needs_relaxed_limits, peer_name
from amphora.listeners.manager import ListenerManager
from amphora.listeners.stats import parse_show_stat
from tests.heartbeat_support import heartbeat_receiver
from tests.helpers import free_port
from tests.listener_support import (Backend, eventually, http_get, new_id, port_open, remove_dir, short_dir,
                                    tcp_echo)

KEY = "loadbalancer-heartbeat-key"


@pytest.fixture
def receiver():
    yield from heartbeat_receiver(KEY)


@pytest.fixture
def octavia_dir():
    path = short_dir("amp-oct")  # <base_path>/<lb>.sock must fit in a UNIX socket address
    yield path
    remove_dir(path)


@pytest.fixture
def agent_config_extra(receiver, run_dir, octavia_dir):
    return {"agent": {"run_dir": run_dir},
            "octavia": {"base_path": octavia_dir},
            "heartbeat": {"controllers": f"127.0.0.1:{receiver.port}", "key": KEY, "interval": "0.3"}}


@pytest.fixture
def backends():
    with Backend("web") as web, Backend("echo", mode="tcp") as echo:
        yield web, echo


def lb_config(lb, base, ids, ports, web, echo, dead) -> str:
    l1, l2, p1, p2, m1, m_down, m2 = ids
    return f"""# Configuration for loadbalancer {lb}
global
    daemon
    user nobody
    log /run/rsyslog/octavia/log local0
    log /run/rsyslog/octavia/log local1 notice
    stats socket {base}/{lb}.sock mode 0666 level user
    server-state-file {base}/{lb}/servers-state
    maxconn 375000

defaults
    log global
    retries 3
    option redispatch
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend {l1}
    maxconn 50000
    bind 127.0.0.1:{ports[0]}
    mode http
    default_backend {p1}:{l1}

frontend {l2}
    maxconn 50000
    bind 127.0.0.1:{ports[1]}
    mode tcp
    default_backend {p2}:{l2}

backend {p1}:{l1}
    mode http
    balance roundrobin
    load-server-state-from-file global
    option httpchk GET /
    server {m1} 127.0.0.1:{web} weight 1 check inter 200 fall 1 rise 1
    server {m_down} 127.0.0.1:{dead} weight 1 check inter 200 fall 1 rise 1

backend {p2}:{l2}
    mode tcp
    balance roundrobin
    load-server-state-from-file global
    server {m2} 127.0.0.1:{echo} weight 1
"""


@pytest_twisted.ensureDeferred
async def test_load_balancer_life_cycle(agent, listeners, receiver, backends, octavia_dir):
    web, echo = backends
    lb = new_id()
    ids = l1, l2, p1, p2, m1, m_down, m2 = [new_id() for _ in range(7)]
    ports = (free_port(), free_port())
    config = lb_config(lb, octavia_dir, ids, ports, web.port, echo.port, free_port()).encode()
    amphora_id = agent.config.agent.amphora_id
    files = listeners.lb_store.files(lb)

    assert await listeners.upload_loadbalancer(lb, amphora_id, config) is None
    assert listeners.kind(lb) == "loadbalancer" and lb not in listeners.running_ids()
    assert not listeners.exists(lb) and listeners.status_list() == []  # v0.1 sees only listeners
    assert listeners.frontends() == [{"status": "ACTIVE", "uuid": l1, "type": "HTTP"},
                                     {"status": "ACTIVE", "uuid": l2, "type": "TCP"}]

    # reload of a never-started load balancer starts it
    details = await listeners.loadbalancer_action(lb, "reload")
    assert details == f"Configuration file is valid\nhaproxy daemon for {lb} started"
    pid = listeners._procs[lb].pid
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert b"-db" in argv and argv[argv.index(b"-L") + 1] == peer_name(amphora_id).encode()
    info = (await listeners.runtime(lb, "show info")).decode()
    worker = int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("Pid:")))
    with open(f"/proc/{worker}/status") as f:
        creds = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(("Uid:", "Gid:"))}
    assert creds["Uid"] != "0" and creds["Gid"] != "0"  # user nobody, and not the root group
    assert (await deferToThread(http_get, ports[0])) == (200, "web")
    assert await deferToThread(tcp_echo, ports[1], b"ping") == b"echo:ping"
    assert os.path.exists(os.path.join(octavia_dir, f"{lb}.sock"))  # the configuration's own stats socket

    # a maxconn the host's descriptor limit cannot serve still starts, and the real limit is known
    limits = listeners.connection_limits()[lb]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert limits["maxconn"] == 375000
    relaxed = needs_relaxed_limits(config, hard)
    with open(files.fragment_path) as f:
        assert ("no strict-limits" in f.read()) == relaxed
    if relaxed:
        assert limits["fd_limit"] <= hard and limits["effective_maxconn"] < limits["maxconn"]

    # start on a running load balancer: success, same process
    details = await listeners.loadbalancer_action(lb, "Start")
    assert details == f"Configuration file is valid\nhaproxy daemon for {lb} started"
    assert listeners._procs[lb].pid == pid

    # a restarted agent adopts the running load balancer (same pid) and knows its limits again
    again = ListenerManager(agent.config, reactor)
    try:
        await again.restore()
        assert again.kind(lb) == "loadbalancer" and again._procs[lb].pid == pid
        assert again.connection_limits()[lb] == limits
    finally:
        for proc in again._procs.values():
            proc.detach()

    # the heartbeat: one entry per frontend, pools keyed <pool>:<listener>
    await eventually(lambda: receiver.beats and set(receiver.beats[-1].body["listeners"]) == {l1, l2}
                     and receiver.beats[-1].body["pools"].get(f"{p1}:{l1}", {}).get("members")
                     == {m1: "UP", m_down: "DOWN"}, timeout=15, message="both frontends and the down member")
    body = receiver.beats[-1].body
    assert set(body["pools"]) == {f"{p1}:{l1}", f"{p2}:{l2}"}
    assert body["pools"][f"{p2}:{l2}"]["members"] == {m2: "no check"}

    # reload: the servers' state is saved first, and the new worker starts from it
    details = await listeners.loadbalancer_action(lb, "reload")
    assert details == f"Listener {lb} reloaded" and listeners._procs[lb].pid == pid
    with open(os.path.join(octavia_dir, lb, "servers-state"), encoding="utf-8") as f:
        state = f.read()
    assert m_down in state and m1 in state
    rows = parse_show_stat(await listeners.runtime(lb, "show stat"))
    assert next(r for r in rows if r["svname"] == m_down)["status"].startswith("DOWN")
    assert (await deferToThread(http_get, ports[0])) == (200, "web")

    # stop, then reload starts it again
    assert await listeners.loadbalancer_action(lb, "stop") == f"Listener {lb} stoped"
    assert lb not in listeners.running_ids() and not await deferToThread(port_open, ports[0])
    details = await listeners.loadbalancer_action(lb, "RELOAD")
    assert details.endswith("started") and lb in listeners.running_ids()
    assert await deferToThread(tcp_echo, ports[1], b"again") == b"echo:again"

    # delete: haproxy stopped, every file gone (certificates included)
    cert_dir = os.path.join(octavia_dir, "certs", lb)
    with open(os.path.join(cert_dir, f"{l1}.pem"), "w") as f:
        f.write("crt-list\n")
    await listeners.delete(lb)
    assert listeners.kind(lb) is None and listeners.frontends() == []
    for path in (files.state_dir, files.run_dir, os.path.join(octavia_dir, lb), cert_dir,
                 os.path.join(octavia_dir, f"{lb}.sock")):
        assert not os.path.exists(path), path
    assert not await deferToThread(port_open, ports[0])
    mark = len(receiver.beats)
    await eventually(lambda: any(b.body["listeners"] == {} for b in receiver.beats[mark:]),
                     message="a beat with no listeners after the delete")
