"""The collector service: one UNIX datagram socket per listener, wired to the listener manager.

``ListenerLogs`` (``agent.logs``) gives each listener's haproxy its log target
through the manager's config hook, reads the socket on the reactor, appends
each line to the listener's ``RotatingFile``, hands it to the forwarder, and
cleans up through the manager's delete hook. See the package docstring.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from amphora.fsutil import ensure_dir, remove_file
from amphora.listeners.logs.forward import make_forwarder
from amphora.listeners.logs.logfile import RotatingFile, tail_lines
from amphora.listeners.logs.syslog import Tagger, file_line, parse_datagram
from amphora.listeners.store import is_listener_id

log = Logger()

#: haproxy truncates a log line to this many bytes (``len`` of the log target).
LINE_MAX = 8192
#: Largest datagram read from a collector socket (header + LINE_MAX, with room).
DATAGRAM_MAX = LINE_MAX + 1024
#: DELETE waits at most this long for the final lines to reach the forward target.
DELETE_FLUSH_TIMEOUT = 5.0
#: UNIX socket paths are limited by sun_path (108 bytes including the NUL)...
SUN_PATH_MAX = 107
#: ...and haproxy refuses "unix@" paths longer than sun_path minus room for its
#: ".<pid>.tmp" suffix (2.6 says "max 97"; kept at the listener manager's 95).
HAPROXY_PATH_MAX = 95
#: haproxy's log facility on the agent's target (the priority it sends keeps its severity).
FACILITY = "local0"


@dataclass(frozen=True)
class Losses:
    """What a listener's logs lost since the agent started: lines its file could not take,
    and lines the forwarder dropped (one queue for all listeners; None without a target)."""

    file_dropped: int
    forward_lost: int | None


class _Collector(DatagramProtocol):
    """Reads one listener's socket; each datagram becomes a file line and a forwarded message."""

    def __init__(self, logs: "ListenerLogs", lid: str, file: RotatingFile):
        self.logs = logs
        self.lid = lid
        self.file = file
        self.port = None
        self.received = 0
        self.tagger = Tagger(logs.hostname, logs.amphora_id, lid)

    def datagramReceived(self, data, addr):
        self.received += 1
        record = parse_datagram(data)
        self.file.append(file_line(record))
        forwarder = self.logs.forwarder
        if forwarder is not None:
            forwarder.send(self.tagger.format(record))

    def read_pending(self) -> int:
        """Read, now, every datagram already queued on the socket (haproxy's final lines)."""
        count = 0
        sock = getattr(self.port, "socket", None)
        if sock is None:
            return 0
        while True:
            try:
                data = sock.recv(DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:
                return count
            self.datagramReceived(data, None)
            count += 1


class ListenerLogs(Service):
    """Collects, stores and forwards every listener's haproxy log lines.

    ``listeners`` is the listener registry (``IListenerRegistry``): the collector
    hooks into its config and delete hooks and asks it which listeners exist.
    """

    name = "listener-logs"

    def __init__(self, config, reactor, listeners, hostname: str | None = None):
        self.config = config
        self.reactor = reactor
        self.amphora_id = config.agent.amphora_id
        self.hostname = hostname if hostname is not None else config.hostname
        self.log_dir = config.agent.log_dir
        self.socket_dir = os.path.join(config.agent.run_dir, "logs")
        self.max_bytes = config.logs.max_bytes
        self.backups = config.logs.backups
        self.forwarder = make_forwarder(reactor, config.logs.forward)
        self.listeners = listeners
        self._collectors: dict[str, _Collector] = {}
        for path in (self.log_dir, self.socket_dir):
            try:
                ensure_dir(path, 0o755)
            except OSError as e:  # logging never stops the agent: files/sockets fail later, logged
                log.error("cannot create {path}: {error}; listener logs will be missing", path=path,
                          error=e.strerror or str(e))
        self.attach(listeners)

    # -- wiring ------------------------------------------------------------------

    def attach(self, listeners) -> None:
        """Register the config and delete hooks with ``listeners`` (once)."""
        self.listeners = listeners
        if self.config_hook not in listeners.config_hooks:
            listeners.config_hooks.append(self.config_hook)
        if self.delete_hook not in listeners.delete_hooks:
            listeners.delete_hooks.append(self.delete_hook)

    def startService(self):
        super().startService()
        if self.forwarder is not None:
            self.forwarder.start()
        # haproxy keeps running across agent restarts and keeps sending to the
        # same path: listen again for every listener that exists. When the
        # registry cannot tell, the sockets a previous agent left say which.
        left = set(self._socket_ids())
        known = self._known_listener_ids()
        wanted = left if known is None else set(known)
        for lid in sorted(wanted):
            self.ensure(lid)
        for lid in left - wanted:
            remove_file(self.socket_path(lid))

    def stopService(self):
        super().stopService()
        for lid in list(self._collectors):
            self._close(lid, remove_socket=False)  # the next agent binds the same paths again
        if self.forwarder is None:
            return None
        d = self.forwarder.flushed(1.0)
        d.addCallback(lambda _: self.forwarder.stop())
        return d

    def _known_listener_ids(self) -> list[str] | None:
        try:
            return list(self.listeners.listener_ids())
        except Exception as e:
            log.warn("cannot list listeners for log collection: {error}", error=e)
            return None

    def _exists(self, lid: str) -> bool:
        try:
            return bool(self.listeners.exists(lid))
        except Exception as e:
            log.warn("cannot tell whether listener {lid} exists: {error}", lid=lid, error=e)
            return True

    def _socket_ids(self) -> list[str]:
        try:
            names = os.listdir(self.socket_dir)
        except OSError:
            return []
        return [n[:-5] for n in names if n.endswith(".sock") and is_listener_id(n[:-5])]

    # -- paths ---------------------------------------------------------------------

    def socket_path(self, lid: str) -> str:
        return os.path.join(self.socket_dir, f"{_check_id(lid)}.sock")

    def log_path(self, lid: str) -> str:
        return os.path.join(self.log_dir, f"{_check_id(lid)}.log")

    def _file(self, lid: str) -> RotatingFile:
        return RotatingFile(self.log_path(lid), self.max_bytes, self.backups, self.reactor)

    # -- hooks -----------------------------------------------------------------------

    def haproxy_cwd(self, lid: str) -> str:
        """haproxy's working directory: the listener's run directory (listener manager convention)."""
        return os.path.join(self.config.agent.run_dir, "listeners", _check_id(lid))

    def log_target(self, lid: str) -> str | None:
        """The socket path as haproxy must write it, or None if none fits in sun_path.

        The absolute path when it fits (always, with the default run_dir);
        otherwise the path relative to haproxy's working directory
        (``../../logs/<uuid>.sock``), as the listener manager does for its own sockets.
        """
        path = self.socket_path(lid)
        if len(os.fsencode(path)) <= HAPROXY_PATH_MAX:
            return path
        relative = os.path.relpath(path, self.haproxy_cwd(lid))
        return relative if len(os.fsencode(relative)) <= HAPROXY_PATH_MAX else None

    def config_fragment(self, lid: str) -> str:
        """The haproxy configuration text giving ``lid`` the agent's log target."""
        return (f"global\n"
                f"    # amphora-agent: listener logs (collected, rotated, forwarded by the agent)\n"
                f"    log unix@{self.log_target(lid)} len {LINE_MAX} format rfc5424 {FACILITY}\n")

    def config_hook(self, lid: str) -> str:
        """``listeners.config_hooks`` entry: bind the socket now, return the ``global`` text.

        If the socket cannot be bound the listener runs without agent logging
        (logged); haproxy is never prevented from starting by logging.

        The check of a first upload runs before the listener exists: it gets the
        text (``haproxy -c`` never opens the socket) but nothing is bound, so a
        refused upload leaves no socket or collector behind. The start that
        follows an accepted upload runs this hook again and binds.
        """
        if not self._exists(lid):
            return self.config_fragment(lid) if self.log_target(lid) is not None else ""
        if not self.ensure(lid):
            return ""
        return self.config_fragment(lid)

    def delete_hook(self, lid: str) -> Deferred:
        """``listeners.delete_hooks`` entry: ship the final lines, then remove the files.

        haproxy has stopped when this runs; what it logged last is read from the
        socket at once. The forwarder gets ``DELETE_FLUSH_TIMEOUT`` seconds to
        hand everything to the kernel; after that the files are removed anyway
        and the lines still queued stay queued (sent if the target comes back,
        dropped and counted if the queue overflows first).
        """
        _check_id(lid)
        collector = self._collectors.get(lid)
        if collector is not None:
            collector.read_pending()
            collector.file.flush()
        self._close(lid)
        d = self.forwarder.flushed(DELETE_FLUSH_TIMEOUT) if self.forwarder is not None else succeed(True)

        def remove(flushed):
            if not flushed:
                log.warn("final log lines of listener {lid} not all forwarded within {timeout}s",
                         lid=lid, timeout=DELETE_FLUSH_TIMEOUT)
            self._file(lid).remove()
            remove_file(self.socket_path(lid))
            return None

        return d.addCallback(remove)

    # -- collectors ------------------------------------------------------------------

    def ensure(self, lid: str) -> bool:
        """Listen on ``lid``'s socket unless already listening; False if it cannot."""
        if lid in self._collectors:
            return True
        path = self.socket_path(lid)
        if self.log_target(lid) is None:
            log.error("listener {lid}: log socket path {path} does not fit in a UNIX socket address; "
                      "no agent log collection for it", lid=lid, path=path)
            return False
        dirfd = -1
        try:
            remove_file(path)  # a previous agent's socket: nobody reads it any more
            bind_path = path
            if len(os.fsencode(path)) > SUN_PATH_MAX:
                # too long to bind by name: bind through the directory's descriptor
                dirfd = os.open(self.socket_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                bind_path = f"/proc/self/fd/{dirfd}/{os.path.basename(path)}"
            collector = _Collector(self, lid, self._file(lid))
            collector.port = self.reactor.listenUNIXDatagram(bind_path, collector, maxPacketSize=DATAGRAM_MAX,
                                                             mode=0o666)
        except (OSError, CannotListenError) as e:
            log.error("listener {lid}: cannot listen on log socket {path}: {error}", lid=lid, path=path,
                      error=e)
            return False
        finally:
            if dirfd >= 0:
                os.close(dirfd)
        self._collectors[lid] = collector
        return True

    def _close(self, lid: str, remove_socket: bool = True) -> None:
        collector = self._collectors.pop(lid, None)
        if collector is None:
            return
        collector.file.close()
        if collector.port is not None:
            collector.port.stopListening()
        if remove_socket:
            remove_file(self.socket_path(lid))

    def collecting(self, lid: str) -> bool:
        return lid in self._collectors

    def knows(self, lid: str) -> bool:
        """Whether the agent has logs for ``lid`` (a socket listening or a log file)."""
        return lid in self._collectors or os.path.exists(self.log_path(lid))

    # -- reading ---------------------------------------------------------------------

    def tail(self, lid: str, lines: int) -> bytes:
        """The last ``lines`` lines of ``lid``'s log (current file then backups)."""
        collector = self._collectors.get(lid)
        if collector is not None:
            collector.file.flush()
        return tail_lines(self._file(lid).files(), lines)

    def losses(self, lid: str) -> Losses:
        """What ``lid``'s logs lost since the agent started (GET .../logs shows it as headers)."""
        collector = self._collectors.get(lid)
        return Losses(file_dropped=collector.file.dropped if collector is not None else 0,
                      forward_lost=self.forwarder.lost if self.forwarder is not None else None)


def _check_id(lid: str) -> str:
    """Listener ids become paths here: only canonical UUIDs get that far."""
    if not is_listener_id(lid):
        raise ValueError(f"not a canonical listener UUID: {lid!r}")
    return lid

