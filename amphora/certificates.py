"""TLS certificates of listeners: validation, safe storage, md5sum, live swap.

A controller uploads one PEM file per certificate name and listener: the
unencrypted private key, the leaf certificate and its chain, in any order (the
first certificate is the leaf, as haproxy reads it). This module

- checks the file name (a strict full match; nothing else ever becomes a path),
- validates the PEM with ``cryptography`` *before* anything is written (one key,
  RSA or EC, matching the leaf; no encrypted keys, no stray binary),
- stores it as ``<certs_dir>/<listener uuid>/<name>.pem`` (directory 0700, file
  0600) atomically, and reports the md5 of the stored bytes,
- and, beyond the spec (which asks for a restart), swaps the certificate in a
  running haproxy through its runtime API (``set ssl cert`` + ``commit ssl
  cert``) so new connections see it at once, without a reload.

It knows nothing about HTTP: it raises ``amphora.errors`` and the API renders
them. PEM data is never logged, and never returned.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import math
import os
import re
import shutil
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from amphora.errors import CertificateNotFound, InvalidRequest, ListenerNotFound, NotFound, PayloadTooLarge
from amphora.fsutil import atomic_write, ensure_dir, fsync_dir
from amphora.listeners.store import check_listener_id

log = Logger()

# -- file names ---------------------------------------------------------------

NAME_MAX_BYTES = 255
# Dot-separated labels of letters, digits, '-' and '_', then ".pem": no leading
# dot (hidden files, our own ".tmp-" files), no "..", no empty stem, ASCII only.
# The spec's "WILDCARD.example.com.pem" (for "*.example.com") is just such a name.
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.pem")


def check_name(raw: object) -> str:
    """The certificate file name, or 400 "Invalid certificate file name"."""
    if not isinstance(raw, str) or not _NAME.fullmatch(raw) or len(raw.encode()) > NAME_MAX_BYTES:
        shown = raw if isinstance(raw, str) and len(raw) <= 300 else f"{str(raw)[:300]}..."
        raise InvalidRequest(
            f"{shown!r}: a certificate file name is letters, digits, '-', '_' and single dots, "
            f"ending in .pem, at most {NAME_MAX_BYTES} bytes (use WILDCARD for '*')",
            message="Invalid certificate file name")
    return raw




# -- PEM validation -------------------------------------------------------------

NO_CERTIFICATE = "No certificate found"
NO_KEY = "No RSA key found"
MISMATCH = "Certificate and key do not match"
INVALID = "Invalid certificate data"

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----")
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")
# haproxy reads these from a certificate file too; they are allowed and left alone.
_PARAM_LABELS = (b"EC PARAMETERS", b"DH PARAMETERS")


@dataclass(frozen=True)
class CertificateInfo:
    """What a valid upload contains (for the response details; never the PEM)."""

    key_kind: str            # "RSA-2048", "EC-secp256r1"
    subject: str             # the leaf's subject (RFC 4514)
    not_before: datetime.datetime
    not_after: datetime.datetime
    chain_length: int        # certificates after the leaf
    expired: bool
    not_yet_valid: bool
    blocks: tuple[bytes, ...]  # the PEM blocks haproxy reads, in upload order, LF-terminated lines

    def describe(self) -> str:
        validity = f"valid until {_iso(self.not_after)}"
        if self.expired:
            validity = f"EXPIRED on {_iso(self.not_after)} (accepted; the controller decides)"
        elif self.not_yet_valid:
            validity = f"NOT YET VALID before {_iso(self.not_before)} (accepted; the controller decides)"
        chain = f"{self.chain_length} chain certificate{'s' if self.chain_length != 1 else ''}"
        return f"{self.key_kind} key, certificate {self.subject or '(empty subject)'} {validity}, {chain}"


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_kind(key) -> str | None:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC-{key.curve.name}"
    return None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def validate_pem(data: bytes, now: datetime.datetime) -> CertificateInfo:
    """Check an upload; raise InvalidRequest with the spec's message, or describe it.

    Rules: PEM text (not binary); every PEM block is a certificate, a private
    key, or EC/DH parameters; at least one certificate (the first is the leaf);
    exactly one unencrypted RSA or EC private key, matching the leaf. Expired
    or not-yet-valid certificates are accepted and reported.
    """
    if not data.strip():
        raise InvalidRequest("the body is empty; expected PEM text with a private key and certificates",
                             message=NO_CERTIFICATE)
    if b"\x00" in data or not _is_text(data):
        raise InvalidRequest("the body is binary, not PEM text (DER is not accepted; convert it with "
                             "'openssl x509 -outform PEM' / 'openssl pkey -outform PEM')", message=INVALID)

    certs: list[x509.Certificate] = []
    keys: list[tuple[int, bytes, bytes]] = []
    kept: list[bytes] = []
    for index, (label, block) in enumerate(_pem_blocks(data), start=1):
        name = label.decode("ascii")
        if label == b"CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError as e:
                raise InvalidRequest(f"PEM block {index} is not a valid X.509 certificate: {_reason(e)}",
                                     message=INVALID) from None
        elif label == b"ENCRYPTED PRIVATE KEY" or (label in _KEY_LABELS and b"ENCRYPTED" in block[:300]):
            raise InvalidRequest(f"PEM block {index} is an encrypted private key; upload the key "
                                 "unencrypted (haproxy cannot ask for a passphrase)", message=INVALID)
        elif label in _KEY_LABELS:
            keys.append((index, label, block))
        elif label in _PARAM_LABELS:
            pass
        else:
            raise InvalidRequest(f"PEM block {index} is a {name!r}; only private keys, certificates and "
                                 "EC/DH parameters belong in a certificate file", message=INVALID)
        kept.append(block)

    if not certs:
        found = f"{len(keys)} private key(s) but " if keys else ""
        raise InvalidRequest(f"{found}no '-----BEGIN CERTIFICATE-----' block in the body", message=NO_CERTIFICATE)
    if not keys:
        raise InvalidRequest(f"no private key (RSA or EC) in the body; found {len(certs)} certificate(s)",
                             message=NO_KEY)
    if len(keys) > 1:
        raise InvalidRequest(f"{len(keys)} private keys (PEM blocks {', '.join(str(k[0]) for k in keys)}); "
                             "a certificate file holds exactly one", message=INVALID)

    index, label, block = keys[0]
    try:
        # cryptography's own RSA check tests primality while holding the GIL: 40 ms for
        # RSA-2048, 350 ms for RSA-4096 of a stalled reactor. _check_rsa does the
        # arithmetic that ties the private numbers together in microseconds instead.
        key = serialization.load_pem_private_key(block, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError:  # encrypted (a DEK-Info header we did not spot above)
        raise InvalidRequest(f"PEM block {index} is an encrypted private key; upload the key unencrypted",
                             message=INVALID) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise InvalidRequest(f"PEM block {index} ({label.decode()}) is not a valid private key: {_reason(e)}",
                             message=INVALID) from None
    kind = _key_kind(key)
    if kind is None:
        raise InvalidRequest(f"found a {type(key).__name__.lstrip('_')} private key; only RSA and EC keys "
                             "are supported", message=NO_KEY)
    if isinstance(key, rsa.RSAPrivateKey) and not _check_rsa(key):
        raise InvalidRequest(f"PEM block {index} is not a consistent RSA private key (its numbers do not "
                             "fit together)", message=INVALID)

    leaf = certs[0]
    try:
        leaf_public = leaf.public_key()
    except ValueError as e:
        raise InvalidRequest(f"the leaf certificate's public key cannot be read: {_reason(e)}",
                             message=INVALID) from None
    if _spki(leaf_public) != _spki(key.public_key()):
        raise InvalidRequest(f"the {kind} private key does not belong to the first certificate "
                             f"({leaf.subject.rfc4514_string()}); the first certificate must be the leaf",
                             message=MISMATCH)

    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    return CertificateInfo(
        key_kind=kind, subject=leaf.subject.rfc4514_string(), not_before=not_before, not_after=not_after,
        chain_length=len(certs) - 1, expired=now > not_after, not_yet_valid=now < not_before,
        blocks=tuple(kept))


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, block) for each PEM block, each block LF-terminated lines; text between blocks is ignored.

    One pass over the lines (a regular expression with a back-reference went
    quadratic on a body of unterminated BEGIN lines: 9 s for 64 KiB).
    """
    blocks: list[tuple[bytes, bytes]] = []
    label: bytes | None = None
    lines: list[bytes] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.rstrip(b"\r\t ")
        if label is None:
            begin = _BEGIN.fullmatch(line)
            if begin:
                label, lines = begin.group(1), [line]
            elif line.startswith(b"-----"):
                raise InvalidRequest(f"line {number}: a PEM boundary line outside a block "
                                     f"({line[:40].decode('ascii', 'replace')!r})", message=INVALID)
        elif line == b"-----END " + label + b"-----":
            lines.append(line)
            blocks.append((label, b"\n".join(lines) + b"\n"))
            label = None
        elif line.startswith(b"-----"):
            raise InvalidRequest(f"line {number}: the {label.decode()} block has no matching END line "
                                 f"before {line[:40].decode('ascii', 'replace')!r}", message=INVALID)
        elif line:
            lines.append(line)
    if label is not None:
        raise InvalidRequest(f"the {label.decode()} block has no END line", message=INVALID)
    return blocks


def _check_rsa(key) -> bool:
    """The private numbers fit together (n = pq, e*d = 1 mod lcm(p-1, q-1), CRT values)."""
    numbers = key.private_numbers()
    p, q, d = numbers.p, numbers.q, numbers.d
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    if p < 2 or q < 2 or p * q != n:
        return False
    lcm = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    return ((e * d) % lcm == 1 and numbers.dmp1 == d % (p - 1) and numbers.dmq1 == d % (q - 1)
            and (numbers.iqmp * q) % p == 1)


_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _is_text(data: bytes) -> bool:
    # PEM is ASCII; tolerate UTF-8 in attribute lines ("friendlyName: ...") but not control bytes.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _CONTROL.search(data) is None


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def md5_hex(data: bytes) -> str:
    # Not a security use (the spec's integrity check); usedforsecurity=False lets FIPS hosts run it.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# -- where certs_dir lives --------------------------------------------------------

MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: str, mountinfo: str) -> str | None:
    """The type of the filesystem holding ``path``, from /proc/self/mountinfo text.

    The mount with the longest mount point that contains ``path`` wins (later
    lines win ties: they are mounted on top).
    """
    best, best_len = None, -1
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < dash + 2:
            continue
        mount_point = _unescape_mount(fields[4])
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= best_len:
            best, best_len = fields[dash + 1], len(mount_point)
    return best


# -- the store ---------------------------------------------------------------------

# haproxy reads a runtime API command into one buffer of tune.bufsize (16384 by
# default) bytes; a longer ``set ssl cert`` payload is silently dropped.
RUNTIME_COMMAND_MAX = 16383
# The runtime API splits arguments on spaces and knows '\' and ';': a path with
# anything outside this set is not sent (the certificate then waits for a reload).
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")


@dataclass
class StoreResult:
    md5sum: str
    details: str
    live: bool = False


class CertificateStore:
    """Certificates of all listeners under ``certs_dir``.

    ``listeners`` is the agent's ListenerManager (or None while there is
    none): it tells which listeners exist and run, whether a listener's
    configuration uses a file, and carries runtime API commands. Operations on
    one listener's certificates run under that listener's lock
    (``listeners.serialised``): serialised with each other and with the
    listener's own operations; different listeners proceed in parallel.
    """

    def __init__(self, certs_dir: str, reactor, listeners=None, max_bytes: int = 64 * 1024,
                 mountinfo_path: str = "/proc/self/mountinfo"):
        self.certs_dir = certs_dir
        self.reactor = reactor
        self.listeners = listeners
        self.max_bytes = max_bytes
        self.mountinfo_path = mountinfo_path

    # -- start-up ------------------------------------------------------------

    def check_storage(self) -> str | None:
        """Warn when certs_dir is not on a memory filesystem; returns its type (None if unknown).

        The spec wants private keys on a memory filesystem so they never reach a
        disk. The agent still works elsewhere (development), so this warns only.
        """
        try:
            with open(self.mountinfo_path, encoding="utf-8", errors="replace") as f:
                fstype = filesystem_type(os.path.realpath(self.certs_dir), f.read())
        except OSError as e:
            log.warn("cannot tell which filesystem holds certs_dir {path}: {error}",
                     path=self.certs_dir, error=e.strerror)
            return None
        if fstype not in MEMORY_FILESYSTEMS:
            log.warn("agent.certs_dir {path} is on {fstype}, not on a memory filesystem (tmpfs/ramfs): "
                     "listener private keys will be written to persistent storage",
                     path=self.certs_dir, fstype=fstype or "an unknown filesystem")
        return fstype

    # -- paths ---------------------------------------------------------------

    def listener_dir(self, lid: str) -> str:
        return os.path.join(self.certs_dir, check_listener_id(lid))

    def path(self, lid: str, name: str) -> str:
        return os.path.join(self.listener_dir(lid), check_name(name))

    # -- operations ------------------------------------------------------------

    def put(self, lid: str, name: str, data: bytes):
        """Validate and store one certificate; Deferred[StoreResult].

        Nothing is written unless the upload is valid. When the listener's
        running haproxy uses this file, it is also swapped live.
        """
        path = self.path(lid, name)
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"certificate body exceeds {self.max_bytes} bytes "
                                  "([agent] max_certificate_bytes)")
        info = validate_pem(data, self._now())
        return self._with_listener(lid, self._put, lid, name, path, data, info)

    @inlineCallbacks
    def _put(self, lid, name, path, data, info):
        ensure_dir(self.certs_dir, 0o700)
        ensure_dir(os.path.dirname(path), 0o700)
        atomic_write(path, data, 0o600)
        md5sum = md5_hex(data)
        log.info("certificate {name} stored for listener {lid} (md5 {md5sum}, {kind})",
                 name=name, lid=lid, md5sum=md5sum, kind=info.key_kind)
        live, how = yield self._swap_live(lid, path, info)
        details = f"stored {name}: {info.describe()}; {how}"
        return StoreResult(md5sum=md5sum, details=details, live=live)

    def md5sum(self, lid: str, name: str) -> str:
        """md5 of the stored file; 404 Certificate/Listener Not Found."""
        path = self.path(lid, name)
        try:
            with open(path, "rb") as f:
                return md5_hex(f.read())
        except FileNotFoundError:
            raise self._missing(lid, name) from None
        except IsADirectoryError:
            raise self._missing(lid, name) from None

    def delete(self, lid: str, name: str):
        """Remove one certificate (and the listener's directory once empty); Deferred[str details]."""
        path = self.path(lid, name)
        return self._with_listener(lid, self._delete, lid, name, path)

    def _delete(self, lid, name, path):
        try:
            os.unlink(path)
        except (FileNotFoundError, IsADirectoryError):
            raise self._missing(lid, name) from None
        directory = os.path.dirname(path)
        fsync_dir(directory)
        removed_dir = self._remove_dir_if_empty(directory)
        log.info("certificate {name} deleted for listener {lid}", name=name, lid=lid)
        details = f"deleted {name}"
        if removed_dir:
            details += "; the listener has no certificates left"
        if self._running(lid) and self._uses(lid, path):
            details += ("; the running haproxy keeps serving it from memory, but its configuration "
                        "references the file: upload it again before the next reload or restart")
        return details

    def delete_all(self, lid: str):
        """Remove every certificate of a listener (a listener delete hook); Deferred."""
        directory = self.listener_dir(lid)
        # A delete hook: the listener manager runs it under the listener's lock already.
        return maybeDeferred(self._delete_all, lid, directory)

    def _delete_all(self, lid, directory):
        if not os.path.lexists(directory):
            return None
        shutil.rmtree(directory, ignore_errors=False)
        fsync_dir(self.certs_dir)
        log.info("certificates of listener {lid} deleted", lid=lid)
        return None

    def names(self, lid: str) -> list[str]:
        """Certificate names stored for a listener (sorted; temp files left out)."""
        try:
            entries = os.listdir(self.listener_dir(lid))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e for e in entries if _NAME.fullmatch(e))

    # -- live swap ---------------------------------------------------------------

    @inlineCallbacks
    def _swap_live(self, lid, path, info):
        """(applied, words): try to make a running haproxy serve the new file at once."""
        if not self._running(lid):
            return ((False, "not applied live: the listener is not running "
                                "(haproxy reads it when it starts)"))
        if not self._uses(lid, path):
            held = yield self._haproxy_holds(lid, path)
            if not held:
                return ((False, "not applied live: the running listener does not use this file "
                                    "(it takes effect when a configuration using it is loaded)"))
        if not _SAFE_PATH.fullmatch(path):
            return ((False, "not applied live: the certificate path has characters the runtime "
                                "API cannot carry; it takes effect at the next reload"))
        # The payload ends at the first empty line: send only the PEM blocks, which
        # _pem_blocks made LF-terminated lines with no empty line among them.
        command = f"set ssl cert {path} <<\n".encode() + b"".join(info.blocks) + b"\n"
        if len(command) > RUNTIME_COMMAND_MAX:
            return ((False, f"not applied live: {len(command)} bytes exceed what haproxy's runtime "
                                f"API accepts in one command ({RUNTIME_COMMAND_MAX}); it takes effect "
                                "at the next reload"))
        try:
            answer = yield self.listeners.runtime(lid, command.decode("ascii", "replace"))
        except Exception as e:  # noqa: BLE001 - any transport failure means "not live"
            log.warn("live swap of {path} for listener {lid}: set ssl cert failed: {error}",
                     path=path, lid=lid, error=_reason(e))
            return ((False, f"not applied live: runtime API error ({_reason(e)}); it takes effect "
                                "at the next reload"))
        answer_text = _answer(answer)
        if "Transaction created" not in answer_text and "Transaction updated" not in answer_text:
            log.warn("live swap of {path} for listener {lid}: haproxy refused: {answer}",
                     path=path, lid=lid, answer=answer_text)
            return ((False, f"not applied live: haproxy answered {answer_text!r}; it takes effect "
                                "at the next reload"))
        try:
            answer = yield self.listeners.runtime(lid, f"commit ssl cert {path}")
        except Exception as e:  # noqa: BLE001
            answer = f"runtime API error: {_reason(e)}".encode()
        answer_text = _answer(answer)
        if "Success!" not in answer_text:
            log.warn("live swap of {path} for listener {lid}: commit failed: {answer}",
                     path=path, lid=lid, answer=answer_text)
            yield self._abort(lid, path)
            return ((False, f"not applied live: haproxy did not commit ({answer_text!r}); it takes "
                                "effect at the next reload"))
        log.info("certificate {path} swapped live in listener {lid}", path=path, lid=lid)
        return (True, "applied live: the running haproxy serves it to new connections (no reload)")

    @inlineCallbacks
    def _abort(self, lid, path):
        try:
            yield self.listeners.runtime(lid, f"abort ssl cert {path}")
        except Exception as e:  # noqa: BLE001 - best effort: the transaction dies with the process anyway
            log.warn("abort ssl cert {path} for listener {lid} failed: {error}", path=path, lid=lid,
                     error=_reason(e))

    @inlineCallbacks
    def _haproxy_holds(self, lid, path):
        """Whether the running haproxy loaded ``path`` (e.g. through a ``crt <directory>``)."""
        try:
            answer = yield self.listeners.runtime(lid, "show ssl cert")
        except Exception:  # noqa: BLE001
            return False
        if isinstance(answer, bytes):
            answer = answer.decode("utf-8", "replace")
        loaded = {line.lstrip("*").strip() for line in str(answer).splitlines()
                  if line.strip() and not line.startswith("#")}
        return path in loaded

    # -- helpers -------------------------------------------------------------------

    def _running(self, lid: str) -> bool:
        if self.listeners is None:
            return False
        try:
            return lid in self.listeners.running_ids()
        except Exception:  # noqa: BLE001 - a broken manager must not break certificate uploads
            log.failure("listeners.running_ids() failed")
            return False

    def _uses(self, lid: str, path: str) -> bool:
        try:
            return bool(self.listeners.uses_file(lid, path))
        except Exception:  # noqa: BLE001
            log.failure("listeners.uses_file() failed")
            return False

    def _missing(self, lid: str, name: str) -> NotFound:
        known = os.path.isdir(os.path.join(self.certs_dir, lid))
        if not known and self.listeners is not None:
            try:
                known = bool(self.listeners.exists(lid))
            except Exception:  # noqa: BLE001
                known = False
        if not known:
            return ListenerNotFound(lid)
        return CertificateNotFound(name)

    def _remove_dir_if_empty(self, directory: str) -> bool:
        try:
            for entry in os.listdir(directory):
                if not entry.startswith(".tmp-"):
                    return False
                os.unlink(os.path.join(directory, entry))  # left by a crash in the middle of a write
            os.rmdir(directory)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        fsync_dir(self.certs_dir)
        return True

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc)

    def _with_listener(self, lid, fn, *args):
        """Under the listener's own lock (the one its upload, reload and delete hold), so a live
        swap never lands on a worker that a reload is replacing."""
        if self.listeners is None:
            return maybeDeferred(fn, *args)
        return self.listeners.serialised(lid, fn, *args)


def _answer(answer) -> str:
    if isinstance(answer, bytes):
        answer = answer.decode("utf-8", "replace")
    return " ".join(str(answer).split())[:300]
