"""The listener manager: one supervised haproxy per listener, and its life cycle.

This is ``agent.listeners``. The interface other parts of the agent use
(certificates, heartbeat, details, logs, topology) is:

- ``listener_ids() -> list[str]``: sorted ids of listeners that exist (have an
  uploaded configuration, a pid file or a stats socket);
- ``running_ids() -> list[str]``: listeners whose haproxy runs now;
- ``running_count() -> int``: number of supervised haproxy processes running;
- ``exists(lid) -> bool``;
- ``stats_socket(lid) -> str``: path of the admin-level stats socket;
- ``show_stat(lid) -> Deferred[list[dict]]``: parsed ``show stat`` rows;
  errbacks (ListenerNotFound, OperationFailed, TimeoutError, ...) when the
  listener does not exist, does not run or does not answer;
- ``runtime(lid, command) -> Deferred[bytes]``: one runtime API command;
- ``delete_hooks``: callables ``hook(lid) -> Deferred | None``, run by delete
  after haproxy stopped and before the listener's files are removed;
- ``config_hooks``: callables ``hook(lid) -> str``, text appended to the
  agent-owned configuration fragment of that listener (whole sections, e.g.
  ``"global\\n    log ...\\n"``); read at every check, start and reload;
- ``uses_file(lid, path) -> bool``: whether the uploaded (or running)
  configuration references that file path.

Operations the API drives (all serialised per listener by a DeferredLock,
parallel across listeners, never blocking the reactor): ``upload``,
``get_config``, ``action`` (start / stop / reload), ``delete``,
``status_list``, ``status``; and ``restore`` at agent start (adopt running
haproxy processes, start those that should run).

Status (DESIGN.md section 4): ACTIVE when haproxy runs; ERROR when it should
run (desired "started") but does not; STOPPED otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re

from twisted.application.service import Service
from twisted.internet.defer import DeferredList, DeferredLock, inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from amphora.errors import InvalidRequest, ListenerNotFound, OperationFailed
from amphora.listeners import stats
from amphora.listeners.haproxy import (HAProxy, bind_addresses, fragment_text,
                                       listener_type, pools_document)
from amphora.listeners.store import STARTED, STOPPED, ListenerStore, is_listener_id
from amphora.process import RUNNING, CommandTimeout, ProcessFailed, SupervisedProcess, process_identity
from amphora.process import STOPPED as PROC_STOPPED

log = Logger()

ACTIVE = "ACTIVE"
STATUS_STOPPED = "STOPPED"
ERROR = "ERROR"
ACTIONS = ("start", "stop", "reload")


def listener_status(desired: str | None, process_state: str | None) -> str:
    """ACTIVE / STOPPED / ERROR from the persisted wish and the supervisor's state."""
    if process_state == RUNNING:
        return ACTIVE
    if desired == STARTED:
        return ERROR
    return STATUS_STOPPED


class ListenerManager(Service):
    """``agent.listeners``; see the module docstring for the interface."""

    name = "listeners"

    def __init__(self, config, reactor):
        self.config = config
        self.reactor = reactor
        agent = config.agent
        self.store = ListenerStore(agent.state_dir, agent.run_dir, agent.certs_dir)
        self.haproxy = HAProxy(reactor, config.haproxy.binary, config.network.namespace)
        self.delete_hooks: list = []
        self.config_hooks: list = []
        # Supervision policy (tests shorten it).
        self.supervision = dict(backoff_initial=1.0, backoff_max=30.0, max_restarts=6,
                                stable_after=30.0, poll_interval=1.0)
        self.reload_timeout = config.haproxy.start_timeout
        # Bound of one ``haproxy -c``. A check parses exactly what a start parses (Lua, certificates,
        # maps) minus the binds, and a start that is not ready within start_timeout fails anyway:
        # a configuration that takes longer to check could never be started or reloaded.
        self.check_timeout = config.haproxy.start_timeout
        self._locks: dict[str, DeferredLock] = {}
        self._known: set[str] = set(self.store.ids())
        self._procs: dict[str, SupervisedProcess] = {}
        self._types: dict[str, str] = {}  # lid -> listener type of the stored configuration
        self._wishes: dict[str, str | None] = {}  # lid -> desired state (cache of desired.json)
        self._checked: dict[str, tuple] = {}  # lid -> (check key, haproxy output) of the last pass

    # -- the shared interface ----------------------------------------------------------------

    def listener_ids(self) -> list[str]:
        return sorted(self._known)

    def running_ids(self) -> list[str]:
        return sorted(lid for lid, p in self._procs.items() if p.state == RUNNING)

    def running_count(self) -> int:
        return sum(1 for p in self._procs.values() if p.state == RUNNING)

    def exists(self, lid: str) -> bool:
        return lid in self._known

    def stats_socket(self, lid: str) -> str:
        return self.store.stats_socket(lid)

    def runtime(self, lid: str, command: str, timeout: float = 5.0):
        if not self.exists(lid):
            return _failed(ListenerNotFound(lid))
        proc = self._procs.get(lid)
        if proc is None or proc.state != RUNNING:
            return _failed(OperationFailed(f"haproxy for listener {lid} is not running"))
        return stats.query(self.reactor, self.store.stats_socket(lid), command, timeout=timeout)

    def show_stat(self, lid: str):
        return self.runtime(lid, "show stat").addCallback(stats.parse_show_stat)

    def uses_file(self, lid: str, path: str) -> bool:
        if not is_listener_id(lid) or not path:
            return False
        pattern = re.compile(r"(?<![^\s,=])" + re.escape(path) + r"(?![^\s,])")
        for data in (self.store.read_config(lid), self.store.read_running(lid)):
            if data and pattern.search(data.decode("utf-8", "replace")):
                return True
        return False

    # -- service -------------------------------------------------------------------------------

    def stopService(self):
        """Detach from every haproxy without stopping it: the next agent adopts them."""
        for proc in self._procs.values():
            proc.detach()
        return Service.stopService(self)

    # -- helpers -------------------------------------------------------------------------------

    def _lock(self, lid: str) -> DeferredLock:
        lock = self._locks.get(lid)
        if lock is None:
            lock = self._locks[lid] = DeferredLock()
        return lock

    def serialised(self, lid: str, fn, *args):
        """Run ``fn(*args)`` under this listener's lock (for other domains touching its files,
        e.g. a certificate swap that must not interleave with a reload); Deferred."""
        return self._serialised(lid, lambda _lid, *a: maybeDeferred(fn, *a), *args)

    def _serialised(self, lid: str, fn, *args):
        lock = self._lock(lid)

        def forget_lock(result):
            # A listener that does not exist (deleted, or a refused first upload) keeps no lock.
            if lid not in self._known and not lock.locked and not lock.waiting \
                    and self._locks.get(lid) is lock:
                del self._locks[lid]
            return result

        return lock.run(fn, lid, *args).addBoth(forget_lock)

    def _require(self, lid: str) -> None:
        if not self.exists(lid):
            raise ListenerNotFound(lid)

    def _type(self, lid: str) -> str:
        """TCP / HTTP / TERMINATED_HTTPS of the stored configuration (cached; we are its only writer)."""
        kind = self._types.get(lid)
        if kind is None:
            data = self.store.read_config(lid) or self.store.read_running(lid)
            kind = self._types[lid] = listener_type(data) if data else "TCP"
        return kind

    def _desired(self, lid: str) -> str | None:
        if lid not in self._wishes:
            self._wishes[lid] = self.store.desired(lid)
        return self._wishes[lid]

    def _set_desired(self, lid: str, value: str) -> None:
        if self._desired(lid) != value:
            self.store.set_desired(lid, value)
            self._wishes[lid] = value

    def _write_fragment(self, lid: str) -> str:
        extra = []
        for hook in self.config_hooks:
            try:
                extra.append(hook(lid) or "")
            except Exception:
                log.failure("config hook {hook} failed for listener {lid}", hook=hook, lid=lid)
                raise OperationFailed(f"config hook {getattr(hook, '__name__', hook)} failed; see the agent log")
        return self.store.write_fragment(lid, fragment_text(lid, extra=extra))

    def _process(self, lid: str) -> SupervisedProcess:
        proc = self._procs.get(lid)
        if proc is None:
            master = self.store.master_socket(lid)
            argv = self.haproxy.argv(self.store.running_path(lid), self.store.fragment_path(lid),
                                     self.store.pid_path(lid))

            def ready(pid):
                def same_master(info):
                    if info.master_pid != pid:
                        raise ValueError(f"master socket answered for pid {info.master_pid}, not {pid}")
                    return info
                return self.haproxy.show_proc(master, timeout=1.0).addCallback(same_master)

            proc = SupervisedProcess(
                self.reactor, f"haproxy[{lid}]", argv, env=self.haproxy.env, path=self.store.run_dir(lid),
                ready=ready, start_timeout=self.config.haproxy.start_timeout, stop_signal="USR1",
                stop_timeout=self.config.haproxy.stop_timeout, kill_grace=5.0, kill_group=True,
                **self.supervision)
            proc.observers.append(self._state_changed(lid))
            self._procs[lid] = proc
        return proc

    def _state_changed(self, lid: str):
        def observer(proc, old, new):
            log.info("listener {lid}: haproxy {old} -> {new}", lid=lid, old=old, new=new)
        return observer

    @inlineCallbacks
    def _check(self, lid: str, config_path: str, failure_message: str, error=OperationFailed,
               reuse: bool = False):
        """``haproxy -c`` on ``config_path`` plus the agent's fragment; returns haproxy's words.

        With ``reuse``, a check that already passed for exactly these bytes
        (configuration and fragment), with no certificate of the listener
        changed since, is not run again: the upload that stored the file has
        just checked it. (haproxy re-parses on reload anyway, and a reload that
        fails to load is rolled back, so this only saves time.)

        A check that outlives ``check_timeout`` is killed and counts as failed
        with ``error``: 400 for an upload (the configuration is what hangs, e.g.
        ``lua-load`` of a script that never returns: refused like any invalid
        one, nothing stored), 500 for start and reload like every failed check
        there. The per-listener lock is released either way.
        """
        fragment = self._write_fragment(lid)
        key = self._check_key(lid, config_path, fragment)
        cached = self._checked.get(lid)
        if reuse and key is not None and cached is not None and cached[0] == key:
            return cached[1]
        try:
            valid, output = yield self.haproxy.check(config_path, fragment, cwd=self.store.run_dir(lid),
                                                     timeout=self.check_timeout)
        except CommandTimeout as e:
            log.error("listener {lid}: haproxy -c did not finish within {timeout}s; killed", lid=lid,
                      timeout=e.timeout)
            details = (f"configuration check did not finish within {e.timeout:g} s (haproxy -c was "
                       f"killed; does the configuration read from standard input or loop while loading?)")
            if e.output:
                details += "\n" + e.output[-4000:]
            raise error(details, message=failure_message)
        if not valid:
            raise error(output or "haproxy -c failed without output", message=failure_message)
        if key is not None:  # content-based: a checked candidate counts for the stored copy too
            self._checked[lid] = (key, output)
        return output

    def _check_key(self, lid: str, config_path: str, fragment: str):
        """What a check result depends on: the bytes checked, and the certificates' state."""
        try:
            with open(config_path, "rb") as f:
                config = f.read()
            with open(fragment, "rb") as f:
                frag = f.read()
        except OSError:
            return None
        certs = []
        directory = self.store.certs_dir(lid)
        try:
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                st = entry.stat()
                certs.append((entry.name, st.st_mtime_ns, st.st_size))
        except OSError:
            pass
        return (hashlib.sha256(config).hexdigest(), hashlib.sha256(frag).hexdigest(), tuple(certs))

    @inlineCallbacks
    def _own_pids(self, lid: str) -> set:
        proc = self._procs.get(lid)
        if proc is None or proc.pid is None:
            return set()
        pids = {proc.pid}
        try:
            info = yield self.haproxy.show_proc(self.store.master_socket(lid), timeout=2.0)
            pids |= info.all_pids
        except Exception:
            pass
        return pids

    @inlineCallbacks
    def _check_binds(self, lid: str, config: bytes, failure_message: str):
        own = yield self._own_pids(lid)
        problems = yield self.haproxy.bind_conflicts(bind_addresses(config), own)
        if problems:
            raise OperationFailed("\n".join(problems), message=failure_message)

    # -- upload / get --------------------------------------------------------------------------

    def upload(self, lid: str, data: bytes):
        """Check ``data`` with haproxy and store it; never touches a running haproxy."""
        return self._serialised(lid, self._upload, data)

    @inlineCallbacks
    def _upload(self, lid: str, data: bytes):
        candidate, created = self.store.stage_upload(lid, data)
        try:
            yield self._check(lid, candidate, "Invalid request", error=InvalidRequest)
        except BaseException:
            self.store.discard_upload(lid, candidate, created and lid not in self._known)
            raise
        self.store.commit_upload(lid, candidate)
        self._known.add(lid)
        self._types.pop(lid, None)
        log.info("listener {lid}: configuration stored ({size} bytes)", lid=lid, size=len(data))
        return "Configuration file is valid"

    def get_config(self, lid: str) -> bytes:
        data = self.store.read_config(lid)
        if data is None:
            raise ListenerNotFound(lid)
        return data

    # -- actions --------------------------------------------------------------------------------

    def action(self, lid: str, action: str):
        """start / stop / reload; fires with the details text."""
        if action not in ACTIONS:
            raise InvalidRequest(f"Unknown action: {action}")
        self._require(lid)
        return self._serialised(lid, getattr(self, "_" + action))

    @inlineCallbacks
    def _start(self, lid: str, source: str | None = None, message: str = "Error starting haproxy"):
        """Check and bind-check ``source`` (default: the upload), make it the running file, run it."""
        self._require(lid)
        self._set_desired(lid, STARTED)
        proc = self._process(lid)
        if proc.state == RUNNING:
            return f"haproxy daemon for {lid} already running (pid {proc.pid})"
        if proc.pid is not None or proc.state != PROC_STOPPED:
            yield proc.stop()  # a pending automatic restart: this explicit start replaces it
        source = source or self.store.config_path(lid)
        try:
            with open(source, "rb") as f:
                config = f.read()
        except OSError as e:
            raise OperationFailed(f"cannot read the configuration of listener {lid}: {e.strerror}",
                                  message=message)
        output = yield self._check(lid, source, message)
        yield self._check_binds(lid, config, message)
        previous = self.store.read_running(lid)
        if previous != config:
            self.store.write_running(lid, config)
        self.store.clear_run_files(lid)
        try:
            pid = yield proc.start()
        except ProcessFailed as e:
            self._restore_running(lid, previous)
            raise OperationFailed(e.output or e.reason, message=message)
        log.info("listener {lid}: haproxy started (pid {pid})", lid=lid, pid=pid)
        return f"{_first_line(output)}\nhaproxy daemon for {lid} started (pid {pid})"

    def _restore_running(self, lid: str, previous: bytes | None) -> None:
        if previous is not None:
            self.store.write_running(lid, previous)

    @inlineCallbacks
    def _stop(self, lid: str):
        self._require(lid)
        self._set_desired(lid, STOPPED)
        proc = self._procs.get(lid)
        if proc is None or proc.pid is None:
            if proc is not None:
                yield proc.stop()  # cancels a pending restart
            return f"haproxy daemon for {lid} is not running"
        pid = proc.pid
        yield proc.stop(self.config.haproxy.stop_timeout)
        self.store.clear_run_files(lid)
        log.info("listener {lid}: haproxy stopped (pid {pid})", lid=lid, pid=pid)
        return f"haproxy daemon for {lid} stopped (pid {pid})"

    @inlineCallbacks
    def _reload(self, lid: str):
        """Check the upload, refuse unusable binds, then a hitless SIGUSR2 reload, confirmed.

        A stopped listener is started instead. If the new configuration does
        not load, the last good one is put back and reloaded.
        """
        self._require(lid)
        message = "Error reloading haproxy"
        proc = self._process(lid)
        if proc.state != RUNNING:
            details = yield self._start(lid)
            return details
        self._set_desired(lid, STARTED)
        config = self.store.read_config(lid)
        if config is None:
            raise OperationFailed(f"no configuration stored for listener {lid}", message=message)
        output = yield self._check(lid, self.store.config_path(lid), message, reuse=True)
        try:
            before = yield self.haproxy.show_proc(self.store.master_socket(lid), timeout=2.0)
        except Exception as e:
            raise OperationFailed(f"master CLI of pid {proc.pid} does not answer: {e}", message=message)
        problems = yield self.haproxy.bind_conflicts(bind_addresses(config), before.all_pids | {proc.pid})
        if problems:
            raise OperationFailed("\n".join(problems), message=message)
        previous = self.store.read_running(lid)
        self.store.write_running(lid, config)
        mark = proc.mark()
        try:
            worker = yield self._signal_reload(lid, proc, before)
        except OperationFailed as failure:
            details = failure.details
            log.error("listener {lid}: reload failed; returning to the last good configuration", lid=lid)
            if previous is not None:
                self.store.write_running(lid, previous)
                try:
                    yield self._signal_reload(lid, proc)
                except OperationFailed as again:
                    log.error("listener {lid}: reload of the last good configuration failed too: {e}",
                              lid=lid, e=again.details)
            output_text = proc.output_since(mark)
            raise OperationFailed("\n".join(x for x in (output_text, details) if x), message=message)
        log.info("listener {lid}: reloaded (master {pid}, new worker {worker})", lid=lid, pid=proc.pid,
                 worker=worker)
        return (f"{_first_line(output)}\nhaproxy daemon for {lid} reloaded "
                    f"(pid {proc.pid}, new worker {worker})")

    @inlineCallbacks
    def _signal_reload(self, lid: str, proc: SupervisedProcess, before=None):
        """SIGUSR2 and wait until ``show proc`` shows the outcome; fires with the new worker pid."""
        master = self.store.master_socket(lid)
        if before is None:
            try:
                before = yield self.haproxy.show_proc(master, timeout=2.0)
            except Exception as e:
                raise OperationFailed(f"master CLI of pid {proc.pid} does not answer: {e}")
        proc.signal("USR2")
        deadline = self.reactor.seconds() + self.reload_timeout
        while True:
            # Polling the master CLI is cheap (a UNIX socket round trip); a short period keeps
            # the confirmation close to the moment the new worker is up.
            yield deferLater(self.reactor, 0.01, lambda: None)
            if proc.state != RUNNING:
                raise OperationFailed(f"haproxy pid exited during the reload ({proc.last_exit})")
            try:
                after = yield self.haproxy.show_proc(master, timeout=1.0)
            except Exception:
                after = None  # the master is re-executing; ask again
            if after is not None and after.reloads > before.reloads:
                if after.failed > before.failed:
                    raise OperationFailed("haproxy reported: Loading failure!")
                new = [pid for pid, reloads in after.workers
                       if reloads == 0 and pid not in before.worker_pids]
                if new:
                    return new[0]
            if self.reactor.seconds() > deadline:
                raise OperationFailed(f"no new worker within {self.reload_timeout}s of the reload signal")

    # -- delete -----------------------------------------------------------------------------------

    def delete(self, lid: str):
        self._require(lid)
        return self._serialised(lid, self._delete)

    @inlineCallbacks
    def _delete(self, lid: str):
        self._require(lid)
        proc = self._procs.get(lid)
        if proc is not None:
            yield proc.stop(self.config.haproxy.stop_timeout)
            proc.detach()
        errors = []
        for hook in list(self.delete_hooks):
            try:
                yield hook(lid)
            except Exception as e:
                log.failure("delete hook {hook} failed for listener {lid}", hook=hook, lid=lid)
                errors.append(f"{getattr(hook, '__name__', hook)}: {e}")
        errors += self.store.remove(lid)
        self._procs.pop(lid, None)
        self._types.pop(lid, None)
        self._wishes.pop(lid, None)
        self._checked.pop(lid, None)
        self._known.discard(lid)
        log.info("listener {lid}: deleted", lid=lid)
        if errors:
            raise OperationFailed("\n".join(errors), message="Error deleting listener")
        return f"listener {lid} deleted"

    # -- status -----------------------------------------------------------------------------------

    def _status_of(self, lid: str) -> str:
        proc = self._procs.get(lid)
        return listener_status(self._desired(lid), proc.state if proc else None)

    def status_list(self) -> list[dict]:
        """Every listener's status and type, from memory and small files (no process spawned)."""
        return [{"status": self._status_of(lid), "uuid": lid, "type": self._type(lid)}
                for lid in self.listener_ids()]

    @inlineCallbacks
    def status(self, lid: str):
        self._require(lid)
        doc = {"status": self._status_of(lid), "uuid": lid, "type": self._type(lid), "pools": []}
        if doc["status"] == ACTIVE:
            for attempt in (1, 2):
                try:
                    rows = yield self.show_stat(lid)
                    doc["pools"] = pools_document(rows)
                    break
                except Exception as e:
                    if attempt == 2:
                        log.warn("listener {lid}: no stats: {error}", lid=lid, error=e)
                    else:  # e.g. a reload is handing the socket to the new worker
                        yield deferLater(self.reactor, 0.05, lambda: None)
        return doc

    # -- restore at agent start -------------------------------------------------------------------

    def restore(self):
        """Adopt still-running haproxy processes; start those that should run and do not."""
        self._known = set(self.store.ids())
        self._wishes.clear()
        self._types.clear()
        return DeferredList([self._lock(lid).run(self._restore_one, lid) for lid in self.listener_ids()],
                            consumeErrors=True)

    @inlineCallbacks
    def _restore_one(self, lid: str):
        desired = self._desired(lid)
        pid = self.store.read_pid(lid)
        proc = self._process(lid)
        if pid is not None and self._is_our_haproxy(lid, pid):
            if proc.adopt(pid):
                log.info("listener {lid}: adopted haproxy pid {pid}", lid=lid, pid=pid)
                if desired == STOPPED:
                    yield self._stop(lid)
                return
        if desired != STARTED:
            return
        running = self.store.running_path(lid)
        source = running if os.path.exists(running) else None
        try:
            yield self._start(lid, source)
        except Exception as e:
            log.error("listener {lid}: could not start at agent start: {error}", lid=lid, error=e)

    def _is_our_haproxy(self, lid: str, pid: int) -> bool:
        """The pid is alive and is the haproxy master of this listener (not a recycled pid):
        its command line names this listener's pid file."""
        if process_identity(pid) is None:
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            return False
        return self.store.pid_path(lid).encode() in cmdline


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if "Configuration file is valid" in line:
            return line.strip()
    return "Configuration file is valid"


def _failed(error):
    from twisted.internet.defer import fail
    return fail(error)

