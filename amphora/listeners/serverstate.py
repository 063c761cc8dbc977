"""Member health across reloads: haproxy's server-state file, loaded by the new process.

After SIGUSR2 a new worker starts with every server UP and sends requests to a
dead member until its first check fails. haproxy's answer is a state file
saved with ``show servers state`` before the reload and loaded by the new
process before it handles traffic (``load-server-state-from-file``). The agent:

- saves ``show servers state`` before every reload and stop, to the file the
  configuration names with ``server-state-file`` (Octavia's templates), resolved
  like haproxy does (``server-state-base``, else the working directory = the
  run directory), else to the agent's own ``<run_dir>/servers.state``, which
  the agent's fragment declares as ``server-state-file``;
- before a reload keeps in that file only the servers whose definition is the
  same in the running and the new configuration (``carry``): haproxy would
  otherwise put a changed server back on its old port;
- when the upload does not say ``load-server-state-from-file`` itself, runs it
  with ``load-server-state-from-file global`` added (a marked line) to each
  ``backend`` and ``listen`` section of the running copy (``running_text``;
  the upload is stored and returned as it came). Pushing the states through the
  runtime API instead races the new worker: it serves before any command can
  reach it (measured: 5-8 failed requests per 50 reloads under load, 0 this
  way). That file then only holds states between a reload's save and the
  reload (``forget``: after each reload, before each start, and when a
  restarted agent has adopted haproxy), so a start or a restart after a
  crash begins with every server UP, as without the file;
- a configuration that loads no state file (it says ``none``, or it sets
  ``zero-warning``, under which haproxy refuses to start with a server the
  file sets DOWN) gets the saved states (DOWN, MAINT, DRAIN) through the
  runtime API: on the shared stats socket as soon as /proc shows the new
  worker, and through the master CLI (``@!<pid>``) before the reload is
  reported done. That races the new worker (see above); it is the fallback.

Pure helpers (``state_file``, ``loads_state``, ``running_text``, ``carry``,
``commands``) are unit-tested; ``save``, ``forget`` and ``apply`` take the
instance.
"""

from __future__ import annotations

import os

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.logger import Logger

from amphora.fsutil import atomic_write, ensure_dir
from amphora.listeners import stats
from amphora.listeners.cfgtext import _config_lines, _text, global_setting

log = Logger()

KEYWORD = "load-server-state-from-file"
# the line the agent adds; its comment tells a running copy the agent completed from one it was given
ADDED = f"    {KEYWORD} global  # amphora-agent: member states across reloads"
EMPTY = b"1\n"  # a state file with no server (haproxy warns about a missing or empty one)
# srv_admin_state bits (haproxy include/haproxy/server-t.h)
ADMIN_FMAINT = 0x01
ADMIN_FDRAIN = 0x08
OP_STOPPED = 0
PARALLEL = 4


def state_file(config: bytes | str | None, run_dir: str, default: str | None) -> str | None:
    """Absolute path of the state file the configuration names, else ``default``."""
    path = global_setting(config, "server-state-file") if config else None
    if not path:
        return default
    if not os.path.isabs(path):
        base = global_setting(config, "server-state-base") or run_dir
        path = os.path.join(base, path)
    return path


def loads_state(config: bytes | str | None) -> bool:
    """The configuration loads a state file (``load-server-state-from-file global|local``) somewhere."""
    if not config:
        return False
    return any(words[0] == KEYWORD and words[1:2] in (["global"], ["local"])
               for _, words in _config_lines(_text(config)))


def chooses(config: bytes | str) -> bool:
    """The configuration says ``load-server-state-from-file`` (any value, ``none`` too) itself."""
    return any(words[0] == KEYWORD for _, words in _config_lines(_text(config)))


def running_text(config: bytes, state_path: str | None) -> bytes:
    """What haproxy runs for the upload ``config``: the upload, with ``ADDED`` after each
    ``backend`` / ``listen`` line when it does not choose itself and a state file is declared.
    Not under ``zero-warning``: haproxy warns for each server a state file sets DOWN, and that
    setting makes the warning fatal (measured, haproxy 2.6: the reload fails)."""
    if state_path is None or chooses(config) or global_setting(config, "zero-warning") is not None:
        return config
    text = config.decode("utf-8", "surrogateescape")
    out = []
    for line in text.splitlines(keepends=True):
        out.append(line)
        words = line.split("#", 1)[0].split()
        if words and words[0] in ("backend", "listen"):
            body = line.rstrip("\r\n")
            end = line[len(body):] or "\n"
            if not line.endswith(("\n", "\r")):
                out[-1] = line + end
            out.append(ADDED + end)
    return "".join(out).encode("utf-8", "surrogateescape")


def agent_loads(running: bytes | None) -> bool:
    """The running copy loads the state file because the agent added it (``running_text``)."""
    return bool(running) and ADDED.encode() in running


def server_keys(config: bytes | str | None) -> dict[tuple[str, str], tuple]:
    """(backend, server) -> what defines that server's address, port, TLS and checks: its
    ``server`` line and the ``default-server`` lines of its backend and defaults section."""
    if not config:
        return {}
    defaults: dict[str, tuple] = {}    # named defaults sections; "" = the last unnamed one
    current_defaults: list = []
    sections: list[tuple[str, list, list]] = []  # (backend name, its defaults' lines, its lines)
    section = None
    for kind, words in _config_lines(_text(config)):
        if words[0] == "__section__":
            section = None
            if kind == "defaults":
                name = words[1] if len(words) > 1 and words[1] != "from" else ""
                parent = words[words.index("from") + 1] if "from" in words[1:-1] else None
                current_defaults = list(defaults.get(parent, ())) if parent is not None else []
                defaults[name] = current_defaults
            elif kind in ("backend", "listen") and len(words) > 1:
                parent = words[3] if len(words) > 3 and words[2] == "from" else ""
                section = (words[1], defaults.get(parent, current_defaults if not parent else []), [])
                sections.append(section)
            continue
        if kind == "defaults" and words[0] == "default-server":
            current_defaults.append(tuple(words))
        elif section is not None and words[0] in ("server", "default-server"):
            section[2].append(tuple(words))
    keys = {}
    for name, inherited, lines in sections:
        shared = (tuple(inherited), tuple(w for w in lines if w[0] == "default-server"))
        for words in lines:
            if words[0] == "server" and len(words) > 1:
                keys[(name, words[1])] = (shared, words[2:])
    return keys


def carry(state: bytes | str, old: bytes | str | None, new: bytes | str) -> bytes:
    """``state`` (``show servers state`` of the process running ``old``) keeping only the servers
    defined the same way in ``new``: haproxy applies a saved row's port (and check address, TLS)
    over the configuration's, so a changed server must start from its new definition."""
    text = state.decode("utf-8", "replace") if isinstance(state, bytes) else state
    before, after = server_keys(old), server_keys(new)
    names: list[str] = []
    kept = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or not names and line.strip().isdigit():
            if line.startswith("#"):
                names = line[1:].split()
            kept.append(line)
            continue
        row = dict(zip(names, line.split()))
        key = (row.get("be_name"), row.get("srv_name"))
        if key in before and before[key] == after.get(key):
            kept.append(line)
    return ("\n".join(kept) + "\n").encode() if kept else EMPTY


def commands(state: bytes | str) -> list[str]:
    """Runtime API commands that give a new worker the saved DOWN / MAINT / DRAIN states."""
    text = state.decode("utf-8", "replace") if isinstance(state, bytes) else state
    names: list[str] = []
    result = []
    for line in text.splitlines():
        if line.startswith("#"):
            names = line[1:].split()
            continue
        values = line.split()
        if not names or len(values) < len(names) or not values[0].isdigit():
            continue
        row = dict(zip(names, values))
        try:
            target = f"{row['be_name']}/{row['srv_name']}"
            admin, op = int(row["srv_admin_state"]), int(row["srv_op_state"])
        except (KeyError, ValueError):
            continue
        if admin & ADMIN_FMAINT:
            result.append(f"set server {target} state maint")
        elif admin & ADMIN_FDRAIN:
            result.append(f"set server {target} state drain")
        if op == OP_STOPPED and not admin & ADMIN_FMAINT:
            result.append(f"set server {target} health down")
    return result


def fragment(inst, config: bytes | None) -> str:
    """The agent's fragment's ``server-state-file`` line, unless ``config`` names its own file."""
    if state_file(config, inst.files.run_dir, None):
        return ""
    path = inst.default_server_state()
    if not os.path.exists(path):  # haproxy warns about a missing or empty one
        ensure_dir(os.path.dirname(path), 0o755)
        atomic_write(path, EMPTY, 0o600)
    return f"global\n    server-state-file {path}\n"


def pending(state: bytes | None, config: bytes) -> list[str]:
    """The commands ``apply`` would send a new worker for ``config`` (empty: nothing to push)."""
    if not state or loads_state(config):
        return []
    return commands(state)


@inlineCallbacks
def save(inst, reload_from: bytes | None = None, reload_to: bytes | None = None):
    """``show servers state`` of the running haproxy to its state file (best effort); what was
    written.
    Before a reload from the running copy ``reload_from`` to ``reload_to``, only the servers
    both define the same way are kept (``carry``)."""
    config = reload_to or inst.files.read_config() or inst.files.read_running()
    path = state_file(config, inst.files.run_dir, inst.default_server_state())
    if path is None:
        return None
    try:
        state = yield inst.runtime("show servers state", timeout=5.0)
        state = state if isinstance(state, bytes) else state.encode()
        data = carry(state, reload_from, reload_to) if reload_to is not None else state
        ensure_dir(os.path.dirname(path), 0o755)
        _store(inst, path, data)
    except Exception as e:  # noqa: BLE001 - a missing state file only costs the members' history
        log.warn("{kind} {lid}: could not save server state to {path}: {error}", kind=inst.kind, lid=inst.id,
                 path=path, error=e)
        return None
    return data


def forget(inst, running: bytes | None) -> None:
    """Empty the state file the agent made ``running`` load (``agent_loads``): it is read by the
    reload it was saved for, and a later start or restart must not take old states from it."""
    if not agent_loads(running):
        return
    path = state_file(running, inst.files.run_dir, inst.default_server_state())
    if path is None:
        return
    try:
        _store(inst, path, EMPTY)
    except OSError as e:
        log.warn("{kind} {lid}: could not empty the server state file {path}: {error}", kind=inst.kind,
                 lid=inst.id, path=path, error=e.strerror or e)


def _store(inst, path: str, data: bytes) -> None:
    """A state file under run_dir is a runtime file (see atomic_write); a configuration's own file
    is kept durably."""
    run_dir = os.path.abspath(inst.files.run_dir) + os.sep
    atomic_write(path, data, 0o600, durable=not os.path.abspath(path).startswith(run_dir))


@inlineCallbacks
def apply(inst, state: bytes | None, worker: int, config: bytes):
    """Give the new ``worker`` the saved states when ``config`` does not load them itself."""
    todo = pending(state, config)
    if not todo:
        return
    line = ";".join(f"@!{worker} {c}" for c in todo) + ";quit"
    try:
        answer = yield stats.query(inst.owner.reactor, inst.files.master_socket, line, timeout=5.0)
    except Exception as e:  # noqa: BLE001 - the first check will find the state anyway
        log.warn("{kind} {lid}: could not apply saved server states to worker {pid}: {error}", kind=inst.kind,
                 lid=inst.id, pid=worker, error=e)
        return
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else answer
    if text.strip():
        log.warn("{kind} {lid}: applying saved server states said: {text}", kind=inst.kind, lid=inst.id,
                 text=text.strip()[:500])


@inlineCallbacks
def apply_early(inst, state: bytes | None, worker: int, config: bytes, attempts: int = 50):
    """The same as ``apply`` through the shared stats socket, as soon as the new worker exists
    (before the master CLI answers again): repeated until the new worker itself answered."""
    todo = pending(state, config)
    if not todo:
        return
    line = ";".join(todo) + ";show info"

    def ask(_=None):
        return stats.query(inst.owner.reactor, inst.files.stats_socket, line, timeout=1.0).addErrback(lambda _: b"")
    for _ in range(attempts):
        # a few at once: each lands on whichever worker accepts it first, old or new
        answers = yield DeferredList([ask() for _ in range(PARALLEL)])
        if any(ok and f"\nPid: {worker}\n".encode() in (answer or b"") for ok, answer in answers):
            return
