"""Crashes and bad files never leave an inconsistent or unmanaged listener (issue 17 part 4).

Real haproxy, real files. A killed agent is simulated by what it leaves on
disk: the running manager detaches from its haproxy (as a dead agent would),
the files are put in the state a kill at that point leaves, and a new
``ListenerManager`` restores from them, as the next agent start does.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from amphora.listeners import serverstate
from amphora.listeners.manager import ListenerManager
from tests.helpers import free_port
from tests.listener_support import API, Backend, http_config, http_get, kill_listeners, new_id, port_open


@pytest.fixture
def agent_config_extra(run_dir):
    return {"agent": {"run_dir": run_dir}, "haproxy": {"stop_timeout": "3", "start_timeout": "5"}}


@pytest.fixture
def restarts(listeners, run_dir):
    """``await restart()``: a new manager restored from the files (the next agent start)."""
    managers = []

    async def restart():
        listeners.stopService()  # the old agent is gone: it no longer supervises anything
        again = ListenerManager(listeners.config, reactor)
        managers.append(again)
        await again.restore()
        return again

    yield restart
    pids = [p.pid for m in managers for p in m._procs.values() if p.pid]
    for m in managers:
        m.stopService()
    kill_listeners(run_dir, pids)


async def _started(listeners, backend, name="A"):
    lid, port = new_id(), free_port()
    await listeners.upload(lid, http_config(lid, port, new_id(), [(new_id(), backend.port)]).encode())
    await listeners.action(lid, "start")
    assert (await deferToThread(http_get, port)) == (200, name)
    return lid, port


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


# -- delete -------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", ["marked", "stopped", "run_dir", "certs"])
@pytest_twisted.ensureDeferred
async def test_a_delete_killed_at_any_step_is_finished_at_the_next_start(agent, listeners, restarts, step):
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        os.makedirs(files.certs_dir, exist_ok=True)
        with open(os.path.join(files.certs_dir, "x.pem"), "w") as f:
            f.write("cert")
        pid = listeners._procs[lid].pid
        # the state the delete leaves when killed after this step of its order
        files.mark_deleting()
        if step in ("stopped", "run_dir", "certs"):
            os.kill(pid, 9)
        if step in ("run_dir", "certs"):
            shutil.rmtree(files.run_dir)
        if step == "certs":
            shutil.rmtree(files.certs_dir)
        again = await restarts()
        # gone, and completely: no listener, no process, no files
        assert lid not in again.listener_ids() and again.status_list() == []
        assert not _alive(pid) and not await deferToThread(port_open, port)
        for path in (files.state_dir, files.run_dir, files.certs_dir, files.deleting_path):
            assert not os.path.exists(path), path


@pytest_twisted.ensureDeferred
async def test_delete_marks_first_so_a_listener_is_never_half_there(agent, listeners, client, url):
    api = API(client, url)
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        seen = []
        real_remove = files.remove.__func__

        def spy(self, extra=()):
            seen.append((os.path.exists(files.state_dir), os.path.isdir(files.deleting_path)))
            return real_remove(self, extra)
        listeners._instances[lid].files.remove = spy.__get__(listeners._instances[lid].files)
        code, body = await api.call("DELETE", f"/listeners/{lid}")
        assert code == 200, body
        assert seen == [(False, True)]  # the rename came before haproxy stopped and anything was removed
        assert not os.path.exists(files.deleting_path) and not os.path.exists(files.run_dir)
        assert (await api.call("GET", f"/listeners/{lid}"))[0] == 404


# -- reload ------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_reload_killed_between_rename_and_signal_is_reconciled_at_start(agent, listeners, restarts):
    with Backend("A") as a, Backend("B") as b:
        lid, port = await _started(listeners, a)
        files = listeners.store.files(lid)
        pid = listeners._procs[lid].pid
        # killed after renaming the new running.cfg in, before SIGUSR2
        files.write_running(http_config(lid, port, new_id(), [(new_id(), b.port)]).encode())
        again = await restarts()
        assert again._procs[lid].pid == pid  # adopted, not restarted
        assert (await deferToThread(http_get, port)) == (200, "B")  # and it runs running.cfg now
        doc = await again.status(lid)
        assert doc["status"] == "ACTIVE"


# -- staging leftovers ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_staging_leftovers_are_swept_at_start(agent, listeners, restarts):
    cfg = agent.config.agent
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        os.makedirs(os.path.join(files.state_dir, ".upload-abc"))
        open(os.path.join(files.state_dir, ".upload-abc", "haproxy.cfg"), "w").close()
        open(os.path.join(files.state_dir, ".tmp-x1"), "w").close()
        open(os.path.join(files.run_dir, ".tmp-x2"), "w").close()
        os.makedirs(files.certs_dir, exist_ok=True)
        open(os.path.join(files.certs_dir, ".tmp-x3"), "w").close()
        # a first upload killed during its check: a state dir with only the staging dir, a run dir
        # with only the fragment, an empty certs dir
        other = listeners.store.files(new_id())
        os.makedirs(os.path.join(other.state_dir, ".upload-def"))
        os.makedirs(other.run_dir)
        open(other.fragment_path, "w").close()
        os.makedirs(other.certs_dir)
        again = await restarts()
        assert again.listener_ids() == [lid]
        leftovers = [p for root in (cfg.state_dir, cfg.run_dir, cfg.certs_dir)
                     for p in glob.glob(os.path.join(root, "**", ".*"), recursive=True)]
        assert leftovers == []
        for path in (other.state_dir, other.run_dir, other.certs_dir):
            assert not os.path.exists(path), path
        assert (await again.status(lid))["status"] == "ACTIVE"
        assert os.path.exists(files.config_path)


@pytest_twisted.ensureDeferred
async def test_a_failed_first_upload_leaves_no_directory(agent, listeners):
    from amphora.errors import InvalidRequest
    lid = new_id()
    files = listeners.store.files(lid)
    with pytest.raises(InvalidRequest):
        await listeners.upload(lid, b"global\n    no-such-keyword\n")
    for path in (files.state_dir, files.run_dir, files.certs_dir):
        assert not os.path.exists(path), path


# -- full state_dir -------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """``mount(dir)``: put ``dir``'s files on a tiny tmpfs of its own (a full disk, for real)."""
    mounted = []

    def mount(directory):
        keep = tmp_path / "keep"
        shutil.copytree(directory, keep)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=755", "tmpfs", directory], check=True)
        mounted.append(directory)
        for name in os.listdir(keep):
            shutil.copy2(keep / name, os.path.join(directory, name))
        filler = os.path.join(directory, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError:
            pass
        finally:
            os.close(fd)
        return filler

    yield mount
    for directory in mounted:
        subprocess.run(["umount", "-l", directory], check=False)


@pytest_twisted.ensureDeferred
async def test_a_full_state_dir_still_stops_and_reloads_an_unchanged_config(agent, listeners, small_fs):
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        pid = listeners._procs[lid].pid
        filler = small_fs(files.state_dir)
        with pytest.raises(OSError):
            fd = os.open(os.path.join(files.state_dir, "probe"), os.O_WRONLY | os.O_CREAT)
            try:
                os.write(fd, b"x" * 8192)
            finally:
                os.close(fd)
        assert "reloaded" in await listeners.action(lid, "reload")
        assert "stopped" in await listeners.action(lid, "stop")
        assert not _alive(pid) and not await deferToThread(port_open, port)
        assert (await listeners.status(lid))["status"] == "STOPPED"
        os.unlink(filler)  # the disk allows again: the kept wish is written
        listeners.status_list()
        with open(files.desired_path) as f:
            assert '"stopped"' in f.read()


# -- corrupt state files ----------------------------------------------------------------------------

BAD_DESIRED = {"string": b'"started"', "list": b"[1,2]", "garbage": b"{\x00\xff", "unreadable": None}


@pytest.mark.parametrize("kind", list(BAD_DESIRED))
@pytest_twisted.ensureDeferred
async def test_unusable_desired_json_is_moved_aside_and_reported(agent, listeners, restarts, kind):
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        other, other_port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        pid = listeners._procs[lid].pid
        os.kill(pid, 9)  # a reboot: nothing runs
        for _ in range(100):
            if not _alive(pid):
                break
            await deferToThread(lambda: __import__("time").sleep(0.02))
        files.clear_run_files()
        os.unlink(files.desired_path)
        if BAD_DESIRED[kind] is None:
            os.mkdir(files.desired_path)  # cannot be read as a file
        else:
            with open(files.desired_path, "wb") as f:
                f.write(BAD_DESIRED[kind])
        again = await restarts()
        by_id = {d["uuid"]: d for d in again.status_list()}  # never a failure for the others
        assert by_id[other]["status"] == "ACTIVE" and by_id[lid]["status"] == "ERROR"
        doc = await again.status(lid)
        assert doc["status"] == "ERROR" and files.desired_path in doc["details"] and ".corrupt-" in doc["details"]
        assert glob.glob(files.desired_path + ".corrupt-*") and not os.path.exists(files.desired_path)
        # an explicit start clears it
        assert "started" in await again.action(lid, "start")
        assert (await again.status(lid))["status"] == "ACTIVE"


@pytest_twisted.ensureDeferred
async def test_unusable_desired_json_with_haproxy_running_is_adopted_and_delete_stops_it(
        agent, listeners, restarts):
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        pid = listeners._procs[lid].pid
        with open(files.desired_path, "wb") as f:
            f.write(b"[1,2]")
        again = await restarts()
        assert again._procs[lid].pid == pid and (await again.status(lid))["status"] == "ACTIVE"
        await again._run(again._get(lid), again._delete, again._get(lid))
        assert not _alive(pid) and not await deferToThread(port_open, port)


@pytest_twisted.ensureDeferred
async def test_member_states_a_killed_agent_saved_never_reach_a_later_restart(agent, listeners, restarts):
    """Killed between saving the states for a reload and emptying the file: the next agent empties
    it once it has adopted haproxy (a restart of haproxy after a crash begins with every server UP)."""
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        assert serverstate.agent_loads(files.read_running())
        with open(files.server_state_path, "wb") as f:
            f.write(b"1\n# be_id be_name srv_id srv_name\n3 p 1 s 127.0.0.1 0 0 1 1 6 8 2 0 6 0 0 0 - 80\n")
        pid = listeners._procs[lid].pid
        again = await restarts()
        assert again._procs[lid].pid == pid  # adopted
        with open(files.server_state_path, "rb") as f:
            assert f.read() == serverstate.EMPTY


@pytest_twisted.ensureDeferred
async def test_an_empty_running_cfg_is_not_started(agent, listeners, restarts):
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        pid = listeners._procs[lid].pid
        os.kill(pid, 9)
        await deferToThread(lambda: __import__("time").sleep(0.2))
        files.clear_run_files()
        open(files.running_path, "wb").close()  # 0 bytes
        again = await restarts()
        assert (await deferToThread(http_get, port)) == (200, "A")  # started from the stored upload
        assert glob.glob(files.running_path + ".corrupt-*")
        with open(files.running_path, "rb") as f:
            assert f.read() == again._instances[lid].running_text(files.read_config())


@pytest.mark.parametrize("content", [b"garbled\n", b"", b"-5\n", b"1\n"])
@pytest_twisted.ensureDeferred
async def test_a_garbled_pid_file_never_leaves_haproxy_unmanaged(agent, listeners, restarts, content):
    with Backend("A") as backend:
        lid, port = await _started(listeners, backend)
        files = listeners.store.files(lid)
        pid = listeners._procs[lid].pid
        with open(files.pid_path, "wb") as f:
            f.write(content)
        again = await restarts()
        assert again._procs[lid].pid == pid  # found by its socket / command line and adopted
        assert (await again.status(lid))["status"] == "ACTIVE"
        assert files.read_pid() == pid
        assert "stopped" in await again.action(lid, "stop")
        assert not _alive(pid) and not await deferToThread(port_open, port)
