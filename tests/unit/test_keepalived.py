"""keepalived: configuration rendering (golden key lines), auth derivation, FIFO parsing and
reading, the check script, and the adapter's life cycle with a fake process, runner and netlink."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from amphora.config import parse_config
from amphora.errors import OperationFailed
from amphora.keepalived import (
    INSTANCE, Keepalived, NotifyEvent, NotifyFifo, VRRPSettings, auth_pass, default_router_id,
    parse_notify_line, render_check_script, render_config,
)
from amphora.netlink import Interface
from amphora.testing import FakeNetwork
from tests.helpers import config_text

SECRET = "b20e06cf1abcf29c708d3b437f4a29892a0921d0"


def settings(**kw):
    base = dict(role="ACTIVE", ha_ip="203.0.113.2", auth=auth_pass(SECRET))
    base.update(kw)
    return VRRPSettings(**base)


def render(s=None, advert_int=1.0, interface="eth1"):
    return render_config(s or settings(), interface=interface, advert_int=advert_int,
                         fifo_path="/run/a/notify.fifo", check_script="/run/a/check.sh",
                         router_name="amphora-12345678")


# -- auth ---------------------------------------------------------------------------

def test_auth_pass_is_8_chars_and_uses_the_whole_secret():
    a = auth_pass(SECRET)
    assert len(a) == 8 and a == auth_pass(SECRET)
    # keepalived would cut these two to the same 8 characters; the derived values differ.
    assert auth_pass("samefirst8-A") != auth_pass("samefirst8-B")
    assert a not in SECRET


def test_default_router_id_is_shared_and_in_range():
    assert 1 <= default_router_id("203.0.113.2") <= 255
    assert default_router_id("203.0.113.2") == default_router_id("203.0.113.2")


# -- rendering ----------------------------------------------------------------------

def test_active_config_key_lines():
    text = render()
    lines = [line.strip() for line in text.splitlines()]
    for expected in ("state BACKUP", "interface eth1", "priority 100", "advert_int 1", "nopreempt",
                     f"auth_pass {auth_pass(SECRET)}", "auth_type PASS", "203.0.113.2/32 dev eth1",
                     "notify_fifo /run/a/notify.fifo", 'script "/run/a/check.sh"',
                     f"virtual_router_id {default_router_id('203.0.113.2')}", "garp_master_delay 1",
                     f"vrrp_instance {INSTANCE} {{", "router_id amphora-12345678"):
        assert expected in lines, expected
    assert "vrrp_version 3" not in lines
    assert "unicast_peer {" not in lines
    assert SECRET not in text and SECRET[:8] not in text
    # script_user first, or a reload drops the track script (keepalived 2.2.7).
    assert lines.index("script_user root") < lines.index("notify_fifo /run/a/notify.fifo")
    assert text.count("{") == text.count("}")


def test_standby_priority_peers_and_router_id():
    text = render(settings(role="STANDBY", peers=("203.0.113.3", "203.0.113.4"), virtual_router_id=42))
    lines = [line.strip() for line in text.splitlines()]
    assert "priority 90" in lines and "virtual_router_id 42" in lines
    i = lines.index("unicast_peer {")
    assert lines[i + 1:i + 3] == ["203.0.113.3", "203.0.113.4"]
    assert "priority 7" in [l.strip() for l in render(settings(priority=7)).splitlines()]


def test_virtual_addresses_are_identical_on_both_peers():
    def vips(text):
        lines = text.splitlines()
        start = next(i for i, l in enumerate(lines) if "virtual_ipaddress {" in l)
        return lines[start:start + 3]
    assert vips(render(settings(role="ACTIVE"))) == vips(render(settings(role="STANDBY", priority=5)))


def test_subsecond_advert_uses_vrrp3_without_authentication():
    text = render(advert_int=0.2)
    lines = [line.strip() for line in text.splitlines()]
    assert "vrrp_version 3" in lines and "advert_int 0.2" in lines
    assert "authentication {" not in lines and auth_pass(SECRET) not in text


def test_ipv6_vip():
    text = render(settings(ha_ip="2001:db8::10", peers=("2001:db8::11",)))
    assert "2001:db8::10/128 dev eth1" in text and "vrrp_version 3" in text


# -- FIFO ---------------------------------------------------------------------------

@pytest.mark.parametrize("line, event", [
    (b'INSTANCE "amphora" MASTER 100', NotifyEvent("INSTANCE", "amphora", "MASTER", 100)),
    (b'INSTANCE "VI_1" BACKUP 90\n', NotifyEvent("INSTANCE", "VI_1", "BACKUP", 90)),
    ('INSTANCE "amphora" FAULT 100', NotifyEvent("INSTANCE", "amphora", "FAULT", 100)),
    (b'INSTANCE "amphora" STOP', NotifyEvent("INSTANCE", "amphora", "STOP", None)),
    (b'GROUP "g" MASTER 0', NotifyEvent("GROUP", "g", "MASTER", 0)),
    (b'\x00\x00INSTANCE "amphora" MASTER 100', NotifyEvent("INSTANCE", "amphora", "MASTER", 100)),
    (b'INSTANCE "amphora" DANCING 100', None),
    (b'VS [10.0.0.1]:80 UP', None),
    (b'garbage', None),
    (b'', None),
])
def test_parse_notify_line(line, event):
    assert parse_notify_line(line) == event


def test_fifo_reader_reads_lines_in_pieces(tmp_path):
    reactor = MemoryReactorClock()
    events = []
    fifo = NotifyFifo(reactor, str(tmp_path / "notify.fifo"), events.append)
    fifo.open()
    try:
        assert fifo in reactor.readers
        writer = os.open(fifo.path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b'INSTANCE "amphora" BACKUP 90\nINSTANCE "amph')
        fifo.doRead()
        assert [e.state for e in events] == ["BACKUP"]
        os.write(writer, b'ora" MASTER 90\nnonsense\n')
        os.close(writer)  # a writer that goes away is not end-of-file for us
        fifo.doRead()
        assert [e.state for e in events] == ["BACKUP", "MASTER"]
        fifo.doRead()  # nothing to read: no error, no spin
    finally:
        fifo.close()
    assert fifo not in reactor.readers


def test_fifo_drops_lines_written_while_nobody_read(tmp_path):
    path = str(tmp_path / "notify.fifo")
    os.mkfifo(path, 0o600)
    keeper = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # keepalived's own read-write end
    try:
        os.write(keeper, b'INSTANCE "amphora" MASTER 100\n')  # while the agent was down
        events = []
        fifo = NotifyFifo(MemoryReactorClock(), path, events.append)
        fifo.open()
        fifo.doRead()
        assert events == []
        os.write(keeper, b'INSTANCE "amphora" BACKUP 100\n')
        fifo.doRead()
        assert [e.state for e in events] == ["BACKUP"]
        fifo.close()
    finally:
        os.close(keeper)


def test_fifo_replaces_a_plain_file(tmp_path):
    path = tmp_path / "notify.fifo"
    path.write_text("not a fifo")
    fifo = NotifyFifo(MemoryReactorClock(), str(path), lambda e: None)
    fifo.open()
    fifo.close()
    import stat
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


# -- the check script ---------------------------------------------------------------

def _check(run_dir) -> int:
    script = run_dir / "check.sh"
    script.write_text(render_check_script(str(run_dir / "listeners")))
    return subprocess.run(["/bin/sh", str(script)], timeout=10).returncode


def test_check_script(tmp_path):
    assert _check(tmp_path) == 0                      # no listeners: nothing to fail over for
    listener = tmp_path / "listeners" / "5ad2e0d7-8b0c-4b3c-9f0e-4f1b2f0d6a11"
    listener.mkdir(parents=True)
    assert _check(tmp_path) == 1                      # a listener, no haproxy
    (listener / "haproxy.pid").write_text(f"{os.getpid()}\n")
    assert _check(tmp_path) == 1                      # a live pid that is not haproxy
    fake_haproxy = tmp_path / "haproxy"
    shutil.copy("/bin/sleep", fake_haproxy)
    proc = subprocess.Popen([str(fake_haproxy), "30"])
    try:
        (listener / "haproxy.pid").write_text(f"{proc.pid}\n")
        assert _check(tmp_path) == 0                  # a running haproxy
    finally:
        proc.kill()
        proc.wait()
    assert _check(tmp_path) == 1                      # it died: stale pid file


# -- the adapter --------------------------------------------------------------------

class FakeProcess:
    def __init__(self, reactor, name, argv, env):
        self.argv, self.env = argv, env
        self.state = "STOPPED"
        self.observers = []
        self.signals = []
        self.fail_start = None

    @property
    def running(self):
        return self.state == "RUNNING"

    def _set(self, new):
        old, self.state = self.state, new
        for o in self.observers:
            o(self, old, new)

    def start(self):
        if self.fail_start:
            self._set("FAILED")
            return defer.fail(self.fail_start)
        self._set("RUNNING")
        return defer.succeed(1234)

    def stop(self):
        if self.state == "RUNNING":
            self._set("STOPPING")
        self._set("STOPPED")
        return defer.succeed(None)

    def signal(self, sig):
        self.signals.append(sig)

    def adopt(self, pid):
        self._set("RUNNING")
        self.adopted = pid
        return True

    def detach(self):
        self.detached = True


class FakeRunner:
    def __init__(self):
        self.calls = []
        self.check_result = (b"", b"", 0)

    def __call__(self, reactor, namespace, argv):
        self.calls.append((namespace, argv))
        if "-t" in argv:
            return defer.succeed(self.check_result)
        return defer.succeed((b"", b"", 0))


def iface(name, index, *cidrs, loopback=False):
    return Interface(name, index, loopback, tuple(ipaddress.ip_interface(c) for c in cidrs))


class FakeNetlink:
    """Stands in for amphora.netlink.NetlinkQueries: answers from ``links``, records calls."""

    def __init__(self):
        self.calls = []
        self.links = [iface("lo", 1, loopback=True), iface("eth0", 2, "192.0.2.5/24"),
                      iface("eth1", 3, "203.0.113.10/24")]

    def interfaces(self, namespace, name=None):
        self.calls.append(("interfaces", namespace, name))
        return defer.succeed([l for l in self.links if name is None or l.name == name])

    def default_route_devices(self, namespace, version):
        self.calls.append(("default_route_devices", namespace, version))
        return defer.succeed(["eth0"])

    def remove_address(self, namespace, ifname, address):
        self.calls.append(("remove_address", namespace, ifname, address))
        return defer.succeed(True)


@pytest.fixture
def kad(pki, tmp_path):
    config = parse_config(config_text(pki, str(tmp_path), 0, {"network": {"namespace": "amp8ns"},
                                                              "keepalived": {"advert_int": "1"}}))
    runner = FakeRunner()
    processes = []

    def factory(*args):
        processes.append(FakeProcess(*args))
        return processes[-1]

    k = Keepalived(config, MemoryReactorClock(), FakeNetwork(), process_factory=factory, runner=runner,
                   netlink=FakeNetlink())
    k.runner, k.processes = runner, processes
    yield k
    if k._fifo is not None:
        k._fifo.close()


def test_apply_checks_then_starts_in_the_namespace(kad):
    d = kad.apply(settings())
    assert d.called and d.result is None
    ip_call, check_call = kad.netlink.calls[0], kad.runner.calls[0]
    assert ip_call == ("interfaces", "amp8ns", None)
    assert check_call[0] == "amp8ns" and check_call[1][1:4] == ["-t", "-l", "-f"]
    assert kad.interface == "eth1"  # the subnet holding ha_ip
    text = open(kad.paths.config).read()
    assert "203.0.113.2/32 dev eth1" in text and SECRET not in text
    assert os.stat(kad.paths.config).st_mode & 0o777 == 0o600
    (proc,) = kad.processes
    assert proc.argv[:4] == [sys.executable, "-m", "amphora.netns", "amp8ns"]
    assert proc.argv[5:7] == [kad.binary, "-n"] and "-P" in proc.argv
    assert kad.running
    # A second apply reloads by signal instead of restarting.
    kad.apply(settings(role="STANDBY", interface="eth0"))
    assert proc.signals == ["HUP"] and len(kad.processes) == 1
    assert "priority 90" in open(kad.paths.config).read()
    # ... and removes the VIP from the interface it no longer uses.
    assert kad.netlink.calls[-1] == ("remove_address", "amp8ns", "eth1", "203.0.113.2")


def test_failed_check_keeps_the_live_config_and_does_not_start(kad):
    kad.apply(settings())
    live = open(kad.paths.config).read()
    kad.runner.check_result = (b"", b"(Line 3) Unknown keyword 'x'\n", 5)
    d = kad.apply(settings(ha_ip="203.0.113.99"))
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(OperationFailed)
    assert "exit 5" in failure[0].value.details and "Unknown keyword" in failure[0].value.details
    assert open(kad.paths.config).read() == live
    assert kad.processes[0].signals == []
    assert kad.settings.ha_ip == "203.0.113.2"


def test_configured_until_stopped_even_if_start_fails(kad):
    assert not kad.configured and not kad.running
    kad.apply(settings())
    assert kad.configured and kad.running
    kad.processes[0]._set("BACKOFF")
    assert kad.configured and not kad.running  # the heartbeat withholds beats now
    kad.stop()
    assert not kad.configured


def test_failed_start_is_an_operation_failure(kad):
    class Boom(Exception):
        reason = "pid 1 exited with code 1 before it was ready"
        output = "Non-existent interface specified in configuration"
    kad.apply(settings())
    kad.processes[0].state = "STOPPED"
    kad.processes[0].fail_start = Boom()
    failure = []
    kad.apply(settings()).addErrback(failure.append)
    assert failure and "Non-existent interface" in failure[0].value.details
    assert kad.configured and not kad.running


def test_interface_falls_back_to_the_default_route(kad):
    kad.apply(settings(ha_ip="198.51.100.7"))
    assert kad.interface == "eth0"


def test_states_from_the_fifo_and_unexpected_exit(kad, tmp_path):
    seen = []
    kad.state_observers.append(seen.append)
    kad.apply(settings())
    waiter = kad.wait_state()
    kad._fifo.feed(b'INSTANCE "amphora" BACKUP 100\nINSTANCE "other" MASTER 1\n')
    assert waiter.result == "BACKUP" and kad.vrrp_state == "BACKUP"
    kad._fifo.feed(b'INSTANCE "amphora" MASTER 100\n')
    assert seen == ["BACKUP", "MASTER"]
    # keepalived dies unasked (the supervisor will restart it): state unknown, VIP removed.
    kad.processes[0]._set("BACKOFF")
    assert kad.vrrp_state is None and seen[-1] is None and not kad.running
    assert kad.netlink.calls[-1] == ("remove_address", "amp8ns", "eth1", "203.0.113.2")


def test_stop_removes_the_vip(kad):
    kad.apply(settings())
    kad._fifo.feed(b'INSTANCE "amphora" MASTER 100\n')
    d = kad.stop()
    assert d.called
    assert kad.processes[0].state == "STOPPED" and kad.vrrp_state is None and kad.settings is None
    assert kad.netlink.calls[-1] == ("remove_address", "amp8ns", "eth1", "203.0.113.2")


def test_detach_leaves_keepalived_running(kad):
    kad.apply(settings())
    kad.detach()
    assert kad.processes[0].detached and kad.processes[0].state == "RUNNING"
    assert kad._fifo.fd == -1


def test_adopts_a_keepalived_left_running(kad, monkeypatch):
    monkeypatch.setattr(kad, "_running_pid", lambda: 4321)
    kad.netlink.links = [iface("eth1", 3, "203.0.113.10/24", "203.0.113.2/32")]
    d = kad.apply(settings(interface="eth1"))
    assert d.called
    (proc,) = kad.processes
    assert proc.adopted == 4321 and proc.signals == ["HUP"]
    assert kad.vrrp_state == "MASTER"  # it holds the VIP


def test_running_pid_needs_our_config(kad, tmp_path):
    import os as _os
    _os.makedirs(kad.paths.directory, exist_ok=True)
    with open(kad.paths.pid, "w") as f:
        f.write(f"{_os.getpid()}\n")  # alive, but not keepalived on our config
    assert kad._running_pid() is None


def test_leftover_keepalived_is_stopped(kad, monkeypatch):
    assert kad.stop_leftover().called and kad.processes == []  # nothing running: nothing to do
    monkeypatch.setattr(kad, "_running_pid", lambda: 4321)
    d = kad.stop_leftover()
    assert d.called
    (proc,) = kad.processes
    assert proc.adopted == 4321 and proc.state == "STOPPED" and not kad.configured


def test_interface_from_the_network_side_first(kad):
    kad.network = FakeNetwork(interface="vip0")
    kad.network.vips.append("203.0.113.2")
    kad.apply(settings())
    assert kad.interface == "vip0"
    assert not any(call[0] == "interfaces" for call in kad.netlink.calls)
