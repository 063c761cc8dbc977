"""The composition root: builds every domain object and the service tree.

``AmphoraAgent`` is the MultiService that twistd runs. Its start-up order:

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

import os
import sys

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from amphora.api.app import AgentAPI
from amphora.api.http import BodyLimits
from amphora.api.site import AgentSite
from amphora.api.tls import ServerContextFactory
from amphora.certificates import CertificateStore
from amphora.config import AgentConfig
from amphora.fsutil import ensure_dir
from amphora.heartbeat.emitter import make_heartbeat
from amphora.host import HostFacts, HostSampler
from amphora.keepalived import Keepalived, KeepalivedService
from amphora.listeners.logs import ListenerLogs
from amphora.listeners.manager import ListenerManager
from amphora.lvs import UdpListeners
from amphora.network import NetworkPlugger
from amphora.nftables import InterfaceRules
from amphora.topology import Topology

log = Logger()

# Every request body is refused above this size before any route sees it;
# routes apply their own, smaller limits ([haproxy] max_config_bytes, ...).
BODY_SLACK = 64 * 1024


class AmphoraAgent(MultiService):
    def __init__(self, config: AgentConfig, reactor):
        super().__init__()
        self.config = config
        self.reactor = reactor
        agent = config.agent
        for path, mode in ((agent.state_dir, 0o755), (agent.run_dir, 0o755), (agent.certs_dir, 0o700)):
            ensure_dir(path, mode)
        self.facts = HostFacts(config, reactor)
        self.topology = Topology(agent.state_dir, config.hostname, agent.amphora_id)
        # Order matters: the listener manager needs nothing else; certificates and
        # logs hook into it; the sampler and heartbeat read everything.
        self.network = NetworkPlugger(config, reactor, vip_owner=self.topology)
        self.listeners = ListenerManager(config, reactor)
        self.listeners.setServiceParent(self)
        self.certificates = CertificateStore(agent.certs_dir, reactor, self.listeners, agent.max_certificate_bytes)
        self.certificates.check_storage()
        self.listeners.delete_hooks.append(self.certificates.delete_all)  # a deleted listener's keys go too
        self.logs = ListenerLogs(config, reactor)
        self.logs.setServiceParent(self)
        self.logs.attach(self.listeners)  # hooks into listeners.config_hooks / delete_hooks
        self.sampler = HostSampler.for_agent(self)
        self.sampler.setServiceParent(self)
        self.keepalived = Keepalived(config, reactor, vip_interface=self.network.vip_interface)
        KeepalivedService(self.keepalived).setServiceParent(self)  # detaches, never stops it
        self.topology.attach(self.keepalived, reactor, config.keepalived.transition_timeout, network=self.network)
        self.interface_rules = InterfaceRules(config, reactor)  # 1.0 §4.14
        self.udp_listeners = UdpListeners(config, reactor)  # 1.0 §4.15
        self.udp_listeners.setServiceParent(self)
        self.heartbeat = make_heartbeat(self)
        self.api = AgentAPI(self)
        max_body = max(config.haproxy.max_config_bytes, agent.max_certificate_bytes) + BODY_SLACK
        self.site = AgentSite(self.api.app.resource(), clock=reactor, max_body_bytes=max_body,
                              timeout=300, body_limit=BodyLimits(max_body, config.haproxy.max_config_bytes,
                                                                 agent.max_certificate_bytes))
        self.site.access_log = agent.access_log
        self.port = None
        self._ready: list[Deferred] = []
        self.is_ready = False
        self.parent_hooks = []  # called with the parent before joining it (see amphora.tap)

    def setServiceParent(self, parent):
        for hook in self.parent_hooks:
            hook(parent)
        super().setServiceParent(parent)

    # -- life cycle -----------------------------------------------------------

    def privilegedStartService(self):
        agent = self.config.agent
        endpoint = SSL4ServerEndpoint(self.reactor, agent.bind_port, ServerContextFactory(self.config.tls),
                                      backlog=128, interface=agent.bind_host)
        result = []
        endpoint.listen(self.site).addBoth(result.append)
        outcome = result[0]  # listenSSL is synchronous: the Deferred has fired
        if isinstance(outcome, Failure):
            if outcome.check(CannotListenError):
                sys.stderr.write(f"amphora-agent: agent.bind_port: cannot listen on "
                                 f"{agent.bind_host}:{agent.bind_port}: {outcome.value.socketError}\n")
                raise SystemExit(1)
            outcome.raiseException()
        self.port = outcome
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
        for name, step in (
            ("host facts", self.facts.load),
            ("network restore", self.network.restore),
            ("topology restore", self.topology.restore),
            ("listener restore", self.listeners.restore),
            ("interface rules restore", self.interface_rules.restore),
            ("UDP listener restore", self.udp_listeners.restore),
        ):
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
        self.is_ready = True
        waiters, self._ready = self._ready, []
        for d in waiters:
            d.callback(self)

    def when_ready(self) -> Deferred:
        """Fires with the agent once the API accepts connections."""
        if self.is_ready:
            return _fired(self)
        d = Deferred()
        self._ready.append(d)
        return d

    @property
    def api_port(self) -> int:
        return self.port.getHost().port

    @inlineCallbacks
    def stopService(self):
        if self.port is not None:
            port, self.port = self.port, None
            yield maybeDeferred(port.stopListening)
        yield super().stopService()


def _fired(value):
    d = Deferred()
    d.callback(value)
    return d


def build_agent(config: AgentConfig, reactor) -> AmphoraAgent:
    os.umask(0o022)
    return AmphoraAgent(config, reactor)
