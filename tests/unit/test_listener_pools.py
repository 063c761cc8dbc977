"""One show-stat model, two renderers: the v0.1 pool status and the heartbeat agree."""

from amphora.heartbeat import message as msg
from amphora.listeners import pools
from amphora.listeners.stats import parse_show_stat
from tests.heartbeat_support import HEADER, backend_line, frontend_line, server_line

L = "e2dfddc0-5b9e-11e4-8ed6-0800200c9a66"
P1 = "399bbf4b-5f6c-4370-a61e-ed2ff2fc9387"
P2 = "c2f0ad6e-64a2-4a1f-8d3c-6a4a0f61f6a1"
M = ["73f6d278-ae1c-4248-ad02-0bfd50d69aab", "2edca57c-5890-4bcb-ae67-4ef75776cc67",
     "b9e8a6a4-4a7e-4d43-9a3e-2a0d5d0b1a11"]

ROWS = parse_show_stat("\n".join([
    HEADER,
    frontend_line(L),
    server_line(f"{P1}:{L}", M[0], "UP", 1),
    server_line(f"{P1}:{L}", M[1], "UP", 0),      # drained by weight
    server_line(f"{P1}:{L}", M[2], "DOWN", 1),
    backend_line(f"{P1}:{L}", "UP"),
    server_line(P2, M[0], "DOWN", 1),
    backend_line(P2, "DOWN"),
    server_line("stats", "local", "UP", 1),       # not a pool: neither reports it
    backend_line("stats", "UP"),
    backend_line("prometheus-exporter", "UP"),
]) + "\n")


def test_model_reads_pools_members_and_frontends():
    model = pools.model(ROWS)
    assert [f["pxname"] for f in model.frontends] == [L]
    assert [(p.backend, p.pool_id, p.listener_id) for p in model.pools] == [(f"{P1}:{L}", P1, L), (P2, P2, None)]
    assert [m.state for m in model.pools[0].members] == ["UP", "DRAIN", "DOWN"]
    assert [p.state for p in model.pools] == ["DEGRADED", "DOWN"]


def test_api_and_heartbeat_agree():
    api = {p["uuid"]: p for p in pools.pools_document(ROWS)}
    beat = msg.summarize(L, ROWS).pools
    assert set(api) == {P1, P2} and set(beat) == {f"{P1}:{L}", f"{P2}:{L}"}
    # DRAIN for UP with weight 0 in both
    assert api[P1]["members"][1] == {M[1]: "DRAIN"} and beat[f"{P1}:{L}"]["members"][M[1]] == "DRAIN"
    # DEGRADED in the API is a pool the heartbeat reports UP with a DOWN member (Octavia derives DEGRADED)
    assert api[P1]["status"] == "DEGRADED"
    assert beat[f"{P1}:{L}"]["status"] == "UP" and "DOWN" in beat[f"{P1}:{L}"]["members"].values()
    assert api[P2]["status"] == beat[f"{P2}:{L}"]["status"] == "DOWN"


def test_pool_without_backend_row():
    assert pools.pool_status(None, []) == "UP"
    assert pools.pool_status(None, ["DOWN", "MAINT"]) == "DOWN"
    assert pools.pool_status(None, ["DRAIN"]) == "UP"
