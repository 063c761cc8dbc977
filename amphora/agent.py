"""The composition root: ``build_parts`` builds every domain object and hands
each consumer only what it uses; ``AmphoraAgent`` serves them.

``AmphoraAgent`` is the MultiService that twistd runs; it only binds early and
accepts after the restore. Its start-up order:

1. ``privilegedStartService``: bind the API port (a bind error ends twistd
   at once with one clear line) but do not accept yet;
2. child services start (timers, samplers, heartbeat);
3. the start-up sequence (``_start``) learns host facts and restores state
   (network, topology, listeners), then the port starts accepting. Clients
   that connect earlier simply wait in the listen backlog.

Stopping closes the port first, then stops the children in reverse order.
Listener haproxy processes are *not* stopped with the agent: the next agent
adopts them, so restarting the agent never drops traffic.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from amphora.addrlookup import AddressLookup
from amphora.agentconf import AgentConfigUpdates, load_saved
from amphora.api.app import AgentAPI
from amphora.api.faces import build_faces
from amphora.api.octavia_amphora import AmphoraCalls
from amphora.api.http import BodyLimits
from amphora.api.site import AgentSite
from amphora.api.tls import ServerContextFactory
from amphora.api.tlsconn import tls_factory
from amphora.certificates import CertificateStore
from amphora.config import AgentConfig
from amphora.fsutil import ensure_dir
from amphora.heaptrim import HeapTrimmer
from amphora.heartbeat.emitter import HeartbeatService
from amphora.host import HostFacts, HostSampler
from amphora.keepalived import Keepalived, KeepalivedService
from amphora.listeners.logs import ListenerLogs
from amphora.listeners.manager import ListenerManager
from amphora.lvs import UdpListeners
from amphora.network import NetworkPlugger
from amphora.servercert import ContextHolder, ServerCertificate
from amphora.nftables import InterfaceRules
from amphora.topology import Topology
from amphora.vrrp import ControllerVRRP, VipOwnership

log = Logger()

# Every request body is refused above this size before any route sees it;
# routes apply their own, smaller limits ([haproxy] max_config_bytes, ...).
BODY_SLACK = 64 * 1024


class Ready:
    """The "the API accepts connections" signal, handed to those that wait for it
    (the heartbeat's first beat, the package inventory's first query)."""

    def __init__(self):
        self.fired = False
        self.value = None
        self._waiters: list[Deferred] = []

    def wait(self) -> Deferred:
        """A Deferred firing (with the agent) once the API accepts connections."""
        if self.fired:
            return succeed(self.value)
        d = Deferred()
        self._waiters.append(d)
        return d

    def fire(self, value=None) -> None:
        self.fired, self.value = True, value
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(value)


@dataclass
class Parts:
    """Every domain object of one agent, as ``build_parts`` wired them."""

    config: AgentConfig
    reactor: object
    facts: HostFacts
    topology: Topology
    network: NetworkPlugger
    listeners: object  # IListenerRegistry
    certificates: CertificateStore
    logs: ListenerLogs
    sampler: HostSampler
    keepalived: Keepalived
    heartbeat: HeartbeatService
    api: AgentAPI
    site: AgentSite
    tls_context: ContextHolder
    server_certificate: ServerCertificate
    agent_config: AgentConfigUpdates
    addresses: AddressLookup
    vrrp: ControllerVRRP
    interface_rules: InterfaceRules
    udp_listeners: UdpListeners

    def restore_steps(self) -> list:
        """The start-up sequence, in dependency order: interfaces before the listeners that bind them."""
        return [("host facts", self.facts.load), ("network restore", self.network.restore),
                # Before the topology: it stops a keepalived it does not use, unless one is running.
                ("controller VRRP restore", self.vrrp.restore),
                ("topology restore", self.topology.restore), ("listener restore", self.listeners.restore),
                ("interface rules restore", self.interface_rules.restore),
                ("UDP listener restore", self.udp_listeners.restore)]


def build_parts(config: AgentConfig, reactor, parent: MultiService, ready: Ready, listeners=None,
                saved_update=None) -> Parts:
    """Build every part; services join ``parent``. ``listeners`` replaces the listener
    manager (an ``IListenerRegistry``, e.g. ``amphora.testing.FakeListeners``)."""
    agent = config.agent
    for path, mode in ((agent.state_dir, 0o755), (agent.run_dir, 0o755), (agent.certs_dir, 0o700)):
        ensure_dir(path, mode)
    facts = HostFacts(config, reactor)
    topology = Topology(agent.state_dir, config.hostname, agent.amphora_id)
    # Order matters: the listener manager needs nothing else; certificates and
    # logs hook into it; the sampler and heartbeat read what they report.
    network = NetworkPlugger(config, reactor, vip_owner=topology)
    if listeners is None:
        listeners = ListenerManager(config, reactor)
        listeners.setServiceParent(parent)
    certificates = CertificateStore(agent.certs_dir, reactor, listeners, agent.max_certificate_bytes)
    certificates.check_storage()
    listeners.delete_hooks.append(certificates.delete_all)  # a deleted listener's keys go too
    logs = ListenerLogs(config, reactor, listeners)  # hooks into listeners.config_hooks / delete_hooks
    logs.setServiceParent(parent)
    sampler = HostSampler.from_config(config, reactor, ready.wait)
    sampler.setServiceParent(parent)
    keepalived = Keepalived(config, reactor, network)
    KeepalivedService(keepalived).setServiceParent(parent)  # detaches, never stops it
    topology.attach(keepalived, reactor, config.keepalived.transition_timeout, network=network)
    heartbeat = HeartbeatService(reactor, config.heartbeat, amphora_id=agent.amphora_id, state_dir=agent.state_dir,
                                 listeners=listeners, topology=topology, keepalived=keepalived, ready=ready.wait)
    heartbeat.setServiceParent(parent)
    # The Octavia faces' amphora-wide calls (amphora.api.octavia_amphora).
    tls_context = ContextHolder(ServerContextFactory(config.tls))
    server_certificate = ServerCertificate(config.tls, tls_context, agent.amphora_id, agent.certs_dir)
    agent_config = AgentConfigUpdates(config, heartbeat, saved_update, network)
    addresses = AddressLookup(reactor, config.network.namespace)
    vrrp = ControllerVRRP(config, reactor, keepalived, topology, network)
    network.vip_owner = VipOwnership(topology, vrrp, agent_config)
    interface_rules = InterfaceRules(config, reactor)  # 1.0 §4.14
    udp_listeners = UdpListeners(config, reactor)  # 1.0 §4.15
    udp_listeners.setServiceParent(parent)
    HeapTrimmer(reactor).setServiceParent(parent)  # freed C heap pages back to the kernel
    amphora_calls = AmphoraCalls(server_certificate, agent_config, addresses, vrrp,
                                 agent.max_certificate_bytes, config.haproxy.max_config_bytes)
    faces = functools.partial(build_faces, config, facts=facts, sampler=sampler, topology=topology,
                              listeners=listeners, network=network, amphora=amphora_calls,
                              interface_rules=interface_rules, udp_listeners=udp_listeners)
    api = AgentAPI(facts=facts, topology=topology, listeners=listeners, certificates=certificates, network=network,
                   logs=logs, sampler=sampler, max_config_bytes=config.haproxy.max_config_bytes, faces=faces,
                   vrrp=vrrp)
    max_body = max(config.haproxy.max_config_bytes, agent.max_certificate_bytes) + BODY_SLACK
    site = AgentSite(api.app.resource(), clock=reactor, max_body_bytes=max_body,
                     timeout=300, body_limit=BodyLimits(max_body, config.haproxy.max_config_bytes,
                                                        agent.max_certificate_bytes))
    site.access_log = agent.access_log
    return Parts(config, reactor, facts, topology, network, listeners, certificates, logs, sampler, keepalived,
                 heartbeat, api, site, tls_context, server_certificate, agent_config, addresses, vrrp,
                 interface_rules, udp_listeners)


class AmphoraAgent(MultiService):
    """Binds the API port early and accepts once the restore steps ran.

    ``site`` is what the port serves, ``steps()`` the start-up sequence
    (``[(name, callable)]``, read when the agent starts), ``ready`` the signal
    it fires once it accepts.
    The parts (``parts``) are readable as attributes (``agent.listeners``)
    for tools and tests; nothing here uses them.
    """

    def __init__(self, config: AgentConfig, reactor, ready: Ready | None = None):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.ready = ready if ready is not None else Ready()
        self.parts: Parts | None = None
        self.site = None
        self.steps = list
        self.port = None
        self.parent_hooks = []  # called with the parent before joining it (see amphora.tap)

    def serve(self, parts: Parts) -> None:
        """Serve ``parts.site`` after ``parts.restore_steps()``."""
        self.parts, self.site, self.steps = parts, parts.site, parts.restore_steps

    def __getattr__(self, name):
        parts = self.__dict__.get("parts")
        if parts is not None and name in Parts.__dataclass_fields__:
            return getattr(parts, name)
        raise AttributeError(name)

    @property
    def is_ready(self) -> bool:
        return self.ready.fired

    def setServiceParent(self, parent):
        for hook in self.parent_hooks:
            hook(parent)
        super().setServiceParent(parent)

    # -- life cycle -----------------------------------------------------------

    def privilegedStartService(self):
        agent = self.config.agent
        # TLS over TCP as listenSSL builds it, with the agent's per-connection layer
        # (amphora.api.tlsconn)
        endpoint = TCP4ServerEndpoint(self.reactor, agent.bind_port, backlog=128, interface=agent.bind_host)
        result = []
        endpoint.listen(tls_factory(self.tls_context, self.site)).addBoth(result.append)
        outcome = result[0]  # listenTCP is synchronous: the Deferred has fired
        if isinstance(outcome, Failure):
            if outcome.check(CannotListenError):
                sys.stderr.write(f"amphora-agent: agent.bind_port: cannot listen on "
                                 f"{agent.bind_host}:{agent.bind_port}: {outcome.value.socketError}\n")
                raise SystemExit(1)
            outcome.raiseException()
        self.port = outcome
        if hasattr(self.port, "_type"):
            self.port._type = "TLS"  # what listenSSL names it in the log
        if hasattr(self.port, "stopReading"):  # accept only once the start-up sequence is done
            self.port.stopReading()
        super().privilegedStartService()

    def startService(self):
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        self._start().addErrback(lambda f: log.failure("start-up sequence failed", f)).addBoth(
            lambda _: self._accept())

    @inlineCallbacks
    def _start(self):
        """Restore state in dependency order: interfaces before the listeners that bind them.

        Each step is guarded on its own: a failure in one (logged) never keeps
        the later ones from running, so one bad piece of state cannot leave
        every listener down after a reboot.
        """
        for name, step in self.steps():
            try:
                yield maybeDeferred(step)
            except Exception:
                log.failure("start-up step {step} failed; continuing with the next", step=name)

    def _accept(self):
        if self.port is not None and self.running:
            if hasattr(self.port, "startReading"):
                self.port.startReading()
            address = self.port.getHost()
            log.info("amphora-agent {uuid} serving on {host}:{port}", uuid=self.config.agent.amphora_id,
                     host=address.host, port=address.port)
        self.ready.fire(self)

    def when_ready(self) -> Deferred:
        """Fires with the agent once the API accepts connections."""
        return self.ready.wait()

    @property
    def api_port(self) -> int:
        return self.port.getHost().port

    @inlineCallbacks
    def stopService(self):
        if self.port is not None:
            port, self.port = self.port, None
            yield maybeDeferred(port.stopListening)
        yield super().stopService()


def build_agent(config: AgentConfig, reactor, listeners=None) -> AmphoraAgent:
    """The agent twistd runs: every part built, the API served after the restore.
    ``listeners`` replaces the listener manager (tests)."""
    os.umask(0o022)
    config, saved_update = load_saved(config)  # the last PUT /1.0/config (amphora.agentconf)
    agent = AmphoraAgent(config, reactor)
    agent.serve(build_parts(config, reactor, agent, agent.ready, listeners=listeners, saved_update=saved_update))
    return agent
