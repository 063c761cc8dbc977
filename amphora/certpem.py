"""Validation of an uploaded listener certificate file (PEM), before anything is written.

One unencrypted private key, RSA or EC, matching the leaf certificate (the
first one, as haproxy reads it) and its chain, in any order; EC/DH parameters
are allowed; no encrypted keys, no stray binary. Failures raise
``InvalidRequest`` with the spec's message. PEM data is never logged.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from amphora.errors import InvalidRequest

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
                raise InvalidRequest(f"PEM block {index} is not a valid X.509 certificate: {error_reason(e)}",
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
        raise InvalidRequest(f"PEM block {index} ({label.decode()}) is not a valid private key: {error_reason(e)}",
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
        raise InvalidRequest(f"the leaf certificate's public key cannot be read: {error_reason(e)}",
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


def error_reason(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
