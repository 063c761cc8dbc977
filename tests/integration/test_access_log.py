"""twistd --logger amphora.logging.json_observer: every event is one JSON line on
stdout, each API request gets an access event with its fields, and neither
bodies nor key material ever reach the log."""

import json
import os
import subprocess
import uuid

from tests.helpers import REPO, TWISTD, TwistdAgent, free_port, write_config

MARKER = "amp9-secret-marker-7f3a9c"


class JsonTwistdAgent(TwistdAgent):
    """TwistdAgent started with the JSON-lines observer."""

    def start(self):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logger", "amphora.logging.json_observer", "amphora-agent",
             "--config", self.config_path],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        return self


def _curl(pki, port, method, path, data_file=None):
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "-X", method,
            "--cacert", pki.paths["ca"], "--cert", pki.paths["client_cert"], "--key", pki.paths["client_key"]]
    if data_file:
        argv += ["--data-binary", "@" + data_file]
    out = subprocess.run(argv + [f"https://localhost:{port}{path}"], capture_output=True, check=True)
    return int(out.stdout)


def test_json_lines_access_log_without_bodies_or_keys(pki, tmp_path):
    port = free_port()
    log_path = str(tmp_path / "agent.jsonl")
    agent = JsonTwistdAgent(write_config(pki, str(tmp_path), port), log_path).start()
    secret_body = tmp_path / "topology.json"
    secret_body.write_text(json.dumps({"topology": "ACTIVE-STANDBY", "role": "ACTIVE",
                                       "ha_ip": "203.0.113.9", "secret": MARKER}))
    listener = str(uuid.uuid4())
    try:
        agent.wait_listening(port)
        assert _curl(pki, port, "GET", "/info") == 200
        _curl(pki, port, "POST", "/v0.1/topology", str(secret_body))
        _curl(pki, port, "PUT", f"/v0.1/listeners/{listener}/certificates/amp9.pem", pki.paths["client_key"])
        assert agent.stop() == 0
    finally:
        agent.kill()
    with open(log_path, encoding="utf-8") as f:
        text = f.read()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = [e for e in events if e.get("log_namespace") == "amphora.access"]
    by_path = {e["path"]: e for e in access}
    info = by_path["/info"]
    assert info["method"] == "GET" and info["status"] == 200
    assert isinstance(info["duration_ms"], float) and info["duration_ms"] >= 0
    assert "test-controller" in info["client"]
    assert by_path["/v0.1/topology"]["method"] == "POST"
    assert f"/v0.1/listeners/{listener}/certificates/amp9.pem" in by_path
    # no body, no key material anywhere in the log
    with open(pki.paths["client_key"]) as f:
        key_lines = [line for line in f.read().splitlines() if line and "-----" not in line]
    assert MARKER not in text
    assert "PRIVATE KEY" not in text
    assert not any(line in text for line in key_lines)


def test_default_text_log_has_the_access_lines_once_stopped(pki, tmp_path):
    """twistd's default (text on standard output with -n) through the agent's own
    observer: one classic line per request, all of them written by the time the
    agent has stopped (they are buffered for up to half a second meanwhile)."""
    port = free_port()
    log_path = str(tmp_path / "agent.log")
    agent = TwistdAgent(write_config(pki, str(tmp_path), port), log_path).start()
    try:
        agent.wait_listening(port)
        for _ in range(3):
            assert _curl(pki, port, "GET", "/info") == 200
        assert _curl(pki, port, "DELETE", f"/v0.1/listeners/{uuid.uuid4()}") == 404
        assert agent.stop() == 0
    finally:
        agent.kill()
    with open(log_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    access = [line for line in lines if " [amphora.access#info] " in line]
    assert len(access) == 4, lines
    assert all(line.split(" [amphora.access#info] ")[1].startswith("GET /info 200 ") for line in access[:3])
    assert " 404 " in access[3] and "CN=test-controller" in access[3] and access[3].split()[2] == "DELETE"
    assert any("Server Shut Down." in line for line in lines)  # events after the stop are written too
