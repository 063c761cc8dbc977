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
