"""haproxy's runtime API over a UNIX socket, and ``show stat`` parsing.

Used by the listener status routes, the heartbeat and the certificate live
swap. Everything is asynchronous and bounded by a timeout: a socket that
hangs or answers garbage never blocks the reactor or the caller for long.

Naming convention (DESIGN.md section 4): backend names are pool UUIDs, or
``<pool>:<listener>``; server names are member UUIDs.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import os

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import TimeoutError
from twisted.internet.protocol import Factory, Protocol


class _OneCommand(Protocol):
    """Send one command line, collect everything until the peer closes."""

    def __init__(self, command: bytes, done: Deferred, limit: int):
        self.command = command
        self.done = done
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def connectionMade(self):
        command = self.command.rstrip(b"\n")
        # A command with a payload ("set ssl cert <file> <<" + PEM) ends with an empty line;
        # any other command with one newline.
        end = b"\n\n" if b"<<" in command.split(b"\n", 1)[0] else b"\n"
        self.transport.write(command + end)

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.limit:
            self.transport.abortConnection()
            if not self.done.called:
                self.done.errback(ValueError(f"runtime API answer exceeds {self.limit} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(b"".join(self.chunks))


_SUN_PATH_MAX = 107


class _QuietFactory(Factory):
    """One connection, and no "Starting factory" log line for every query (they are frequent)."""

    noisy = False

    def __init__(self, protocol: Protocol):
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        return self.protocol_instance


def query(reactor, socket_path: str, command: str | bytes, timeout: float = 2.0,
          limit: int = 16 * 1024 * 1024) -> Deferred:
    """Run one runtime API command on ``socket_path``; fires with the raw answer (bytes).

    Fails with ``TimeoutError`` after ``timeout`` seconds (connect + answer),
    or with the connection error (socket missing, refused).
    """
    if isinstance(command, str):
        command = command.encode()
    done: Deferred = Deferred()
    holder: list = []

    def on_timeout():
        if holder:
            holder[0].transport.abortConnection()
        if not done.called:
            done.errback(TimeoutError(f"no answer from {socket_path} within {timeout}s"))

    timer = reactor.callLater(timeout, on_timeout)
    dirfd = None
    if len(os.fsencode(socket_path)) > _SUN_PATH_MAX:
        # A UNIX socket path holds at most 107 bytes; reach a deeper socket through its
        # directory's file descriptor (/proc/self/fd/N/name), kept open until connected.
        try:
            dirfd = os.open(os.path.dirname(socket_path) or ".", os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            timer.cancel()
            done.errback(e)
            return done
        socket_path = f"/proc/self/fd/{dirfd}/{os.path.basename(socket_path)}"
    endpoint = UNIXClientEndpoint(reactor, socket_path, timeout=timeout)
    connecting = endpoint.connect(_QuietFactory(_OneCommand(command, done, limit)))
    if dirfd is not None:
        def close_dirfd(result):
            os.close(dirfd)
            return result
        connecting.addBoth(close_dirfd)
    connecting.addCallback(holder.append)

    def connect_failed(failure):
        if not done.called:
            done.errback(failure)

    connecting.addErrback(connect_failed)

    def finish(result):
        if timer.active():
            timer.cancel()
        return result

    return done.addBoth(finish)


def parse_show_stat(answer: bytes | str, columns: tuple[str, ...] | None = None) -> list[dict[str, str]]:
    """Rows of ``show stat`` as dicts keyed by haproxy's column names.

    With ``columns``, each row holds only those of them the answer has (the
    heartbeat reads about ten of haproxy's hundred columns, and building the
    dicts is most of the cost). The rows are what ``csv.DictReader`` gives
    (a short row maps its missing columns to None); an answer without a
    double quote (the usual case) is split by hand, which is the same reading.

    Raises ValueError when the answer is not a ``show stat`` CSV.
    """
    if isinstance(answer, bytes):
        answer = answer.decode("utf-8", "replace")
    text = answer.lstrip()
    if not text.startswith("# pxname,svname,"):
        raise ValueError("not a 'show stat' answer: " + text[:80].replace("\n", " "))
    text = text[2:]
    if '"' in text or "\r" in text:
        records = csv.reader(io.StringIO(text))
        header, cut = next(records), -1
    else:   # no quoting: a line is its fields joined by commas
        lines = text.split("\n")
        header = lines[0].split(",")
        last = {c: i for i, c in enumerate(header)}
        cut = max((last[c] for c in columns if c in last), default=0) + 1 if columns else -1
        # Split only as far as needed (haproxy has about a hundred columns), in a C loop.
        records = map(str.split, itertools.islice(lines, 1, None), itertools.repeat(","), itertools.repeat(cut))
    width = len(header)
    if columns is None:
        return [dict(zip(header, r)) if len(r) == width else _short_or_long(header, r)
                for r in records if r and r[0]]
    position = {c: i for i, c in enumerate(header)}   # a repeated name: the last one, as DictReader
    wanted = tuple(c for c in columns if c in position)
    return _rows_reader(wanted, tuple(position[c] for c in wanted))(records)


@functools.lru_cache(maxsize=32)
def _rows_reader(wanted: tuple[str, ...], index: tuple[int, ...]):
    """``records -> [{wanted[j]: record[index[j]]} for each record with a pxname]``.

    Compiled once per set of columns: a dict display with constant keys in
    one comprehension builds the rows about twice as fast as
    ``dict(zip(wanted, itemgetter(*index)(record)))``, and an answer has
    thousands of them. A record too short for a column maps it to None, as
    ``csv.DictReader`` does. ``wanted`` are the caller's column names (those
    the header has), written with ``repr``: string literals, whatever they hold.
    """
    needed = max(index, default=-1) + 1
    items = ", ".join(f"{name!r}: r[{i:d}]" for name, i in zip(wanted, index))
    code = f"lambda records: [{{{items}}} if len(r) >= {needed:d} else short(r) for r in records if r and r[0]]"

    def short(r):
        return {c: r[i] if i < len(r) else None for c, i in zip(wanted, index)}

    return eval(code, {"__builtins__": {"len": len}, "short": short})


def _short_or_long(header: list[str], record: list[str]) -> dict:
    """csv.DictReader's row for a record that is not as wide as the header."""
    row = dict(zip(header, record))
    row.update((c, None) for c in header[len(record):])
    if len(record) > len(header):
        row[None] = record[len(header):]
    return row


def pool_id(backend_name: str) -> str:
    """The pool UUID of a backend named ``<pool>`` or ``<pool>:<listener>``."""
    return backend_name.split(":", 1)[0]
