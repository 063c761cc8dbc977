"""One supervised haproxy with an id: its lock, process, desired state, type and check cache.

A v0.1 listener is one kind of instance (:class:`HaproxyInstance` itself); a
1.0 load balancer is another (``amphora.listeners.loadbalancer``). The
registry (``amphora.listeners.manager.ListenerManager``) owns the instances and
the settings they share (``haproxy``, ``supervision``, ``check_timeout``,
``reload_timeout``, the configuration hooks); an instance reads them from its
``owner`` at the moment it uses them, so a test can change them on the registry.

The life-cycle methods (``upload``, ``start``, ``stop``, ``reload``,
``delete``, ``restore``) expect the caller to hold ``lock``
(``ListenerManager`` runs them through it). What a kind changes is in the
small overridable methods: texts, extra command-line arguments, what to do
before a reload or stop, which paths go with the instance.

Status (DESIGN.md section 4): ACTIVE when haproxy runs; ERROR when it should
run (desired "started") but does not; STOPPED otherwise.
"""

from __future__ import annotations

import re

from twisted.internet.defer import DeferredLock, fail, inlineCallbacks
from twisted.logger import Logger

from amphora.errors import InvalidRequest, ListenerNotFound, OperationFailed
from amphora.listeners import checks, recovery, reloading, serverstate, stats
from amphora.listeners.haproxy import fragment_text, listener_type
from amphora.listeners.store import STARTED, STOPPED, InstanceFiles
from amphora.process import RUNNING, ProcessFailed, SupervisedProcess
from amphora.process import STOPPED as PROC_STOPPED

log = Logger()

ACTIVE = "ACTIVE"
STATUS_STOPPED = "STOPPED"
ERROR = "ERROR"
LISTENER = "listener"
_UNSET = object()


def listener_status(desired: str | None, process_state: str | None) -> str:
    """ACTIVE / STOPPED / ERROR from the persisted wish and the supervisor's state."""
    if process_state == RUNNING:
        return ACTIVE
    if desired == STARTED:
        return ERROR
    return STATUS_STOPPED


def first_valid_line(text: str) -> str:
    for line in (text or "").splitlines():
        if "Configuration file is valid" in line:
            return line.strip()
    return "Configuration file is valid"


class HaproxyInstance:
    """A v0.1 listener: one haproxy serving the uploaded configuration."""

    kind = LISTENER

    def __init__(self, owner, iid: str, files: InstanceFiles):
        self.owner = owner
        self.id = iid
        self.files = files
        self.lock = DeferredLock()
        self.known = False          # has files (an accepted upload, a pid file or a socket)
        self.proc: SupervisedProcess | None = None
        self._wish = _UNSET         # cache of desired.json
        self._type: str | None = None
        self._checked: tuple | None = None  # (check key, haproxy output) of the last check that passed
        self.problem: str | None = None     # why the instance is in ERROR (an unusable state file, ...)
        self._unsaved = False               # the desired state is only in memory (state_dir full)
        self.unsettled = False              # reloaded; the master has not answered its CLI since

    def __repr__(self):
        return f"<{type(self).__name__} {self.id}>"

    # -- what a kind changes ------------------------------------------------------------------

    def not_found(self) -> Exception:
        return ListenerNotFound(self.id)

    def fragment_extras(self, config: bytes | None = None) -> list[str]:
        """Text the agent adds to its fragment (whole sections) for ``config``: the registry's config
        hooks, and the agent's server-state file unless the configuration names its own."""
        return [*self.owner.hook_fragments(self), serverstate.fragment(self, config)]

    def default_server_state(self) -> str | None:
        """Where ``show servers state`` goes before a reload or stop when the configuration names
        no ``server-state-file`` (None: nowhere)."""
        return self.files.server_state_path

    def check_args(self) -> list[str]:
        """Extra ``haproxy`` arguments for both the check and the run (e.g. ``-L <peer>``)."""
        return []

    def prepare(self, config: bytes) -> None:
        """Make what the configuration needs exist before a check or a start."""

    def before_stop_or_reload(self, reload_from: bytes | None = None, reload_to: bytes | None = None):
        """Called with the process running, before SIGUSR2 (from the running copy ``reload_from`` to
        ``reload_to``) or stop: save the servers' state; fires with it (bytes, or None)."""
        return serverstate.save(self, reload_from, reload_to)

    def running_text(self, config: bytes) -> bytes:
        """What haproxy runs for the upload ``config`` (``serverstate.running_text``)."""
        path = serverstate.state_file(config, self.files.run_dir, self.default_server_state())
        return serverstate.running_text(config, path)

    def started_text(self, output: str, pid: int) -> str:
        return f"{first_valid_line(output)}\nhaproxy daemon for {self.id} started (pid {pid})"

    def already_running_text(self) -> str:
        return f"haproxy daemon for {self.id} already running (pid {self.proc.pid})"

    def stopped_text(self, pid: int | None) -> str:
        if pid is None:
            return f"haproxy daemon for {self.id} is not running"
        return f"haproxy daemon for {self.id} stopped (pid {pid})"

    def reloaded_text(self, output: str, worker: int) -> str:
        return (f"{first_valid_line(output)}\nhaproxy daemon for {self.id} reloaded "
                f"(pid {self.proc.pid}, new worker {worker})")

    def check_timeout(self) -> float:
        return self.owner.check_timeout

    def start_timeout(self) -> float:
        return self.owner.config.haproxy.start_timeout

    def reload_timeout(self) -> float:
        return self.owner.reload_timeout

    def extra_paths(self) -> tuple:
        """Paths removed with the instance besides its state, run and certificate directories."""
        return ()

    # -- state ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.state == RUNNING

    def desired(self) -> str | None:
        if self._wish is _UNSET:
            self._wish, problem = self.files.desired_state()
            if problem:
                self.problem = problem
        elif self._unsaved:
            self._save_desired(self._wish)
        return self._wish

    def set_desired(self, value: str) -> None:
        """Persist the wish; when the disk refuses (full state_dir) it is kept in memory and written
        at the next occasion, so a stop still stops."""
        if self.desired() != value or self._unsaved:
            self._wish = value
            self._save_desired(value)
        self.problem = None  # an explicit start or stop states what the client wants

    def _save_desired(self, value: str) -> None:
        try:
            self.files.set_desired(value)
        except OSError as e:
            if not self._unsaved:
                log.error("{kind} {lid}: cannot write {path} ({error}); desired state {value!r} kept in memory "
                          "until the disk allows", kind=self.kind, lid=self.id, path=self.files.desired_path,
                          error=e.strerror or e, value=value)
            self._unsaved = True
        else:
            self._unsaved = False

    def type(self) -> str:
        """TCP / HTTP / TERMINATED_HTTPS of the stored configuration (cached; we are its only writer)."""
        if self._type is None:
            data = self.files.read_config() or self.files.read_running()
            self._type = listener_type(data) if data else "TCP"
        return self._type

    def status(self) -> str:
        desired = self.desired()
        if self.problem and not self.running:
            return ERROR
        return listener_status(desired, self.proc.state if self.proc else None)

    def forget_caches(self) -> None:
        if not self._unsaved:
            self._wish = _UNSET
        self._type = None

    # -- runtime API ----------------------------------------------------------------------------

    def runtime(self, command: str, timeout: float = 5.0):
        if not self.running:
            return fail(OperationFailed(f"haproxy for {self.kind} {self.id} is not running"))
        return stats.query(self.owner.reactor, self.files.stats_socket, command, timeout=timeout)

    def show_stat(self, columns: tuple[str, ...] | None = None):
        return self.runtime("show stat").addCallback(stats.parse_show_stat, columns)

    def uses_file(self, path: str) -> bool:
        if not path:
            return False
        pattern = re.compile(r"(?<![^\s,=])" + re.escape(path) + r"(?![^\s,])")
        for data in (self.files.read_config(), self.files.read_running()):
            if data and pattern.search(data.decode("utf-8", "replace")):
                return True
        return False

    # -- process --------------------------------------------------------------------------------

    def write_fragment(self, config: bytes | None = None) -> str:
        if config is None:
            config = self.files.read_config() or self.files.read_running()
        return self.files.write_fragment(fragment_text(self.id, extra=self.fragment_extras(config)))

    def process(self) -> SupervisedProcess:
        if self.proc is None:
            owner = self.owner
            master = self.files.master_socket
            argv = owner.haproxy.argv(self.files.running_path, self.files.fragment_path, self.files.pid_path,
                                      extra=self.check_args())

            def ready(pid):
                def same_master(info):
                    if info.master_pid != pid:
                        raise ValueError(f"master socket answered for pid {info.master_pid}, not {pid}")
                    return info
                return owner.haproxy.show_proc(master, timeout=1.0).addCallback(same_master)

            self.proc = SupervisedProcess(
                owner.reactor, f"haproxy[{self.id}]", argv, env=owner.haproxy.env, path=self.files.run_dir,
                ready=ready, start_timeout=self.start_timeout(), stop_signal="USR1",
                stop_timeout=owner.config.haproxy.stop_timeout, kill_grace=5.0, kill_group=True,
                **owner.supervision)
            self.proc.observers.append(self._state_changed)
        return self.proc

    def _state_changed(self, proc, old, new):
        log.info("{kind} {lid}: haproxy {old} -> {new}", kind=self.kind, lid=self.id, old=old, new=new)

    # -- checks ---------------------------------------------------------------------------------

    def check(self, config_path: str, failure_message: str, error=OperationFailed, reuse: bool = False):
        """``haproxy -c`` on ``config_path`` plus the agent's fragment (``amphora.listeners.checks``)."""
        return checks.check(self, config_path, failure_message, error, reuse)

    def _check_binds(self, config: bytes, failure_message: str, own=None):
        return checks.check_binds(self, config, failure_message, own)

    # -- upload ---------------------------------------------------------------------------------

    @inlineCallbacks
    def upload(self, data: bytes):
        """Check ``data`` with haproxy and store it; never touches a running haproxy."""
        candidate, created = self.files.stage_upload(data)
        try:
            self.prepare(data)
            # the candidate's fsync (before its rename into place) runs while haproxy checks it
            yield reloading.gather(self.owner.haproxy.blocking(self.files.sync_candidate, candidate),
                                   self.check(candidate, "Invalid request", error=InvalidRequest))
        except BaseException:
            self.files.discard_upload(candidate, created and not self.known)
            raise
        self.files.commit_upload(candidate)
        self.known = True
        self._type = None
        log.info("{kind} {lid}: configuration stored ({size} bytes)", kind=self.kind, lid=self.id,
                 size=len(data))
        return "Configuration file is valid"

    # -- actions --------------------------------------------------------------------------------

    def require(self) -> None:
        if not self.known:
            raise self.not_found()

    @inlineCallbacks
    def start(self, source: str | None = None, message: str = "Error starting haproxy"):
        """Check and bind-check ``source`` (default: the upload), make it the running file, run it."""
        self.require()
        self.set_desired(STARTED)
        proc = self.process()
        if proc.state == RUNNING:
            return self.already_running_text()
        if proc.pid is not None or proc.state != PROC_STOPPED:
            yield proc.stop()  # a pending automatic restart: this explicit start replaces it
        source = source or self.files.config_path
        try:
            with open(source, "rb") as f:
                config = f.read()
        except OSError as e:
            raise OperationFailed(f"cannot read the configuration of {self.kind} {self.id}: {e.strerror}",
                                  message=message)
        self.prepare(config)
        output = yield self.check(source, message)
        yield self._check_binds(config, message)
        previous = self.files.read_running()
        running = self.running_text(config)
        if previous != running:
            self.files.write_running(running)
        self.files.clear_run_files()
        serverstate.forget(self, running)  # a start begins with every server UP
        try:
            pid = yield proc.start()
        except ProcessFailed as e:
            if previous is not None:
                self.files.write_running(previous)
            raise OperationFailed(e.output or e.reason, message=message)
        self._record_loaded(running)
        log.info("{kind} {lid}: haproxy started (pid {pid})", kind=self.kind, lid=self.id, pid=pid)
        return self.started_text(output, pid)

    @inlineCallbacks
    def stop(self):
        self.require()
        self.set_desired(STOPPED)
        proc = self.proc
        if proc is None or proc.pid is None:
            if proc is not None:
                yield proc.stop()  # cancels a pending restart
            return self.stopped_text(None)
        pid = proc.pid
        if proc.state == RUNNING:
            yield self.before_stop_or_reload()
            yield reloading.settle(self, proc)
        yield proc.stop(self.owner.config.haproxy.stop_timeout)
        self.files.clear_run_files()
        log.info("{kind} {lid}: haproxy stopped (pid {pid})", kind=self.kind, lid=self.id, pid=pid)
        return self.stopped_text(pid)

    def reload(self):
        """Check the upload, refuse unusable binds, then a hitless SIGUSR2 reload, confirmed
        (``amphora.listeners.reloading``). A stopped instance is started instead; a configuration
        that does not load is rolled back to the last good one."""
        return reloading.reload(self)

    def _record_loaded(self, config: bytes) -> None:
        try:
            self.files.record_loaded(config)
        except OSError as e:
            log.warn("{kind} {lid}: cannot record the loaded configuration: {error}", kind=self.kind,
                     lid=self.id, error=e.strerror or e)

    def _show_proc(self, proc, message=None):
        return reloading.show_proc(self, proc, message)

    def _signal_reload(self, proc: SupervisedProcess, before=None, on_worker=None):
        return reloading.signal_reload(self, proc, before, on_worker)

    # -- delete ---------------------------------------------------------------------------------

    @inlineCallbacks
    def delete(self, hooks=()):
        """Mark the delete (gone from here on), stop haproxy, run ``hooks`` (``hook(id)``), remove the
        files; the errors, as a list. Interrupted at any point, the next start finishes it."""
        self.require()
        try:
            self.files.mark_deleting()
        except OSError as e:
            raise OperationFailed(f"cannot mark {self.kind} {self.id} for deletion: {e.strerror or e}",
                                  message=f"Error deleting {self.kind}")
        if self.proc is not None:
            if self.proc.state == RUNNING:
                try:
                    yield self.before_stop_or_reload()
                except Exception as e:  # noqa: BLE001 - the files go anyway
                    log.warn("{kind} {lid}: {error}", kind=self.kind, lid=self.id, error=e)
                yield reloading.settle(self, self.proc)
            yield self.proc.stop(self.owner.config.haproxy.stop_timeout)
            self.proc.detach()
        errors = []
        for hook in list(hooks):
            try:
                yield hook(self.id)
            except Exception as e:
                log.failure("delete hook {hook} failed for {kind} {lid}", hook=hook, kind=self.kind, lid=self.id)
                errors.append(f"{getattr(hook, '__name__', hook)}: {e}")
        errors += self.files.remove(self.extra_paths())
        self.proc = None
        self.known = False
        self._checked = None
        self.forget_caches()
        log.info("{kind} {lid}: deleted", kind=self.kind, lid=self.id)
        return errors

    # -- restore at agent start (amphora.listeners.recovery) -------------------------------------

    def adopt_running(self):
        return recovery.adopt_running(self)

    def reconcile_loaded(self):
        return recovery.reconcile_loaded(self)

    def restore(self):
        """Adopt a still-running haproxy; start it if it should run and does not."""
        return recovery.restore(self)

    def finish_delete(self, hooks=()):
        """Complete a delete a killed agent left half-way (agent start)."""
        return recovery.finish_delete(self, hooks)
