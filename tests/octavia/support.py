"""Running Octavia's own controller code (tests/octavia/driver.py) against an agent.

Each Octavia release lives in ``.venv/octavia/<version>`` (``make octavia``); the
driver runs as a child process with that directory on PYTHONPATH. A missing
release directory fails the test (never a skip): ``make test`` installs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from twisted.internet.threads import deferToThread

from tests.helpers import REPO

DRIVER = os.path.join(REPO, "tests", "octavia", "driver.py")
RELEASES = os.path.join(REPO, ".venv", "octavia")


def release_dir(version: str) -> str:
    path = os.path.join(RELEASES, version)
    assert os.path.exists(os.path.join(path, ".installed")), (
        f"Octavia {version} is not installed in {path}: run `make octavia` (make test does)")
    return path


def controller_params(pki, agent, work: str, version: str, scenario: str, **extra) -> dict:
    """The driver's parameters for a controller that trusts ``pki`` and talks to ``agent``."""
    os.makedirs(work, exist_ok=True)
    client_pem = os.path.join(work, "controller.pem")
    with open(client_pem, "wb") as f:
        f.write(pki.client.cert_pem + pki.client.key_pem)
    octavia = agent.config.octavia
    return {"version": version, "scenario": scenario, "port": agent.api_port,
            "amphora_id": pki.amphora_id, "ca": pki.paths["ca"], "client_pem": client_pem,
            "base_path": octavia.base_path, "base_cert_dir": octavia.cert_dir, "work": work, **extra}


def run_driver_blocking(params: dict, timeout: float = 300.0) -> list[dict]:
    path = os.path.join(params["work"], f"params-{params['scenario']}.json")
    with open(path, "w") as f:
        json.dump(params, f)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": release_dir(params["version"]),
           "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run([sys.executable, DRIVER, path], capture_output=True, env=env, timeout=timeout,
                          cwd=params["work"])
    results = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"driver exited {proc.returncode}: {proc.stderr.decode()[-3000:]}"
    return results


def run_driver(params: dict, timeout: float = 300.0):
    """Deferred: the driver's results, one dict per controller call (the reactor keeps running)."""
    return deferToThread(run_driver_blocking, params, timeout)


def by_call(results: list[dict]) -> dict:
    return {r["call"]: r for r in results}


def summary(version: str, results: list[dict]) -> str:
    passed = [r["call"] for r in results if r["ok"]]
    failed = [f"{r['call']}: {r.get('error', '')[:160]}" for r in results if not r["ok"]]
    return (f"Octavia {version}: {len(passed)} of {len(results)} controller calls passed\n  passed: "
            + ", ".join(passed) + "\n  failed:\n    " + "\n    ".join(failed))


def assert_passed(results: list[dict], calls) -> None:
    found = by_call(results)
    problems = [f"{c}: {found[c].get('error')}\n      agent answers: {found[c].get('answers')}"
                if c in found else f"{c}: not made" for c in calls if c not in found or not found[c]["ok"]]
    assert not problems, "controller calls failed:\n" + "\n".join(problems)


def haproxy_pids_under(root: str) -> list[int]:
    """haproxy processes whose command line names ``root`` (a test's own directory)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"haproxy" in cmdline.split(b"\0")[0] and root.encode() in cmdline:
            pids.append(int(entry))
    return pids


def kill_haproxies_under(*roots: str) -> None:
    for root in roots:
        for pid in haproxy_pids_under(root):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
