"""The collaborators that more than one module uses, declared once.

Each interface names what its consumers call, nothing more; the real class
(``implementer``) and the one fake in ``amphora.testing`` are both checked
against it with ``verifyObject`` (tests/unit/test_interfaces.py).

- ``IListenerRegistry``: ``amphora.listeners.manager.ListenerManager``, read
  by the certificate store, the heartbeat, the details document, the log
  collector, and driven by the API's faces (v0.1, 1.0, 0.5);
- ``IKeepalivedState``: ``amphora.keepalived.Keepalived``, driven by the
  topology and read by the heartbeat's gate;
- ``INetworkPlugger``: ``amphora.network.NetworkPlugger``, driven by the API,
  the start-up sequence and the topology (VIP hand-over), asked by keepalived
  where a VIP is plugged.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IListenerRegistry(Interface):
    """The haproxy instances by id, and the hooks other domains register."""

    config_hooks = Attribute("list of ``hook(lid) -> str``: text appended to the agent's fragment of ``lid``")
    delete_hooks = Attribute("list of ``hook(lid) -> Deferred | None``: run by delete after haproxy stopped")

    def listener_ids():
        """Sorted ids of the v0.1 listeners that exist."""

    def all_listener_ids():
        """v0.1 listeners and the frontends of 1.0 load balancers (``GET /v0.1/details``)."""

    def running_ids():
        """Sorted ids of the instances whose haproxy runs now."""

    def running_count():
        """How many supervised haproxy processes run."""

    def exists(lid):
        """Whether the v0.1 listener ``lid`` exists."""

    def heartbeat_frontends(lid):
        """The frontend names a load balancer's heartbeat reports; None for a v0.1 listener."""

    def show_stat(lid, columns=None):
        """Deferred[list[dict]]: parsed ``show stat`` rows; errbacks when ``lid`` cannot tell."""

    def runtime(lid, command):
        """Deferred[bytes]: one runtime API command on ``lid``'s admin socket."""

    def serialised(lid, fn, *args):
        """Deferred: ``fn(*args)`` under ``lid``'s lock (never interleaved with its operations)."""

    def uses_file(lid, path):
        """Whether ``lid``'s configuration references the file ``path``."""

    def restore():
        """Deferred: adopt running haproxy processes, start those that should run (agent start)."""

    # -- operations more than one API face drives --

    def upload(lid, data):
        """Deferred[str]: check and store a v0.1 listener's configuration (v0.1, 0.5)."""

    def kind(iid):
        """``"listener"``, ``"loadbalancer"`` or None when nothing with that id exists."""

    def get_config(iid, kind=None):
        """The stored configuration of a listener or load balancer (``kind`` None: either)."""

    def delete(iid, kind=None):
        """Deferred[str]: stop and remove a listener or load balancer."""

    def upload_loadbalancer(lb_id, amphora_id, body):
        """Deferred: check and store a 1.0 load balancer's configuration."""

    def loadbalancer_action(lb_id, action):
        """Deferred[str]: start, stop or reload a load balancer (1.0 semantics)."""

    def frontends():
        """One ``{"status", "uuid", "type"}`` per frontend of every stored load balancer."""


class IKeepalivedState(Interface):
    """keepalived as the topology drives it and the heartbeat sees it."""

    running = Attribute("bool: keepalived runs now")
    configured = Attribute("bool: keepalived is wanted (applied and not stopped since)")
    vrrp_state = Attribute("the last VRRP state keepalived reported (MASTER, BACKUP, FAULT, ...) or None")

    def apply(settings):
        """Deferred: render, validate and (re)load VRRP ``settings``."""

    def stop():
        """Deferred: stop keepalived (return to SINGLE)."""

    def stop_leftover():
        """Deferred: stop a keepalived a previous agent left running for nobody."""

    def wait_state():
        """Deferred firing with the next reported VRRP state (cancellable)."""


class INetworkPlugger(Interface):
    """Plugging VIPs and networks into the data-plane namespace."""

    def plug_vip(vip, spec):
        """Deferred[str]: plug ``vip`` as ``spec`` says; the details text."""

    def plug_network(spec):
        """Deferred[str]: plug a newly attached network port; the details text."""

    def vip_interface(vip):
        """The name of the interface carrying ``vip``, or None."""

    def plugged():
        """What is plugged: ``{"namespace", "interfaces": [...]}``."""

    def restore():
        """Deferred: plug again what was plugged (agent start)."""

    def sync_vips():
        """Deferred: put every VIP where the topology now says (the topology calls it when
        the VIPs change hands between the agent and keepalived); never fails."""
