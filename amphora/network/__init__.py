"""Plug VIP / plug network: configure newly attached ports through netlink.

When the controller attaches a Neutron port to the amphora, a new interface
appears, down and unconfigured. ``POST /v0.1/plug/vip/<ip>`` and
``POST /v0.1/plug/network`` find that interface, optionally move it into the
configured ``[network] namespace`` (where haproxy and keepalived run), assign
addresses, MTU and routes, and bring it up. All of it is netlink through
pyroute2 -- never ``ip`` or ``ifup`` -- and what was plugged is persisted in
``<state_dir>/plugged.json`` so that ``restore()`` can re-apply it at start-up
(an amphora reboot loses every address), before the listeners bind the VIPs.

Modules, from the edge inwards:

- ``PlugSpec`` / ``Route`` (amphora.netspec, with the one address rule): what
  to apply, parsed from a request by amphora.api.requests (400 naming the
  field) or read back from plugged.json.
- ``links``: ``choose_interface`` (which link to plug, from plain ``Link``
  records; 404 when none or several), a pure function; and ``Netlink``, the
  plugging operations (move, addresses, MTU, routes, undo) on the netlink
  adapter ``amphora.netlink``. Blocking; run in a thread by the plugger.
- ``plugger``: ``NetworkPlugger`` (``agent.network``), the domain object.
  One DeferredLock serialises every plug and the restore; netlink work goes
  to a thread; state is written atomically in the reactor thread.
"""

from amphora.netlink import NetlinkFailure, iproute, netlink_socket
from amphora.network.links import Link, Netlink, choose_interface, free_name, is_candidate, link_from_msg
from amphora.network.plugger import NetworkPlugger
from amphora.netspec import PlugSpec, Route

__all__ = ["Link", "Netlink", "NetlinkFailure", "NetworkPlugger", "PlugSpec", "Route", "choose_interface",
           "free_name", "iproute", "is_candidate", "link_from_msg", "netlink_socket"]
