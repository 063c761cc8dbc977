"""How amphora-ctl shows the agent's answers to a human (``--json`` bypasses all of it)."""

from __future__ import annotations

import json


def _scalar(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _flatten(prefix: str, value, rows: list) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, rows)
    elif isinstance(value, list):
        if all(isinstance(i, dict) and len(i) == 1 for i in value) and value:
            # [{name: version}, ...] (packages) and [{member: status}, ...]
            rows.append((prefix, ", ".join(f"{k}={_scalar(v)}" for i in value for k, v in i.items())))
        elif all(not isinstance(i, (dict, list)) for i in value):
            rows.append((prefix, ", ".join(_scalar(i) for i in value) or "-"))
        else:
            rows.append((prefix, json.dumps(value)))
    else:
        rows.append((prefix, _scalar(value) if not isinstance(value, dict) else "-"))


def table(rows: list[tuple], header: tuple | None = None) -> str:
    """Left-aligned columns, two spaces apart."""
    rows = [tuple(str(c) for c in r) for r in rows]
    if header:
        rows.insert(0, tuple(header))
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _with_details(text: str, details) -> str:
    if details not in (None, ""):
        text += ": " + (details if isinstance(details, str) else json.dumps(details))
    return text


def show_document(doc) -> str:
    rows: list = []
    _flatten("", doc, rows)
    return table(rows)


def show_ok(doc) -> str:
    if not isinstance(doc, dict):
        return json.dumps(doc)
    return _with_details(doc.get("message", "OK"), doc.get("details"))


def show_listeners(doc) -> str:
    if not doc:
        return "no listeners"
    return table([(i.get("uuid"), i.get("status"), i.get("type")) for i in doc], ("UUID", "STATUS", "TYPE"))


def show_listener(doc) -> str:
    head = table([("uuid", doc.get("uuid")), ("status", doc.get("status")), ("type", doc.get("type"))])
    rows = []
    for pool in doc.get("pools") or []:
        members = pool.get("members") or []
        if not members:
            rows.append((pool.get("uuid"), pool.get("status"), "-", "-"))
        for member in members:
            for member_id, status in member.items():
                rows.append((pool.get("uuid"), pool.get("status"), member_id, status))
    if not rows:
        return head + "\n\nno pools"
    return head + "\n\n" + table(rows, ("POOL", "POOL STATUS", "MEMBER", "MEMBER STATUS"))


def show_error(code: int, doc) -> str:
    if isinstance(doc, dict) and "message" in doc:
        return _with_details(f"{code} {doc['message']}", doc.get("details"))
    return f"{code} {doc!r}"


def show_beat(document: dict) -> str:
    """One human line per accepted beat: who, which seq, what it carries."""
    beat = document.get("beat", {})
    listeners = beat.get("listeners") or {}
    pools = beat.get("pools") or {}
    states = ", ".join(f"{lid[:8]}={(v or {}).get('status', '?')}" for lid, v in sorted(listeners.items()))
    extra = "".join(f" {k}={beat[k]}" for k in ("topology", "role", "topology_status") if k in beat)
    return (f"{document.get('source', '?')} amphora={beat.get('id')} seq={beat.get('seq')} "
            f"listeners={len(listeners)} pools={len(pools)} bytes={document.get('bytes')}{extra}"
            + (f" [{states}]" if states else ""))
