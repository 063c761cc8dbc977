"""Atomic state on disk: a crash at any moment leaves the old file or the new one.

These are small local writes; they run in the reactor thread on purpose (a
thread hop would cost more than the write). Anything large or slow must not
use them from a request path.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
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


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path``: temp file in the same directory, fsync, rename, fsync dir."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        tmp = None
        fsync_dir(directory)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


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
