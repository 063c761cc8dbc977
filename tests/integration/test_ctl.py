"""amphora-ctl (the real console script's main, as a child process) against a real agent over mTLS.

Every --json output is parsed and validated against docs/openapi.yaml, so the
command line and the contract cannot drift apart.
"""

import os
import uuid

import pytest_twisted

from amphora import ctl as ctl_module
from tests.ctl_support import ctl, ctl_env
from tests.helpers import REPO, free_port
from tests.openapi_support import contract, load_document


def schema_check(name: str, value) -> None:
    contract()._validate(f"/components/schemas/{name}", value, f"amphora-ctl --json ({name})")


@pytest_twisted.ensureDeferred
async def test_info_human_and_json(agent, url, pki):
    env = ctl_env(pki, url)
    human = await ctl(env, "info")
    assert human.code == 0, human.err
    assert pki.amphora_id in human.out and "api_version" in human.out
    as_json = await ctl(env, "--json", "info")
    assert as_json.code == 0, as_json.err
    doc = as_json.json()
    schema_check("Info", doc)
    assert doc["uuid"] == pki.amphora_id


@pytest_twisted.ensureDeferred
async def test_flags_override_the_environment(agent, url, pki):
    env = ctl_env(pki, "https://127.0.0.1:1")  # the env points nowhere
    result = await ctl(env, "--url", url, "--json", "info")
    assert result.code == 0, result.err
    assert result.json()["uuid"] == pki.amphora_id


@pytest_twisted.ensureDeferred
async def test_topology_human_and_json(agent, url, pki):
    env = ctl_env(pki, url)
    human = await ctl(env, "topology")
    assert human.code == 0, human.err
    assert "topology" in human.out and "SINGLE" in human.out
    doc = (await ctl(env, "--json", "topology")).json()
    schema_check("Topology", doc)


@pytest_twisted.ensureDeferred
async def test_openapi_command_prints_the_contract(agent, url, pki):
    result = await ctl(ctl_env(pki, url), "--json", "openapi")
    assert result.code == 0, result.err
    assert result.json() == load_document()


@pytest_twisted.ensureDeferred
async def test_agent_error_is_shown_as_message_and_details_with_exit_4(agent, url, pki):
    env = ctl_env(pki, url)
    bad = "not-a-uuid"
    human = await ctl(env, "listener", "show", bad)
    assert human.code == ctl_module.EXIT_CLIENT_ERROR, (human.code, human.err)
    assert human.out == ""
    # "<code> <message>: <details>" on stderr, whatever route answers (400 malformed id / 404)
    assert human.err.startswith("amphora-ctl: 4"), human.err
    as_json = await ctl(env, "--json", "listener", "show", bad)
    assert as_json.code == ctl_module.EXIT_CLIENT_ERROR
    body = as_json.json()
    schema_check("Error", body)
    assert body["message"] in human.err


@pytest_twisted.ensureDeferred
async def test_path_arguments_cannot_add_segments(agent, url, pki):
    """A listener "id" with slashes stays one (rejected) segment: never another route."""
    result = await ctl(ctl_env(pki, url), "--json", "listener", "show", "../../info")
    assert result.code == ctl_module.EXIT_CLIENT_ERROR
    body = result.json()
    assert body["message"] and "haproxy_version" not in body


@pytest_twisted.ensureDeferred
async def test_unreachable_agent_exits_3(pki):
    env = ctl_env(pki, f"https://127.0.0.1:{free_port()}")
    result = await ctl(env, "info")
    assert result.code == ctl_module.EXIT_CONNECTION
    assert "cannot get an answer" in result.err
    as_json = await ctl(env, "--json", "info")
    assert as_json.code == ctl_module.EXIT_CONNECTION
    assert as_json.json()["message"] == "Connection failed"


@pytest_twisted.ensureDeferred
async def test_agent_from_another_ca_exits_3(agent, url, pki, tmp_path):
    from amphora import devpki
    other = devpki.make_ca("amp9 other CA")
    ca = tmp_path / "other-ca.pem"
    ca.write_bytes(other.cert_pem)
    result = await ctl(ctl_env(pki, url, AMPHORA_CA=str(ca)), "info")
    assert result.code == ctl_module.EXIT_CONNECTION, (result.code, result.err)


@pytest_twisted.ensureDeferred
async def test_usage_errors_exit_2(pki):
    env = ctl_env(pki, "https://127.0.0.1:1")
    del env["AMPHORA_CA"]
    result = await ctl(env, "info")
    assert result.code == ctl_module.EXIT_USAGE
    assert "AMPHORA_CA" in result.err
    result = await ctl(ctl_env(pki, "https://127.0.0.1:1"), "no-such-command")
    assert result.code == ctl_module.EXIT_USAGE


@pytest_twisted.ensureDeferred
async def test_unreadable_upload_file_is_a_local_error(pki, tmp_path):
    env = ctl_env(pki, "https://127.0.0.1:1")
    result = await ctl(env, "listener", "upload", str(uuid.uuid4()), str(tmp_path / "missing.cfg"))
    assert result.code == ctl_module.EXIT_LOCAL
    assert "missing.cfg" in result.err


def test_console_script_is_declared():
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert 'amphora-ctl = "amphora.ctl:main"' in f.read()


@pytest_twisted.ensureDeferred
async def test_details_human_and_json(agent, url, pki):
    env = ctl_env(pki, url)
    human = await ctl(env, "details")
    assert human.code == 0, human.err
    rows = dict(line.split(None, 1) for line in human.out.splitlines() if len(line.split(None, 1)) == 2)
    assert rows["uuid"] == pki.amphora_id and "cpu.total" in rows and "memory.total" in rows
    doc = (await ctl(env, "--json", "details")).json()
    schema_check("Details", doc)
    assert doc["uuid"] == pki.amphora_id


@pytest_twisted.ensureDeferred
async def test_topology_set_through_ctl(agent, url, pki):
    env = ctl_env(pki, url)
    result = await ctl(env, "topology", "set", "ACTIVE-ACTIVE")
    assert result.code == 0, result.err
    assert result.out.startswith("OK")
    doc = (await ctl(env, "--json", "topology")).json()
    schema_check("Topology", doc)
    assert doc["topology"] == "ACTIVE-ACTIVE"
    assert (await ctl(env, "topology", "set", "SINGLE")).code == 0
    result = await ctl(env, "--json", "topology", "set", "BAD_TEST_DATA")
    assert result.code == ctl_module.EXIT_CLIENT_ERROR
    body = result.json()
    schema_check("Error", body)
    assert "Unknown topology: BAD_TEST_DATA" in body["details"]
    assert "Unknown topology: BAD_TEST_DATA" in result.err
    # ACTIVE-STANDBY without its ha_ip / secret: every missing field named
    result = await ctl(env, "topology", "set", "ACTIVE-STANDBY", "--role", "ACTIVE")
    assert result.code == ctl_module.EXIT_CLIENT_ERROR and "ha_ip" in result.err
    assert (await ctl(env, "--json", "topology")).json()["topology"] == "SINGLE"


@pytest_twisted.ensureDeferred
async def test_timeout_exits_3(pki):
    """A peer that accepts TCP but never answers: --timeout ends the wait with exit 3."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        env = ctl_env(pki, f"https://127.0.0.1:{port.getHost().port}")
        result = await ctl(env, "--timeout", "0.5", "info")
        assert result.code == ctl_module.EXIT_CONNECTION
        assert "no answer within 0.5s" in result.err
    finally:
        await port.stopListening()
