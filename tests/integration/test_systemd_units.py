"""conf/systemd and conf/tmpfiles.d: systemd itself accepts them, and they say what production needs.

``systemd-analyze verify`` runs on copies of the units in which the one
machine-specific value, the twistd path in ExecStart, points at this venv's
twistd (verify insists that the binary exists). Its warnings (unknown keys,
bad values) count as failures: verify exits 0 on them.
"""

import configparser
import os
import shutil
import stat
import subprocess

from amphora.config import AgentSection
from amphora.tap import DEFAULT_CONFIG
from tests.helpers import REPO, TWISTD

UNITS = os.path.join(REPO, "conf", "systemd")
SERVICE = os.path.join(UNITS, "amphora-agent.service")
TMPFILES = os.path.join(REPO, "conf", "tmpfiles.d", "amphora-agent.conf")
PROD_TWISTD = "/opt/amphora-agent/bin/twistd"


def _default(name):
    return AgentSection.__dataclass_fields__[name].default


def _mount_unit_name(path):
    out = subprocess.run(["systemd-escape", "-p", "--suffix=mount", path], capture_output=True, check=True)
    return out.stdout.decode().strip()


def _unit(path):
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str
    with open(path) as f:
        parser.read_file(f)
    return parser


def _tool(name):
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install systemd"
    return path


def test_units_pass_systemd_analyze_verify(tmp_path):
    mount = _mount_unit_name(_default("certs_dir"))
    for name in ("amphora-agent.service", mount):
        with open(os.path.join(UNITS, name)) as f:
            text = f.read()
        assert name != "amphora-agent.service" or f"ExecStart={PROD_TWISTD} " in text
        (tmp_path / name).write_text(text.replace(f"ExecStart={PROD_TWISTD} ", f"ExecStart={TWISTD} "))
    result = subprocess.run([_tool("systemd-analyze"), "verify", str(tmp_path / "amphora-agent.service"),
                             str(tmp_path / mount)], capture_output=True, timeout=60)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    assert output.strip() == "", output


def test_verify_catches_a_bad_unit(tmp_path):
    """The check above can fail: an unknown key produces a warning."""
    bad = tmp_path / "amp9-bad.service"
    bad.write_text(f"[Service]\nExecStart={TWISTD} --version\nKillMod=process\n")
    result = subprocess.run([_tool("systemd-analyze"), "verify", str(bad)], capture_output=True, timeout=60)
    assert "KillMod" in (result.stdout + result.stderr).decode()


def test_service_keys_production_needs():
    service = _unit(SERVICE)["Service"]
    argv = service["ExecStart"].split()
    assert argv[:4] == [PROD_TWISTD, "-n", "--pidfile=", "amphora-agent"]
    assert argv[4:] == ["--config", DEFAULT_CONFIG]
    assert service["Restart"] == "always"
    # restarting the agent must not kill the haproxy / keepalived it adopts again
    assert service["KillMode"] == "process"
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_KILL"} <= caps
    assert service["NoNewPrivileges"] == "yes"
    assert "net" in service["RestrictNamespaces"].split()
    assert {"AF_NETLINK", "AF_PACKET", "AF_INET", "AF_INET6", "AF_UNIX"} <= set(
        service["RestrictAddressFamilies"].split())
    # no private mount namespace: /run/netns mounts must be shared with the host and the next agent
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "PrivateDevices",
                "TemporaryFileSystem", "PrivateMounts", "MountFlags"):
        assert key not in service, key
    requires = _unit(SERVICE)["Unit"]["RequiresMountsFor"].split()
    assert _default("certs_dir") in requires and _default("state_dir") in requires


def test_certs_tmpfs_mount_unit():
    certs_dir = _default("certs_dir")
    unit = _unit(os.path.join(UNITS, _mount_unit_name(certs_dir)))["Mount"]
    assert unit["Where"] == certs_dir
    assert unit["Type"] == "tmpfs"
    options = unit["Options"].split(",")
    assert "mode=0700" in options and {"nosuid", "nodev", "noexec"} <= set(options)


def test_tmpfiles_creates_run_certs_and_state_dirs(tmp_path):
    result = subprocess.run([_tool("systemd-tmpfiles"), "--create", f"--root={tmp_path}", TMPFILES],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().strip() == ""
    expected = {
        _default("run_dir"): 0o755,
        _default("certs_dir"): 0o700,
        _default("state_dir"): 0o755,
        _default("log_dir"): 0o750,
    }
    for path, mode in expected.items():
        st = os.stat(str(tmp_path) + path)
        assert stat.S_ISDIR(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, (path, oct(st.st_mode))
