"""One fake of each collaborator interface (``amphora.interfaces``), for tests and benchmarks.

Each fake provides its whole interface (checked with ``verifyObject`` in
tests/unit/test_interfaces.py), so production code never needs a branch for
a collaborator that is missing or incomplete. Fakes answer from plain
attributes that tests set and read.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import DeferredLock, maybeDeferred
from zope.interface import implementer

from amphora.errors import InvalidRequest, ListenerNotFound, NotFound, OperationFailed
from amphora.interfaces import IKeepalivedState, IListenerRegistry, INetworkPlugger
from amphora.listeners import stats


@implementer(IListenerRegistry)
class FakeListeners:
    """A listener registry in memory, optionally backed by real haproxy admin sockets.

    - ``running`` / ``existing``: ids (any iterable; tests reassign or ``add`` to them);
      ``listener_ids()`` is both together, ``exists(lid)`` is membership;
    - ``stats[lid]``: the ``show stat`` answer: CSV text (parsed), an Exception
      (errback), the string ``"hang"`` (a Deferred that never fires) or a callable
      returning one of those; ``stat_calls`` records the ids asked;
    - ``sockets[lid]``: a real stats socket for ``show_stat`` and ``runtime``;
    - ``runtime_answers``: canned runtime answers by command verb (the first three
      words), bytes, an Exception or ``callable(command)``; ``calls`` records
      ``(lid, command)`` of every runtime command;
    - ``used``: ``(lid, path)`` pairs the configurations reference (``uses_file``);
    - ``configs``: stored configurations by id (``upload`` of a v0.1 listener,
      ``upload_loadbalancer`` of a 1.0 load balancer, which then runs with two
      HTTP frontends ``1-<id>`` and ``2-<id>``); a body containing ``bad`` is
      refused as haproxy would; ``operations`` records ``(operation, id, ...)``.

    ``running`` defaults to the ids of ``stats`` and ``sockets``.
    """

    def __init__(self, reactor=None, stats=None, sockets=None, running=None, existing=(), used=(),
                 runtime_answers=None):
        self.reactor = reactor
        self.stats = dict(stats or {})
        self.sockets = dict(sockets or {})
        self.running = set(running) if running is not None else set(self.stats) | set(self.sockets)
        self.existing = set(existing)
        self.used = set(used)
        self.runtime_answers = runtime_answers
        self.calls: list[tuple[str, str]] = []
        self.stat_calls: list[str] = []
        self.config_hooks: list = []
        self.delete_hooks: list = []
        self.restored = 0
        self.configs: dict[str, bytes] = {}
        self.loadbalancers: set[str] = set()
        self.operations: list[tuple] = []
        self._locks: dict = {}

    # -- ids ---------------------------------------------------------------------------------

    def listener_ids(self) -> list[str]:
        return sorted((set(self.existing) | set(self.running)) - self.loadbalancers)

    def all_listener_ids(self) -> list[str]:
        return sorted(set(self.listener_ids()) | {f["uuid"] for f in self.frontends()})

    def running_ids(self) -> list[str]:
        return sorted(self.running)

    def running_count(self) -> int:
        return len(self.running_ids())

    def exists(self, lid: str) -> bool:
        return lid in self.listener_ids()

    def heartbeat_frontends(self, lid: str):
        if lid not in self.loadbalancers:
            return None  # a v0.1 listener: one heartbeat entry per haproxy
        return [f"{n}-{lid}" for n in (1, 2)]

    def uses_file(self, lid: str, path: str) -> bool:
        return (lid, path) in self.used

    # -- haproxy -----------------------------------------------------------------------------

    def show_stat(self, lid: str, columns=None):
        self.stat_calls.append(lid)
        self.columns = columns
        if lid in self.sockets:
            return stats.query(self.reactor, self.sockets[lid], "show stat",
                               timeout=2.0).addCallback(stats.parse_show_stat, columns)
        if lid not in self.stats:
            return defer.fail(ListenerNotFound(lid))
        answer = self.stats[lid]
        if callable(answer):
            answer = answer()
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if answer == "hang":
            return defer.Deferred()
        return defer.succeed(stats.parse_show_stat(answer, columns))

    def runtime(self, lid: str, command: str):
        self.calls.append((lid, command))
        if self.runtime_answers is None:
            return stats.query(self.reactor, self.sockets[lid], command, timeout=5.0)
        answer = self.runtime_answers.get(" ".join(command.split(" ", 3)[:3]), b"")
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if callable(answer):
            return answer(command)
        return defer.succeed(answer)

    def serialised(self, lid: str, fn, *args):
        lock = self._locks.setdefault(lid, DeferredLock())

        def release(result):
            if not lock.locked and not lock.waiting and self._locks.get(lid) is lock:
                del self._locks[lid]
            return result

        return lock.run(maybeDeferred, fn, *args).addBoth(release)

    def restore(self):
        self.restored += 1
        return defer.succeed(None)

    # -- operations the API faces drive ---------------------------------------------------------

    def _store(self, operation: tuple, iid: str, body: bytes):
        self.operations.append(operation)
        if b"bad" in body:
            return defer.fail(InvalidRequest("[ALERT] parsing error", message="Invalid request"))
        self.configs[iid] = body
        return defer.succeed(None)

    def upload(self, lid: str, data: bytes):
        d = self._store(("upload_listener", lid), lid, data)
        return d.addCallback(lambda _: (self.existing.add(lid), "Configuration file is valid")[1])

    def upload_loadbalancer(self, lb_id: str, amphora_id: str, body: bytes):
        d = self._store(("upload", lb_id, amphora_id), lb_id, body)
        return d.addCallback(lambda _: (self.loadbalancers.add(lb_id), self.running.add(lb_id), None)[2])

    def kind(self, iid: str):
        if iid in self.loadbalancers:
            return "loadbalancer"
        return "listener" if self.exists(iid) else None

    def get_config(self, iid: str, kind=None) -> bytes:
        if iid not in self.configs or (kind is not None and self.kind(iid) != kind):
            raise ListenerNotFound(iid)
        return self.configs[iid]

    def delete(self, iid: str, kind=None):
        self.operations.append(("delete", iid))
        for ids in (self.loadbalancers, self.running, self.existing):
            ids.discard(iid)
        self.configs.pop(iid, None)
        return defer.succeed("deleted")

    def loadbalancer_action(self, lb_id: str, action: str):
        self.operations.append(("action", lb_id, action))
        if action.lower() not in ("start", "stop", "reload"):
            return defer.fail(InvalidRequest(f"Unknown action: {action}", message="Invalid Request"))
        if lb_id not in self.loadbalancers:
            return defer.fail(NotFound(f"No loadbalancer with UUID: {lb_id}", message="Loadbalancer Not Found"))
        return defer.succeed(f"Listener {lb_id} {action.lower()}ed")

    def frontends(self) -> list[dict]:
        return [{"status": "ACTIVE", "uuid": f"{n}-{lb}", "type": "HTTP"} for lb in sorted(self.loadbalancers)
                for n in (1, 2)]


@implementer(IKeepalivedState)
class FakeKeepalived:
    """keepalived in memory: records calls, reports VRRP states when told to.

    ``apply`` starts it (and, ``report_after_start`` set, reports that state half a
    second later on ``clock``); ``fail_apply`` makes the next applies fail with that
    text; ``report(state)`` is keepalived's notify.
    """

    def __init__(self, clock=None, running: bool = False, configured: bool = False):
        self.clock = clock
        self.calls: list[tuple] = []
        self.running = running
        self.configured = configured
        self.vrrp_state = None
        self.settings = None
        self.report_after_start = "BACKUP"   # None: keepalived never reports
        self.fail_apply = None
        self._waiters: list = []

    def apply(self, settings):
        self.calls.append(("apply", settings))
        if self.fail_apply:
            return defer.fail(OperationFailed(self.fail_apply))
        was_running = self.running
        self.settings, self.running, self.configured = settings, True, True
        if not was_running and self.report_after_start:
            self.clock.callLater(0.5, self.report, self.report_after_start)
        return defer.succeed(None)

    def stop(self):
        self.calls.append(("stop",))
        self.running, self.configured, self.settings, self.vrrp_state = False, False, None, None
        return defer.succeed(None)

    def stop_leftover(self):
        self.calls.append(("stop_leftover",))
        return defer.succeed(None)

    def wait_state(self):
        d = defer.Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def report(self, state):
        self.vrrp_state = state
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(state)


@implementer(INetworkPlugger)
class FakeNetwork:
    """A network plugger that plugs everything on ``interface``; ``plugs`` records the calls.

    ``syncs`` records each VIP hand-over (``sync_vips``): what ``observe()`` returns
    then (e.g. who owns the VIPs and whether keepalived runs), None without it.
    """

    def __init__(self, interface: str = "eth1", namespace: str = "", observe=None):
        self.interface = interface
        self.namespace = namespace
        self.observe = observe
        self.syncs: list = []
        self.plugs: list[tuple] = []
        self.vips: list[str] = []
        self.restored = 0

    def plug_vip(self, vip, spec):
        self.plugs.append(("vip", vip, spec))
        self.vips.append(vip)
        return defer.succeed(f"VIP {vip} plugged on interface {self.interface}")

    def plug_network(self, spec):
        self.plugs.append(("network", spec))
        return defer.succeed(f"Plugged interface {self.interface}")

    def vip_interface(self, vip):
        return self.interface if vip in self.vips else None

    def plugged(self) -> dict:
        return {"namespace": self.namespace, "interfaces": []}

    def restore(self):
        self.restored += 1
        return defer.succeed(None)

    def sync_vips(self):
        self.syncs.append(self.observe() if self.observe is not None else None)
        return defer.succeed(None)
