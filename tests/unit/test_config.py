import os

import pytest

from amphora import devpki
from amphora.config import ConfigError, load_config, parse_config
from tests.helpers import config_text


@pytest.fixture
def root(tmp_path):
    return str(tmp_path)


def text(pki, root, extra=None, drop=()):
    t = config_text(pki, root, 9443, extra)
    return "\n".join(line for line in t.splitlines() if not any(line.startswith(d + " ") for d in drop))


def test_valid_configuration_and_defaults(pki, root):
    cfg = parse_config(text(pki, root))
    assert cfg.agent.amphora_id == pki.amphora_id
    assert cfg.agent.bind_port == 9443
    assert cfg.haproxy.binary == "/usr/sbin/haproxy"
    assert cfg.haproxy.max_config_bytes == 1024 * 1024
    assert cfg.heartbeat.interval == 10.0
    assert cfg.heartbeat.controllers == ()
    assert cfg.network.namespace == ""
    assert cfg.hostname  # the system's when not set


def test_ipv6_bind_and_controllers(pki, root):
    cfg = parse_config(text(pki, root, {
        "agent": {"bind_host": "::"},
        "heartbeat": {"controllers": "192.0.2.1:5555, [2001:db8::1]:5556", "key": "k"},
    }))
    assert cfg.agent.bind_host == "::"
    assert cfg.heartbeat.controllers == (("192.0.2.1", 5555), ("2001:db8::1", 5556))


@pytest.mark.parametrize("extra, drop, expected", [
    ({}, ("amphora_id",), "agent.amphora_id: required option is missing"),
    ({"agent": {"amphora_id": "not-a-uuid"}}, (), "agent.amphora_id: not a UUID"),
    ({"agent": {"bind_port": "70000"}}, (), "agent.bind_port: port out of range"),
    ({"agent": {"bind_port": "http"}}, (), "agent.bind_port: not a port number"),
    ({"agent": {"bind_host": "localhost"}}, (), "agent.bind_host: not an IP address"),
    ({"agent": {"colour": "blue"}}, (), "agent.colour: unknown option"),
    ({"nonsense": {"a": "b"}}, (), "nonsense: unknown section"),
    ({"tls": {"server_cert": "/nonexistent/server.pem"}}, (), "tls.server_cert: cannot read /nonexistent/server.pem"),
    ({"tls": {"client_ca": "/nonexistent/ca.pem"}}, (), "tls.client_ca: cannot read"),
    ({"haproxy": {"binary": "/nonexistent/haproxy"}}, (), "haproxy.binary: not an executable file"),
    ({"heartbeat": {"controllers": "127.0.0.1:5555"}}, (), "heartbeat.key: required"),
    ({"heartbeat": {"controllers": "127.0.0.1"}}, (), "heartbeat.controllers: expected host:port"),
    ({"heartbeat": {"interval": "-1"}}, (), "heartbeat.interval: must be at least"),
    ({"logs": {"forward": "http://x:1"}}, (), "logs.forward: expected udp://"),
    ({"network": {"namespace": ".."}}, (), "network.namespace: not a usable namespace name"),
    ({"network": {"namespace": "a/b"}}, (), "network.namespace: not a usable namespace name"),
])
def test_invalid_configurations_name_the_option(pki, root, extra, drop, expected):
    with pytest.raises(ConfigError) as e:
        parse_config(text(pki, root, extra, drop))
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_key_that_does_not_match_certificate(pki, root):
    other = devpki.issue(pki.ca, "someone-else", server=True)
    key_path = pki.write("other-key.pem", other.key_pem)
    with pytest.raises(ConfigError, match="tls.server_key: private key does not match"):
        parse_config(text(pki, root, {"tls": {"server_key": key_path}}))


def test_separate_matching_key_file(pki, root):
    cert_path = pki.write("server-cert-only.pem", pki.server.cert_pem, 0o644)
    key_path = pki.write("server-key-only.pem", pki.server.key_pem)
    cfg = parse_config(text(pki, root, {"tls": {"server_cert": cert_path, "server_key": key_path}}))
    assert cfg.tls.server_key == key_path


def test_certificate_file_without_certificate(pki, root):
    bad = pki.write("garbage.pem", b"hello\n")
    with pytest.raises(ConfigError, match="tls.server_cert: no PEM certificate"):
        parse_config(text(pki, root, {"tls": {"server_cert": bad}}))


def test_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.conf"))


def test_malformed_ini(tmp_path):
    with pytest.raises(ConfigError):
        parse_config("this is not ini")


def test_sample_configuration_is_complete_and_valid(pki, root):
    """conf/amphora-agent.conf documents every option the schema knows."""
    from dataclasses import fields

    from amphora.config import SECTIONS

    sample = open(os.path.join(os.path.dirname(__file__), "..", "..", "conf", "amphora-agent.conf")).read()
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in sample
        for f in fields(cls):
            assert f"{f.name} =" in sample, f"{section}.{f.name} missing from the sample"
    # valid: the agent accepts it as is (with real certificate files), and the values it
    # shows are the defaults it documents
    text = sample.replace("/etc/octavia/certs/server.pem", pki.paths["server"]).replace(
        "/etc/octavia/certs/client_ca.pem", pki.paths["ca"])
    cfg = parse_config(text)
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if f.metadata["required"]:
                continue
            assert getattr(getattr(cfg, section), f.name) == f.default, f"{section}.{f.name}"


def test_heartbeat_key_is_not_in_the_configuration_repr(pki, root):
    cfg = parse_config(text(pki, root, {"heartbeat": {"controllers": "127.0.0.1:5555",
                                                       "key": "s3cr3t-hmac-key"}}))
    assert cfg.heartbeat.key == "s3cr3t-hmac-key"
    assert "s3cr3t-hmac-key" not in repr(cfg)


@pytest.mark.parametrize("raw, expected", [("true", True), ("off", False), ("0", False), ("yes", True)])
def test_access_log_switch_parses(pki, root, raw, expected):
    assert parse_config(text(pki, root, {"agent": {"access_log": raw}})).agent.access_log is expected


def test_access_log_switch_rejects_garbage(pki, root):
    with pytest.raises(ConfigError, match="agent.access_log: not a boolean"):
        parse_config(text(pki, root, {"agent": {"access_log": "maybe"}}))
