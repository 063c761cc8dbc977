"""``haproxy -c`` is bounded: stdin closed, a deadline, the child's process group killed and reaped.

Real haproxy through the real mTLS API. A configuration whose ``lua-load``
script never returns (and forks a ``sleep`` first, to show that the whole
process group goes) must not hold the request, the listener's lock, or a
process: the upload answers 400, nothing stored changes, and the next
operation on the same listener proceeds.
"""

from __future__ import annotations

import os

import psutil
import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread

from tests import certificates_support as cs
from tests.helpers import free_port
from tests.listener_support import Backend, eventually, http_config, http_get, new_id, reloaded_to


@pytest.fixture
def agent_config_extra(run_dir):
    return {"agent": {"run_dir": run_dir}, "haproxy": {"stop_timeout": "3", "start_timeout": "5"}}


@pytest.fixture
def lua(tmp_path):
    """A Lua script for ``lua-load`` that forks a ``sleep`` (its pid in a file), then loops forever.

    Every process it leaves is killed by pid afterwards, even when the test fails.
    """
    script = tmp_path / "ampF-loop.lua"
    pidfile = tmp_path / "ampF-sleep.pid"
    script.write_text(f'os.execute("sleep 300 & echo $! > {pidfile}")\nwhile true do end\n')
    found = []
    yield script, pidfile, found
    pids = list(found)
    if pidfile.exists() and pidfile.read_text().strip().isdigit():
        pids.append(int(pidfile.read_text()))
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def check_pids(lid: str) -> list[int]:
    """haproxy -c processes checking a file of listener ``lid``."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "-c" in cmdline and any(lid in arg for arg in cmdline) and "haproxy" in " ".join(cmdline[:2]):
            pids.append(proc.pid)
    return pids


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def hanging_upload(api, lid, text, lua_fixture):
    """Upload ``text`` (which loads the looping script); returns (code, body, check pid, sleep pid)."""
    _, pidfile, found = lua_fixture
    if pidfile.exists():
        pidfile.unlink()
    upload = ensureDeferred(api.upload(lid, text))
    await eventually(lambda: check_pids(lid) and pidfile.exists() and pidfile.read_text().strip(),
                     timeout=10, message="haproxy -c running the script")
    pids = check_pids(lid)
    found.extend(pids)
    assert len(pids) == 1, pids
    sleeper = int(pidfile.read_text())
    found.append(sleeper)
    assert not gone(pids[0]) and not gone(sleeper)
    code, body = await upload
    return code, body, pids[0], sleeper


@pytest_twisted.ensureDeferred
async def test_a_check_that_never_ends_is_killed_and_the_listener_stays_usable(agent, api, lua, url, client):
    script = lua[0]
    listeners = agent.listeners
    with Backend("A") as a, Backend("B") as b:
        lid, port, pool = new_id(), free_port(), new_id()
        good = http_config(lid, port, pool, [(new_id(), a.port)])
        assert (await api.upload(lid, good))[0] == 201
        assert (await api.action(lid, "start"))[0] == 202
        master = listeners._procs[lid].pid

        listeners.check_timeout = 1.0
        looping = http_config(lid, port, pool, [(new_id(), b.port)], extra_global=f"    lua-load {script}")
        code, body, checker, sleeper = await hanging_upload(api, lid, looping, lua)
        assert code == 400, body
        assert body["message"] == "Invalid request"
        assert body["details"].startswith("configuration check did not finish within 1 s"), body
        # the check and what it forked are gone (killed as a process group; the check reaped)
        assert gone(checker) and not psutil.pid_exists(checker)
        await eventually(lambda: gone(sleeper), timeout=5, message="the forked sleep killed")
        assert check_pids(lid) == []
        # nothing stored changed, the running haproxy was not touched
        assert (await api.call("GET", f"/listeners/{lid}/haproxy"))[1] == good.encode()
        assert listeners._procs[lid].pid == master
        assert await deferToThread(http_get, port) == (200, "A")

        # The listener's lock is free: a certificate upload and a reload on it proceed at once.
        listeners.check_timeout = 5.0
        bundle = cs.bundle("ampf.example.com")
        response = await client.request("PUT", f"{url}/v0.1/listeners/{lid}/certificates/ampf.pem",
                                        data=bundle.pem())
        assert response.code == 201, await response.content()
        assert (await api.upload(lid, http_config(lid, port, pool, [(new_id(), b.port)])))[0] == 201
        code, body = await api.action(lid, "reload")
        assert code == 202, body
        await reloaded_to(port, "B", master)


@pytest.fixture
def listeners(listeners):
    yield listeners
    listeners.check_timeout = listeners.config.haproxy.start_timeout


@pytest_twisted.ensureDeferred
async def test_a_first_upload_whose_check_never_ends_leaves_nothing(agent, api, lua):
    agent.listeners.check_timeout = 0.5
    lid = new_id()
    text = http_config(lid, free_port(), new_id(), [(new_id(), 1)], extra_global=f"    lua-load {lua[0]}")
    code, body, checker, sleeper = await hanging_upload(api, lid, text, lua)
    assert code == 400 and body["details"].startswith("configuration check did not finish within 0.5 s")
    assert gone(checker)
    assert (await api.call("GET", f"/listeners/{lid}/haproxy"))[0] == 404
    assert (await api.call("GET", "/listeners"))[1] == []
    assert not os.path.exists(agent.listeners.store.state_dir(lid))


@pytest_twisted.ensureDeferred
async def test_start_whose_check_never_ends_is_500_and_nothing_runs(agent, api, tmp_path, lua):
    """The script was harmless at upload time and loops by the start: the start's own check
    is bounded too (500, like every failed check at start), and the listener is not started."""
    script, pidfile, found = lua
    harmless = tmp_path / "ampF-ok.lua"
    harmless.write_text("-- nothing\n")
    link = tmp_path / "ampF-current.lua"
    link.symlink_to(harmless)
    lid, port = new_id(), free_port()
    text = http_config(lid, port, new_id(), [(new_id(), 1)], extra_global=f"    lua-load {link}")
    assert (await api.upload(lid, text))[0] == 201
    link.unlink()
    link.symlink_to(script)
    agent.listeners.check_timeout = 0.5
    code, body = await api.action(lid, "start")
    if pidfile.exists():
        found.append(int(pidfile.read_text()))
    assert code == 500, body
    assert body["message"] == "Error starting haproxy"
    assert body["details"].startswith("configuration check did not finish within 0.5 s"), body
    assert check_pids(lid) == []
    if found:
        await eventually(lambda: gone(found[-1]), timeout=5, message="the forked sleep killed")
    assert agent.listeners.running_count() == 0
    assert (await api.call("GET", f"/listeners/{lid}"))[1]["status"] == "ERROR"


@pytest_twisted.ensureDeferred
async def test_lua_load_of_stdin_reads_end_of_file_in_the_check_and_in_haproxy(agent, api):
    """stdin of ``haproxy -c`` and of the long-running haproxy is closed: ``lua-load /dev/stdin``
    loads an empty script instead of waiting for input that never comes."""
    agent.listeners.check_timeout = 5.0
    with Backend("A") as a:
        lid, port = new_id(), free_port()
        text = http_config(lid, port, new_id(), [(new_id(), a.port)], extra_global="    lua-load /dev/stdin")
        code, body = await api.upload(lid, text)
        assert (code, body) == (201, {"message": "OK", "details": "Configuration file is valid"})
        code, body = await api.action(lid, "start")
        assert code == 202, body
        assert await deferToThread(http_get, port) == (200, "A")
