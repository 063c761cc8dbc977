"""The registry of haproxy instances: ids, restore, hooks, and the interface the rest of the agent uses.

This is ``agent.listeners``. Each instance (``amphora.listeners.instance``)
holds its own lock, process, desired state, type and check cache; the
registry finds them, creates them on a first upload, forgets them on delete
and runs every operation under the instance's lock (serialised per instance,
parallel across instances, never blocking the reactor).

The interface other parts of the agent use (certificates, heartbeat,
details, logs, topology):

- ``listener_ids() -> list[str]``: sorted ids of listeners that exist (have an
  uploaded configuration, a pid file or a stats socket);
- ``running_ids() -> list[str]``: instances whose haproxy runs now;
- ``running_count() -> int``: number of supervised haproxy processes running;
- ``exists(lid) -> bool``;
- ``stats_socket(lid) -> str``: path of the admin-level stats socket;
- ``show_stat(lid, columns=None) -> Deferred[list[dict]]``: parsed ``show stat`` rows (only ``columns``);
  errbacks (ListenerNotFound, OperationFailed, TimeoutError, ...) when the
  listener does not exist, does not run or does not answer;
- ``runtime(lid, command) -> Deferred[bytes]``: one runtime API command;
- ``serialised(lid, fn, *args) -> Deferred``: ``fn`` under the instance's lock
  (the certificate store's swaps, so they never interleave with a reload);
- ``delete_hooks``: callables ``hook(lid) -> Deferred | None``, run by delete
  after haproxy stopped and before the listener's files are removed;
- ``config_hooks``: callables ``hook(lid) -> str``, text appended to the
  agent-owned configuration fragment of that listener (whole sections, e.g.
  ``"global\\n    log ...\\n"``); read at every check, start and reload;
- ``uses_file(lid, path) -> bool``: whether the uploaded (or running)
  configuration references that file path.

Operations the API drives: ``upload``, ``get_config``, ``action`` (start /
stop / reload), ``delete``, ``status_list``, ``status``; and ``restore`` at
agent start (adopt running haproxy processes, start those that should run).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import DeferredList, fail, inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from amphora.errors import InvalidRequest, ListenerNotFound, LoadBalancerNotFound, OperationFailed
from amphora.interfaces import IListenerRegistry
from amphora.listeners.haproxy import HAProxy, pools_document
from amphora.listeners.instance import (ACTIVE, ERROR, LISTENER, STATUS_STOPPED,  # noqa: F401 (re-exported)
                                        HaproxyInstance, listener_status)
from amphora.listeners.loadbalancer import LOADBALANCER, LoadBalancerInstance
from amphora.listeners.store import ListenerStore, is_listener_id

log = Logger()

ACTIONS = ("start", "stop", "reload")


@implementer(IListenerRegistry)
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
        # Bound of one ``haproxy -c`` of a listener. A check parses exactly what a start parses
        # (Lua, certificates, maps) minus the binds, and a start that is not ready within
        # start_timeout fails anyway: a configuration that takes longer to check could never be
        # started or reloaded.
        self.check_timeout = config.haproxy.start_timeout
        # 1.0 load balancers: Octavia's configurations can take ~25 s to check and to load.
        self.lb_store = ListenerStore(agent.state_dir, agent.run_dir, config.octavia.cert_dir, kind="loadbalancers")
        self.lb_check_timeout = config.haproxy.check_timeout
        self._instances: dict[str, HaproxyInstance] = {}
        self._find_stored()

    # -- instances ---------------------------------------------------------------------------

    def _find_stored(self) -> set:
        """Mark every instance with files as existing (a new object for ids not seen yet)."""
        found = set()
        for store, kind in ((self.store, LISTENER), (self.lb_store, LOADBALANCER)):
            for iid in store.ids():
                if iid not in found:
                    found.add(iid)
                    self._instance(iid, create=True, kind=kind).known = True
        return found

    def _new(self, iid: str, kind: str = LISTENER) -> HaproxyInstance:
        if kind == LOADBALANCER:
            return LoadBalancerInstance(self, iid, self.lb_store.files(iid), self.config.octavia.base_path)
        return HaproxyInstance(self, iid, self.store.files(iid))

    def _instance(self, iid: str, create: bool = False, kind: str = LISTENER) -> HaproxyInstance | None:
        inst = self._instances.get(iid)
        if inst is not None and create and inst.kind != kind and not inst.known and not inst.lock.locked:
            inst = None  # a transient lock holder of the other kind (e.g. a certificate upload)
        if inst is None and create:
            inst = self._instances[iid] = self._new(iid, kind)
        return inst

    def _existing(self, kind: str | None = LISTENER) -> list[HaproxyInstance]:
        return [inst for iid, inst in sorted(self._instances.items())
                if inst.known and (kind is None or inst.kind == kind)]

    def _get(self, iid: str, kind: str | None = LISTENER) -> HaproxyInstance:
        """The existing instance ``iid`` of ``kind`` (None: either), or that kind's 404."""
        inst = self._instances.get(iid)
        if inst is None or not inst.known or (kind is not None and inst.kind != kind):
            raise LoadBalancerNotFound(iid) if kind == LOADBALANCER else ListenerNotFound(iid)
        return inst

    @property
    def _procs(self) -> dict:
        """{id: SupervisedProcess} of every instance with a process (for tests' cleanup)."""
        return {iid: inst.proc for iid, inst in self._instances.items() if inst.proc is not None}

    @property
    def _locks(self) -> dict:
        return {iid: inst.lock for iid, inst in self._instances.items()}

    def hook_fragments(self, inst: HaproxyInstance) -> list[str]:
        """The config hooks' texts for ``inst`` (run at every check, start and reload)."""
        extra = []
        for hook in self.config_hooks:
            try:
                extra.append(hook(inst.id) or "")
            except Exception:
                log.failure("config hook {hook} failed for {kind} {lid}", hook=hook, kind=inst.kind, lid=inst.id)
                raise OperationFailed(f"config hook {getattr(hook, '__name__', hook)} failed; see the agent log")
        return extra

    # -- the shared interface ----------------------------------------------------------------

    def listener_ids(self) -> list[str]:
        return [inst.id for inst in self._existing()]

    def running_ids(self) -> list[str]:
        return sorted(iid for iid, inst in self._instances.items() if inst.running)

    def running_count(self) -> int:
        return sum(1 for inst in self._instances.values() if inst.running)

    def exists(self, lid: str) -> bool:
        inst = self._instances.get(lid)
        return inst is not None and inst.known and inst.kind == LISTENER

    def stats_socket(self, lid: str) -> str:
        inst = self._instances.get(lid)
        return inst.files.stats_socket if inst is not None else self.store.stats_socket(lid)

    def runtime(self, lid: str, command: str, timeout: float = 5.0):
        inst = self._instances.get(lid)
        if inst is None or not inst.known:
            return fail(ListenerNotFound(lid))
        return inst.runtime(command, timeout)

    def show_stat(self, lid: str, columns: tuple[str, ...] | None = None):
        inst = self._instances.get(lid)
        if inst is None or not inst.known:
            return fail(ListenerNotFound(lid))
        return inst.show_stat(columns)

    def uses_file(self, lid: str, path: str) -> bool:
        if not is_listener_id(lid):
            return False
        inst = self._instances.get(lid)
        files = inst.files if inst is not None else self.store.files(lid)
        probe = inst if inst is not None else HaproxyInstance(self, lid, files)
        return probe.uses_file(path)

    # -- service -------------------------------------------------------------------------------

    def stopService(self):
        """Detach from every haproxy without stopping it: the next agent adopts them."""
        for inst in self._instances.values():
            if inst.proc is not None:
                inst.proc.detach()
        return Service.stopService(self)

    # -- locking --------------------------------------------------------------------------------

    def serialised(self, lid: str, fn, *args):
        """Run ``fn(*args)`` under this instance's lock (for other domains touching its files,
        e.g. a certificate swap that must not interleave with a reload); Deferred."""
        return self._run(self._instance(lid, create=True), lambda: maybeDeferred(fn, *args))

    def _run(self, inst: HaproxyInstance, fn, *args):
        """``fn(*args)`` under ``inst.lock`` (``fn`` a name: that method of ``inst``); an instance
        that does not exist afterwards (deleted, or a refused first upload) and that nobody waits
        for is forgotten."""
        if isinstance(fn, str):
            fn = getattr(inst, fn)

        def forget(result):
            if not inst.known and not inst.lock.locked and not inst.lock.waiting \
                    and self._instances.get(inst.id) is inst:
                del self._instances[inst.id]
            return result

        return inst.lock.run(fn, *args).addBoth(forget)

    # -- upload / get --------------------------------------------------------------------------

    def upload(self, lid: str, data: bytes):
        """Check ``data`` with haproxy and store it; never touches a running haproxy."""
        inst = self._instance(lid, create=True)
        if inst.kind != LISTENER:
            return fail(ListenerNotFound(lid))  # a load balancer: v0.1 sees only listeners
        return self._run(inst, "upload", data)

    def get_config(self, lid: str, kind: str | None = None) -> bytes:
        """The stored upload of a listener or load balancer (``kind`` None: either)."""
        data = self._get(lid, kind).files.read_config()
        if data is None:
            raise LoadBalancerNotFound(lid) if kind == LOADBALANCER else ListenerNotFound(lid)
        return data

    # -- 1.0 load balancers -----------------------------------------------------------------------

    def kind(self, iid: str) -> str | None:
        """"listener", "loadbalancer", or None when nothing with that id exists."""
        inst = self._instances.get(iid)
        return inst.kind if inst is not None and inst.known else None

    def upload_loadbalancer(self, lb_id: str, amphora_id: str, body: bytes):
        """``haproxy -c -L <peer>`` and store (atomically, last-known-good kept); no start or
        reload. Deferred[None]; InvalidRequest (400, details = haproxy's output) when refused."""
        if not is_listener_id(lb_id):
            return fail(InvalidRequest(f"Invalid load balancer id: {lb_id!r} is not a canonical UUID"))
        if self.kind(lb_id) == LISTENER:
            return fail(InvalidRequest(f"{lb_id} is a v0.1 listener, not a load balancer"))
        inst = self._instance(lb_id, create=True, kind=LOADBALANCER)
        if inst.kind != LOADBALANCER:
            return fail(InvalidRequest(f"{lb_id} is busy as a listener; try again"))
        return self._run(inst, "upload_for", amphora_id, body).addCallback(lambda _: None)

    def loadbalancer_action(self, lb_id: str, action: str):
        """start / stop / reload (case-insensitive) with 1.0 semantics; Deferred[details]."""
        name = action.lower() if isinstance(action, str) else ""
        if name not in ACTIONS:
            return fail(InvalidRequest(f"Unknown action: {action}", message="Invalid Request"))
        try:
            inst = self._get(lb_id, LOADBALANCER)
        except LoadBalancerNotFound as e:
            return fail(e)
        return self._run(inst, name)

    def frontends(self) -> list[dict]:
        """One entry per frontend of every stored load balancer (``GET /1.0/listeners``)."""
        return [{"status": ACTIVE, "uuid": name, "type": kind}
                for inst in self._existing(LOADBALANCER) for name, kind in inst.frontends()]

    def all_listener_ids(self) -> list[str]:
        """v0.1 listeners and the frontends (Octavia listeners) of load balancers: for /details."""
        return sorted(set(self.listener_ids()) | {f["uuid"] for f in self.frontends()})

    def heartbeat_frontends(self, iid: str) -> list[str] | None:
        """The frontend names a load balancer's heartbeat reports (its running configuration);
        None for a v0.1 listener (one entry per haproxy)."""
        inst = self._instances.get(iid)
        if inst is None or inst.kind != LOADBALANCER:
            return None
        return [name for name, _ in inst.frontends(running=True)]

    def connection_limits(self) -> dict[str, dict]:
        """{lb id: {"maxconn", "fd_limit", "effective_maxconn"}} of every running load balancer
        (from haproxy's ``show info`` after its last start or reload)."""
        return {inst.id: dict(inst.limits) for inst in self._existing(LOADBALANCER)
                if inst.running and inst.limits}

    # -- actions --------------------------------------------------------------------------------

    def action(self, lid: str, action: str):
        """start / stop / reload; fires with the details text."""
        if action not in ACTIONS:
            raise InvalidRequest(f"Unknown action: {action}")
        inst = self._get(lid)
        return self._run(inst, action)

    # -- delete ---------------------------------------------------------------------------------

    def delete(self, lid: str, kind: str | None = None):
        """Stop and remove a listener or load balancer (``kind`` None: either); Deferred[str]."""
        inst = self._get(lid, kind)
        return self._run(inst, self._delete, inst)

    @inlineCallbacks
    def _delete(self, inst: HaproxyInstance):
        errors = yield inst.delete(self.delete_hooks if inst.kind == LISTENER else ())
        if errors:
            raise OperationFailed("\n".join(errors), message=f"Error deleting {inst.kind}")
        return f"{inst.kind} {inst.id} deleted"

    # -- status -----------------------------------------------------------------------------------

    def status_list(self) -> list[dict]:
        """Every listener's status and type, from memory and small files (no process spawned)."""
        return [self._summary(inst) for inst in self._existing()]

    def _summary(self, inst: HaproxyInstance) -> dict:
        try:
            return {"status": inst.status(), "uuid": inst.id, "type": inst.type()}
        except Exception as e:  # noqa: BLE001 - one listener's files never fail the list for the others
            log.failure("{kind} {lid}: status failed", kind=inst.kind, lid=inst.id)
            inst.problem = inst.problem or f"status failed: {e}"
            return {"status": ERROR, "uuid": inst.id, "type": "TCP"}

    @inlineCallbacks
    def status(self, lid: str):
        inst = self._get(lid)
        doc = dict(self._summary(inst), pools=[])
        if doc["status"] == ERROR and inst.problem:
            doc["details"] = inst.problem
        if doc["status"] == ACTIVE:
            for attempt in (1, 2):
                try:
                    rows = yield inst.show_stat()
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
        """Sweep staging leftovers, finish interrupted deletes, then adopt still-running haproxy
        processes and start those that should run and do not. Failures are logged, per instance."""
        for store in (self.store, self.lb_store):
            try:
                store.sweep()
            except OSError as e:
                log.error("sweeping staging leftovers under {root} failed: {error}", root=store.state_root,
                          error=e)
        work = []
        for store, kind in ((self.store, LISTENER), (self.lb_store, LOADBALANCER)):
            for iid in store.deleting_ids():
                inst = self._instance(iid, create=True, kind=kind)
                work.append((inst, self._run(inst, inst.finish_delete,
                                             self.delete_hooks if kind == LISTENER else ())))
        found = self._find_stored()
        for inst in self._instances.values():
            inst.known = inst.known and inst.id in found
            inst.forget_caches()
        work += [(inst, self._run(inst, "restore")) for inst in self._existing(None)]

        def logged(inst, d):
            return d.addErrback(lambda f: log.failure("{kind} {lid}: restore failed", f, kind=inst.kind,
                                                      lid=inst.id))
        return DeferredList([logged(inst, d) for inst, d in work], consumeErrors=True)
