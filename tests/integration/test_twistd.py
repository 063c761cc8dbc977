"""``twistd -n amphora-agent`` as a real process: start, serve, SIGTERM, nothing left behind."""

import json
import signal
import subprocess
import sys

import psutil
import pytest

from tests.helpers import REPO, TWISTD, TwistdAgent, free_port, write_config


def _curl_info(pki, port):
    """A real curl with the client certificate (outside the reactor: this is a plain test)."""
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--cacert", pki.paths["ca"], "--cert", pki.paths["client_cert"],
         "--key", pki.paths["client_key"], f"https://localhost:{port}/info"],
        capture_output=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_twistd_serves_and_stops_cleanly_on_signal(pki, tmp_path, sig):
    port = free_port()
    agent = TwistdAgent(write_config(pki, str(tmp_path), port), str(tmp_path / "twistd.log")).start()
    try:
        agent.wait_listening(port)
        info = _curl_info(pki, port)
        assert info["uuid"] == pki.amphora_id and info["api_version"] == "0.1"
        pid = agent.proc.pid
        assert agent.stop(sig=sig) == 0, agent.log()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        with pytest.raises(subprocess.CalledProcessError):
            _curl_info(pki, port)  # port closed
    finally:
        agent.kill()


def test_twistd_config_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[agent]\namphora_id = 1234\n")
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "amphora-agent", "--config", str(bad)],
        capture_output=True, cwd=REPO, timeout=60, env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    err = result.stderr.decode()
    assert err.strip().count("\n") == 0, err
    assert "agent.amphora_id" in err and "Traceback" not in err


def test_twistd_port_in_use_is_one_line(pki, tmp_path):
    import socket
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "amphora-agent",
             "--config", write_config(pki, str(tmp_path), port)],
            capture_output=True, cwd=REPO, timeout=60, env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
    finally:
        holder.close()
    assert result.returncode == 1
    # twistd has taken over stderr by then: the line lands in its log (stdout with -n).
    assert "agent.bind_port: cannot listen" in (result.stdout + result.stderr).decode()
    assert "Traceback" not in (result.stdout + result.stderr).decode()
