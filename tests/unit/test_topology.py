"""The topology state machine with a fake keepalived and a Clock: transitions, rollback,
the gate, persistence and the live role (its request parser: tests/unit/test_requests.py)."""

from __future__ import annotations

import json
import os

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from amphora.api.requests import parse_topology
from amphora.errors import OperationFailed, TopologyTransitionInProgress
from amphora.keepalived import auth_pass
from amphora.topology import ACTIVE_STANDBY, STATUS_CHANGE, STATUS_OK, Outcome, Topology

SECRET = "b20e06cf1abcf29c708d3b437f4a29892a0921d0"
AS_ACTIVE = {"topology": "ACTIVE-STANDBY", "role": "ACTIVE", "ha_ip": " 203.0.113.2", "secret": SECRET}
AS_STANDBY = dict(AS_ACTIVE, role="STANDBY")


class FakeKeepalived:
    """Stands in for amphora.keepalived.Keepalived: records calls, reports states on demand."""

    def __init__(self, clock):
        self.clock = clock
        self.calls = []
        self.running = False
        self.vrrp_state = None
        self.settings = None
        self.report_after_start = "BACKUP"   # None: keepalived never reports
        self.fail_apply = None
        self._waiters = []

    def apply(self, settings):
        self.calls.append(("apply", settings))
        if self.fail_apply:
            return defer.fail(OperationFailed(self.fail_apply))
        was_running = self.running
        self.settings, self.running = settings, True
        if not was_running and self.report_after_start:
            self.clock.callLater(0.5, self.report, self.report_after_start)
        return defer.succeed(None)

    def stop(self):
        self.calls.append(("stop",))
        self.running, self.settings, self.vrrp_state = False, None, None
        return defer.succeed(None)

    def stop_leftover(self):
        self.calls.append(("stop_leftover",))
        return defer.succeed(None)

    def wait_state(self):
        d = defer.Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def report(self, state):
        self.vrrp_state = state
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(state)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fake(clock):
    return FakeKeepalived(clock)


@pytest.fixture
def topo(tmp_path, fake, clock):
    t = Topology(str(tmp_path), "amp-host", "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce")
    t.attach(fake, clock, 10.0)
    return t


def to_active_standby(topo, clock, fake, body=AS_ACTIVE):
    assert topo.request(parse_topology(dict(body))) is Outcome.STARTED
    clock.advance(1)
    assert topo.status == STATUS_OK, topo.document()


def test_default_document_is_single_and_active(topo):
    assert topo.document() == {"hostname": "amp-host", "uuid": "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce",
                               "topology": "SINGLE", "role": "ACTIVE", "ha_ip": "",
                               "topology_status": "OK"}
    assert topo.active is True


def test_single_to_active_active_applies_at_once(topo, fake, tmp_path):
    assert topo.request(parse_topology({"topology": "ACTIVE-ACTIVE"})) is Outcome.APPLIED
    assert topo.topology == "ACTIVE-ACTIVE" and topo.status == STATUS_OK and topo.active
    assert fake.calls == []
    assert json.load(open(tmp_path / "topology.json"))["topology"] == "ACTIVE-ACTIVE"


def test_same_topology_is_a_noop(topo, fake, tmp_path):
    assert topo.request(parse_topology({"topology": "SINGLE"})) is Outcome.UNCHANGED
    assert not (tmp_path / "topology.json").exists()
    assert fake.calls == []


def test_active_standby_is_asynchronous_and_gated(topo, clock, fake, tmp_path):
    assert topo.request(parse_topology(dict(AS_ACTIVE))) is Outcome.STARTED
    assert topo.status == STATUS_CHANGE
    assert topo.document()["topology"] == ACTIVE_STANDBY
    with pytest.raises(TopologyTransitionInProgress):
        topo.check_gate()
    with pytest.raises(TopologyTransitionInProgress):
        topo.request(parse_topology({"topology": "SINGLE"}))
    assert not (tmp_path / "topology.json").exists()  # stored only once it worked
    clock.advance(0.5)
    assert topo.status == STATUS_OK
    topo.check_gate()
    doc = topo.document()
    assert doc["ha_ip"] == "203.0.113.2"
    assert doc["role"] == "STANDBY"  # live: keepalived reported BACKUP
    assert topo.active is False
    fake.report("MASTER")
    assert topo.document()["role"] == "ACTIVE" and topo.active is True
    fake.report("FAULT")
    assert topo.document()["role"] == "STANDBY" and topo.active is False
    fake.report("MASTER")
    fake.vrrp_state = None  # keepalived died: nothing reported until it is back
    assert topo.document()["role"] == "STANDBY" and topo.active is False
    stored = (tmp_path / "topology.json").read_text()
    assert SECRET not in stored and SECRET[:8] not in stored
    assert json.loads(stored)["vrrp"]["auth"] == auth_pass(SECRET)
    assert os.stat(tmp_path / "topology.json").st_mode & 0o777 == 0o600
    assert SECRET not in json.dumps(topo.document())


def test_role_before_any_report_is_the_configured_one(topo, clock, fake):
    fake.report_after_start = None
    topo.request(parse_topology(dict(AS_STANDBY)))
    assert topo.document()["role"] == "STANDBY"
    clock.advance(11)  # let the transition time out (and roll back) before the test ends
    assert topo.topology == "SINGLE"


def test_timeout_rolls_back(topo, clock, fake, tmp_path):
    fake.report_after_start = None
    assert topo.request(parse_topology(dict(AS_ACTIVE))) is Outcome.STARTED
    clock.advance(9.9)
    assert topo.status == STATUS_CHANGE
    clock.advance(0.2)
    doc = topo.document()
    assert doc["topology"] == "SINGLE" and doc["topology_status"] == "OK" and doc["ha_ip"] == ""
    assert "no VRRP state from keepalived within 10s" in doc["last_error"]
    assert fake.calls[-1] == ("stop",)
    assert not (tmp_path / "topology.json").exists()


def test_failed_apply_rolls_back_and_shows_last_error(topo, clock, fake):
    fake.fail_apply = "keepalived configuration check failed (exit 5): bad"
    assert topo.request(parse_topology(dict(AS_ACTIVE))) is Outcome.STARTED
    clock.advance(0)
    doc = topo.document()
    assert doc["topology"] == "SINGLE" and doc["topology_status"] == "OK"
    assert "configuration check failed" in doc["last_error"]
    # The next good transition clears it.
    fake.fail_apply = None
    to_active_standby(topo, clock, fake)
    assert "last_error" not in topo.document()


def test_reconfigure_failure_rolls_back_to_previous_settings(topo, clock, fake):
    to_active_standby(topo, clock, fake)
    first = topo.settings
    fake.fail_apply = "boom"
    assert topo.request(parse_topology(dict(AS_ACTIVE, ha_ip="203.0.113.9"))) is Outcome.STARTED
    clock.advance(0)
    fake.fail_apply = None
    clock.advance(2)
    assert topo.settings == first and topo.ha_ip == "203.0.113.2"
    assert fake.calls[-1] == ("apply", first)
    assert "boom" in topo.last_error


def test_role_change_reloads_and_settles(topo, clock, fake):
    to_active_standby(topo, clock, fake)
    assert topo.request(parse_topology(dict(AS_STANDBY))) is Outcome.STARTED
    assert topo.status == STATUS_CHANGE
    clock.advance(1.0)
    assert topo.status == STATUS_OK and topo.settings.role == "STANDBY"
    assert topo.settings.effective_priority == 90


def test_back_to_single_stops_keepalived(topo, clock, fake, tmp_path):
    to_active_standby(topo, clock, fake, AS_STANDBY)
    pending = defer.Deferred()
    fake.stop = lambda: (fake.calls.append(("stop",)), pending)[1]  # keepalived takes its time
    assert topo.request(parse_topology({"topology": "SINGLE"})) is Outcome.STARTED
    doc = topo.document()
    assert doc["topology"] == "SINGLE" and doc["role"] == "ACTIVE" and doc["topology_status"] == STATUS_CHANGE
    pending.callback(None)
    assert topo.status == STATUS_OK and topo.topology == "SINGLE" and topo.ha_ip == ""
    assert fake.calls[-1] == ("stop",)
    assert json.load(open(tmp_path / "topology.json"))["topology"] == "SINGLE"


def test_same_active_standby_again_is_a_noop(topo, clock, fake):
    to_active_standby(topo, clock, fake)
    calls = len(fake.calls)
    assert topo.request(parse_topology(dict(AS_ACTIVE, ha_ip="203.0.113.2"))) is Outcome.UNCHANGED
    assert len(fake.calls) == calls
    # A different secret is a change, though the response never shows it.
    assert topo.request(parse_topology(dict(AS_ACTIVE, secret="another secret"))) is Outcome.STARTED


def test_restart_reapplies_the_stored_topology(topo, clock, fake, tmp_path):
    to_active_standby(topo, clock, fake, dict(AS_STANDBY, peers=["203.0.113.7"], priority=50))
    again = Topology(str(tmp_path), "amp-host", topo.amphora_id)
    fake2 = FakeKeepalived(clock)
    again.attach(fake2, clock, 10.0)
    assert again.topology == ACTIVE_STANDBY and again.settings == topo.settings
    d = again.restore()
    assert d.called
    assert again.status == STATUS_CHANGE
    assert fake2.calls == [("apply", topo.settings)]
    clock.advance(0.5)
    assert again.status == STATUS_OK and again.document()["role"] == "STANDBY"


def test_restore_timeout_releases_the_gate(topo, clock, fake, tmp_path):
    to_active_standby(topo, clock, fake)
    again = Topology(str(tmp_path), "amp-host", topo.amphora_id)
    fake2 = FakeKeepalived(clock)
    fake2.report_after_start = None
    again.attach(fake2, clock, 10.0)
    again.restore()
    clock.advance(11)
    assert again.status == STATUS_OK and "no VRRP state" in again.last_error


def test_single_restore_only_stops_a_leftover_keepalived(topo, fake):
    assert topo.restore().called
    assert fake.calls == [("stop_leftover",)] and topo.status == STATUS_OK


# -- who holds the VIPs -------------------------------------------------------------

class FakeNetwork:
    """Stands in for the plugger: records each VIP hand-over with what keepalived did then."""

    def __init__(self, topo, fake):
        self.topo, self.fake, self.syncs = topo, fake, []

    def sync_vips(self):
        self.syncs.append((self.topo.keepalived_owns_vips, self.fake.running))
        return defer.succeed(None)


@pytest.fixture
def network(topo, fake, clock):
    net = FakeNetwork(topo, fake)
    topo.attach(fake, clock, 10.0, network=net)
    return net


def test_vips_go_to_keepalived_before_it_starts_and_back_after_it_stops(topo, clock, fake, network):
    assert topo.keepalived_owns_vips is False
    to_active_standby(topo, clock, fake)
    assert network.syncs == [(True, False)]  # withdrawn while keepalived was not running yet
    assert topo.keepalived_owns_vips is True
    assert topo.request(parse_topology(dict(AS_STANDBY))) is Outcome.STARTED  # a reconfiguration
    clock.advance(1.0)
    assert len(network.syncs) == 1  # keepalived keeps them: nothing handed over
    assert topo.request(parse_topology({"topology": "SINGLE"})) is Outcome.STARTED
    assert network.syncs[-1] == (False, False)  # configured by the agent once keepalived stopped
    assert topo.keepalived_owns_vips is False


def test_active_active_keeps_the_vips_with_the_agent(topo, fake, network):
    assert topo.request(parse_topology({"topology": "ACTIVE-ACTIVE"})) is Outcome.APPLIED
    assert network.syncs == [] and topo.keepalived_owns_vips is False


def test_failed_handover_to_keepalived_gives_the_vips_back(topo, clock, fake, network):
    fake.fail_apply = "boom"
    assert topo.request(parse_topology(dict(AS_ACTIVE))) is Outcome.STARTED
    clock.advance(0)
    assert topo.topology == "SINGLE"
    assert network.syncs == [(True, False), (False, False)]


def test_timeout_after_the_handover_to_the_agent_takes_the_vips_back(topo, clock, fake, network):
    to_active_standby(topo, clock, fake)
    slow = [defer.Deferred()]  # the plugger takes longer than the timeout, once
    network.sync_vips = lambda: (network.syncs.append((topo.keepalived_owns_vips, fake.running)),
                                 slow.pop() if slow else defer.succeed(None))[1]
    assert topo.request(parse_topology({"topology": "SINGLE"})) is Outcome.STARTED
    clock.advance(11)
    assert topo.topology == ACTIVE_STANDBY
    assert network.syncs == [(True, False), (False, False), (True, False)]
    assert fake.calls[-1][0] == "apply"


def test_failed_return_to_single_takes_the_vips_back_from_the_agent(topo, clock, fake, network):
    to_active_standby(topo, clock, fake)
    fake.stop = lambda: defer.fail(OperationFailed("cannot stop"))
    assert topo.request(parse_topology({"topology": "SINGLE"})) is Outcome.STARTED
    clock.advance(0)
    assert topo.topology == ACTIVE_STANDBY and "cannot stop" in topo.last_error
    # withdrawn before keepalived started; no hand-over on the way back (stop failed first),
    # so none on the rollback either: keepalived's MASTER keeps its VIPs
    assert network.syncs == [(True, False)]
    assert fake.calls[-1][0] == "apply"
