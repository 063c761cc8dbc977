"""Which interface holds an address (``GET /1.0/interface/<ip>``, ``GET /0.5/interface/<ip>``).

The controller asks for its VRRP address (the name goes into the keepalived
configuration it renders) and, in a load-balancer failover, for the VIP on each
amphora of a pair: the one answering 404 is taken as the BACKUP and replaced
first. So the answer is read live from the kernel, in the namespace plugged
interfaces live in (``[network] namespace``), every time.
"""

from __future__ import annotations

import ipaddress

from amphora.errors import InvalidRequest, NotFound
from amphora.netlink import NetlinkQueries


def parse_address(raw: str):
    """The address of ``raw`` (IPv6 in any spelling, a zone index refused), or 400."""
    try:
        if "%" in raw:  # a zone index: addresses are compared without one
            raise ValueError(raw)
        return ipaddress.ip_address(raw)
    except ValueError:
        raise InvalidRequest(f"not an IP address: {raw[:100]!r}", message="Invalid IP address") from None


class AddressLookup:
    def __init__(self, reactor, namespace: str, netlink: NetlinkQueries | None = None):
        self.namespace = namespace
        self.netlink = netlink if netlink is not None else NetlinkQueries(reactor)

    async def interface_of(self, raw: str) -> str:
        """The name of the interface holding ``raw``; 400 if it is no address, 404 if none holds it."""
        address = parse_address(raw)
        for interface in await self.netlink.interfaces(self.namespace):
            if interface.holds(address):
                return interface.name
        raise NotFound(f"no interface holds {address}", message="Error interface not found for IP address")
