"""amphora-ctl without a network: argument -> request mapping, rendering, exit codes."""

import io
import json

import pytest

from amphora import ctl

LID = "04bff5c3-5862-4a13-b9e3-9b440d0ed50a"


def plan(*argv):
    return ctl.plan(ctl.build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("argv,method,path", [
    (["info"], "GET", "/info"),
    (["details"], "GET", "/v0.1/details"),
    (["openapi"], "GET", "/v0.1/openapi.json"),
    (["topology"], "GET", "/v0.1/topology"),
    (["listeners"], "GET", "/v0.1/listeners"),
    (["listener", "show", LID], "GET", f"/v0.1/listeners/{LID}"),
    (["listener", "config", LID], "GET", f"/v0.1/listeners/{LID}/haproxy"),
    (["listener", "logs", LID], "GET", f"/v0.1/listeners/{LID}/logs"),
    (["listener", "start", LID], "PUT", f"/v0.1/listeners/{LID}/start"),
    (["listener", "stop", LID], "PUT", f"/v0.1/listeners/{LID}/stop"),
    (["listener", "reload", LID], "PUT", f"/v0.1/listeners/{LID}/reload"),
    (["listener", "delete", LID], "DELETE", f"/v0.1/listeners/{LID}"),
    (["cert", "md5", LID, "www.example.com.pem"], "GET",
     f"/v0.1/listeners/{LID}/certificates/www.example.com.pem"),
    (["cert", "delete", LID, "www.example.com.pem"], "DELETE",
     f"/v0.1/listeners/{LID}/certificates/www.example.com.pem"),
    (["plug", "vip", "203.0.113.2"], "POST", "/v0.1/plug/vip/203.0.113.2"),
    (["plug", "network"], "POST", "/v0.1/plug/network"),
])
def test_each_subcommand_maps_to_its_route(argv, method, path):
    call = plan(*argv)
    assert (call.method, call.path) == (method, path)


def test_path_arguments_are_one_segment_each():
    call = plan("listener", "show", "../../info?x=1")
    assert call.path == "/v0.1/listeners/..%2F..%2Finfo%3Fx%3D1"
    call = plan("cert", "md5", LID, "a/b.pem")
    assert call.path.endswith("/certificates/a%2Fb.pem")


def test_upload_reads_the_file(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_bytes(b"global\n  maxconn 10\n")
    call = plan("listener", "upload", LID, str(cfg))
    assert (call.method, call.path, call.body) == ("PUT", f"/v0.1/listeners/{LID}/haproxy", cfg.read_bytes())


def test_cert_put_names_the_file_after_its_base_name(tmp_path):
    pem = tmp_path / "WILDCARD.example.com.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    call = plan("cert", "put", LID, str(pem))
    assert call.path == f"/v0.1/listeners/{LID}/certificates/WILDCARD.example.com.pem"
    assert plan("cert", "put", LID, str(pem), "--name", "x.pem").path.endswith("/x.pem")


def test_missing_file_is_a_local_error(tmp_path):
    with pytest.raises(ctl.LocalError):
        plan("listener", "upload", LID, str(tmp_path / "nope"))


def test_topology_set_body(tmp_path, monkeypatch):
    monkeypatch.delenv("AMPHORA_VRRP_SECRET", raising=False)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    call = plan("topology", "set", "ACTIVE-STANDBY", "--role", "STANDBY", "--ha-ip", "203.0.113.2",
                "--secret-file", str(secret), "--peer", "192.0.2.1", "--peer", "192.0.2.2",
                "--virtual-router-id", "7", "--priority", "90")
    assert (call.method, call.path) == ("POST", "/v0.1/topology")
    assert call.json_body == {"topology": "ACTIVE-STANDBY", "role": "STANDBY", "ha_ip": "203.0.113.2",
                              "secret": "s3cret", "peers": ["192.0.2.1", "192.0.2.2"],
                              "virtual_router_id": 7, "priority": 90}
    assert plan("topology", "set", "SINGLE").json_body == {"topology": "SINGLE"}
    monkeypatch.setenv("AMPHORA_VRRP_SECRET", "from-env")
    assert plan("topology", "set", "ACTIVE-STANDBY").json_body["secret"] == "from-env"


def test_plug_bodies():
    assert plan("plug", "vip", "203.0.113.2").json_body is None
    call = plan("plug", "vip", "203.0.113.2", "--mac", "fa:16:3e:00:00:01", "--subnet-cidr", "203.0.113.0/24",
                "--gateway", "203.0.113.1", "--mtu", "1450", "--host-route", "10.0.0.0/8,203.0.113.254")
    assert call.json_body == {"mac_address": "fa:16:3e:00:00:01", "subnet_cidr": "203.0.113.0/24",
                              "gateway": "203.0.113.1", "mtu": 1450,
                              "host_routes": [{"destination": "10.0.0.0/8", "nexthop": "203.0.113.254"}]}
    call = plan("plug", "network", "--mac", "fa:16:3e:00:00:02", "--fixed-ip", "198.51.100.7,198.51.100.0/24",
                "--fixed-ip", "2001:db8::7")
    assert call.json_body == {"mac_address": "fa:16:3e:00:00:02", "fixed_ips": [
        {"ip_address": "198.51.100.7", "subnet_cidr": "198.51.100.0/24"}, {"ip_address": "2001:db8::7"}]}
    with pytest.raises(ctl.UsageError):
        plan("plug", "vip", "203.0.113.2", "--host-route", "10.0.0.0/8")


@pytest.mark.parametrize("status,code", [(200, 0), (201, 0), (202, 0), (400, 4), (404, 4), (413, 4),
                                         (500, 5), (503, 5), (308, 1)])
def test_exit_codes(status, code):
    assert ctl.exit_code_for(status) == code


def test_codes_are_distinct():
    codes = {ctl.EXIT_OK, ctl.EXIT_LOCAL, ctl.EXIT_USAGE, ctl.EXIT_CONNECTION, ctl.EXIT_CLIENT_ERROR,
             ctl.EXIT_SERVER_ERROR}
    assert len(codes) == 6


def test_listener_tables():
    text = ctl.show_listeners([{"uuid": LID, "status": "ACTIVE", "type": "HTTP"}])
    header, row = text.splitlines()
    assert header.split() == ["UUID", "STATUS", "TYPE"] and row.split() == [LID, "ACTIVE", "HTTP"]
    assert ctl.show_listeners([]) == "no listeners"
    doc = {"uuid": LID, "status": "ACTIVE", "type": "TCP", "pools": [
        {"uuid": "p1", "status": "DEGRADED", "members": [{"m1": "UP"}, {"m2": "DOWN"}]},
        {"uuid": "p2", "status": "DOWN", "members": []}]}
    lines = ctl.show_listener(doc).splitlines()
    assert any(line.split() == ["p1", "DEGRADED", "m2", "DOWN"] for line in lines)
    assert any(line.split() == ["p2", "DOWN", "-", "-"] for line in lines)


def test_document_flattening():
    text = ctl.show_document({"cpu": {"total": 0.5}, "active": True, "load": [0.5, 0.25, 0.0],
                              "packages": [{"haproxy": "2.6"}, {"openssl": "3.0"}], "ha_ip": ""})
    rows = {line.split(None, 1)[0]: line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else ""
            for line in text.splitlines()}
    assert rows["cpu.total"] == "0.5" and rows["active"] == "yes"
    assert rows["load"] == "0.5, 0.25, 0" and rows["packages"] == "haproxy=2.6, openssl=3.0"


def test_errors_read_as_message_and_details():
    assert ctl.show_error(404, {"message": "Listener Not Found", "details": "No listener with UUID: x"}) == \
        "404 Listener Not Found: No listener with UUID: x"
    assert ctl.show_error(503, {"message": "Topology transition in progress"}) == \
        "503 Topology transition in progress"
    assert ctl.show_ok({"message": "OK", "details": "Configuration file is valid"}) == \
        "OK: Configuration file is valid"


def test_show_beat_line():
    line = ctl.show_beat({"source": "127.0.0.1:1", "bytes": 99, "beat": {
        "id": "a", "seq": 3, "listeners": {LID: {"status": "OPEN"}}, "pools": {}, "role": "ACTIVE"}})
    assert "amphora=a seq=3 listeners=1 pools=0" in line and "04bff5c3=OPEN" in line and "role=ACTIVE" in line


def test_usage_errors_exit_2(monkeypatch, capsys):
    monkeypatch.delenv("AMPHORA_CA", raising=False)
    with pytest.raises(SystemExit) as e:
        ctl.main(["--cert", "/dev/null", "info"])
    assert e.value.code == ctl.EXIT_USAGE
    assert "AMPHORA_CA" in capsys.readouterr().err
