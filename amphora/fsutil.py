"""Atomic state on disk: a crash at any moment leaves the old file or the new one.

These are small local writes; they run in the reactor thread on purpose (a
thread hop would cost more than the write). Anything large or slow must not
use them from a request path.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()


def fsync_dir(path: str) -> None:
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def fsync_file(path: str) -> None:
    _fsync(path, os.O_RDONLY | os.O_CLOEXEC)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: str, mode: int = 0o755) -> str:
    """Create ``path`` (and parents) if missing, and force its mode."""
    os.makedirs(path, mode=mode, exist_ok=True)
    if (os.stat(path).st_mode & 0o777) != mode:
        os.chmod(path, mode)
    return path


def atomic_write(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write ``data`` to ``path``: temp file in the same directory, fsync, rename, fsync dir.

    The rename alone makes the write atomic for every process (a killed agent
    leaves the old file or the new one); the fsyncs make it survive a power
    loss. ``durable=False`` skips them, for runtime files under run_dir (a
    tmpfs in production; what they describe does not outlive a reboot).
    ``stage_write`` + ``rename_staged`` are its two halves, for a caller that
    does other work between them or fsyncs the directory later.
    """
    rename_staged(stage_write(path, data, mode, durable=durable), path, sync_dir=durable)


def stage_write(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> str:
    """The first half of ``atomic_write``: a temp file next to ``path`` holding ``data`` (fsynced
    unless ``durable=False``); its name. ``rename_staged`` puts it in place, or unlink it."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_file(tmp)
        raise
    os.close(fd)
    return tmp


def rename_staged(tmp: str, path: str, sync_dir: bool = True) -> None:
    """The second half of ``atomic_write``: rename ``tmp`` over ``path`` (and fsync the directory)."""
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_file(tmp)
        raise
    if sync_dir:
        fsync_dir(os.path.dirname(path) or ".")


def remove_file(path: str) -> None:
    """Remove ``path``; a file already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_new(path: str, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (it must not exist) with ``data``, without fsync: a private staging file
    that ``fsync_file`` makes durable before it is renamed into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_json(path: str, obj: Any, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(obj, sort_keys=True, indent=1).encode() + b"\n", mode)


def read_json(path: str, default: Any = None) -> Any:
    """The JSON document at ``path``, or ``default`` if it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return default
    except (OSError, ValueError):
        return default


class StateProblem(str):
    """Why a state file could not be used (a ``str``: the reason, naming the file and where it went)."""


def move_aside(path: str, now: Callable[[], float] = time.time) -> str | None:
    """Rename ``path`` to ``<path>.corrupt-<UTC time>`` (unique); the new path, or None if it is gone."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now()))
    target, n = f"{path}.corrupt-{stamp}", 1
    while os.path.lexists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    try:
        fsync_dir(os.path.dirname(path) or ".")
    except OSError:
        pass
    return target


def read_state(path: str, valid: Any = dict, default: Any = None, parse: Callable[[bytes], Any] = json.loads,
               now: Callable[[], float] = time.time) -> tuple[Any, StateProblem | None]:
    """Read a typed state file: ``(value, None)``, ``(default, None)`` when it is missing, or
    ``(default, problem)`` when it cannot be used.

    ``valid`` is a type (or tuple of types) the parsed value must have, or a
    callable returning None when the value is usable and else the reason.
    ``parse`` turns the bytes into the value (JSON by default; raise ValueError
    for bytes that are not one). A file that cannot be read, parsed or
    validated is moved aside (``<path>.corrupt-<time>``), so it is logged once
    and never read again; the problem names both paths.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return default, None
    except OSError as e:
        reason = f"unreadable: {e.strerror or e}"
    else:
        try:
            value = parse(data)
        except (ValueError, UnicodeDecodeError) as e:
            reason = f"not parseable: {e}"
        else:
            if isinstance(valid, (type, tuple)):
                bad = isinstance(value, bool) and bool not in (valid if isinstance(valid, tuple) else (valid,))
                reason = None if isinstance(value, valid) and not bad else \
                    f"holds {type(value).__name__}, expected {_type_names(valid)}"
            else:
                reason = valid(value)
            if reason is None:
                return value, None
    moved = move_aside(path, now)
    problem = StateProblem(f"state file {path} {reason}; moved aside to {moved}" if moved
                           else f"state file {path} {reason}")
    log.error("{problem}", problem=problem)
    return default, problem


def _type_names(valid) -> str:
    types = valid if isinstance(valid, tuple) else (valid,)
    return " or ".join(t.__name__ for t in types)
