"""Syslog parsing and framing: pure functions on bytes, no I/O.

What haproxy sends (RFC 5424, RFC 3164 or bare text) becomes a ``Record``; a
record becomes the line written to the listener's file (``file_line``) and the
RFC 5424 message forwarded with the listener and amphora ids (``Tagger``),
octet-counted for TCP (RFC 6587, ``frame_octet_counting``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The structured-data id tagging forwarded lines (32473 is the documentation PEN, RFC 5612).
SD_ID = "amphora@32473"


@dataclass(frozen=True)
class Record:
    """One log line as haproxy sent it: priority, timestamp, pid and the message."""

    pri: int
    timestamp: str  # RFC 3339, or "-" when haproxy sent none we could read
    procid: str     # "-" when unknown
    msg: bytes      # the message part, exactly as haproxy wrote it (no trailing newline)


_PRI = re.compile(rb"<([0-9]{1,3})>")
_RFC3164 = re.compile(rb"[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} "
                      rb"(?:[^ :\[]+)(?:\[([0-9]+)\])?: ?")
_NILVALUE = b"-"


def parse_datagram(data: bytes) -> Record:
    """Split one datagram from haproxy into a Record.

    The agent's target asks for RFC 5424 (``<PRI>1 TS HOST APP PROCID MSGID SD MSG``);
    RFC 3164 (``<PRI>Mmm dd hh:mm:ss tag[pid]: MSG``) and bare text are
    accepted too, so a line is never lost because of its header.
    """
    data = data.rstrip(b"\r\n\x00")
    pri = 134  # local0.info
    m = _PRI.match(data)
    if m and int(m.group(1)) <= 191:
        pri = int(m.group(1))
        rest = data[m.end():]
        if rest.startswith(b"1 "):
            parts = rest[2:].split(b" ", 5)
            if len(parts) == 6:
                ts, _host, _app, procid, _msgid, tail = parts
                msg = _skip_structured_data(tail)
                if msg is not None:
                    return Record(pri, _text(ts), _text(procid), msg)
        else:
            m3164 = _RFC3164.match(rest)
            if m3164:
                procid = m3164.group(1).decode() if m3164.group(1) else "-"
                return Record(pri, "-", procid, rest[m3164.end():])
            return Record(pri, "-", "-", rest)
    return Record(pri, "-", "-", data)


_PRINTUSASCII = re.compile(rb"[!-~]+")


def _text(value: bytes) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, else the NILVALUE."""
    return value.decode("ascii") if _PRINTUSASCII.fullmatch(value) else "-"


def _skip_structured_data(tail: bytes) -> bytes | None:
    """The MSG after an RFC 5424 STRUCTURED-DATA field, or None if it is malformed."""
    if tail.startswith(_NILVALUE):
        rest = tail[1:]
    elif tail.startswith(b"["):
        i, escaped, depth = 0, False, 0
        in_quote = False
        while i < len(tail):
            c = tail[i:i + 1]
            if escaped:
                escaped = False
            elif c == b"\\":
                escaped = True
            elif c == b'"':
                in_quote = not in_quote
            elif not in_quote and c == b"[":
                depth += 1
            elif not in_quote and c == b"]":
                depth -= 1
                if depth == 0 and tail[i + 1:i + 2] != b"[":
                    break
            i += 1
        else:
            return None
        rest = tail[i + 1:]
    else:
        return None
    if rest.startswith(b" "):
        rest = rest[1:]
    return rest


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class Tagger:
    """Formats records of one listener as RFC 5424 messages (no framing) carrying its ids.

    ``<PRI>1 TIMESTAMP HOSTNAME haproxy PROCID - [amphora@32473 amphora_id=".." listener_id=".."] MSG``:
    PRI, timestamp and pid are haproxy's; MSG is haproxy's message unchanged
    (no BOM: it is MSG-ANY, since haproxy's lines are not guaranteed UTF-8).
    The per-listener parts are encoded once: ``format`` runs for every line.
    """

    def __init__(self, hostname: str, amphora_id: str, listener_id: str):
        host = _text(hostname.encode("ascii", "replace")[:255]) if hostname else "-"
        sd = f'[{SD_ID} amphora_id="{_sd_escape(amphora_id)}" listener_id="{_sd_escape(listener_id)}"]'
        self._host = f" {host} haproxy ".encode("ascii")
        self._sd = f" - {sd} ".encode("ascii")

    def format(self, record: Record) -> bytes:
        return b"".join((b"<%d>1 " % record.pri, record.timestamp.encode("ascii"), self._host,
                         record.procid[:128].encode("ascii"), self._sd, record.msg))


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d " % len(message) + message


def file_line(record: Record) -> bytes:
    """The line written to the listener's log file: timestamp, pid, haproxy's message."""
    return b"%s haproxy[%s]: %s\n" % (record.timestamp.encode(), record.procid.encode(),
                                       record.msg.replace(b"\n", b" "))
