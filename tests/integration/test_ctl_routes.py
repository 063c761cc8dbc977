"""amphora-ctl through a listener's whole life on a real agent with real haproxy: every
subcommand's happy path and its error paths.

Each invocation is the real console script's ``main`` in a child process; every
``--json`` output is validated against docs/openapi.yaml.
"""

import hashlib
import signal
import uuid

import psutil
import pytest_twisted

from amphora import ctl as ctl_module
from amphora import devpki
from tests.ctl_support import ctl, ctl_env
from tests.helpers import free_port
from tests.openapi_support import contract


def schema_check(name: str, value) -> None:
    contract()._validate(f"/components/schemas/{name}", value, f"amphora-ctl --json ({name})")


def haproxy_config(lid: str, port: int, pool: str, member: str, member_port: int) -> str:
    return f"""# Config file for {lid}
global
    maxconn 100

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s

frontend {lid}
    bind 127.0.0.1:{port}
    default_backend {pool}

backend {pool}
    server {member} 127.0.0.1:{member_port}
"""


def kill_haproxy_of(root: str) -> None:
    """Last-resort cleanup: haproxy outlives the agent by design; kill ours (their
    command lines name files under this test's own directory)."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(root in part for part in proc.info["cmdline"] or ()):
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass


def ok(result):
    assert result.code == 0, (result.code, result.out, result.err)
    return result


@pytest_twisted.ensureDeferred
async def test_listener_life_cycle_through_ctl(agent, url, pki, tmp_path, client):
    env = ctl_env(pki, url)
    lid, pool, member = (str(uuid.uuid4()) for _ in range(3))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(lid, free_port(), pool, member, free_port()))
    bad = tmp_path / "bad.cfg"
    bad.write_text("global\n    no_such_keyword_amp9\n")
    leaf = devpki.issue(pki.ca, "www.example.com", server=True, dns=("www.example.com",))
    pem = tmp_path / "www.example.com.pem"
    pem.write_bytes(leaf.key_pem + leaf.cert_pem)
    try:
        assert ok(await ctl(env, "listeners")).out.strip() == "no listeners"
        assert ok(await ctl(env, "--json", "listeners")).json() == []

        # certificates (before the configuration, as controllers do): put, md5, a refused PEM
        assert ok(await ctl(env, "cert", "put", lid, str(pem))).out.startswith("OK")
        md5 = hashlib.md5(pem.read_bytes()).hexdigest()
        assert ok(await ctl(env, "cert", "md5", lid, pem.name)).out.strip() == md5
        doc = ok(await ctl(env, "--json", "cert", "md5", lid, pem.name)).json()
        schema_check("Md5sum", doc)
        assert doc["md5sum"] == md5
        garbage = tmp_path / "garbage.pem"
        garbage.write_bytes(b"not a pem\n")
        result = await ctl(env, "--json", "cert", "put", lid, str(garbage))
        assert result.code == ctl_module.EXIT_CLIENT_ERROR
        schema_check("Error", result.json())

        # configuration: invalid refused with haproxy's words, valid stored byte for byte
        result = await ctl(env, "listener", "upload", lid, str(bad))
        assert result.code == ctl_module.EXIT_CLIENT_ERROR
        assert "no_such_keyword_amp9" in result.err and result.err.startswith("amphora-ctl: 400 ")
        assert ok(await ctl(env, "listener", "upload", lid, str(cfg))).out.startswith("OK")
        assert ok(await ctl(env, "listener", "config", lid)).out == cfg.read_text()
        assert ok(await ctl(env, "--json", "listener", "config", lid)).json() == {"text": cfg.read_text()}
        assert ok(await ctl(env, "listener", "upload", lid, "-", stdin=cfg.read_bytes())).out.startswith("OK")

        # life cycle
        assert ok(await ctl(env, "listener", "start", lid)).out.startswith("OK")
        table = ok(await ctl(env, "listeners")).out.splitlines()
        assert table[0].split() == ["UUID", "STATUS", "TYPE"] and table[1].split() == [lid, "ACTIVE", "HTTP"]
        for item in ok(await ctl(env, "--json", "listeners")).json():
            schema_check("ListenerSummary", item)
        shown = ok(await ctl(env, "--json", "listener", "show", lid)).json()
        schema_check("ListenerStatus", shown)
        assert shown["status"] == "ACTIVE" and [p["uuid"] for p in shown["pools"]] == [pool]
        human = ok(await ctl(env, "listener", "show", lid)).out
        assert pool in human and member in human
        assert ok(await ctl(env, "listener", "reload", lid)).out.startswith("OK")
        logs = ok(await ctl(env, "--json", "listener", "logs", lid, "--lines", "5")).json()
        assert isinstance(logs["text"], str)
        result = await ctl(env, "--json", "listener", "logs", lid, "--lines", "0")
        assert result.code == ctl_module.EXIT_CLIENT_ERROR
        schema_check("Error", result.json())
        result = await ctl(env, "--json", "listener", "dance", lid)
        assert result.code == ctl_module.EXIT_USAGE  # argparse knows the actions
        result = await ctl(env, "--json", "listener", "show", str(uuid.uuid4()))
        assert result.code == ctl_module.EXIT_CLIENT_ERROR and result.json()["message"] == "Listener Not Found"

        details = ok(await ctl(env, "--json", "details")).json()
        schema_check("Details", details)
        assert lid in details["listeners"] and details["haproxy_count"] >= 1

        assert ok(await ctl(env, "listener", "stop", lid)).out.startswith("OK")
        assert ok(await ctl(env, "--json", "listener", "show", lid)).json()["status"] == "STOPPED"

        assert ok(await ctl(env, "listener", "delete", lid)).out.startswith("OK")
        result = await ctl(env, "listener", "show", lid)
        assert result.code == ctl_module.EXIT_CLIENT_ERROR and "Listener Not Found" in result.err
        result = await ctl(env, "listener", "delete", lid)
        assert result.code == ctl_module.EXIT_CLIENT_ERROR
        # the listener's certificates went with it
        result = await ctl(env, "cert", "md5", lid, pem.name)
        assert result.code == ctl_module.EXIT_CLIENT_ERROR and "Not Found" in result.err
    finally:
        try:
            await client.delete(f"{url}/v0.1/listeners/{lid}")
        finally:
            kill_haproxy_of(str(tmp_path))


@pytest_twisted.ensureDeferred
async def test_cert_put_from_stdin_and_delete(agent, url, pki):
    env = ctl_env(pki, url)
    lid = str(uuid.uuid4())
    leaf = devpki.issue(pki.ca, "*.example.com", server=True, dns=("*.example.com",))
    result = await ctl(env, "cert", "put", lid, "-", stdin=leaf.key_pem + leaf.cert_pem)
    assert result.code == ctl_module.EXIT_USAGE and "--name" in result.err
    assert ok(await ctl(env, "cert", "put", lid, "-", "--name", "WILDCARD.example.com.pem",
                        stdin=leaf.key_pem + leaf.cert_pem)).out.startswith("OK")
    assert ok(await ctl(env, "cert", "delete", lid, "WILDCARD.example.com.pem")).out.startswith("OK")
    result = await ctl(env, "--json", "cert", "md5", lid, "WILDCARD.example.com.pem")
    assert result.code == ctl_module.EXIT_CLIENT_ERROR
    # the listener's certificate directory went with its last certificate: either 404 is right
    assert result.json()["message"] in ("Certificate Not Found", "Listener Not Found")
    result = await ctl(env, "cert", "md5", lid, "../../etc/passwd")
    assert result.code == ctl_module.EXIT_CLIENT_ERROR and "Invalid certificate file name" in result.err
