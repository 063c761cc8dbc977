"""The HTTP front door (issue 17 part 2): every malformed request is answered at once,
as JSON, over real mTLS, and the connection is closed. Raw TLS sockets send what no
HTTP client library would."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from tests.listener_support import new_id


def _tls(port: int, pki, timeout: float):
    ctx = ssl.create_default_context(cafile=pki.paths["ca"])
    ctx.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def exchange(port: int, pki, chunks, wait: float = 5.0, pause: float = 0.0):
    """Send ``chunks`` (``pause`` s apart), read until the server closes or ``wait`` s pass.

    Returns (status, headers, body, raw bytes, closed, seconds until the close or the end)."""
    started = time.monotonic()
    data, closed = b"", False
    with _tls(port, pki, wait) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the server may answer and close before everything is sent
        sock.settimeout(max(0.1, wait - (time.monotonic() - started)))
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
        except (socket.timeout, ssl.SSLError, OSError):
            pass
    elapsed = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith(b"HTTP/") else None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body, data, closed, elapsed


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2:]
    return out


def assert_json_error(status, headers, body, expected):
    assert status == expected, (status, body)
    assert headers.get("content-type") == "application/json"
    doc = json.loads(body)
    assert isinstance(doc["message"], str) and doc["message"]
    return doc


@pytest.fixture
def log_events():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


async def send(agent, pki, *chunks, wait=5.0, pause=0.0):
    return await deferToThread(exchange, agent.api_port, pki, chunks, wait, pause)


# -- Host ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [b"localhost/../..@evil:1", b"a" * 10_000, b"localhost:port", b"::1"])
@pytest_twisted.ensureDeferred
async def test_bad_host_header_is_400_json_without_a_traceback(agent, pki, log_events, host):
    status, headers, body, _, closed, _ = await send(
        agent, pki, b"GET /info HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    doc = assert_json_error(status, headers, body, 400)
    assert "Host" in doc["details"]
    assert closed
    assert not [e for e in log_events if e.get("log_failure") is not None], \
        [formatEvent(e) for e in log_events if e.get("log_failure") is not None]


@pytest.mark.parametrize("host", [b"localhost", b"localhost:9443", b"127.0.0.1:1", b"[::1]:9443", b"[::1]"])
@pytest_twisted.ensureDeferred
async def test_good_host_headers_are_served(agent, pki, host):
    status, _, body, _, _, _ = await send(
        agent, pki, b"GET /info HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    assert status == 200, body


# -- line and header sizes ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_request_line_over_16k_is_414_at_once(agent, pki):
    agent.site.header_deadline = 30.0
    status, headers, body, _, closed, elapsed = await send(
        agent, pki, b"GET /" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", wait=10.0)
    assert_json_error(status, headers, body, 414)
    assert closed and elapsed < 8.0


@pytest_twisted.ensureDeferred
async def test_unterminated_request_line_over_16k_is_414_at_once(agent, pki):
    status, headers, body, _, closed, elapsed = await send(agent, pki, b"GET /" + b"a" * 17_000, wait=10.0)
    assert_json_error(status, headers, body, 414)
    assert closed and elapsed < 8.0


@pytest_twisted.ensureDeferred
async def test_header_line_over_16k_is_431_at_once(agent, pki):
    status, headers, body, _, closed, elapsed = await send(
        agent, pki, b"GET /info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n", wait=10.0)
    assert_json_error(status, headers, body, 431)
    assert closed and elapsed < 8.0


@pytest_twisted.ensureDeferred
async def test_more_than_500_headers_is_431_json(agent, pki):
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(501))
    status, headers, body, _, closed, _ = await send(agent, pki, b"GET /info HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert_json_error(status, headers, body, 431)
    assert closed


# -- bodies ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_huge_content_length_is_413_before_any_body_byte(agent, pki):
    lid = new_id()
    status, headers, body, raw, closed, elapsed = await send(
        agent, pki, f"PUT /v0.1/listeners/{lid}/haproxy HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Length: {10 ** 26}\r\n\r\n".encode(), wait=10.0)
    assert_json_error(status, headers, body, 413)
    assert closed and elapsed < 8.0


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_above_the_route_cap_is_413_never_100(agent, pki):
    lid = new_id()
    too_big = agent.config.haproxy.max_config_bytes + 1
    status, headers, body, raw, closed, _ = await send(
        agent, pki, f"PUT /v0.1/listeners/{lid}/haproxy HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    f"Content-Length: {too_big}\r\n\r\n".encode(), wait=5.0)
    assert b"100 Continue" not in raw
    assert_json_error(status, headers, body, 413)
    assert closed


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_within_the_cap_gets_100(agent, pki):
    status, _, _, raw, _, _ = await send(
        agent, pki, b"PUT /v0.1/topology HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 2\r\n\r\n", wait=1.5)
    assert raw.startswith(b"HTTP/1.1 100 Continue")


@pytest_twisted.ensureDeferred
async def test_slow_body_from_an_authenticated_client_meets_the_body_deadline(agent, pki):
    agent.site.body_deadline = 0.8
    head = b"POST /v0.1/topology HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    # a byte every 0.2 s: the idle timeout never fires, only the body deadline can
    status, headers, body, _, closed, elapsed = await send(agent, pki, head, *[b" "] * 30, wait=8.0, pause=0.2)
    assert_json_error(status, headers, body, 408)
    assert closed and elapsed < 7.0


# -- framing Twisted would answer itself -------------------------------------------------


@pytest.mark.parametrize("request_bytes, expected", [
    (b"GET /info HTTP/2.0\r\nHost: x\r\n\r\n", 400),
    (b"GET  /info HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"POST /v0.1/topology HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    (b"POST /v0.1/topology HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /info HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    (b"POST /v0.1/topology HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
], ids=["http2", "two-spaces", "asterisk", "options-asterisk", "duplicate-length", "negative-length",
        "bad-header", "bad-chunk"])
@pytest_twisted.ensureDeferred
async def test_framing_errors_get_the_json_error_shape(agent, pki, request_bytes, expected):
    status, headers, body, _, closed, _ = await send(agent, pki, request_bytes)
    assert_json_error(status, headers, body, expected)
    assert closed


@pytest.mark.parametrize("content_type", [b"multipart/form-data; boundary=b", b"multipart/form-data"])
@pytest_twisted.ensureDeferred
async def test_multipart_body_on_a_json_route_is_400_json(agent, pki, content_type):
    body = b"xx"  # not a multipart body: Twisted's form parser would answer a bare 400 itself
    status, headers, answer, _, _, _ = await send(
        agent, pki, b"POST /v0.1/topology HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (content_type, len(body), body))
    doc = assert_json_error(status, headers, answer, 400)
    assert "JSON" in doc["details"]


# -- the connection still works for good requests ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_keep_alive_requests_still_work(agent, pki):
    request = b"GET /info HTTP/1.1\r\nHost: localhost\r\n\r\n"
    _, _, _, raw, _, _ = await send(agent, pki, request, request, wait=1.5)
    assert raw.count(b"HTTP/1.1 200 OK") == 2


# -- methods under /v0.1/listeners/<id> --------------------------------------------------


@pytest.mark.parametrize("method, tail, allow", [
    ("PUT", "", "DELETE, GET"),
    ("OPTIONS", "", "DELETE, GET"),
    ("POST", "", "DELETE, GET"),
    ("PUT", "/logs", "GET"),
    ("OPTIONS", "/logs", "GET"),
    ("DELETE", "/logs", "GET"),
    ("OPTIONS", "/haproxy", "GET, PUT"),
    ("DELETE", "/haproxy", "GET, PUT"),
    ("GET", "/start", "PUT"),
    ("OPTIONS", "/reload", "PUT"),
    ("OPTIONS", "/certificates/a.pem", "DELETE, GET, PUT"),
    ("POST", "/certificates/a.pem", "DELETE, GET, PUT"),
])
@pytest_twisted.ensureDeferred
async def test_wrong_method_under_a_listener_is_405_with_that_paths_allow(client, url, method, tail, allow):
    response = await client.request(method, f"{url}/v0.1/listeners/{new_id()}{tail}")
    body = await response.json()
    assert response.code == 405, body
    assert response.headers.getRawHeaders("allow") == [allow]
    assert allow in body["details"]


@pytest_twisted.ensureDeferred
async def test_unknown_listener_paths_stay_404_and_bad_ids_400(client, url):
    lid = new_id()
    for method in ("GET", "PUT", "OPTIONS"):
        response = await client.request(method, f"{url}/v0.1/listeners/{lid}/haproxy/more")
        assert response.code == 404, (method, await response.text())
    response = await client.put(f"{url}/v0.1/listeners/..%2F..")
    assert response.code == 400
    response = await client.put(f"{url}/v0.1/listeners/{lid}/bogus")
    assert response.code == 400 and "Unknown action: bogus" in (await response.json())["details"]


@pytest.mark.parametrize("body", [b"", b"  \n"])
@pytest_twisted.ensureDeferred
async def test_put_haproxy_with_an_empty_body_is_400(client, url, agent, body):
    lid = new_id()
    response = await client.put(f"{url}/v0.1/listeners/{lid}/haproxy", data=body)
    assert response.code == 400, await response.text()
    assert not agent.listeners.exists(lid)


# -- log lines ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_log_lines_name_methods_and_paths_as_text(client, url, agent, pki, log_events, monkeypatch):
    from amphora.errors import OperationFailed

    async def failing(lid):
        raise OperationFailed("boom")

    monkeypatch.setattr(agent.listeners, "status", failing)
    lid = new_id()
    response = await client.get(f"{url}/v0.1/listeners/{lid}")
    assert response.code == 500
    await send(agent, pki, b"GET /" + b"a" * 17_000 + b" HTTP/1.1\r\n\r\n")
    await send(agent, pki, b"PUT /v0.1/listeners/x/haproxy HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
    lines = [formatEvent(e) for e in log_events]
    assert any(f"GET /v0.1/listeners/{lid} failed" in line for line in lines), lines
    assert any("PUT /v0.1/listeners/x/haproxy: 413" in line for line in lines), lines
    assert not [line for line in lines if "b'" in line or 'b"' in line], lines


@pytest_twisted.ensureDeferred
async def test_anything_escaping_a_resource_is_a_json_500_not_twisteds_html(agent, pki, monkeypatch):
    def broken(request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(agent.site, "getResourceFor", broken)
    status, headers, body, _, _, _ = await send(
        agent, pki, b"GET /info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    doc = assert_json_error(status, headers, body, 500)
    assert "a bug" not in json.dumps(doc) and "Traceback" not in json.dumps(doc)
