"""The 1.0 certificate store: a plain per-load-balancer file store.

Octavia 1.0 controllers upload more than certificates here: crt-list files
(plain text, one absolute path per line), CA bundles and CRLs without keys,
all named by content hash. The store therefore keeps whatever it is given,
byte for byte, under ``<cert_dir>/<lb_id>/<name>`` (``[octavia]``'s
``cert_dir``, the path the controller writes into the haproxy configuration),
files 0600 in a 0700 directory, every write atomic. Only the names are
checked, so that nothing a client sends can point outside that directory.
The strict PEM validation of the v0.1 routes (``amphora.certificates``) stays
there.

Writes are small local files, done in the reactor thread like every other
state write (``amphora.fsutil``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil

from amphora.errors import InvalidRequest, NotFound
from amphora.fsutil import atomic_write, ensure_dir, fsync_dir
from amphora.listeners.store import is_listener_id

# One path component of ordinary characters, never "." or ".." (it starts with a
# word character) nor a hidden or temporary file of ours.
_SAFE_NAME = re.compile(r"\w[\w.-]{0,254}", re.ASCII)
# What Octavia's own agent requires of a name (a regular-expression *search*):
# "x.pem", "<sha1>.pem", "<listener id>.pem" pass, "test.bla" does not.
_OCTAVIA_NAME = re.compile(r"(\w.)+pem")


class CertificateNotFound(NotFound):
    message = "Certificate Not Found"

    def __init__(self, name: str):
        super().__init__(f"No certificate with filename: {name}")


def check_file_name(raw: object) -> str:
    """``raw`` if it is a usable file name, else 400 "Filename has wrong format"."""
    if not (isinstance(raw, str) and _SAFE_NAME.fullmatch(raw) and _OCTAVIA_NAME.search(raw)):
        shown = raw if not isinstance(raw, str) or len(raw) <= 100 else raw[:100] + "..."
        raise InvalidRequest(f"{shown!r} is not a file name this store accepts "
                             "(letters, digits, '_', '.', '-', containing e.g. '.pem')",
                             message="Filename has wrong format")
    return raw


def check_lb_id(raw: object) -> str:
    if not is_listener_id(raw):
        raise InvalidRequest(f"Invalid load balancer id: {raw!r} is not a canonical UUID")
    return raw


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class CertificateFiles:
    def __init__(self, root: str, max_bytes: int = 64 * 1024):
        self.root = root
        self.max_bytes = max_bytes

    def directory(self, lb_id: str) -> str:
        return os.path.join(self.root, check_lb_id(lb_id))

    def path(self, lb_id: str, name: str) -> str:
        return os.path.join(self.directory(lb_id), check_file_name(name))

    def put(self, lb_id: str, name: str, data: bytes) -> str:
        """Store ``data``; returns its md5 (the ETag)."""
        path = self.path(lb_id, name)
        ensure_dir(self.root, 0o700)
        ensure_dir(os.path.dirname(path), 0o700)
        atomic_write(path, data, 0o600)
        return md5_hex(data)

    def md5sum(self, lb_id: str, name: str) -> str:
        try:
            with open(self.path(lb_id, name), "rb") as f:
                return md5_hex(f.read())
        except (FileNotFoundError, NotADirectoryError):
            raise CertificateNotFound(name) from None

    def delete(self, lb_id: str, name: str) -> bool:
        """Remove the file if it is there; True if it was."""
        path = self.path(lb_id, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_dir(os.path.dirname(path))
        return True

    def delete_all(self, lb_id: str) -> None:
        """Remove the load balancer's directory and everything in it (its delete)."""
        directory = self.directory(lb_id)
        shutil.rmtree(directory, ignore_errors=True)
