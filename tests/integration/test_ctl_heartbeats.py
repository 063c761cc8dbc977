"""amphora-ctl heartbeats (the receiver's library API) hears a real agent's beats over loopback UDP."""

import json
import socket

import pytest
import pytest_twisted

from amphora import ctl as ctl_module
from tests.ctl_support import ctl, ctl_env

KEY = "amp9-heartbeat-test-key"


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def heartbeat_port():
    return _udp_port()


@pytest.fixture
def agent_config_extra(heartbeat_port):
    return {"heartbeat": {"controllers": f"127.0.0.1:{heartbeat_port}", "interval": "0.2", "key": KEY}}


@pytest_twisted.ensureDeferred
async def test_heartbeats_json_lines(agent, url, pki, heartbeat_port, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    result = await ctl(ctl_env(pki, url), "--json", "heartbeats", "--bind", f"127.0.0.1:{heartbeat_port}",
                       "--key-file", str(key_file), "--count", "2", "--wait", "20")
    assert result.code == 0, result.err
    beats = [json.loads(line) for line in result.out.splitlines()]
    assert len(beats) == 2
    assert [b["beat"]["id"] for b in beats] == [pki.amphora_id] * 2
    assert beats[1]["beat"]["seq"] > beats[0]["beat"]["seq"]
    assert KEY not in result.out + result.err


@pytest_twisted.ensureDeferred
async def test_heartbeats_human_line_and_wrong_key(agent, url, pki, heartbeat_port):
    env = ctl_env(pki, url, AMPHORA_HEARTBEAT_KEY=KEY)
    result = await ctl(env, "heartbeats", "--bind", f"127.0.0.1:{heartbeat_port}", "--count", "1", "--wait", "20")
    assert result.code == 0, result.err
    assert f"amphora={pki.amphora_id}" in result.out and "seq=" in result.out
    # a receiver with the wrong key rejects every beat and gives up after --wait
    env = ctl_env(pki, url, AMPHORA_HEARTBEAT_KEY="not-the-key")
    result = await ctl(env, "heartbeats", "--bind", f"127.0.0.1:{heartbeat_port}", "--count", "1", "--wait", "1.5")
    assert result.code == ctl_module.EXIT_CONNECTION
    assert "bad_hmac" in result.err and result.out == ""


def _big_beat(size: int = 60_000) -> bytes:
    """A signed beat of about ``size`` bytes (incompressible padding: a zlib'd body stays big)."""
    import secrets

    from amphora.heartbeat import envelope

    pad = secrets.token_urlsafe(size)  # base64 text compresses to ~3/4: trim below
    while True:
        packet = envelope.wrap({"id": "amp9-big", "seq": 1, "ver": 3, "listeners": {}, "pools": {},
                                "padding": pad}, KEY)
        if len(packet) <= size:
            return packet
        pad = pad[:len(pad) - (len(packet) - size) - 16]


@pytest_twisted.ensureDeferred
async def test_heartbeats_reads_whole_60kb_beats(pki, heartbeat_port):
    """A 60 KB beat (big amphorae send them) arrives whole: a listener with Twisted's default
    8 KiB datagram size would cut it and reject it as bad_hmac."""
    from twisted.internet import reactor, task

    packet = _big_beat()
    assert 59_000 <= len(packet) <= 60_000
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # resend until the command has bound its port and taken the beat (it exits after --count 1)
    resend = task.LoopingCall(sender.sendto, packet, ("127.0.0.1", heartbeat_port))
    resend.clock = reactor
    resend.start(0.2)
    try:
        result = await ctl(ctl_env(pki, "https://127.0.0.1:1", AMPHORA_HEARTBEAT_KEY=KEY), "--json", "heartbeats",
                           "--bind", f"127.0.0.1:{heartbeat_port}", "--count", "1", "--wait", "15")
    finally:
        resend.stop()
        sender.close()
    assert result.code == 0, result.err
    [line] = result.out.splitlines()
    document = json.loads(line)
    assert document["bytes"] == len(packet)
    assert document["beat"]["id"] == "amp9-big"
    assert "bad_hmac" not in result.err
