"""Certificate names, PEM validation, storage and the live-swap logic (fakes, Clock)."""

from __future__ import annotations

import datetime
import hashlib
import os
import stat

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from amphora import certificates
from amphora.certificates import (CertificateStore, check_name, filesystem_type, md5_hex,
                                  validate_pem)
from amphora.errors import InvalidRequest, ListenerNotFound, NotFound, PayloadTooLarge
from amphora.testing import FakeListeners
from tests import certificates_support as cs

LID = "0b5d2d4e-8c9b-4f55-9a55-6f1d3c3b7a10"
OTHER = "9f1c7a52-3c0e-4d0b-8d62-1e5f0f3f2b11"


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def fired(d) -> bool:
    """Whether a Deferred has its result (``.called`` is also true while it waits on another)."""
    out = []
    d.addBoth(lambda r: (out.append(r), r)[1])
    return bool(out)


def result_of(d):
    """The result of an already-fired Deferred (raises its failure)."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.fixture(scope="module")
def rsa_bundle():
    return cs.bundle("www.example.com")


@pytest.fixture(scope="module")
def ec_bundle():
    return cs.bundle("ec.example.com", key_kind="ec")


@pytest.fixture(scope="module")
def other_bundle():
    return cs.bundle("other.example.com")


@pytest.fixture
def captured_log(monkeypatch):
    events = []
    monkeypatch.setattr(certificates, "log", Logger(observer=events.append, namespace="amphora.certificates"))
    return events


# -- names ------------------------------------------------------------------------

GOOD_NAMES = ["www.example.com.pem", "WILDCARD.example.com.pem", "a.pem", "A-b_c.9.pem",
              "x" * 251 + ".pem", "tls-cert_01.pem"]

HOSTILE_NAMES = [
    "", ".pem", "..pem", "...pem", ".hidden.pem", ".tmp-abc.pem", "a..b.pem", "a.pem.", "a.pem ",
    " a.pem", "a.PEM", "a.pem.bak", "a.crt", "a", "..", ".", "../a.pem", "../../etc/passwd",
    "a/b.pem", "/etc/x.pem", "a\\b.pem", "*.example.com.pem", "a b.pem", "a\x00.pem", "a.pem\x00",
    "a.pem\n", "\na.pem", "a;b.pem", "a%2Fb.pem", "%2e%2e.pem", "café.pem", "ａ.pem",
    "x" * 252 + ".pem", "a.pem/", "a:b.pem", "~a.pem", "a$b.pem", "a\tb.pem",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_invalid(name):
    with pytest.raises(InvalidRequest) as e:
        check_name(name)
    assert e.value.message == "Invalid certificate file name"
    assert e.value.status == 400


def test_name_length_limit_is_in_bytes():
    assert len(HOSTILE_NAMES) >= 20
    assert check_name("x" * 251 + ".pem")
    with pytest.raises(InvalidRequest):
        check_name("x" * 252 + ".pem")


def test_non_string_name_is_invalid():
    with pytest.raises(InvalidRequest):
        check_name(None)
    with pytest.raises(InvalidRequest):
        check_name(b"a.pem")


# -- PEM validation ---------------------------------------------------------------------

def test_rsa_bundle_is_valid(rsa_bundle):
    info = validate_pem(rsa_bundle.pem(), now())
    assert info.key_kind == "RSA-2048"
    assert info.chain_length == 2
    assert "CN=www.example.com" in info.subject
    assert not info.expired and not info.not_yet_valid
    assert "RSA-2048 key" in info.describe() and "2 chain certificates" in info.describe()


def test_ec_bundle_is_valid(ec_bundle):
    info = validate_pem(ec_bundle.pem(), now())
    assert info.key_kind == "EC-secp256r1"


def test_ec_key_with_ec_parameters_block(ec_bundle):
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    info = validate_pem(params + ec_bundle.pem(), now())
    assert info.key_kind == "EC-secp256r1"
    assert len(info.blocks) == 5  # parameters, key, leaf, two chain certificates


@pytest.mark.parametrize("order", ["cert key chain", "chain-after-key cert", "cert chain key"])
def test_any_order_first_certificate_is_the_leaf(rsa_bundle, order):
    b = rsa_bundle
    chain = b"".join(b.chain)
    data = {"cert key chain": b.cert + b.key + chain,
            "chain-after-key cert": b.cert + chain + b.key,
            "cert chain key": b.cert + chain + b.key}[order]
    assert validate_pem(data, now()).chain_length == 2


def test_no_chain_is_fine(rsa_bundle):
    assert validate_pem(rsa_bundle.key + rsa_bundle.cert, now()).chain_length == 0


def test_crlf_line_endings_are_fine(rsa_bundle):
    assert validate_pem(rsa_bundle.pem().replace(b"\n", b"\r\n"), now()).key_kind == "RSA-2048"


def test_expired_is_accepted_and_reported():
    info = validate_pem(cs.expired_bundle().pem(), now())
    assert info.expired
    assert "EXPIRED" in info.describe()


def test_not_yet_valid_is_accepted_and_reported():
    later = now() + datetime.timedelta(days=10)
    info = validate_pem(cs.bundle("future.example.com", not_before=later,
                                  not_after=later + datetime.timedelta(days=30)).pem(), now())
    assert info.not_yet_valid and "NOT YET VALID" in info.describe()


def _invalid(data, message):
    with pytest.raises(InvalidRequest) as e:
        validate_pem(data, now())
    assert e.value.message == message, e.value.details
    assert e.value.status == 400
    assert isinstance(e.value.details, str) and e.value.details
    return e.value.details


def test_no_certificate(rsa_bundle):
    details = _invalid(rsa_bundle.key, "No certificate found")
    assert "1 private key" in details


def test_empty_body():
    assert "empty" in _invalid(b"", "No certificate found")
    _invalid(b"  \n\n", "No certificate found")


def test_garbage_text_has_no_certificate():
    _invalid(b"hello, this is not a certificate\n", "No certificate found")


def test_no_key(rsa_bundle):
    details = _invalid(rsa_bundle.cert + b"".join(rsa_bundle.chain), "No RSA key found")
    assert "RSA or EC" in details and "3 certificate" in details


def test_rsa_key_from_another_certificate(rsa_bundle, other_bundle):
    details = _invalid(other_bundle.key + rsa_bundle.cert, "Certificate and key do not match")
    assert "RSA-2048" in details


def test_ec_key_with_rsa_certificate(rsa_bundle, ec_bundle):
    _invalid(ec_bundle.key + rsa_bundle.cert, "Certificate and key do not match")


def test_chain_before_leaf_does_not_match(rsa_bundle):
    # the first certificate is the leaf: a chain certificate first is a mismatch
    _invalid(rsa_bundle.key + rsa_bundle.chain[0] + rsa_bundle.cert, "Certificate and key do not match")


def test_encrypted_pkcs8_key(rsa_bundle):
    details = _invalid(cs.encrypted_pkcs8(rsa_bundle.issued.key) + rsa_bundle.cert, "Invalid certificate data")
    assert "encrypted" in details


def test_encrypted_traditional_key(rsa_bundle):
    details = _invalid(cs.encrypted_traditional(rsa_bundle.issued.key) + rsa_bundle.cert,
                       "Invalid certificate data")
    assert "encrypted" in details


def test_binary_der_is_refused(rsa_bundle):
    details = _invalid(cs.der(rsa_bundle.issued.cert), "Invalid certificate data")
    assert "binary" in details


def test_random_bytes_and_nul_are_refused(rsa_bundle):
    _invalid(os.urandom(2048), "Invalid certificate data")
    _invalid(rsa_bundle.pem() + b"\x00", "Invalid certificate data")


def test_two_keys(rsa_bundle, other_bundle):
    details = _invalid(rsa_bundle.key + other_bundle.key + rsa_bundle.cert, "Invalid certificate data")
    assert "2 private keys" in details


def test_unexpected_block(rsa_bundle):
    csr = b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
    details = _invalid(rsa_bundle.pem() + csr, "Invalid certificate data")
    assert "CERTIFICATE REQUEST" in details


def test_unterminated_block(rsa_bundle):
    _invalid(rsa_bundle.pem() + b"-----BEGIN CERTIFICATE-----\nMIIB\n", "Invalid certificate data")


def test_corrupt_certificate_block(rsa_bundle):
    lines = rsa_bundle.cert.split(b"\n")
    lines[3] = b"A" * len(lines[3])  # damage the DER inside
    details = _invalid(rsa_bundle.key + b"\n".join(lines), "Invalid certificate data")
    assert "block 2" in details


def test_corrupt_key_block(rsa_bundle):
    lines = rsa_bundle.key.split(b"\n")
    lines[2] = b"B" * len(lines[2])
    _invalid(b"\n".join(lines) + rsa_bundle.cert, "Invalid certificate data")


def test_ed25519_key_is_not_supported(rsa_bundle):
    details = _invalid(cs.ed25519_key_pem() + rsa_bundle.cert, "No RSA key found")
    assert "Ed25519" in details


# -- md5 and mountinfo -------------------------------------------------------------

def test_md5_is_plain_md5():
    assert md5_hex(b"abc") == hashlib.md5(b"abc").hexdigest()


def test_md5_works_on_a_fips_host(store, rsa_bundle, monkeypatch):
    """A FIPS-mode OpenSSL refuses md5 unless it is declared not for security: PUT and GET
    of a certificate must still answer with its md5sum."""
    real_md5 = hashlib.md5

    def fips_md5(*args, usedforsecurity=True, **kwargs):
        if usedforsecurity:
            raise ValueError("[digital envelope routines] unsupported (FIPS mode)")
        return real_md5(*args, usedforsecurity=False, **kwargs)

    monkeypatch.setattr(certificates.hashlib, "md5", fips_md5)
    data = rsa_bundle.pem()
    result = result_of(store.put(LID, "fips.pem", data))
    assert result.md5sum == real_md5(data).hexdigest()
    assert store.md5sum(LID, "fips.pem") == result.md5sum


MOUNTINFO = """\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
25 22 0:21 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=100k
26 25 0:22 / /run/amphora-agent/certs rw master:3 - ramfs none rw
27 22 0:23 / /srv/with\\040space rw - tmpfs tmpfs rw
28 22 0:24 / /srv/with rw - xfs /dev/sdb rw
"""


@pytest.mark.parametrize("path,fstype", [
    ("/run/amphora-agent/certs", "ramfs"),
    ("/run/amphora-agent/certs/x", "ramfs"),
    ("/run/amphora-agent/certsX", "tmpfs"),
    ("/run", "tmpfs"),
    ("/var/lib/x", "ext4"),
    ("/srv/with space/certs", "tmpfs"),
    ("/srv/with/certs", "xfs"),
])
def test_filesystem_type(path, fstype):
    assert filesystem_type(path, MOUNTINFO) == fstype


def _mountinfo(tmp_path, text):
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return str(path)


def test_storage_warning_on_disk(tmp_path, captured_log):
    store = CertificateStore("/var/lib/certs", Clock(), FakeListeners(), mountinfo_path=_mountinfo(tmp_path, MOUNTINFO))
    assert store.check_storage() == "ext4"
    assert any("not on a memory filesystem" in formatEvent(e) for e in captured_log)


def test_no_storage_warning_on_tmpfs(tmp_path, captured_log):
    store = CertificateStore("/run/amphora-agent/certs", Clock(), FakeListeners(),
                             mountinfo_path=_mountinfo(tmp_path, MOUNTINFO))
    assert store.check_storage() == "ramfs"
    assert captured_log == []


@pytest.mark.parametrize("where", ["tmp_path", "/dev/shm", "/proc", "/"])
def test_real_mountinfo_agrees_with_psutil(tmp_path, where):
    """/proc/self/mountinfo as we read it, against psutil's independent view of the mounts."""
    import psutil

    path = os.path.realpath(str(tmp_path) if where == "tmp_path" else where)
    best = max((p for p in psutil.disk_partitions(all=True)
                if path == p.mountpoint or path.startswith(p.mountpoint.rstrip("/") + "/")),
               key=lambda p: len(p.mountpoint))
    assert CertificateStore(path, Clock(), FakeListeners()).check_storage() == best.fstype


# -- the store ------------------------------------------------------------------------

@pytest.fixture
def certs_dir(tmp_path):
    path = tmp_path / "certs"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def store(certs_dir):
    clock = Clock()
    clock.advance(datetime.datetime.now(datetime.timezone.utc).timestamp())
    return CertificateStore(certs_dir, clock, listeners=FakeListeners(), max_bytes=64 * 1024)


def all_files(root):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, d) for d in dirnames]
        found += [os.path.join(dirpath, f) for f in filenames]
    return sorted(found)


def test_put_stores_bytes_with_modes(store, certs_dir, rsa_bundle):
    data = rsa_bundle.pem()
    result = result_of(store.put(LID, "www.example.com.pem", data))
    path = os.path.join(certs_dir, LID, "www.example.com.pem")
    with open(path, "rb") as f:
        assert f.read() == data
    assert result.md5sum == hashlib.md5(data).hexdigest()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert not result.live and "not running" in result.details
    assert "RSA-2048" in result.details
    assert store.md5sum(LID, "www.example.com.pem") == result.md5sum
    assert store.names(LID) == ["www.example.com.pem"]


def test_replacement_is_atomic_and_leaves_no_stale_bytes(store, certs_dir, rsa_bundle, ec_bundle):
    long = rsa_bundle.pem() + b"\n" * 100
    result_of(store.put(LID, "a.pem", long))
    short = ec_bundle.key + ec_bundle.cert
    assert len(short) < len(long)
    result = result_of(store.put(LID, "a.pem", short))
    with open(os.path.join(certs_dir, LID, "a.pem"), "rb") as f:
        assert f.read() == short
    assert result.md5sum == md5_hex(short)
    assert os.listdir(os.path.join(certs_dir, LID)) == ["a.pem"]  # no temp file left


def test_failed_write_leaves_old_file(store, certs_dir, rsa_bundle, ec_bundle, monkeypatch):
    result_of(store.put(LID, "a.pem", rsa_bundle.pem()))

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        result_of(store.put(LID, "a.pem", ec_bundle.pem()))
    monkeypatch.undo()
    assert store.md5sum(LID, "a.pem") == md5_hex(rsa_bundle.pem())
    assert os.listdir(os.path.join(certs_dir, LID)) == ["a.pem"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_name_writes_nothing(store, certs_dir, rsa_bundle, name):
    for call in (lambda: store.put(LID, name, rsa_bundle.pem()), lambda: store.md5sum(LID, name),
                 lambda: store.delete(LID, name)):
        with pytest.raises(InvalidRequest) as e:
            call()
        assert e.value.message == "Invalid certificate file name"
    assert all_files(os.path.dirname(certs_dir)) == [certs_dir]


@pytest.mark.parametrize("lid", ["", "..", "../x", LID.upper(), LID + "/", "x" * 36, LID.replace("-", "")])
def test_bad_listener_id_writes_nothing(store, certs_dir, rsa_bundle, lid):
    with pytest.raises(InvalidRequest):
        store.put(lid, "a.pem", rsa_bundle.pem())
    assert all_files(certs_dir) == []


def test_invalid_pem_writes_nothing(store, certs_dir, rsa_bundle, other_bundle):
    for data in (b"", rsa_bundle.key, rsa_bundle.cert, other_bundle.key + rsa_bundle.cert, os.urandom(64)):
        with pytest.raises(InvalidRequest):
            store.put(LID, "a.pem", data)
    assert all_files(certs_dir) == []


def test_too_large(store, certs_dir, rsa_bundle):
    with pytest.raises(PayloadTooLarge) as e:
        store.put(LID, "a.pem", rsa_bundle.pem() + b"\n" * (64 * 1024))
    assert "max_certificate_bytes" in e.value.details
    assert all_files(certs_dir) == []


def test_get_missing(store, rsa_bundle):
    with pytest.raises(ListenerNotFound) as e:
        store.md5sum(LID, "a.pem")
    assert e.value.message == "Listener Not Found" and LID in e.value.details
    result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    with pytest.raises(NotFound) as e:
        store.md5sum(LID, "b.pem")
    assert e.value.message == "Certificate Not Found"
    assert e.value.details == "No certificate with file name: b.pem"


def test_get_missing_on_known_listener_without_certificates(certs_dir):
    listeners = FakeListeners()
    listeners.existing.add(LID)
    store = CertificateStore(certs_dir, Clock(), listeners=listeners)
    with pytest.raises(NotFound) as e:
        store.md5sum(LID, "a.pem")
    assert e.value.message == "Certificate Not Found"
    with pytest.raises(ListenerNotFound):
        store.md5sum(OTHER, "a.pem")


def test_delete(store, certs_dir, rsa_bundle):
    result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    result_of(store.put(LID, "b.pem", rsa_bundle.pem()))
    details = result_of(store.delete(LID, "a.pem"))
    assert "deleted a.pem" in details
    assert os.listdir(os.path.join(certs_dir, LID)) == ["b.pem"]
    with pytest.raises(NotFound) as e:
        result_of(store.delete(LID, "a.pem"))
    assert e.value.message == "Certificate Not Found"
    details = result_of(store.delete(LID, "b.pem"))
    assert "no certificates left" in details
    assert not os.path.exists(os.path.join(certs_dir, LID))
    with pytest.raises(ListenerNotFound):
        result_of(store.delete(LID, "b.pem"))


def test_delete_removes_stale_temp_files_with_the_last_certificate(store, certs_dir, rsa_bundle):
    result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    with open(os.path.join(certs_dir, LID, ".tmp-crashed"), "wb") as f:
        f.write(b"partial")
    result_of(store.delete(LID, "a.pem"))
    assert not os.path.exists(os.path.join(certs_dir, LID))


def test_delete_all(store, certs_dir, rsa_bundle):
    result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    result_of(store.put(LID, "b.pem", rsa_bundle.pem()))
    result_of(store.put(OTHER, "a.pem", rsa_bundle.pem()))
    assert result_of(store.delete_all(LID)) is None
    assert sorted(os.listdir(certs_dir)) == [OTHER]
    assert result_of(store.delete_all(LID)) is None  # idempotent


def test_store_never_logs_pem(store, rsa_bundle, captured_log):
    result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    result_of(store.delete(LID, "a.pem"))
    text = "\n".join(formatEvent(e) + repr(e) for e in captured_log)
    assert "a.pem" in text
    assert "PRIVATE KEY" not in text and "BEGIN" not in text


# -- live swap (fake listener manager) ------------------------------------------------------

SET_OK = b"Transaction created for certificate X!\n\n"
COMMIT_OK = b"Committing X.\nSuccess!\n\n"


def live_store(certs_dir, answers, running=True, used=True, name="a.pem"):
    path = os.path.join(certs_dir, LID, name)
    listeners = FakeListeners(runtime_answers=answers, used={(LID, path)} if used else set())
    if running:
        listeners.running.add(LID)
    clock = Clock()
    clock.advance(datetime.datetime.now(datetime.timezone.utc).timestamp())
    return CertificateStore(certs_dir, clock, listeners=listeners), listeners, path


def test_live_swap_commands(certs_dir, rsa_bundle, captured_log):
    store, listeners, path = live_store(certs_dir, {"set ssl cert": SET_OK, "commit ssl cert": COMMIT_OK})
    data = rsa_bundle.pem().replace(b"\n", b"\r\n") + b"\r\n\r\nfriendlyName: x\n"
    result = result_of(store.put(LID, "a.pem", data))
    assert result.live and "applied live" in result.details
    (lid1, set_command), (lid2, commit) = listeners.calls
    assert lid1 == lid2 == LID
    head, payload = set_command.split("\n", 1)
    assert head == f"set ssl cert {path} <<"
    assert payload.endswith("-----END CERTIFICATE-----\n\n")
    body = payload[:-2]
    assert "\n\n" not in body and "\r" not in body and "friendlyName" not in body
    assert body.count("BEGIN") == 4  # key, leaf, two chain certificates, in upload order
    assert body.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert commit == f"commit ssl cert {path}"
    with open(path, "rb") as f:
        assert f.read() == data  # the stored file is the upload, byte for byte
    text = "\n".join(formatEvent(e) + repr(e) for e in captured_log)
    assert "PRIVATE KEY" not in text and "BEGIN" not in text


def test_not_running_no_runtime_call(certs_dir, rsa_bundle):
    store, listeners, _ = live_store(certs_dir, {}, running=False)
    result = result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    assert not result.live and "not running" in result.details
    assert listeners.calls == []


def test_running_but_unused_asks_haproxy(certs_dir, rsa_bundle):
    store, listeners, path = live_store(certs_dir, {"show ssl cert": b"# filename\n/other.pem\n\n"}, used=False)
    result = result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    assert not result.live and "does not use" in result.details
    assert [c for _, c in listeners.calls] == ["show ssl cert"]


def test_running_unused_but_loaded_from_a_directory_is_swapped(certs_dir, rsa_bundle):
    store, listeners, path = live_store(certs_dir, {
        "show ssl cert": f"# transaction\n*{certs_dir}/x.pem\n# filename\n{certs_dir}/{LID}/a.pem\n\n".encode(),
        "set ssl cert": SET_OK, "commit ssl cert": COMMIT_OK}, used=False)
    result = result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    assert result.live
    assert [c.split(" <<")[0] for _, c in listeners.calls] == [
        "show ssl cert", f"set ssl cert {path}", f"commit ssl cert {path}"]


def test_haproxy_refuses_set(certs_dir, rsa_bundle):
    store, listeners, _ = live_store(certs_dir, {
        "set ssl cert": b"Can't replace a certificate which is not referenced by the configuration!\n\n"})
    result = result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    assert not result.live and "not referenced" in result.details and "next reload" in result.details
    assert len(listeners.calls) == 1  # no commit after a refused set


def test_empty_answer_is_not_success(certs_dir, rsa_bundle):
    store, listeners, _ = live_store(certs_dir, {"set ssl cert": b""})
    assert not result_of(store.put(LID, "a.pem", rsa_bundle.pem())).live


def test_failed_commit_is_aborted(certs_dir, rsa_bundle):
    store, listeners, path = live_store(certs_dir, {
        "set ssl cert": SET_OK, "commit ssl cert": b"Can't commit X!\n\n", "abort ssl cert": b"aborted\n"})
    result = result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    assert not result.live and "did not commit" in result.details
    assert listeners.calls[-1] == (LID, f"abort ssl cert {path}")
    assert store.md5sum(LID, "a.pem") == md5_hex(rsa_bundle.pem())  # stored anyway


def test_runtime_error_is_reported_not_raised(certs_dir, rsa_bundle):
    store, listeners, _ = live_store(certs_dir, {"set ssl cert": ConnectionRefusedError("refused")})
    result = result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    assert result.md5sum == md5_hex(rsa_bundle.pem())
    assert not result.live and "runtime API error" in result.details


def test_payload_too_large_for_runtime_api(certs_dir, rsa_bundle):
    store, listeners, _ = live_store(certs_dir, {"set ssl cert": SET_OK, "commit ssl cert": COMMIT_OK})
    data = rsa_bundle.key + rsa_bundle.cert + b"".join(rsa_bundle.chain) * 10
    result = result_of(store.put(LID, "a.pem", data))
    assert not result.live and "exceed" in result.details
    assert listeners.calls == []


def test_unsafe_path_is_not_sent(tmp_path, rsa_bundle):
    certs_dir = tmp_path / "certs dir;x"
    certs_dir.mkdir()
    store, listeners, _ = live_store(str(certs_dir), {"set ssl cert": SET_OK, "commit ssl cert": COMMIT_OK})
    result = result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    assert not result.live and "characters" in result.details
    assert listeners.calls == []


def test_delete_of_a_certificate_in_use_warns(certs_dir, rsa_bundle):
    store, listeners, _ = live_store(certs_dir, {"set ssl cert": SET_OK, "commit ssl cert": COMMIT_OK})
    result_of(store.put(LID, "a.pem", rsa_bundle.pem()))
    details = result_of(store.delete(LID, "a.pem"))
    assert "keeps serving it from memory" in details


def test_operations_on_one_listener_are_serialised(certs_dir, rsa_bundle, ec_bundle):
    pending: list[Deferred] = []

    def slow_set(command):
        d = Deferred()
        pending.append(d)
        return d

    store, listeners, path = live_store(certs_dir, {"set ssl cert": slow_set, "commit ssl cert": COMMIT_OK})
    first = store.put(LID, "a.pem", rsa_bundle.pem())
    second = store.put(LID, "a.pem", ec_bundle.pem())
    deleted = store.delete(LID, "a.pem")
    assert len(pending) == 1 and not fired(first) and not fired(second) and not fired(deleted)
    # the second upload has not even written its file while the first one's swap is in flight
    assert store.md5sum(LID, "a.pem") == md5_hex(rsa_bundle.pem())
    pending[0].callback(SET_OK)
    assert result_of(first).live
    assert len(pending) == 2 and not fired(second)
    pending[1].callback(SET_OK)
    assert result_of(second).md5sum == md5_hex(ec_bundle.pem())
    assert "deleted a.pem" in result_of(deleted)
    assert listeners._locks == {}  # the listener's lock (the store has none of its own)


def test_other_listeners_are_not_blocked(certs_dir, rsa_bundle):
    pending: list[Deferred] = []
    store, listeners, _ = live_store(certs_dir, {"set ssl cert": lambda c: pending.append(Deferred()) or pending[-1],
                                                 "commit ssl cert": COMMIT_OK})
    first = store.put(LID, "a.pem", rsa_bundle.pem())
    other = store.put(OTHER, "a.pem", rsa_bundle.pem())  # OTHER is not running
    assert not fired(first) and fired(other)
    pending[0].callback(SET_OK)
    assert result_of(first).live


def test_runtime_payload_framing():
    """stats.query ends a payload command with the empty line haproxy waits for."""
    from twisted.internet.testing import StringTransport

    from amphora.listeners.stats import _OneCommand

    def written(command):
        protocol = _OneCommand(command, Deferred(), 1024)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport.value()

    assert written(b"show stat") == b"show stat\n"
    assert written(b"show stat\n") == b"show stat\n"
    assert written(b"set ssl cert /x.pem <<\nA\nB") == b"set ssl cert /x.pem <<\nA\nB\n\n"
    assert written(b"set ssl cert /x.pem <<\nA\nB\n\n") == b"set ssl cert /x.pem <<\nA\nB\n\n"


def test_inconsistent_rsa_key_is_refused(rsa_bundle):
    """The cheap arithmetic check replaces cryptography's slow primality-based one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    good = rsa_bundle.issued.key.private_numbers()
    bad = rsa.RSAPrivateNumbers(p=good.p, q=good.q, d=good.d + 2, dmp1=good.dmp1, dmq1=good.dmq1,
                                iqmp=good.iqmp, public_numbers=good.public_numbers)
    pem = bad.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    details = _invalid(pem + rsa_bundle.cert, "Invalid certificate data")
    assert "not a consistent RSA private key" in details


@pytest.mark.parametrize("data,words", [
    (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
     "no matching END line"),
    (b"-----END CERTIFICATE-----\n", "boundary line outside a block"),
    (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END PRIVATE KEY-----\n", "no matching END line"),
    (b"-----BEGIN A-----\n" * 3600, "no matching END line"),  # was quadratic with a regex
    (b"-----BEGIN " * 5900, "boundary line outside a block"),
])
def test_malformed_pem_structure(data, words):
    assert words in _invalid(data, "Invalid certificate data")


def test_upload_waits_for_the_listener_managers_lock(certs_dir, rsa_bundle):
    """A certificate swap never interleaves with the listener's own operations (reload, delete)."""
    from twisted.internet.defer import DeferredLock, maybeDeferred

    listeners = FakeListeners()
    lock = DeferredLock()
    listeners.serialised = lambda lid, fn, *args: lock.run(maybeDeferred, fn, *args)
    store = CertificateStore(certs_dir, Clock(), listeners=listeners)
    lock.acquire()  # a reload of this listener is in progress
    d = store.put(LID, "a.pem", rsa_bundle.pem())
    assert not d.called
    assert not os.path.exists(os.path.join(certs_dir, LID, "a.pem"))
    lock.release()
    assert result_of(d).md5sum
    assert os.path.exists(os.path.join(certs_dir, LID, "a.pem"))
