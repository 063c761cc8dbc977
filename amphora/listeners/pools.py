"""``show stat`` rows as one model (frontends, pools, members), and the v0.1 API's rendering of it.

The listener status route (``GET /v0.1/listeners/<id>``) and the heartbeat
read the same rows; both go through :func:`model`, so they agree on what a
member's state is, when a pool is DEGRADED or DOWN and which backends are
pools at all. Each renders that model in its own vocabulary: the API with
:func:`pools_document` (normalised member states, DEGRADED), the heartbeat
(``amphora.heartbeat.message``) with haproxy's raw member statuses and
UP/DOWN pools, as Octavia's health manager expects.

Rules (DESIGN.md section 4, Octavia's health daemon):

- a pool is a backend whose name is ``<pool uuid>`` or ``<pool uuid>:<listener id>``;
  other backends (a ``listen stats`` section, Octavia's prometheus exporter)
  are not pools and are reported by neither;
- a server that haproxy reports exactly ``UP`` with weight 0 is DRAIN
  (Octavia drains members by setting their weight to 0; haproxy still says UP);
- a pool is DOWN when its BACKEND row is not UP (without a BACKEND row, when
  every member is DOWN or MAINT), DEGRADED when a member is DOWN, else UP.
"""

from __future__ import annotations

import operator
import uuid as uuid_module
from dataclasses import dataclass, field
from typing import NamedTuple

from amphora.listeners.stats import pool_id as _pool_id

UP, DOWN, DRAIN, MAINT, NO_CHECK, DEGRADED = "UP", "DOWN", "DRAIN", "MAINT", "NO_CHECK", "DEGRADED"
# The ``show stat`` columns :func:`model` reads (``stats.parse_show_stat(answer, COLUMNS)``).
COLUMNS = ("pxname", "svname", "type", "status", "weight")


def is_uuid(text: str) -> bool:
    try:
        return str(uuid_module.UUID(text)) == text.lower()
    except ValueError:
        return False


def internal(proxy_name: str) -> bool:
    """Octavia's own configurations carry a prometheus exporter proxy: never the tenant's traffic."""
    return "prometheus" in proxy_name


def member_status(raw: str, weight: str = "") -> str:
    """haproxy's server status (and weight) -> UP / DOWN / DRAIN / MAINT / NO_CHECK."""
    value = (raw or "").strip().upper()
    if value.startswith("MAINT"):
        return MAINT
    if value.startswith("DRAIN") or value.startswith("NOLB"):
        return DRAIN
    if value.startswith("NO CHECK") or value == "":
        return NO_CHECK
    if value == "UP" and (weight or "").strip() == "0":
        return DRAIN
    if value.startswith("UP"):
        return UP
    return DOWN


def pool_status(backend_raw: str | None, members: list[str]) -> str:
    """DOWN if haproxy says the backend is down; DEGRADED if a member is DOWN; else UP.

    ``members`` are states from :func:`member_status`; ``backend_raw`` is None
    when the answer had no BACKEND row (then DOWN means every member is DOWN or MAINT).
    """
    if backend_raw is not None and not (backend_raw or "").strip().upper().startswith("UP"):
        return DOWN
    if backend_raw is None and members and all(m in (DOWN, MAINT) for m in members):
        return DOWN
    if any(m == DOWN for m in members):
        return DEGRADED
    return UP


class Member(NamedTuple):
    """A server row (a tuple: thousands of them per answer, built once per beat)."""

    name: str
    raw: str        # haproxy's status column, stripped ("UP", "DOWN 1/2", "no check", ...)
    weight: str

    @property
    def drained(self) -> bool:
        return self.raw == "UP" and self.weight.strip() == "0"

    @property
    def state(self) -> str:
        return member_status(self.raw, self.weight)


@dataclass
class Pool:
    backend: str                 # the backend name as configured
    raw: str | None = None       # the BACKEND row's status; None when the answer had none
    members: list[Member] = field(default_factory=list)

    @property
    def pool_id(self) -> str:
        return _pool_id(self.backend)

    @property
    def listener_id(self) -> str | None:
        _, sep, rest = self.backend.partition(":")
        return rest if sep else None

    @property
    def state(self) -> str:
        return pool_status(self.raw, [m.state for m in self.members])

    @property
    def down(self) -> bool:
        """``state == DOWN``, reading the members only when there is no BACKEND row."""
        return pool_status(self.raw, [] if self.raw is not None else [m.state for m in self.members]) == DOWN


@dataclass
class Stats:
    frontends: list[dict]        # the FRONTEND rows (internal ones left out), in answer order
    pools: list[Pool]            # in answer order


def is_pool(backend_name: str) -> bool:
    return bool(backend_name) and not internal(backend_name) and is_uuid(_pool_id(backend_name))


def model(rows: list[dict]) -> Stats:
    """The one reading of a ``show stat`` answer (rows from ``stats.parse_show_stat``).

    The heartbeat reads thousands of server rows per beat: the loop reads a
    row's columns in one ``itemgetter`` call and builds each :class:`Member`
    with ``tuple.__new__``.
    """
    frontends: list[dict] = []
    pools: dict[str, Pool | None] = {}   # backend name -> its pool, None when it is not one
    for row in rows:
        try:
            px, sv, kind, status, weight = _FIELDS(row)
        except KeyError:   # rows parsed without some of COLUMNS, or the answer had not all of them
            px, sv, kind = row.get("pxname", ""), row.get("svname", ""), row.get("type")
            status, weight = row.get("status"), row.get("weight")
        if sv == "FRONTEND":
            if px and not internal(px):
                frontends.append(row)
            continue
        if kind not in _POOL_ROW_TYPES:
            continue  # 0=frontend 1=backend 2=server 3=listener socket
        pool = pools.get(px, False)
        if pool is False:   # the first row of this backend decides (a name check costs microseconds)
            pool = pools[px] = Pool(px) if is_pool(px) else None
        if pool is None:
            continue
        if sv == "BACKEND":
            pool.raw = (status or "").strip()
        else:
            pool.members.append(_new_member(Member, (sv, (status or "").strip(), weight or "")))
    return Stats(frontends, [pool for pool in pools.values() if pool is not None])


_FIELDS = operator.itemgetter("pxname", "svname", "type", "status", "weight")
_POOL_ROW_TYPES = frozenset((None, "", "1", "2"))
_new_member = tuple.__new__   # Member(...) without its Python-level __new__


def pools_document(rows: list[dict]) -> list[dict]:
    """The v0.1 status route's ``pools`` list: one entry per pool UUID, normalised member states."""
    return [{"uuid": pool.pool_id, "status": pool.state,
             "members": [{m.name: m.state} for m in pool.members]}
            for pool in model(rows).pools]
