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


def dictreader_rows(text: str) -> list[dict]:
    """The reading parse_show_stat promises: csv.DictReader's, rows without a pxname left out."""
    import csv
    import io
    return [row for row in csv.DictReader(io.StringIO(text.lstrip()[2:])) if row.get("pxname")]


ODD = [
    CSV,
    CSV.replace("\n", "\r\n"),                                           # CRLF
    CSV + "\n\n",                                                        # blank lines
    CSV + f'{P1}:{L1},{M1},0,0,0,1,,5,500,1000,,0,,0,0,0,0,"DOWN, L4CON",1\n',   # quoted, short
    CSV + f"{P1}:{L1},{M2},0\n",                                         # short row
    CSV + f"{P1}:{L1},{M2},{',' * 40}extra,more\n",                      # longer than the header
    CSV + ",nameless,0\n",                                               # no pxname
    CSV.replace("type,", "type,type,", 1),                               # a repeated column name
]


@pytest.mark.parametrize("text", ODD)
def test_rows_are_exactly_dictreaders(text):
    assert parse_show_stat(text) == dictreader_rows(text)
    assert parse_show_stat(text.encode()) == dictreader_rows(text)


@pytest.mark.parametrize("text", ODD)
def test_columns_keep_only_those(text):
    columns = ("svname", "type", "status", "absent", "pxname")
    expected = [{c: row[c] for c in columns if c in row} for row in dictreader_rows(text)]
    assert parse_show_stat(text, columns) == expected
    assert parse_show_stat(text, ("status",)) == [{"status": row["status"]} for row in dictreader_rows(text)]
    assert parse_show_stat(text, ()) == [{} for _ in dictreader_rows(text)]


def test_model_reads_the_same_from_its_columns():
    from amphora.listeners.pools import COLUMNS
    full, some = model(parse_show_stat(CSV)), model(parse_show_stat(CSV, COLUMNS))
    assert [p.backend for p in full.pools] == [p.backend for p in some.pools]
    assert [(p.state, p.members) for p in full.pools] == [(p.state, p.members) for p in some.pools]
    assert [f["pxname"] for f in full.frontends] == [f["pxname"] for f in some.frontends]
