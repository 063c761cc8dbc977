"""A listener's log file: buffered appends on Twisted's ``LogFile``, drop counting, tail reading.

Rotation by size and the number of backups kept are ``twisted.python.logfile.LogFile``'s
(``path`` -> ``path.1`` -> ... -> ``path.<backups>``, the oldest removed). What is
ours: lines are buffered in memory and written in batches (never a write per
line), a file is rotated *before* a line would take it past ``max_bytes``
(LogFile's own rule rotates after), ``backups = 0`` keeps no old file, write
errors drop and count lines without raising, and ``tail_lines`` reads the last
lines from the end of the files.
"""

from __future__ import annotations

import os

from twisted.logger import Logger
from twisted.python.logfile import LogFile

from amphora.fsutil import remove_file

log = Logger()

#: Pending file bytes are written at most this many seconds after they arrive...
FLUSH_DELAY = 0.2
#: ...or as soon as this many bytes are pending.
FLUSH_BYTES = 64 * 1024


class _LogFile(LogFile):
    """``LogFile`` with the agent's rotation rule and file creation.

    - rotates before a write that would take a non-empty file past ``rotateLength``
      (so no file is larger than that, except one holding a single larger write);
    - ``maxRotatedFiles = 0`` keeps no backup (LogFile would still keep ``.1``);
    - opens the file for appending (``O_APPEND``, as the agent always did; LogFile
      opens ``rb+`` and seeks) and creates it with ``os.open(..., mode)`` (the
      process umask applies) instead of LogFile's temporary process-wide
      ``umask(0o777)``, which would race with files other threads create.
    """

    _incoming = 0

    def __init__(self, path: str, max_bytes: int, backups: int, mode: int):
        self._mode = mode
        directory, name = os.path.split(path)
        super().__init__(name, directory, rotateLength=max_bytes, maxRotatedFiles=backups)

    def _openFile(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._mode)
        try:
            self._file = open(fd, "ab", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        self.closed = False
        self.size = os.fstat(fd).st_size

    def shouldRotate(self):
        return self.size > 0 and self.size + self._incoming > self.rotateLength

    def write(self, data: bytes) -> None:
        self._incoming = len(data)
        super().write(data)

    def rotate(self):
        super().rotate()
        if not self.maxRotatedFiles:
            remove_file(f"{self.path}.1")


class RotatingFile:
    """Buffered appends to ``path``, rotated at ``max_bytes`` keeping ``backups`` files.

    ``append`` never raises and never blocks on more than a local ``write``:
    lines are pending in memory until a flush (``FLUSH_DELAY`` after the first
    pending line, or at once past ``FLUSH_BYTES``). Write errors (ENOSPC, EACCES,
    EROFS...) drop the pending lines, count them in ``dropped`` and are logged
    once until a write succeeds again. The file is opened at the first flush.
    """

    def __init__(self, path: str, max_bytes: int, backups: int, clock, mode: int = 0o640):
        self.path, self.max_bytes, self.backups, self.mode = path, max_bytes, backups, mode
        self.clock = clock
        self.dropped = 0
        self._file: _LogFile | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer = None
        self._failing = False
        self._dropped_at_failure = 0
        self._batch_written = 0

    def append(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(FLUSH_DELAY, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def flush(self) -> None:
        """Write every pending line now (rotating as needed)."""
        self._cancel_timer()
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        self._batch_written = 0
        try:
            self._write_lines(pending)
        except OSError as e:
            self._fail(e, pending)
        else:
            if self._failing:
                self._failing = False
                log.info("listener log {path} writable again; {count} lines were dropped meanwhile",
                         path=self.path, count=self.dropped - self._dropped_at_failure)

    def _write_lines(self, lines: list[bytes]) -> None:
        """Write ``lines`` in batches that each fit in the current file (LogFile rotates between)."""
        if self._file is None:
            self._file = _LogFile(self.path, self.max_bytes, self.backups, self.mode)
        file = self._file
        batch: list[bytes] = []
        batch_bytes = 0
        for line in lines:
            if batch and file.size + batch_bytes + len(line) > self.max_bytes:
                self._write(file, batch)
                batch, batch_bytes = [], 0
            batch.append(line)
            batch_bytes += len(line)
        if batch:
            self._write(file, batch)

    def _write(self, file: _LogFile, batch: list[bytes]) -> None:
        file.write(b"".join(batch))
        self._batch_written += len(batch)

    def _fail(self, error: OSError, pending: list[bytes]) -> None:
        count = len(pending) - self._batch_written  # a torn line counts as dropped
        self._close_file()
        if not self._failing:
            self._failing = True
            self._dropped_at_failure = self.dropped
            log.error("cannot write listener log {path}: {error}; dropping its lines until it works again",
                      path=self.path, error=error.strerror or str(error))
        self.dropped += count

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except (OSError, ValueError, AttributeError):  # a rotation that failed half-way
                pass

    def close(self) -> None:
        self.flush()
        self._close_file()

    def files(self) -> list[str]:
        """The current file then its backups, newest first (existing or not)."""
        return [self.path] + [f"{self.path}.{i}" for i in range(1, self.backups + 1)]

    def remove(self) -> None:
        """Drop pending lines and delete the file and every backup."""
        self._cancel_timer()
        self._pending, self._pending_bytes = [], 0
        self._close_file()
        for path in self.files():
            remove_file(path)


def tail_lines(paths: list[str], n: int, block: int = 8192) -> bytes:
    """The last ``n`` lines across ``paths`` (newest file first), read backwards by blocks.

    Only the end of each file is read (seek from the end), so a large log costs
    no more than the lines asked for. A last line without its newline (torn by
    a crash or a full disk) still counts as a line.
    """
    parts: list[bytes] = []  # newest first
    found = 0
    for path in paths:
        if found >= n:
            break
        try:
            f = open(path, "rb")
        except OSError:
            continue
        with f:
            pos = f.seek(0, os.SEEK_END)
            data = b""
            while pos > 0:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
                if lines - 1 >= n - found:  # the first one may be cut: do not count it
                    break
        lines = data.splitlines(keepends=True)
        if pos > 0:
            lines = lines[1:]
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        take = lines[len(lines) - (n - found):] if len(lines) > n - found else lines
        parts.append(b"".join(take))
        found += len(take)
    return b"".join(reversed(parts))
