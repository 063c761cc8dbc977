"""Where a listener's files live, and the only code that writes or removes them.

Layout (DESIGN.md section 5)::

    <state_dir>/listeners/<uuid>/haproxy.cfg    the upload, byte for byte (GET returns it)
    <state_dir>/listeners/<uuid>/running.cfg    what haproxy runs: the last configuration
                                                that started or reloaded successfully
    <state_dir>/listeners/<uuid>/desired.json   {"desired": "started" | "stopped"}
    <run_dir>/listeners/<uuid>/agent.cfg        the agent's own fragment (first -f)
    <run_dir>/listeners/<uuid>/haproxy.pid      master pid (-p)
    <run_dir>/listeners/<uuid>/stats.sock       admin runtime API
    <run_dir>/listeners/<uuid>/master.sock      master CLI (-S)
    <certs_dir>/<uuid>/                         certificates (owned by amphora.certificates)

Every path is built from an id that ``amphora.api.params.listener_id`` (or
``is_listener_id`` here) accepted, so nothing a client sends can point outside
these directories.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from amphora.errors import InvalidRequest
from amphora.fsutil import atomic_write, atomic_write_json, ensure_dir, fsync_dir, read_json
from amphora.listeners.haproxy import MASTER_SOCKET, STATS_SOCKET

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

STARTED = "started"
STOPPED = "stopped"


def is_listener_id(text: str) -> bool:
    """A canonical (lower-case, hyphenated) UUID: the only form a listener id takes."""
    return isinstance(text, str) and _UUID.fullmatch(text) is not None


def check_listener_id(raw: object) -> str:
    """``raw`` if it is a listener id, else the 400 that names what was sent."""
    if not is_listener_id(raw):
        raise InvalidRequest(f"Invalid listener id: {raw!r} is not a canonical UUID")
    return raw


class ListenerStore:
    def __init__(self, state_dir: str, run_dir: str, certs_dir: str):
        self.state_root = os.path.join(state_dir, "listeners")
        self.run_root = os.path.join(run_dir, "listeners")
        self.certs_root = certs_dir
        ensure_dir(self.state_root, 0o755)
        ensure_dir(self.run_root, 0o755)

    # -- paths ----------------------------------------------------------------------

    def _id(self, lid: str) -> str:
        if not is_listener_id(lid):
            raise ValueError(f"not a canonical listener UUID: {lid!r}")
        return lid

    def state_dir(self, lid: str) -> str:
        return os.path.join(self.state_root, self._id(lid))

    def run_dir(self, lid: str) -> str:
        return os.path.join(self.run_root, self._id(lid))

    def certs_dir(self, lid: str) -> str:
        return os.path.join(self.certs_root, self._id(lid))

    def config_path(self, lid: str) -> str:
        return os.path.join(self.state_dir(lid), "haproxy.cfg")

    def running_path(self, lid: str) -> str:
        return os.path.join(self.state_dir(lid), "running.cfg")

    def desired_path(self, lid: str) -> str:
        return os.path.join(self.state_dir(lid), "desired.json")

    def fragment_path(self, lid: str) -> str:
        return os.path.join(self.run_dir(lid), "agent.cfg")

    def pid_path(self, lid: str) -> str:
        return os.path.join(self.run_dir(lid), "haproxy.pid")

    def stats_socket(self, lid: str) -> str:
        return os.path.join(self.run_dir(lid), STATS_SOCKET)

    def master_socket(self, lid: str) -> str:
        return os.path.join(self.run_dir(lid), MASTER_SOCKET)

    # -- discovery -------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Listeners with a configuration, a pid file or a stats socket (the spec's rule)."""
        found = set()
        for root, markers in ((self.state_root, ("haproxy.cfg",)),
                              (self.run_root, ("haproxy.pid", "stats.sock"))):
            try:
                entries = os.listdir(root)
            except OSError:
                continue
            for entry in entries:
                if is_listener_id(entry) and any(
                        os.path.exists(os.path.join(root, entry, m)) for m in markers):
                    found.add(entry)
        return sorted(found)

    # -- configuration -----------------------------------------------------------------

    def read_config(self, lid: str) -> bytes | None:
        return _read(self.config_path(lid))

    def read_running(self, lid: str) -> bytes | None:
        return _read(self.running_path(lid))

    def stage_upload(self, lid: str, data: bytes) -> tuple[str, bool]:
        """Write ``data`` to a private candidate file; returns (candidate path, created the dir)."""
        directory = self.state_dir(lid)
        created = not os.path.isdir(directory)
        ensure_dir(directory, 0o755)
        staging = tempfile.mkdtemp(prefix=".upload-", dir=directory)
        candidate = os.path.join(staging, "haproxy.cfg")
        atomic_write(candidate, data, 0o644)
        return candidate, created

    def commit_upload(self, lid: str, candidate: str) -> None:
        """Move a checked candidate into place (atomic rename in the same directory tree)."""
        target = self.config_path(lid)
        os.replace(candidate, target)
        fsync_dir(os.path.dirname(target))
        self.discard_upload(lid, candidate, created=False)

    def discard_upload(self, lid: str, candidate: str, created: bool) -> None:
        staging = os.path.dirname(candidate)
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            for path in (self.state_dir(lid), self.run_dir(lid)):
                try:
                    shutil.rmtree(path) if _only_agent_files(path) else None
                except OSError:
                    pass

    def write_running(self, lid: str, data: bytes) -> None:
        atomic_write(self.running_path(lid), data, 0o644)

    def write_fragment(self, lid: str, text: str) -> str:
        ensure_dir(self.run_dir(lid), 0o755)
        path = self.fragment_path(lid)
        data = text.encode()
        if _read(path) != data:
            atomic_write(path, data, 0o644)
        return path

    # -- desired state ---------------------------------------------------------------------

    def desired(self, lid: str) -> str | None:
        doc = read_json(self.desired_path(lid), {}) or {}
        value = doc.get("desired")
        return value if value in (STARTED, STOPPED) else None

    def set_desired(self, lid: str, value: str) -> None:
        if self.desired(lid) != value:
            atomic_write_json(self.desired_path(lid), {"desired": value})

    # -- run files ---------------------------------------------------------------------------

    def read_pid(self, lid: str) -> int | None:
        data = _read(self.pid_path(lid))
        try:
            return int(data.split()[0]) if data else None
        except (ValueError, IndexError):
            return None

    def clear_run_files(self, lid: str) -> None:
        """Pid file and sockets of a haproxy that is gone (haproxy leaves them behind)."""
        for path in (self.pid_path(lid), self.stats_socket(lid), self.master_socket(lid)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def remove(self, lid: str) -> list[str]:
        """Remove everything of the listener; returns what could not be removed."""
        errors = []
        for path in (self.state_dir(lid), self.run_dir(lid), self.certs_dir(lid)):
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                errors.append(f"{path}: {e.strerror}")
        for root in (self.state_root, self.run_root):
            try:
                fsync_dir(root)
            except OSError:
                pass
        return errors


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _only_agent_files(path: str) -> bool:
    """True when ``path`` holds nothing but what a failed first upload leaves (fragment, nothing)."""
    try:
        return all(name in ("agent.cfg",) for name in os.listdir(path))
    except OSError:
        return False
