"""amphora.lvs with fakes: the ip_vs refusal writes nothing, a refused check keeps the
stored configuration, actions and delete reach the listener's process, restore starts
what was running only where ip_vs is present; the optional routes claim only their
own requests."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from twisted.internet.defer import succeed

from amphora.api.octavia_optional import OptionalRoutes
from amphora.errors import InvalidRequest, NotFound
from amphora.lvs import KernelSupportMissing, UdpListeners

LID = "3f1e2d4c-0000-4000-8000-000000000001"
CONFIG = b"net_namespace amphora-haproxy\nvirtual_server_group g {\n}\n"


class FakeProcess:
    def __init__(self):
        self.running, self.calls = False, []

    def start(self):
        self.calls.append("start")
        self.running = True
        return succeed(1)

    def stop(self):
        self.calls.append("stop")
        self.running = False
        return succeed(None)


def listeners(tmp_path, ipvs=True, code=0):
    config = SimpleNamespace(network=SimpleNamespace(namespace="ns"), keepalived=SimpleNamespace(binary="/k"),
                             agent=SimpleNamespace(state_dir=str(tmp_path / "state"), run_dir=str(tmp_path / "run")))
    checks = []

    def runner(reactor, argv, **kwargs):
        checks.append(open(argv[-1], "rb").read())
        return succeed((b"", b"Unknown keyword 'x'", code))

    udp = UdpListeners(config, None, probe=lambda: ipvs, runner=runner,
                       process_factory=lambda lid: processes.setdefault(lid, FakeProcess()))
    processes: dict = {}
    return udp, processes, checks


def result(d):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_without_ip_vs_upload_and_start_are_503_and_write_nothing(tmp_path):
    udp, processes, checks = listeners(tmp_path, ipvs=False)
    assert udp.details() == {"ip_vs": False, "lvs_listener_process_count": 0, "udp_listeners": []}
    with pytest.raises(KernelSupportMissing) as error:
        udp.upload(LID, CONFIG)
    assert error.value.status == 503 and "(ip_vs)" in error.value.details
    assert checks == [] and not os.path.exists(udp.directory)
    os.makedirs(udp._dir(LID))
    open(udp._config(LID), "wb").write(CONFIG)  # stored while the module was there
    with pytest.raises(KernelSupportMissing):
        udp.action(LID, "start")
    assert result(udp.action(LID, "stop")) == f"keepalivedlvs {LID} stopped"  # stopping needs no kernel
    result(udp.delete(LID))
    assert os.listdir(udp.directory) == [] and processes == {}


def test_upload_checks_what_runs_and_keeps_the_old_one_when_refused(tmp_path):
    udp, processes, checks = listeners(tmp_path)
    assert result(udp.upload(LID, CONFIG)) is None
    assert checks == [b"virtual_server_group g {\n}\n"]  # checked without net_namespace
    assert udp.get_config(LID) == CONFIG and udp.listener_ids() == [LID]
    udp._run = lambda *a, **k: succeed((b"", b"Unknown keyword 'x'", 5))
    failure = result(udp.upload(LID, b"x 1\n"))
    assert failure.check(InvalidRequest) and "Unknown keyword" in failure.value.details
    assert udp.get_config(LID) == CONFIG and sorted(os.listdir(udp._dir(LID))) == [
        "keepalived.conf", "keepalived.run.conf"]
    other = LID[:-1] + "2"
    assert result(udp.upload(other, b"x 1\n")).check(InvalidRequest)
    assert not os.path.exists(udp._dir(other))  # a refused first upload leaves no directory


def test_actions_restore_and_delete(tmp_path):
    udp, processes, _ = listeners(tmp_path)
    result(udp.upload(LID, CONFIG))
    with pytest.raises(InvalidRequest):
        udp.action(LID, "restart")
    with pytest.raises(NotFound):
        udp.action(LID[:-1] + "9", "start")
    assert result(udp.action(LID, "reload")) == f"keepalivedlvs {LID} reloaded"
    result(udp.action(LID, "reload"))
    assert processes[LID].calls == ["start", "stop", "start"] and udp.running_count() == 1

    # A new agent: restore starts what was running, and nothing where ip_vs went away.
    again, started, _ = listeners(tmp_path)
    result(again.restore())
    assert started[LID].calls == ["start"]
    gone, none_started, _ = listeners(tmp_path, ipvs=False)
    result(gone.restore())
    assert none_started == {} and gone.details()["ip_vs"] is False

    result(udp.delete(LID))
    assert processes[LID].calls[-1] == "stop" and not udp.knows(LID) and udp.listener_ids() == []


def test_optional_routes_claim_only_their_requests(tmp_path):
    udp, _, _ = listeners(tmp_path)
    result(udp.upload(LID, CONFIG))
    routes = OptionalRoutes(rules=None, udp=udp, gate=None, amphora_id="a", max_config_bytes=1)

    def claims(method, path):
        return routes.claims(SimpleNamespace(method=method, postpath=path.encode().split(b"/")))

    assert claims(b"PUT", "interface/10.0.0.1/rules")
    assert claims(b"PUT", f"listeners/amp/{LID}/udp_listener") and claims(b"GET", f"listeners/{LID}/udp_listener")
    assert claims(b"PUT", f"loadbalancer/{LID}/reload") and claims(b"DELETE", f"listeners/{LID}")
    other = LID[:-1] + "7"  # a load balancer's id: the 1.0 face's
    assert not claims(b"PUT", f"loadbalancer/{other}/reload") and not claims(b"DELETE", f"listeners/{other}")
    assert not claims(b"DELETE", "listeners/..") and not claims(b"GET", "details")
    assert not claims(b"GET", f"loadbalancer/{LID}/haproxy")
