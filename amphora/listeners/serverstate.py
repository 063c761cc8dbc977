"""Member health across reloads and stops: haproxy's server-state file, and the runtime API.

After SIGUSR2 a new worker starts with every server UP and sends requests to a
dead member until its first check fails. Before every reload and stop the
agent saves ``show servers state``:

- where the configuration's ``server-state-file`` names (Octavia's templates,
  with ``load-server-state-from-file global`` in ``defaults``: haproxy loads
  it into the new worker itself), resolved like haproxy does
  (``server-state-base``, else the working directory = the run directory);
- else (a v0.1 listener) to the agent's own ``<run_dir>/servers.state``,
  which the agent's fragment declares as ``server-state-file``, so a
  configuration that says ``load-server-state-from-file`` loads it.

A configuration that loads no state file gets the saved states (DOWN, MAINT,
DRAIN) applied to the new worker through the master CLI (``@!<pid>``: that
worker, not the old one still answering on the shared stats socket) as soon
as the reload is confirmed, before it is reported done.

Pure helpers (``state_file``, ``loads_state``, ``commands``) are unit-tested;
``save`` and ``apply`` take the instance.
"""

from __future__ import annotations

import os

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.logger import Logger

from amphora.fsutil import atomic_write, ensure_dir
from amphora.listeners import stats
from amphora.listeners.cfgtext import _config_lines, _text, global_setting

log = Logger()

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
    return any(words[0] == "load-server-state-from-file" and words[1:2] in (["global"], ["local"])
               for _, words in _config_lines(_text(config)))


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
        atomic_write(path, b"1\n", 0o600)
    return f"global\n    server-state-file {path}\n"


def pending(state: bytes | None, config: bytes) -> list[str]:
    """The commands ``apply`` would send a new worker for ``config`` (empty: nothing to push)."""
    if not state or loads_state(config):
        return []
    return commands(state)


@inlineCallbacks
def save(inst):
    """``show servers state`` of the running haproxy to its state file (best effort); the text."""
    config = inst.files.read_config() or inst.files.read_running()
    path = state_file(config, inst.files.run_dir, inst.default_server_state())
    if path is None:
        return None
    try:
        state = yield inst.runtime("show servers state", timeout=5.0)
        state = state if isinstance(state, bytes) else state.encode()
        ensure_dir(os.path.dirname(path), 0o755)
        # under run_dir a runtime file (see atomic_write); a configuration's own file is kept durably
        atomic_write(path, state, 0o600, durable=not _under(path, inst.files.run_dir))
    except Exception as e:  # noqa: BLE001 - a missing state file only costs the members' history
        log.warn("{kind} {lid}: could not save server state to {path}: {error}", kind=inst.kind, lid=inst.id,
                 path=path, error=e)
        return None
    return state


def _under(path: str, directory: str) -> bool:
    return os.path.abspath(path).startswith(os.path.abspath(directory) + os.sep)


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
