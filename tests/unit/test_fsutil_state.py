"""``read_state``: every state file is read by type; what cannot be used is moved aside, once (issue 17)."""

from __future__ import annotations

import os

import pytest

from twisted.logger import globalLogPublisher

from amphora.fsutil import read_state


def _logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    return events


def test_missing_file_is_the_default_without_a_problem(tmp_path):
    assert read_state(str(tmp_path / "x.json"), dict, {}) == ({}, None)


def test_good_file_is_returned(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    assert read_state(str(path), dict, {}) == ({"a": 1}, None)
    assert path.exists()


def test_wrong_type_garbage_and_unreadable_are_moved_aside_and_logged_once(tmp_path):
    events = _logged()
    try:
        cases = {"a.json": '"started"', "b.json": "[1,2]", "c.json": "{garbled", "d.json": "true", "e.json": ""}
        for name, content in cases.items():
            (tmp_path / name).write_text(content)
        os.mkdir(tmp_path / "f.json")  # not readable as a file
        for name in [*cases, "f.json"]:
            value, problem = read_state(str(tmp_path / name), dict, {"default": 1})
            assert value == {"default": 1}
            assert problem and str(tmp_path / name) in problem and ".corrupt-" in problem
            assert not (tmp_path / name).exists()
            assert len(list(tmp_path.glob(name + ".corrupt-*"))) == 1
            assert read_state(str(tmp_path / name), dict, "again") == ("again", None)  # logged once
        errors = [e for e in events if e.get("log_level") and e["log_level"].name == "error"
                  and "problem" in e]
        assert len(errors) == 6
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_validator_and_parser(tmp_path):
    path = tmp_path / "running.cfg"
    path.write_bytes(b"")
    value, problem = read_state(str(path), lambda b: None if b.strip() else "is empty", None, parse=bytes)
    assert value is None and "is empty" in problem
    path.write_bytes(b"12 13\n")
    assert read_state(str(path), int, None, parse=lambda b: int(b.split()[0])) == (12, None)
    path.write_bytes(b"garbled\n")
    assert read_state(str(path), int, None, parse=lambda b: int(b.split()[0]))[1]


def test_topology_and_plugged_of_the_wrong_type_do_not_keep_the_agent_from_starting(tmp_path):
    from types import SimpleNamespace

    from amphora.network.plugger import NetworkPlugger
    from amphora.topology import Topology

    for content in ('"ACTIVE"', "[1,2]", "{bad"):
        (tmp_path / "topology.json").write_text(content)
        topo = Topology(str(tmp_path), "host", "amp")
        assert topo.topology == "SINGLE"
        assert not (tmp_path / "topology.json").exists()
    config = SimpleNamespace(network=SimpleNamespace(namespace=""), agent=SimpleNamespace(state_dir=str(tmp_path)))
    for content in ('"eth1"', "[1,2]", '{"interfaces": 3}'):
        (tmp_path / "plugged.json").write_text(content)
        plugger = NetworkPlugger(config, None, None, netlink=object(), run_blocking=lambda fn, *a: None)
        assert plugger._entries == {}
        assert not (tmp_path / "plugged.json").exists()
    assert len(list(tmp_path.glob("topology.json.corrupt-*"))) == 3
    assert len(list(tmp_path.glob("plugged.json.corrupt-*"))) == 3


def test_atomic_write_in_two_steps_and_without_fsync(tmp_path, monkeypatch):
    from amphora import fsutil
    synced = []
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: synced.append(fd))
    path = str(tmp_path / "f")
    fsutil.atomic_write(path, b"old")
    assert open(path, "rb").read() == b"old" and len(synced) == 2  # the file, then the directory
    synced.clear()
    fsutil.atomic_write(path, b"runtime", durable=False)
    assert open(path, "rb").read() == b"runtime" and synced == []
    staged = fsutil.stage_write(path, b"new")
    assert len(synced) == 1 and open(path, "rb").read() == b"runtime"  # nothing visible before the rename
    fsutil.rename_staged(staged, path, sync_dir=False)
    assert open(path, "rb").read() == b"new" and len(synced) == 1
    assert sorted(os.listdir(tmp_path)) == ["f"]
    fsutil.write_new(str(tmp_path / "n"), b"x")
    with pytest.raises(FileExistsError):
        fsutil.write_new(str(tmp_path / "n"), b"y")
