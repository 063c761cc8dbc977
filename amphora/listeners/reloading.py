"""A hitless reload of a running instance: checks, SIGUSR2, confirmation, rollback.

Functions of a ``HaproxyInstance`` (its ``reload``, ``_show_proc`` and
``_signal_reload`` delegate here), run under the instance's lock.

The steps, and what a kill -9 of the agent at each leaves:

1. ``haproxy -c`` of the upload (cached: the upload has just checked it);
2. side by side: ``show proc`` then the bind check (our own pids are the
   master's and workers'), the servers' state save (the servers the new
   configuration defines as before), and the new
   ``running.cfg`` written to a temp file and fsynced. A kill leaves a
   ``.tmp-`` file that the next agent start sweeps; a failed check unlinks it;
3. the temp file renamed over ``running.cfg`` (haproxy reads it at the
   signal), SIGUSR2, and the directory's fsync meanwhile. A kill from here
   on leaves ``running.cfg`` differing from ``loaded.sha256``: the next
   agent start reloads it (``recovery.reconcile_loaded``);
4. the new worker confirmed (``HAProxy.reload``; the new process loaded the
   saved member states itself, ``amphora.listeners.serverstate``, else they
   are applied now), the state file emptied when the agent made it load it,
   ``loaded.sha256`` recorded, the fsync waited for, done.
"""

from __future__ import annotations

from twisted.internet.defer import DeferredList, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from amphora.errors import OperationFailed
from amphora.listeners import serverstate
from amphora.listeners.store import STARTED
from amphora.process import RUNNING

log = Logger()

# How long a master that refuses its CLI (re-executing after a reload) is asked again.
MASTER_CLI_GRACE = 1.0


@inlineCallbacks
def gather(*deferreds):
    """The results of ``deferreds`` once every one has fired; the first failure, if any, raised
    then (none is left running when the caller goes on)."""
    results = yield DeferredList(list(deferreds), consumeErrors=True)
    return _values(results)


@inlineCallbacks
def reload(inst):
    inst.require()
    message = "Error reloading haproxy"
    proc = inst.process()
    if proc.state != RUNNING:
        details = yield inst.start()
        return details
    inst.set_desired(STARTED)
    files = inst.files
    config = files.read_config()
    if config is None:
        raise OperationFailed(f"no configuration stored for {inst.kind} {inst.id}", message=message)
    inst.prepare(config)
    output = yield inst.check(files.config_path, message, reuse=True)
    haproxy = inst.owner.haproxy
    previous = files.read_running()
    running = inst.running_text(config)
    # an unchanged configuration needs no write (a full state_dir)
    staging = haproxy.blocking(files.stage_running, running) if previous != running else succeed(None)
    results = yield DeferredList([_show_proc_and_binds(inst, proc, config, message),
                                  inst.before_stop_or_reload(previous, running), staging], consumeErrors=True)
    staged = results[2][1] if results[2][0] else None
    try:
        before, saved, _ = _values(results)
        if staged is not None:
            files.commit_running(staged)
    except BaseException:
        if staged is not None:
            files.discard_staged(staged)
        raise
    # the rename's durability, while haproxy reloads; waited for before the reload is done
    synced = (haproxy.blocking(files.sync_state_dir) if staged is not None else succeed(None)).addErrback(
        lambda f: log.warn("{kind} {lid}: fsync of {path}: {error}", kind=inst.kind, lid=inst.id,
                           path=files.state_dir, error=f.value))
    mark = proc.mark()
    # Saved states the new process does not load itself (``serverstate``: a fallback): to the new
    # worker as soon as it exists, and confirmed on the master CLI; else the stats socket confirms.
    push = serverstate.pending(saved, running)
    try:
        worker = yield signal_reload(inst, proc, before, on_worker=(
            lambda pid: serverstate.apply_early(inst, saved, pid, running)) if push else None)
    except OperationFailed as failure:
        yield synced
        details = failure.details
        log.error("{kind} {lid}: reload failed; returning to the last good configuration",
                  kind=inst.kind, lid=inst.id)
        if previous is not None:
            files.write_running(previous)
            try:
                yield signal_reload(inst, proc)
            except OperationFailed as again:
                log.error("{kind} {lid}: reload of the last good configuration failed too: {e}",
                          kind=inst.kind, lid=inst.id, e=again.details)
            serverstate.forget(inst, previous)
        serverstate.forget(inst, running)
        output_text = proc.output_since(mark)
        raise OperationFailed("\n".join(x for x in (output_text, details) if x), message=message)
    yield serverstate.apply(inst, saved, worker, running)
    # the new process has loaded the saved states: a restart after a crash must not
    serverstate.forget(inst, running)
    inst._record_loaded(running)
    yield synced
    log.info("{kind} {lid}: reloaded (master {pid}, new worker {worker})", kind=inst.kind, lid=inst.id,
             pid=proc.pid, worker=worker)
    return inst.reloaded_text(output, worker)


def _values(results):
    for ok, value in results:
        if not ok:
            value.raiseException()
    return [value for _, value in results]


@inlineCallbacks
def show_proc(inst, proc, message=None):
    # Just after a reload the re-executing master refuses its CLI for up to ~100 ms
    # while the new worker already serves (the reload was confirmed on the stats
    # socket): ask again for a moment before calling it unanswered.
    haproxy = inst.owner.haproxy
    deadline = haproxy.reactor.seconds() + MASTER_CLI_GRACE
    while True:
        try:
            info = yield haproxy.show_proc(inst.files.master_socket, timeout=2.0)
            inst.unsettled = False
            return info
        except Exception as e:
            if haproxy.reactor.seconds() >= deadline or proc.pid is None:
                raise OperationFailed(f"master CLI of pid {proc.pid} does not answer: {e}", message=message)
        yield deferLater(haproxy.reactor, 0.02, lambda: None)


@inlineCallbacks
def _show_proc_and_binds(inst, proc, config: bytes, message: str):
    before = yield show_proc(inst, proc, message)
    yield inst._check_binds(config, message, own=before.all_pids | {proc.pid})
    return before


@inlineCallbacks
def signal_reload(inst, proc, before=None, on_worker=None):
    if before is None:
        before = yield show_proc(inst, proc)
    worker = yield inst.owner.haproxy.reload(proc, inst.files.master_socket, before, inst.reload_timeout(),
                                             # Saved server states go to the new worker through the
                                             # master CLI before the reload counts as done: confirm there.
                                             stats_socket=None if on_worker else inst.files.stats_socket,
                                             on_worker=on_worker)
    inst.unsettled = True
    return worker


@inlineCallbacks
def settle(inst, proc):
    """Before a signal to a master that was reloaded and has not answered its CLI since: wait
    (bounded, ``show_proc``) until it does. A reload is confirmed by the new worker, while
    haproxy 2.6's re-executed master is still setting up for 20-50 ms, and a signal it gets then
    is lost (measured: SIGUSR1 sent as soon as the new worker answered was ignored every time,
    and the stop waited for its timeout; sent once the master CLI answered, never)."""
    if not inst.unsettled or proc.state != RUNNING:
        return
    try:
        yield show_proc(inst, proc)
    except OperationFailed as e:
        log.warn("{kind} {lid}: {error}; signalling it anyway", kind=inst.kind, lid=inst.id, error=e.details)
    inst.unsettled = False
