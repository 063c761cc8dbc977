import pytest

from amphora.listeners.pools import model
from amphora.listeners.stats import parse_show_stat, pool_id

P1 = "399bbf4b-5f6c-4370-a61e-ed2ff2fc9387"
L1 = "e2dfddc0-5b9e-11e4-8ed6-0800200c9a66"
M1 = "73f6d278-ae1c-4248-ad02-0bfd50d69aab"
M2 = "2edca57c-5890-4bcb-ae67-4ef75776cc67"

CSV = f"""# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,
{L1},FRONTEND,,,1,2,100,10,1000,2000,0,0,1,,,,,OPEN,,,,,,,,,1,2,0,,,,0,
{P1}:{L1},{M1},0,0,0,1,,5,500,1000,,0,,0,0,0,0,UP,1,1,0,0,0,10,0,,1,3,1,,5,,2,
{P1}:{L1},{M2},0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,10,10,,1,3,2,,0,,2,
{P1}:{L1},BACKEND,0,0,0,1,10,5,500,1000,0,0,,0,0,0,0,UP,1,1,0,,0,10,0,,1,3,0,,5,,1,
"""


def test_parse_and_group():
    rows = parse_show_stat(CSV.encode())
    assert len(rows) == 4
    assert rows[0]["svname"] == "FRONTEND" and rows[0]["bin"] == "1000"
    grouped = model(rows)
    assert [f["pxname"] for f in grouped.frontends] == [L1]
    [pool] = [p for p in grouped.pools if p.pool_id == P1]
    assert pool.raw == "UP"
    assert {m.name: m.raw for m in pool.members} == {M1: "UP", M2: "DOWN"}


def test_garbage_is_refused():
    with pytest.raises(ValueError):
        parse_show_stat(b"Unknown command\n")


def test_pool_id():
    assert pool_id(f"{P1}:{L1}") == P1
    assert pool_id(P1) == P1
