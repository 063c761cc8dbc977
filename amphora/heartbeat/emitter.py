"""The heartbeat service: every ``[heartbeat] interval`` seconds, one signed UDP beat per controller.

A child of the agent's MultiService. Each beat:

1. skips (and says so, rate-limited) when this amphora is ACTIVE-STANDBY and
   keepalived is configured but not running — like Octavia's agent, a member
   of a pair without VRRP must stop looking healthy so it gets replaced;
2. asks every running listener's haproxy for ``show stat``, concurrently and
   each bounded by a timeout (a listener that does not answer, or answers
   garbage, is reported with its last known status);
3. builds the Octavia v3 body, signs it, reduces it if it exceeds
   ``max_packet_bytes``;
4. persists ``seq`` and the new absolute counters (atomically), then sends
   the packet to every resolved controller (``fanout = all``) or to the next
   one in turn (``fanout = round-robin``). If no controller took it, the
   counters are rolled back so the next beat carries the growth.

Nothing a beat does can stop the loop: every failure is logged and the next
beat happens on time. Controller names are resolved at start, asynchronously;
names that fail to resolve are retried with a backoff. The key is never
logged.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from amphora.heartbeat import message as msg
from amphora.listeners.stats import parse_show_stat

log = Logger()

ACTIVE_STANDBY = "ACTIVE-STANDBY"
LOG_PERIOD = 300.0          # a repeated problem is logged at most once per this many seconds
MAX_UDP_PAYLOAD = 65507
ALL = "all"
ROUND_ROBIN = "round-robin"
RESOLVE_RETRY_MIN = 5.0
RESOLVE_RETRY_MAX = 300.0


class RateLimiter:
    """Let one message per key through every ``period`` seconds; count what was held back."""

    def __init__(self, clock, period: float = LOG_PERIOD):
        self.clock = clock
        self.period = period
        self._last: dict = {}
        self._held: dict = {}

    def allow(self, key) -> tuple[bool, int]:
        """``(should_log, number suppressed since the last logged one)``."""
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)

    def due(self, key) -> bool:
        """Whether ``allow(key)`` would let a message through now (nothing is counted)."""
        last = self._last.get(key)
        return last is None or self.clock.seconds() - last >= self.period

    def tripped(self, key) -> bool:
        """Whether a problem under ``key`` was logged and has not cleared since."""
        return key in self._last

    def clear(self, key) -> None:
        """The problem went away: the next occurrence is logged at once."""
        self._last.pop(key, None)
        self._held.pop(key, None)


@dataclass
class Controller:
    """One ``[heartbeat] controllers`` entry and where it resolved to."""

    host: str
    port: int
    address: tuple | None = None        # (family, ip, port) once known
    next_resolve: float = 0.0
    failures: int = 0
    resolving: bool = False

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def literal_address(host: str, port: int) -> tuple | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return (family, str(ip) if ip.version == 4 else host, port)


def default_resolver(reactor):
    """``resolve(host, port) -> Deferred[list[(family, ip, port)]]`` on the reactor's name resolver."""
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.interfaces import IResolutionReceiver
    from zope.interface import implementer

    def resolve(host: str, port: int) -> Deferred:
        done: Deferred = Deferred()

        @implementer(IResolutionReceiver)
        class Receiver:
            def __init__(self):
                self.found = []

            def resolutionBegan(self, resolution):
                pass

            def addressResolved(self, address):
                if isinstance(address, IPv6Address):
                    self.found.append((socket.AF_INET6, address.host, address.port))
                elif isinstance(address, IPv4Address):
                    self.found.append((socket.AF_INET, address.host, address.port))

            def resolutionComplete(self):
                done.callback(self.found)

        reactor.nameResolver.resolveHostName(Receiver(), host, port, transportSemantics="UDP")
        return done

    return resolve


class _Sender(DatagramProtocol):
    """A UDP socket that only sends; anything sent to it is ignored."""

    noisy = False

    def datagramReceived(self, data, addr):
        pass


class HeartbeatService(Service):
    """Periodic signed beats to the controllers; see the module docstring.

    ``settings`` is the ``[heartbeat]`` section; ``listeners`` the listener
    registry (``IListenerRegistry``), ``topology`` what the beat reports
    (``topology``, ``role``, ``status``), ``keepalived`` its state
    (``IKeepalivedState``) for the ACTIVE-STANDBY gate. ``ready()`` returns a
    Deferred that fires once the agent serves: the first beat waits for it.
    ``resolve`` is injectable for tests; ``offload`` runs the build and
    signing in the reactor's thread pool (when the reactor has one).
    """

    name = "heartbeat"

    def __init__(self, reactor, settings, *, amphora_id: str, state_dir: str, listeners, topology, keepalived,
                 ready=None, resolve=None, stats_timeout: float | None = None, offload: bool = True):
        self.reactor = reactor
        self.settings = settings
        self.amphora_id = amphora_id
        self.listeners = listeners
        self.topology = topology
        self.keepalived = keepalived
        self.ready = ready if ready is not None else (lambda: defer.succeed(None))
        self._serving = False  # the API accepts connections: beats may go
        self.interval = self.settings.interval
        # The largest UDP payload over IPv4 is 65507 bytes: a larger limit would
        # only turn "reduce the beat" into "every send fails with EMSGSIZE".
        self.limit = min(self.settings.max_packet_bytes, MAX_UDP_PAYLOAD)
        self._key = self.settings.key.encode("utf-8")
        self.stats_timeout = stats_timeout if stats_timeout is not None else min(
            2.0, max(0.25, self.interval / 2))
        self.resolve = resolve or default_resolver(reactor)
        self.offload = offload
        self.fanout = self.settings.fanout
        self._next = 0
        self.controllers = [Controller(host, port) for host, port in self.settings.controllers]
        self.state = msg.BeatState(state_dir)
        self.last_pools: dict[str, dict] = {}
        self.limiter = RateLimiter(reactor)
        self.ports: dict[int, object] = {}
        self.loop: LoopingCall | None = None
        self.beats_sent = 0
        self.last_reduction: msg.Reduction | None = None
        self._in_flight: Deferred | None = None

    def __repr__(self):  # never show the key
        return f"<HeartbeatService controllers={[c.label for c in self.controllers]}>"

    # -- life cycle -----------------------------------------------------------

    def startService(self):
        super().startService()
        if not self.controllers:
            log.info("heartbeat: no controllers configured, not sending heartbeats")
            return
        for controller in self.controllers:
            controller.address = literal_address(controller.host, controller.port)
            if controller.address is None:
                self._resolve(controller)
        ready = self.ready()
        ready.addCallback(lambda _: self._serving_started())
        ready.addErrback(lambda f: log.failure("heartbeat: could not start", f))

    def _serving_started(self):
        self._serving = True
        self._start_loop()

    def _start_loop(self):
        if not self.running or self.loop is not None:
            return
        self.loop = LoopingCall(self._beat_guarded)
        self.loop.clock = self.reactor
        self.loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("heartbeat: loop ended unexpectedly", f))
        log.info("heartbeat: every {interval}s to {controllers} ({limit}-byte limit)",
                 interval=self.interval, controllers=", ".join(c.label for c in self.controllers),
                 limit=self.limit)

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None
        if self._in_flight is not None and not self._in_flight.called:
            self._in_flight.cancel()
        for port in list(self.ports.values()):
            yield port.stopListening()
        self.ports.clear()

    def reconfigure(self, controllers, interval: float, key: str) -> None:
        """New destinations, interval and key, live (``PUT /1.0/config``): a beat goes
        out at once to the new controllers, signed with the new key, then every
        ``interval`` seconds. A beat already being built finishes with the old key."""
        self._key = key.encode("utf-8")
        self.controllers = [Controller(host, port) for host, port in controllers]
        self._next = 0
        self.interval = interval
        self.stats_timeout = min(2.0, max(0.25, interval / 2))
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None
        if not self.running:
            return
        for controller in self.controllers:
            controller.address = literal_address(controller.host, controller.port)
            if controller.address is None:
                self._resolve(controller)
        if self.controllers and self._serving:
            self._start_loop()
        elif not self.controllers:
            log.info("heartbeat: no controllers configured any more, not sending heartbeats")

    # -- controllers ----------------------------------------------------------

    def _resolve(self, controller: Controller) -> None:
        if controller.resolving:
            return
        controller.resolving = True
        d = defer.maybeDeferred(self.resolve, controller.host, controller.port)

        def resolved(addresses):
            controller.resolving = False
            if not addresses:
                raise LookupError("no address")
            controller.address = addresses[0]
            controller.failures = 0
            self.limiter.clear(("resolve", controller.label))
            log.info("heartbeat: controller {controller} is {ip}", controller=controller.label,
                     ip=addresses[0][1])

        def failed(failure):
            controller.resolving = False
            controller.failures += 1
            delay = min(RESOLVE_RETRY_MAX, RESOLVE_RETRY_MIN * 2 ** (controller.failures - 1))
            controller.next_resolve = self.reactor.seconds() + delay
            allowed, held = self.limiter.allow(("resolve", controller.label))
            if allowed:
                log.warn("heartbeat: cannot resolve controller {controller} ({error}); retrying in {delay}s",
                         controller=controller.label, error=failure.getErrorMessage() or failure.type.__name__,
                         delay=delay)

        d.addCallbacks(resolved, failed)
        d.addErrback(failed)

    def _port_for(self, family: int):
        port = self.ports.get(family)
        if port is None:
            interface = "::" if family == socket.AF_INET6 else "0.0.0.0"
            port = self.reactor.listenUDP(0, _Sender(), interface=interface)
            self.ports[family] = port
        return port

    def _send(self, packet: bytes) -> int:
        """Send the beat; returns how many controllers took the datagram.

        ``fanout = all``: every resolved controller gets every beat.
        ``fanout = round-robin``: one controller per beat, in turn (Octavia's
        own agent does this); if the chosen one cannot be sent to, the next
        one is tried, so a local error never costs a beat.
        """
        now = self.reactor.seconds()
        for controller in self.controllers:
            if controller.address is None and now >= controller.next_resolve:
                self._resolve(controller)
        resolved = [c for c in self.controllers if c.address is not None]
        if self.fanout == ROUND_ROBIN and resolved:
            start = self._next % len(resolved)
            self._next = start + 1
            for controller in resolved[start:] + resolved[:start]:
                if self._send_one(controller, packet):
                    return 1
            return 0
        return sum(self._send_one(controller, packet) for controller in resolved)

    def _send_one(self, controller: Controller, packet: bytes) -> bool:
        family, ip, port = controller.address
        key = ("send", controller.label)
        try:
            self._port_for(family).write(packet, (ip, port))
        except Exception as e:
            allowed, held = self.limiter.allow(key)
            if allowed:
                log.warn("heartbeat: cannot send {size} bytes to {controller}: {error}"
                         " ({held} similar errors suppressed)",
                         size=len(packet), controller=controller.label,
                         error=str(e) or e.__class__.__name__, held=held)
            return False
        if self.limiter.tripped(key):
            log.info("heartbeat: sending to {controller} works again", controller=controller.label)
            self.limiter.clear(key)
        return True

    # -- one beat -------------------------------------------------------------

    def skip_reason(self) -> str | None:
        """Why no beat should be sent now (ACTIVE-STANDBY without keepalived), or None."""
        if self.topology.topology != ACTIVE_STANDBY:
            return None
        # Octavia's agent withholds beats only when a keepalived configuration exists.
        if self.keepalived.configured and not self.keepalived.running:
            return "ACTIVE-STANDBY and keepalived is configured but not running"
        return None

    def _beat_guarded(self) -> Deferred:
        """The LoopingCall target: a beat that can never fail (a failure would stop the loop)."""
        d = defer.maybeDeferred(self.beat)
        self._in_flight = d

        def failed(failure):
            if failure.check(defer.CancelledError) and not self.running:
                return None
            allowed, held = self.limiter.allow(("beat", failure.type))
            if allowed:
                log.failure("heartbeat: beat failed ({held} similar failures suppressed)", failure, held=held)
            return None

        return d.addErrback(failed)

    def _stat(self, listeners, lid: str) -> Deferred:
        """``show stat`` rows of one listener, or None when it cannot tell (logged, rate-limited)."""
        d = self._bounded(defer.maybeDeferred(listeners.show_stat, lid, msg.STAT_COLUMNS))

        def rows(answer):
            if isinstance(answer, (bytes, str)):  # a raw answer: parse it here
                answer = parse_show_stat(answer, msg.STAT_COLUMNS)
            if not isinstance(answer, list):
                raise ValueError(f"show stat returned {type(answer).__name__}")
            self.limiter.clear(("stats", lid))
            return answer

        def failed(failure):
            if not self.running:  # stopping: the beat is abandoned anyway
                return None
            allowed, held = self.limiter.allow(("stats", lid))
            if allowed:
                log.warn("heartbeat: no statistics from listener {listener}: {error};"
                         " reporting its last known status", listener=lid,
                         error=failure.getErrorMessage() or failure.type.__name__)
            return None

        return d.addCallback(rows).addErrback(failed)

    def _bounded(self, inner: Deferred) -> Deferred:
        """``inner``'s result, or a TimeoutError after ``stats_timeout``.

        The listener manager's own Deferred is never cancelled (it may hold
        a per-listener lock or be shared); a late answer is simply dropped.
        """
        timers: list = []

        def cancel(_):
            if timers and timers[0].active():
                timers[0].cancel()

        result: Deferred = Deferred(cancel)

        def expire():
            if not result.called:
                result.errback(TimeoutError(f"no answer within {self.stats_timeout}s"))

        timer = self.reactor.callLater(self.stats_timeout, expire)
        timers.append(timer)

        def done(value):
            if timer.active():
                timer.cancel()
            if not result.called:
                if isinstance(value, Failure):
                    result.errback(value)
                else:
                    result.callback(value)
            return None

        inner.addBoth(done)
        return result

    @inlineCallbacks
    def beat(self):
        """Build, sign and send one beat (the loop calls this; tests may too)."""
        reason = self.skip_reason()
        if reason:
            allowed, held = self.limiter.allow("skip")
            if allowed:
                log.error("heartbeat: not sending: {reason}", reason=reason)
            return None
        self.limiter.clear("skip")
        if not any(c.address for c in self.controllers):
            for controller in self.controllers:
                if self.reactor.seconds() >= controller.next_resolve:
                    self._resolve(controller)
            allowed, _ = self.limiter.allow("no-address")
            if allowed:
                log.warn("heartbeat: no controller address resolved yet; beat not sent")
            return None
        self.limiter.clear("no-address")

        listeners = self.listeners
        running = list(listeners.running_ids())
        # A 1.0 load balancer reports one entry per frontend (its Octavia listeners).
        frontends = {lid: listeners.heartbeat_frontends(lid) for lid in running}
        answers = yield defer.gatherResults([self._stat(listeners, lid) for lid in running])
        if not self.running:
            return None
        # Building and compressing a big beat takes tens of milliseconds: off the reactor
        # thread when there is one (zlib releases the GIL). Inputs are snapshots.
        composed = yield self._offload(msg.compose, self.amphora_id, self.state.seq, dict(zip(running, answers)),
                                       dict(self.state.listeners), dict(self.last_pools), self._extra(),
                                       self._key, self.limit, frontends, self.limiter.due("reduced"))
        if not self.running:
            return None
        for lid in composed.unreadable:
            allowed, _ = self.limiter.allow(("stats", lid))
            if allowed:
                log.warn("heartbeat: unreadable statistics from listener {listener};"
                         " reporting its last known status", listener=lid)
        self._report_reduction(composed.reduction)

        previous = dict(self.state.listeners)
        self.state.seq += 1
        self.state.listeners.update(composed.records)
        reported = list(composed.samples)
        self._prune(listeners, reported)
        self._save()  # before sending: a crash after the send must not re-send these deltas
        for lid, sample in composed.samples.items():
            if sample is not None:
                self.last_pools[lid] = sample.pools
        if self._send(composed.packet) == 0:
            self.state.listeners = previous
            self._prune(listeners, reported)
            self._save()
            return None
        self.beats_sent += 1
        return composed.message

    def _save(self) -> None:
        """Persist seq and counters. A failure (disk full) is logged, and the beat is still
        sent: silence would make the controllers fail this amphora over, while the cost
        of a lost write is at most one beat counted twice after a restart."""
        try:
            self.state.save()
        except OSError as e:
            allowed, held = self.limiter.allow("save")
            if allowed:
                log.error("heartbeat: cannot persist {path}: {error}", path=self.state.path,
                          error=e.strerror or str(e))
        else:
            self.limiter.clear("save")

    def _offload(self, fn, *args) -> Deferred:
        get_pool = getattr(self.reactor, "getThreadPool", None)
        if self.offload and get_pool is not None:
            return threads.deferToThreadPool(self.reactor, get_pool(), fn, *args)
        return defer.maybeDeferred(fn, *args)

    def _extra(self) -> dict:
        """The topology fields of the beat; a field the topology does not know (None) is left out."""
        topology = self.topology
        fields = {"topology": topology.topology, "role": topology.role, "topology_status": topology.status}
        return {key: value for key, value in fields.items() if value is not None}

    def _prune(self, listeners, reported: list[str]) -> None:
        """Forget counters of listeners that no longer exist.

        A listener that exists but is not running keeps its record: if its
        haproxy comes back with counters intact (it was only briefly not
        seen), counting from zero would report its whole history again.
        ``reported`` are the entries of this beat (v0.1 listeners and load
        balancers' frontends).
        """
        try:
            known = set(listeners.all_listener_ids())
        except Exception:
            known = set()
        known.update(reported)
        for lid in list(self.state.listeners):
            if lid not in known:
                del self.state.listeners[lid]
        for lid in list(self.last_pools):
            if lid not in reported:
                del self.last_pools[lid]

    def _report_reduction(self, reduction: msg.Reduction | None) -> None:
        self.last_reduction = reduction
        if reduction is None:
            self.limiter.clear("reduced")
            return
        if reduction.full_bytes is None:   # not measured: its warning is not due (the next one measures)
            return
        allowed, held = self.limiter.allow("reduced")
        if not allowed:
            return
        if reduction.fits:
            log.warn("heartbeat: beat of {full} bytes exceeds max_packet_bytes {limit}: sent {sent} bytes"
                     " without the members of {stripped} of {pools} pools ({members} members) and"
                     " {dropped} pools dropped", full=reduction.full_bytes, limit=reduction.limit,
                     sent=reduction.sent_bytes, stripped=reduction.pools_stripped, pools=reduction.pools,
                     members=reduction.members_dropped, dropped=reduction.pools_dropped)
        else:
            log.error("heartbeat: even without pools the beat is {sent} bytes, over max_packet_bytes {limit};"
                      " sending it anyway", sent=reduction.sent_bytes, limit=reduction.limit)
