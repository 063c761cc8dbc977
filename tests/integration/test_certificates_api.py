"""The certificate routes over real mutual TLS, against an in-process agent."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import stat
import uuid

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests import certificates_support as cs

LID = str(uuid.uuid4())


@pytest.fixture(scope="module")
def rsa_bundle():
    return cs.bundle("www.example.com")


@pytest.fixture(scope="module")
def ec_bundle():
    return cs.bundle("ec.example.com", key_kind="ec")


def cert_url(url, name, lid=LID):
    return f"{url}/v0.1/listeners/{lid}/certificates/{name}"


async def call(client, method, url, data=None):
    response = await client.request(method, url, data=data)
    body = await response.content()
    return response, (json.loads(body) if body else None)


def raw_request(pki, port: int, method: str, target: bytes, body: bytes = b"",
                chunked: bool = False) -> tuple[int, dict, bytes]:
    """One request with an exact request target (no client-side URL normalisation). Blocking."""
    context = ssl.create_default_context(cafile=pki.paths["ca"])
    context.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            if chunked:  # HTTP/1.1 without Content-Length, as streaming clients send
                head = (method.encode() + b" " + target + b" HTTP/1.1\r\nHost: localhost\r\n"
                        b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
                body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                                for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
            else:
                head = (method.encode() + b" " + target + b" HTTP/1.0\r\nHost: localhost\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode())
            tls.sendall(head + body)
            answer = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
    header, _, payload = answer.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower().decode(): v.strip().decode()
               for k, _, v in (line.partition(b":") for line in lines[1:])}
    return status, headers, payload


def files_under(root):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return sorted(found)


@pytest_twisted.ensureDeferred
async def test_put_get_delete(client, url, agent, rsa_bundle, ec_bundle):
    certs_dir = agent.config.agent.certs_dir
    data = rsa_bundle.pem()
    md5 = hashlib.md5(data).hexdigest()

    response, body = await call(client, "PUT", cert_url(url, "www.example.com.pem"), data)
    assert response.code == 201, body
    assert body["message"] == "OK" and "RSA-2048" in body["details"]
    assert response.headers.getRawHeaders("etag") == [md5]

    path = os.path.join(certs_dir, LID, "www.example.com.pem")
    with open(path, "rb") as f:
        assert f.read() == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(certs_dir).st_mode) == 0o700

    response, body = await call(client, "GET", cert_url(url, "www.example.com.pem"))
    assert response.code == 200 and body == {"md5sum": md5}
    assert response.headers.getRawHeaders("etag") == [md5]

    # a second certificate, EC, and a replacement of the first with shorter bytes
    response, body = await call(client, "PUT", cert_url(url, "WILDCARD.example.com.pem"), ec_bundle.pem())
    assert response.code == 201 and "EC-secp256r1" in body["details"]
    short = ec_bundle.key + ec_bundle.cert
    response, body = await call(client, "PUT", cert_url(url, "www.example.com.pem"), short)
    assert response.headers.getRawHeaders("etag") == [hashlib.md5(short).hexdigest()]
    with open(path, "rb") as f:
        assert f.read() == short

    response, body = await call(client, "DELETE", cert_url(url, "www.example.com.pem"))
    assert response.code == 200 and body["message"] == "OK"
    response, body = await call(client, "GET", cert_url(url, "www.example.com.pem"))
    assert response.code == 404
    assert body == {"message": "Certificate Not Found",
                    "details": "No certificate with file name: www.example.com.pem"}
    response, body = await call(client, "DELETE", cert_url(url, "www.example.com.pem"))
    assert response.code == 404 and body["message"] == "Certificate Not Found"

    response, body = await call(client, "DELETE", cert_url(url, "WILDCARD.example.com.pem"))
    assert response.code == 200
    assert not os.path.exists(os.path.join(certs_dir, LID))  # the empty directory went too
    response, body = await call(client, "GET", cert_url(url, "WILDCARD.example.com.pem"))
    assert response.code == 404
    assert body == {"message": "Listener Not Found", "details": f"No listener with UUID: {LID}"}


@pytest_twisted.ensureDeferred
async def test_expired_certificate_is_accepted_and_reported(client, url):
    response, body = await call(client, "PUT", cert_url(url, "old.pem"), cs.expired_bundle().pem())
    assert response.code == 201 and "EXPIRED" in body["details"]


@pytest_twisted.ensureDeferred
async def test_validation_failures(client, url, agent, rsa_bundle, ec_bundle):
    other = cs.bundle("other.example.com")
    cases = [
        (b"", "No certificate found"),
        (b"just some text\n", "No certificate found"),
        (rsa_bundle.key, "No certificate found"),
        (rsa_bundle.cert + b"".join(rsa_bundle.chain), "No RSA key found"),
        (cs.ed25519_key_pem() + rsa_bundle.cert, "No RSA key found"),
        (other.key + rsa_bundle.cert, "Certificate and key do not match"),
        (ec_bundle.key + rsa_bundle.cert, "Certificate and key do not match"),
        (cs.encrypted_pkcs8(rsa_bundle.issued.key) + rsa_bundle.cert, "Invalid certificate data"),
        (cs.der(rsa_bundle.issued.cert), "Invalid certificate data"),
        (os.urandom(1000), "Invalid certificate data"),
    ]
    for data, message in cases:
        response, body = await call(client, "PUT", cert_url(url, "a.pem"), data)
        assert response.code == 400, body
        assert body["message"] == message and body["details"], body
        assert "PRIVATE KEY" not in json.dumps(body)
    assert files_under(agent.config.agent.certs_dir) == []


@pytest_twisted.ensureDeferred
async def test_body_limits(client, url, agent, rsa_bundle):
    limit = agent.config.agent.max_certificate_bytes
    data = rsa_bundle.pem()
    response, body = await call(client, "PUT", cert_url(url, "a.pem"), data + b"\n" * (limit + 1 - len(data)))
    assert response.code == 413 and "max_certificate_bytes" in body["details"]
    response, body = await call(client, "PUT", cert_url(url, "a.pem"), data + b"\n" * (limit - len(data)))
    assert response.code == 201  # exactly at the limit is fine
    response, body = await call(client, "PUT", cert_url(url, "b.pem"), b"x" * (4 * 1024 * 1024))
    assert response.code == 413  # refused by the site before any route reads it


@pytest_twisted.ensureDeferred
async def test_malformed_listener_id(client, url, agent, rsa_bundle):
    for lid in ("not-a-uuid", LID.upper(), LID.replace("-", ""), LID + "0"):
        response, body = await call(client, "PUT", cert_url(url, "a.pem", lid=lid), rsa_bundle.pem())
        assert response.code == 400 and "listener id" in body["details"], body
        response, body = await call(client, "GET", cert_url(url, "a.pem", lid=lid))
        assert response.code == 400
    assert files_under(agent.config.agent.certs_dir) == []


@pytest_twisted.ensureDeferred
async def test_topology_gate(client, url, agent, rsa_bundle):
    response, _ = await call(client, "PUT", cert_url(url, "a.pem"), rsa_bundle.pem())
    assert response.code == 201
    agent.topology.status = "TOPOLOGY-CHANGE"
    try:
        for method, data in (("PUT", rsa_bundle.pem()), ("DELETE", None)):
            response, body = await call(client, method, cert_url(url, "a.pem"), data)
            assert response.code == 503 and body["message"] == "Topology transition in progress"
        response, body = await call(client, "GET", cert_url(url, "a.pem"))
        assert response.code == 200  # reads are not gated
    finally:
        agent.topology.status = "OK"
    response, _ = await call(client, "DELETE", cert_url(url, "a.pem"))
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_other_methods(client, url):
    response, body = await call(client, "POST", cert_url(url, "a.pem"), b"x")
    assert response.code == 405 and body["message"] == "Method Not Allowed"


# Request targets exactly as sent on the wire; Klein/werkzeug percent-decode them
# before routing, so %2F, %2e%2e and %00 arrive as '/', '..' and NUL.
HOSTILE_TARGETS = [
    b"..%2F..%2Fetc%2Fpasswd.pem", b"..%2Fx.pem", b"%2e%2e%2fx.pem", b"%2E%2E%2Fx.pem", b"%2e%2e",
    b"..", b"../x.pem", b"a/../b.pem", b"a%2Fb.pem", b"a/b.pem", b"%2Fetc%2Fx.pem", b"/etc/x.pem",
    b"x.pem%00", b"%00.pem", b"x.pem%0a", b"x.pem%0d%0a", b".pem", b"..pem", b".hidden.pem",
    b".tmp-x.pem", b"a%20b.pem", b"a%5Cb.pem", b"*.example.com.pem", b"%2A.example.com.pem",
    b"x.PEM", b"x.pem.bak", b"x.crt", b"x", b"", b"x.pem/", b"caf%C3%A9.pem", b"a;b.pem",
    b"x" * 252 + b".pem", b"%252e%252e%252fx.pem",
]


@pytest_twisted.ensureDeferred
async def test_chunked_upload_never_spools_the_key_to_a_temporary_file(agent, pki, rsa_bundle, monkeypatch):
    """Without Content-Length Twisted would spool a body to tempfile.TemporaryFile (on disk):
    a private key must only ever be written under certs_dir (a memory filesystem)."""
    from twisted.web import http

    spooled = []
    real = http.tempfile.TemporaryFile

    def recording(*args, **kwargs):
        spooled.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(http.tempfile, "TemporaryFile", recording)
    data = rsa_bundle.pem()
    status, headers, payload = await deferToThread(
        raw_request, pki, agent.api_port, "PUT", f"/v0.1/listeners/{LID}/certificates/chunked.pem".encode(),
        data, True)
    assert status == 201, payload
    assert headers["etag"] == hashlib.md5(data).hexdigest()
    assert spooled == []
    # above the certificate limit: still 413, still nothing spooled
    status, _, payload = await deferToThread(
        raw_request, pki, agent.api_port, "PUT", f"/v0.1/listeners/{LID}/certificates/big.pem".encode(),
        b"x" * (agent.config.agent.max_certificate_bytes + 1), True)
    assert status == 413, payload
    assert spooled == []


@pytest_twisted.ensureDeferred
async def test_hostile_names_are_400_and_create_nothing(agent, pki, rsa_bundle, tmp_path):
    port = agent.api_port
    certs_dir = agent.config.agent.certs_dir
    before = files_under(str(tmp_path))
    assert len(HOSTILE_TARGETS) >= 20
    for target in HOSTILE_TARGETS:
        path = f"/v0.1/listeners/{LID}/certificates/".encode() + target
        for method, body in (("PUT", rsa_bundle.pem()), ("GET", b""), ("DELETE", b"")):
            status, headers, payload = await deferToThread(raw_request, pki, port, method, path, body)
            assert status == 400, (target, method, payload)
            document = json.loads(payload)
            assert document["message"] == "Invalid certificate file name", (target, document)
    assert files_under(certs_dir) == []
    # other parts of the agent may write their own state meanwhile (packages.json ...): no
    # file anywhere else, and no .pem anywhere
    state_dir = agent.config.agent.state_dir
    new = sorted(set(files_under(str(tmp_path))) - set(before))
    assert [f for f in new if not f.startswith(state_dir + os.sep) or f.endswith(".pem")] == []
    assert not os.path.exists("/etc/passwd.pem") and not os.path.exists("/etc/x.pem")


@pytest_twisted.ensureDeferred
async def test_non_utf8_name_is_refused_and_creates_nothing(agent, pki, rsa_bundle):
    status, headers, payload = await deferToThread(
        raw_request, pki, agent.api_port, "PUT", f"/v0.1/listeners/{LID}/certificates/%FF.pem".encode(),
        rsa_bundle.pem())
    assert status == 400
    assert files_under(agent.config.agent.certs_dir) == []


@pytest_twisted.ensureDeferred
async def test_double_slash_is_404_not_500(agent, pki):
    """werkzeug's merge_slashes redirect used to end as a 500 (fixed in app.py)."""
    for target in (b"/v0.1//topology", f"/v0.1/listeners/{LID}//certificates/a.pem".encode()):
        status, headers, payload = await deferToThread(raw_request, pki, agent.api_port, "GET", target)
        assert status == 404, (target, payload)
        assert json.loads(payload)["message"] == "Not Found"
