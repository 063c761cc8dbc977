"""A 1.0 load balancer: one haproxy whose frontends are Octavia listeners.

The second kind of :class:`~amphora.listeners.instance.HaproxyInstance`. The
configuration is the one Octavia's controller renders (spec section 5), run
as uploaded, byte for byte:

- its absolute paths are made real: ``<base_path>/<lb>/`` (``server-state-file``),
  ``<base_path>`` (its own ``<lb>.sock`` stats socket), ``<cert_dir>/<lb>/``
  (certificates and crt-lists); they are removed with the load balancer;
- ``daemon`` is neutralised by the command line (``-W -db``: master-worker in
  the foreground, supervised by the agent), ``user nobody`` drops the workers'
  privileges as haproxy does;
- ``-L <peer name>`` (Octavia's: from the amphora id) on the check and the run,
  for the peers section of ACTIVE_STANDBY configurations;
- haproxy raises its own file-descriptor limit to what ``maxconn`` needs, up to
  the hard limit it inherits. When ``maxconn`` needs more than that (Octavia asks
  for ~375,000 connections; hosts often allow ~20,000 descriptors), haproxy 2.6
  refuses to start; the agent's fragment then says ``no strict-limits`` and the
  effective connection limit is logged and kept in ``limits`` (``show info``);
- before a reload or a stop, ``show servers state`` is saved to the file the
  configuration names with ``server-state-file`` (Octavia's behaviour: the new
  process starts with the members' known health instead of all UP).

Files: ``<state_dir>/loadbalancers/<lb>/`` (haproxy.cfg, running.cfg,
desired.json, peer.json), ``<run_dir>/loadbalancers/<lb>/`` (fragment, pid,
the agent's sockets).
"""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import resource

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from amphora.errors import LoadBalancerNotFound
from amphora.fsutil import atomic_write_json, ensure_dir, read_json
from amphora.listeners.cfgtext import frontends, global_setting
from amphora.listeners.instance import HaproxyInstance

log = Logger()

LOADBALANCER = "loadbalancer"
DROP_GROUP = "nogroup"
# haproxy's maxsock is 2 x maxconn plus a few descriptors per listener, log target and socket.
FD_RESERVE = 100


def peer_name(amphora_id: str) -> str:
    """Octavia's peer name of an amphora: base64 (``_-`` for ``+/``) of SHA-1, no ``=``, no leading ``-``."""
    digest = hashlib.sha1(amphora_id.encode("utf-8")).digest()
    name = base64.b64encode(digest, altchars=b"_-").decode("ascii").rstrip("=")
    return "x" + name[1:] if name.startswith("-") else name


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def fd_hard_limit() -> int:
    """The hard RLIMIT_NOFILE haproxy inherits from the agent (-1: unlimited)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


def needs_relaxed_limits(config: bytes | str, hard_limit: int) -> bool:
    """Whether the global ``maxconn`` needs more descriptors than ``hard_limit`` allows."""
    raw = global_setting(config, "maxconn")
    try:
        maxconn = int(raw) if raw else 0
    except ValueError:
        return False
    return hard_limit >= 0 and 2 * maxconn + FD_RESERVE > hard_limit


def connection_limits(info: dict[str, str]) -> dict | None:
    """From ``show info``: maxconn, the descriptor limit and the connections those allow."""
    try:
        maxconn, maxsock, ulimit = (int(info[k]) for k in ("Maxconn", "Maxsock", "Ulimit-n"))
    except (KeyError, ValueError):
        return None
    overhead = max(0, maxsock - 2 * maxconn)
    return {"maxconn": maxconn, "fd_limit": ulimit,
            "effective_maxconn": max(0, min(maxconn, (ulimit - overhead) // 2))}


def parse_show_info(answer: bytes | str) -> dict[str, str]:
    if isinstance(answer, bytes):
        answer = answer.decode("utf-8", "replace")
    info = {}
    for line in answer.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


class LoadBalancerInstance(HaproxyInstance):
    kind = LOADBALANCER

    def __init__(self, owner, iid, files, base_path: str):
        super().__init__(owner, iid, files)
        self.base_path = base_path
        self.limits: dict | None = None   # from show info after the last start or reload
        self._pending_peer: str | None = None  # during the check of an upload

    # -- identity and files -------------------------------------------------------------------

    @property
    def peer_path(self) -> str:
        return os.path.join(self.files.state_dir, "peer.json")

    def peer_name(self) -> str:
        if self._pending_peer:
            return self._pending_peer
        doc = read_json(self.peer_path, {}) or {}
        name = doc.get("peer_name") if isinstance(doc, dict) else None
        return name if isinstance(name, str) and name else peer_name(self.owner.config.agent.amphora_id)

    @inlineCallbacks
    def upload_for(self, amphora_id: str, data: bytes):
        """Check (with ``-L`` = this amphora's peer name) and store; the peer name is kept for runs."""
        name = peer_name(amphora_id)
        self._pending_peer = name
        try:
            yield self.upload(data)
        except BaseException:
            if not self.known:  # a refused first upload leaves nothing behind
                try:
                    os.rmdir(os.path.join(self.base_path, self.id))
                except OSError:
                    pass
            raise
        finally:
            self._pending_peer = None
        if (read_json(self.peer_path, {}) or {}) != {"peer_name": name}:
            atomic_write_json(self.peer_path, {"peer_name": name})

    def extra_paths(self) -> tuple:
        return (os.path.join(self.base_path, self.id), os.path.join(self.base_path, f"{self.id}.sock"))

    def frontends(self, running: bool = False) -> list[tuple[str, str]]:
        """(listener id, type) of each frontend of the stored (or running) configuration."""
        data = (self.files.read_running() if running else None) or self.files.read_config() \
            or self.files.read_running()
        return frontends(data) if data else []

    # -- what the kind changes ------------------------------------------------------------------

    def not_found(self) -> Exception:
        return LoadBalancerNotFound(self.id)

    def check_args(self) -> list[str]:
        return ["-L", self.peer_name()]

    def fragment_extras(self, config: bytes | None = None) -> list[str]:
        config = config or self.files.read_config() or self.files.read_running() or b""
        extras = []
        if needs_relaxed_limits(config, fd_hard_limit()):
            extras.append("global\n    # maxconn needs more file descriptors than the host allows: start anyway\n"
                          "    no strict-limits\n")
        if global_setting(config, "user") and global_setting(config, "group") is None and _group_exists(DROP_GROUP):
            # As Octavia's agent does (its user/group file): workers that drop to "user nobody"
            # must not keep the root group.
            extras.append(f"global\n    group {DROP_GROUP}\n")
        return extras

    def prepare(self, config: bytes) -> None:
        ensure_dir(self.base_path, 0o755)
        ensure_dir(os.path.join(self.base_path, self.id), 0o755)
        ensure_dir(os.path.dirname(self.files.certs_dir), 0o700)
        ensure_dir(self.files.certs_dir, 0o700)

    def check_timeout(self) -> float:
        return self.owner.lb_check_timeout

    def start_timeout(self) -> float:
        return max(self.owner.config.haproxy.start_timeout, self.owner.lb_check_timeout)

    def reload_timeout(self) -> float:
        return max(self.owner.reload_timeout, self.owner.lb_check_timeout)

    def started_text(self, output: str, pid: int) -> str:
        return f"Configuration file is valid\nhaproxy daemon for {self.id} started"

    def already_running_text(self) -> str:
        return self.started_text("", self.proc.pid)

    def stopped_text(self, pid: int | None) -> str:
        return f"Listener {self.id} stoped"  # sic: Octavia's agent's words

    def reloaded_text(self, output: str, worker: int) -> str:
        return f"Listener {self.id} reloaded"

    # -- server state and limits ----------------------------------------------------------------

    def default_server_state(self) -> str | None:
        return None  # only where the configuration names one (Octavia's templates do)

    @inlineCallbacks
    def start(self, source=None, message="Error starting haproxy"):
        text = yield super().start(source, message)
        yield self.measure_limits()
        return text

    @inlineCallbacks
    def reload(self):
        text = yield super().reload()
        yield self.measure_limits()
        return text

    @inlineCallbacks
    def restore(self):
        yield super().restore()
        yield self.measure_limits()  # an adopted haproxy: its limits were measured by the last agent

    @inlineCallbacks
    def measure_limits(self):
        """Ask haproxy for its connection and descriptor limits; log them when they are short."""
        if not self.running:
            return
        try:
            answer = yield self.runtime("show info", timeout=5.0)
        except Exception as e:  # noqa: BLE001 - figures only
            log.warn("loadbalancer {lid}: show info failed: {error}", lid=self.id, error=e)
            return
        limits = connection_limits(parse_show_info(answer))
        if limits is None:
            return
        if limits != self.limits:
            short = limits["effective_maxconn"] < limits["maxconn"]
            (log.warn if short else log.info)(
                "loadbalancer {lid}: effective connection limit {effective} (maxconn {maxconn}, "
                "file descriptor limit {fd_limit}{why})", lid=self.id, effective=limits["effective_maxconn"],
                maxconn=limits["maxconn"], fd_limit=limits["fd_limit"],
                why="; the host's hard limit is lower than maxconn needs" if short else "")
        self.limits = limits
