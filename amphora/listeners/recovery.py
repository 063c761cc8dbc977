"""What an agent start does with each instance's files: adopt, reconcile, restore, finish deletes.

Functions of a ``HaproxyInstance`` (its methods of the same names delegate
here), run under the instance's lock like every life-cycle operation:

- ``adopt_running``: take over the haproxy that still runs, found by its pid
  file or, when that is garbled or gone, by its master socket and command line
  (never an unmanaged haproxy, never two);
- ``reconcile_loaded``: an adopted process runs what ``loaded.sha256`` names;
  a ``running.cfg`` renamed in by a reload that was killed before its signal is
  reloaded now;
- ``restore``: adopt, else start what should run (from ``running.cfg``, or the
  upload when ``running.cfg`` is unusable); failures become the instance's
  ``problem`` (status ERROR with that reason) and are logged;
- ``finish_delete``: complete a delete that a killed agent left half-way.
"""

from __future__ import annotations

import hashlib
import os
import signal

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from amphora.errors import OperationFailed
from amphora.listeners import serverstate
from amphora.listeners.store import STARTED, STOPPED
from amphora.process import RUNNING

log = Logger()


@inlineCallbacks
def adopt_running(inst):
    """Adopt the haproxy that runs for this instance, found by its pid file or, when that is
    garbled or gone, by its master socket and command line; True when one runs now."""
    pid, _problem = inst.files.pid_state()
    proc = inst.process()
    if proc.state == RUNNING:
        return True
    haproxy = inst.owner.haproxy
    if pid is None or not haproxy.is_master(pid, inst.files.pid_path):
        found = None
        if os.path.exists(inst.files.master_socket):
            try:
                info = yield haproxy.show_proc(inst.files.master_socket, timeout=1.0)
                found = info.master_pid
            except Exception:  # noqa: BLE001 - a stale socket: look at command lines
                found = None
        if found is None or not haproxy.is_master(found, inst.files.pid_path):
            masters = haproxy.find_masters(inst.files.pid_path)
            found = masters[0] if masters else None
            for extra in masters[1:]:  # never two: stop the others (by pid)
                log.warn("{kind} {lid}: stopping extra haproxy master {pid}", kind=inst.kind, lid=inst.id,
                         pid=extra)
                _kill(extra)
        if found is None:
            return False
        log.warn("{kind} {lid}: found haproxy master {pid} by its socket/command line; pid file rewritten",
                 kind=inst.kind, lid=inst.id, pid=found)
        pid = found
        try:
            inst.files.write_pid(pid)
        except OSError as e:
            log.warn("{kind} {lid}: cannot rewrite the pid file: {error}", kind=inst.kind, lid=inst.id,
                     error=e.strerror or e)
    if not proc.adopt(pid):
        return False
    log.info("{kind} {lid}: adopted haproxy pid {pid}", kind=inst.kind, lid=inst.id, pid=pid)
    return True


@inlineCallbacks
def reconcile_loaded(inst):
    """An adopted haproxy runs what ``loaded.sha256`` names; if ``running.cfg`` differs (the agent
    died between renaming it in and the reload), reload so the process runs ``running.cfg``."""
    recorded = inst.files.loaded_digest()
    running = inst.files.read_running()
    if not recorded or not running or hashlib.sha256(running).hexdigest() == recorded:
        return
    log.warn("{kind} {lid}: running.cfg is not what haproxy runs (interrupted reload); reloading it",
             kind=inst.kind, lid=inst.id)
    try:
        yield inst._signal_reload(inst.proc)
    except OperationFailed as e:
        inst.problem = f"running.cfg differs from what haproxy runs and its reload failed: {e.details}"
        log.error("{kind} {lid}: {problem}", kind=inst.kind, lid=inst.id, problem=inst.problem)
        return
    inst._record_loaded(running)


@inlineCallbacks
def restore(inst):
    """Adopt a still-running haproxy; start it if it should run and does not."""
    desired = inst.desired()
    adopted = yield inst.adopt_running()
    if adopted:
        yield inst.reconcile_loaded()
        # states a killed agent saved for a reload (done or not) must not reach a later restart
        serverstate.forget(inst, inst.files.read_running())
        if desired == STOPPED:
            yield inst.stop()
        return
    if desired != STARTED:
        return
    source, problem = inst.files.running_source()
    if problem:
        log.warn("{kind} {lid}: starting from the stored upload instead", kind=inst.kind, lid=inst.id)
    try:
        yield inst.start(source)
    except Exception as e:
        inst.problem = f"could not start at agent start: {getattr(e, 'details', None) or e}"
        log.error("{kind} {lid}: {problem}", kind=inst.kind, lid=inst.id, problem=inst.problem)


@inlineCallbacks
def finish_delete(inst, hooks=()):
    """Complete a delete a killed agent left half-way (agent start)."""
    yield inst.adopt_running()
    inst.known = True
    errors = yield inst.delete(hooks)
    for error in errors:
        log.error("{kind} {lid}: finishing an interrupted delete: {error}", kind=inst.kind, lid=inst.id,
                  error=error)
    log.info("{kind} {lid}: interrupted delete finished", kind=inst.kind, lid=inst.id)


def _kill(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass
