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
    <run_dir>/listeners/<uuid>/loaded.sha256    digest of the running.cfg the process runs (after a
                                                confirmed start or reload; reconciled at agent start)
    <run_dir>/listeners/<uuid>/servers.state    ``show servers state`` saved before a reload or stop
    <state_dir>/listeners/.deleting-<uuid>/     a delete in progress (the renamed state directory):
                                                the listener is gone; the next start finishes it
    <certs_dir>/<uuid>/                         certificates (owned by amphora.certificates)

A 1.0 load balancer keeps the same files under ``loadbalancers/`` instead of
``listeners/`` (plus ``peer.json``), its certificates under
``[octavia] base_cert_dir/<uuid>/`` (see ``amphora.listeners.loadbalancer``).

Every path is built from an id that ``amphora.api.params.listener_id`` (or
``is_listener_id`` here) accepted, so nothing a client sends can point outside
these directories.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile

from twisted.logger import Logger

from amphora.errors import InvalidRequest
from amphora.fsutil import (StateProblem, atomic_write, ensure_dir, fsync_dir, fsync_file, read_state, remove_file,
                            rename_staged, stage_write, write_new)
from amphora.listeners.haproxy import MASTER_SOCKET, STATS_SOCKET

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

log = Logger()

STARTED = "started"
STOPPED = "stopped"
DELETING = ".deleting-"


def is_listener_id(text: str) -> bool:
    """A canonical (lower-case, hyphenated) UUID: the only form a listener id takes."""
    return isinstance(text, str) and _UUID.fullmatch(text) is not None


def check_listener_id(raw: object) -> str:
    """``raw`` if it is a listener id, else the 400 that names what was sent."""
    if not is_listener_id(raw):
        raise InvalidRequest(f"Invalid listener id: {raw!r} is not a canonical UUID")
    return raw


class InstanceFiles:
    """The files of one haproxy instance: its state directory, run directory and certificates.

    Both kinds of instance (a v0.1 listener, a 1.0 load balancer) keep the
    same files, each kind under its own roots (see ``ListenerStore.files``).
    """

    def __init__(self, state_dir: str, run_dir: str, certs_dir: str):
        self.state_dir = state_dir
        self.run_dir = run_dir
        self.certs_dir = certs_dir
        self.config_path = os.path.join(state_dir, "haproxy.cfg")
        self.running_path = os.path.join(state_dir, "running.cfg")
        self.desired_path = os.path.join(state_dir, "desired.json")
        self.fragment_path = os.path.join(run_dir, "agent.cfg")
        self.pid_path = os.path.join(run_dir, "haproxy.pid")
        self.stats_socket = os.path.join(run_dir, STATS_SOCKET)
        self.master_socket = os.path.join(run_dir, MASTER_SOCKET)
        self.loaded_path = os.path.join(run_dir, "loaded.sha256")
        self.server_state_path = os.path.join(run_dir, "servers.state")
        self.deleting_path = os.path.join(os.path.dirname(state_dir), DELETING + os.path.basename(state_dir))

    def exists(self) -> bool:
        """The spec's rule: a configuration, a pid file or a stats socket."""
        return any(os.path.exists(p) for p in (self.config_path, self.pid_path, self.stats_socket))

    # -- configuration -----------------------------------------------------------------

    def read_config(self) -> bytes | None:
        return _read(self.config_path)

    def read_running(self) -> bytes | None:
        return _read(self.running_path)

    def stage_upload(self, data: bytes) -> tuple[str, bool]:
        """Write ``data`` to a private candidate file; returns (candidate path, created the dir)."""
        created = not os.path.isdir(self.state_dir)
        ensure_dir(self.state_dir, 0o755)
        staging = tempfile.mkdtemp(prefix=".upload-", dir=self.state_dir)
        candidate = os.path.join(staging, "haproxy.cfg")
        # A private directory nobody reads: no rename needed here, and its data is fsynced
        # (``sync_candidate``, meanwhile haproxy checks it) before the commit renames it in.
        write_new(candidate, data, 0o644)
        return candidate, created

    @staticmethod
    def sync_candidate(candidate: str) -> None:
        fsync_file(candidate)

    def commit_upload(self, candidate: str) -> None:
        """Move a checked and synced candidate into place (atomic rename in the same directory
        tree), durably."""
        os.replace(candidate, self.config_path)
        fsync_dir(self.state_dir)
        self.discard_upload(candidate, created=False)

    def discard_upload(self, candidate: str, created: bool) -> None:
        shutil.rmtree(os.path.dirname(candidate), ignore_errors=True)
        if created:
            for path in (self.state_dir, self.run_dir):
                try:
                    shutil.rmtree(path) if _only_agent_files(path) else None
                except OSError:
                    pass

    def write_running(self, data: bytes) -> None:
        atomic_write(self.running_path, data, 0o644)

    # ``write_running`` in steps (a reload): a synced temp file, then its rename, then the
    # directory's fsync, the latter before the write is reported done.

    def stage_running(self, data: bytes) -> str:
        return stage_write(self.running_path, data, 0o644)

    def commit_running(self, staged: str) -> None:
        rename_staged(staged, self.running_path, sync_dir=False)

    def discard_staged(self, staged: str) -> None:
        remove_file(staged)

    def sync_state_dir(self) -> None:
        fsync_dir(self.state_dir)

    def write_fragment(self, text: str) -> str:
        ensure_dir(self.run_dir, 0o755)
        data = text.encode()
        if _read(self.fragment_path) != data:
            atomic_write(self.fragment_path, data, 0o644, durable=False)  # run_dir: see atomic_write
        return self.fragment_path

    def check_key(self, config_path: str, fragment: str):
        """What a ``haproxy -c`` result depends on: the bytes checked, and the certificates' state
        (None when a file cannot be read: nothing to cache)."""
        try:
            with open(config_path, "rb") as f:
                config = f.read()
            with open(fragment, "rb") as f:
                frag = f.read()
        except OSError:
            return None
        certs = []
        try:
            for entry in sorted(os.scandir(self.certs_dir), key=lambda e: e.name):
                st = entry.stat()
                certs.append((entry.name, st.st_mtime_ns, st.st_size))
        except OSError:
            pass
        return (hashlib.sha256(config).hexdigest(), hashlib.sha256(frag).hexdigest(), tuple(certs))

    # -- desired state ---------------------------------------------------------------------

    def desired_state(self) -> tuple[str | None, StateProblem | None]:
        """(``started`` | ``stopped`` | None when never set, the problem when the file was unusable)."""
        def valid(doc):
            if not isinstance(doc, dict) or doc.get("desired") not in (STARTED, STOPPED):
                return f"holds {doc!r:.60}, not {{\"desired\": \"started\" | \"stopped\"}}"
            return None
        doc, problem = read_state(self.desired_path, valid, {})
        return doc.get("desired"), problem

    def desired(self) -> str | None:
        return self.desired_state()[0]

    def set_desired(self, value: str) -> None:
        if _read(self.desired_path) != _desired_bytes(value):
            atomic_write(self.desired_path, _desired_bytes(value))

    # -- run files ---------------------------------------------------------------------------

    def pid_state(self) -> tuple[int | None, StateProblem | None]:
        """The master pid from the pid file (None if there is none), and the problem if it was garbled."""
        def parse(data: bytes) -> int:
            words = data.split()
            if not words:
                raise ValueError("empty")
            return int(words[0])
        return read_state(self.pid_path, lambda pid: None if pid > 1 else f"names pid {pid}", None, parse=parse)

    def read_pid(self) -> int | None:
        return self.pid_state()[0]

    def write_pid(self, pid: int) -> None:
        atomic_write(self.pid_path, f"{pid}\n".encode(), 0o644)

    def running_source(self) -> tuple[str | None, StateProblem | None]:
        """The path of a usable ``running.cfg`` (None if there is none) and the problem if it was not
        usable (empty: moved aside)."""
        data, problem = read_state(self.running_path, lambda b: None if b.strip() else "is empty", None,
                                   parse=bytes)
        return (self.running_path if data is not None else None), problem

    def loaded_digest(self) -> str | None:
        data = _read(self.loaded_path)
        return data.decode("ascii", "replace").strip() if data else None

    def record_loaded(self, config: bytes) -> None:
        """Note which configuration the process runs now (run_dir: never the full state_dir)."""
        digest = hashlib.sha256(config).hexdigest()
        if self.loaded_digest() != digest:
            atomic_write(self.loaded_path, digest.encode() + b"\n", 0o644, durable=False)

    def clear_run_files(self) -> None:
        """Pid file and sockets of a haproxy that is gone (haproxy leaves them behind)."""
        for path in (self.pid_path, self.stats_socket, self.master_socket):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def mark_deleting(self) -> None:
        """The point of no return of a delete: one rename makes the instance gone (``ids()`` skips it,
        its upload is no longer where GET looks); the next agent start finishes what remains."""
        if os.path.isdir(self.deleting_path):
            return
        try:
            os.rename(self.state_dir, self.deleting_path)
        except FileNotFoundError:
            os.mkdir(self.deleting_path, 0o700)
        fsync_dir(os.path.dirname(self.state_dir))

    def remove(self, extra: tuple = ()) -> list[str]:
        """Remove everything of the instance (and ``extra`` paths); returns what could not be removed.

        Order: the state directory is renamed to the deletion mark first (gone), the mark is removed
        last, so a kill at any point leaves an instance that is either still there or being deleted.
        """
        errors = []
        try:
            self.mark_deleting()
        except OSError as e:
            return [f"{self.state_dir}: {e.strerror}"]
        for path in (self.run_dir, self.certs_dir, *extra, self.state_dir, self.deleting_path):
            try:
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                errors.append(f"{path}: {e.strerror}")
        for path in (self.state_dir, self.run_dir):
            try:
                fsync_dir(os.path.dirname(path))
            except OSError:
                pass
        return errors

    def sweep(self) -> None:
        """Remove what interrupted writes and failed first uploads leave (agent start)."""
        for directory in (self.state_dir, self.run_dir, self.certs_dir):
            try:
                entries = os.listdir(directory)
            except OSError:
                continue
            for name in entries:
                if name.startswith((".upload-", ".tmp-")):
                    path = os.path.join(directory, name)
                    log.info("removing staging leftover {path}", path=path)
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else remove_file(path)
        if not os.path.exists(self.config_path) and not os.path.exists(self.pid_path):
            for directory in (self.state_dir, self.run_dir, self.certs_dir):
                if _only_agent_files(directory):
                    shutil.rmtree(directory, ignore_errors=True)


class ListenerStore:
    """Where instances' files live: ``files(id)`` for one; ``ids()`` finds those that exist.

    ``kind`` names the subdirectory of state_dir and run_dir ("listeners" for
    v0.1 listeners); the lid-taking methods are kept for callers and tests
    that address files by id.
    """

    def __init__(self, state_dir: str, run_dir: str, certs_dir: str, kind: str = "listeners"):
        self.state_root = os.path.join(state_dir, kind)
        self.run_root = os.path.join(run_dir, kind)
        self.certs_root = certs_dir
        ensure_dir(self.state_root, 0o755)
        ensure_dir(self.run_root, 0o755)

    def _id(self, lid: str) -> str:
        if not is_listener_id(lid):
            raise ValueError(f"not a canonical listener UUID: {lid!r}")
        return lid

    def files(self, lid: str) -> InstanceFiles:
        lid = self._id(lid)
        return InstanceFiles(os.path.join(self.state_root, lid), os.path.join(self.run_root, lid),
                             os.path.join(self.certs_root, lid))

    def ids(self) -> list[str]:
        """Instances with a configuration, a pid file or a stats socket (the spec's rule), except
        those being deleted."""
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
        return sorted(found - set(self.deleting_ids()))

    def deleting_ids(self) -> list[str]:
        """Instances whose delete was interrupted (the next start finishes it)."""
        try:
            entries = os.listdir(self.state_root)
        except OSError:
            return []
        return sorted(e[len(DELETING):] for e in entries
                      if e.startswith(DELETING) and is_listener_id(e[len(DELETING):]))

    def sweep(self) -> None:
        """Staging leftovers of every instance (agent start, before restore)."""
        seen = set()
        for root in (self.state_root, self.run_root, self.certs_root):
            try:
                seen.update(e for e in os.listdir(root) if is_listener_id(e))
            except OSError:
                pass
        for lid in sorted(seen):
            self.files(lid).sweep()

    # -- by id (for callers that address one file) -------------------------------------------

    def state_dir(self, lid: str) -> str:
        return self.files(lid).state_dir

    def run_dir(self, lid: str) -> str:
        return self.files(lid).run_dir

    def config_path(self, lid: str) -> str:
        return self.files(lid).config_path

    def stats_socket(self, lid: str) -> str:
        return self.files(lid).stats_socket

    def read_config(self, lid: str) -> bytes | None:
        return self.files(lid).read_config()

    def read_running(self, lid: str) -> bytes | None:
        return self.files(lid).read_running()

    def read_pid(self, lid: str) -> int | None:
        return self.files(lid).read_pid()

    def desired(self, lid: str) -> str | None:
        return self.files(lid).desired()

    def set_desired(self, lid: str, value: str) -> None:
        self.files(lid).set_desired(value)

    def stage_upload(self, lid: str, data: bytes) -> tuple[str, bool]:
        return self.files(lid).stage_upload(data)

    def commit_upload(self, lid: str, candidate: str) -> None:
        self.files(lid).commit_upload(candidate)

    def remove(self, lid: str) -> list[str]:
        return self.files(lid).remove()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _only_agent_files(path: str) -> bool:
    """True when ``path`` holds nothing but what a failed first upload leaves (fragment, nothing)."""
    try:
        return all(name in ("agent.cfg", "servers.state") or name.startswith((".tmp-", ".upload-")) for name in os.listdir(path))
    except OSError:
        return False



def _desired_bytes(value: str) -> bytes:
    return f'{{\n "desired": "{value}"\n}}\n'.encode()
