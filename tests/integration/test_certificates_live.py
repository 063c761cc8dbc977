"""Live certificate swap against a real haproxy terminating TLS on loopback.

The store talks to haproxy through a small fake listener manager whose
``runtime()`` is the real runtime API client (amphora.listeners.stats.query)
on haproxy's admin stats socket. A real TLS client opens a new connection after
each upload and checks which certificate it is served; haproxy's pid never
changes (no reload, no restart).
"""

from __future__ import annotations

import os
import uuid

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from amphora.certificates import CertificateStore
from amphora.listeners import stats
from amphora.testing import FakeListeners
from tests import certificates_support as cs

NAME = "www.example.com.pem"


async def served(port, cn=None, cafile=None):
    return cs.cn_of(await deferToThread(cs.served_certificate, port, cn, cafile))


@pytest_twisted.ensureDeferred
async def test_live_swap_with_real_haproxy(tmp_path):
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir(mode=0o700)
    lid = str(uuid.uuid4())
    sock = str(tmp_path / "amp4-admin.sock")
    root_ca = tmp_path / "root.pem"
    root_ca.write_bytes(cs.root_ca().cert_pem)
    listeners = FakeListeners(reactor, sockets={lid: sock}, running=())
    store = CertificateStore(str(certs_dir), reactor, listeners=listeners)

    first, second, third = cs.bundle("a.example.com"), cs.bundle("b.example.com", key_kind="ec"), \
        cs.bundle("c.example.com")
    result = await store.put(lid, NAME, first.pem())  # before the listener runs: stored only
    assert not result.live and "not running" in result.details
    path = store.path(lid, NAME)

    port = cs.free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(cs.haproxy_tls_config(port, path, sock))
    haproxy = cs.HAProxy(str(config), str(tmp_path / "haproxy.log")).start()
    try:
        await haproxy.wait_ready(reactor, sock, port)
        listeners.running.add(lid)
        listeners.used.add((lid, path))
        pid = haproxy.proc.pid
        assert await served(port, "a.example.com", str(root_ca)) == "a.example.com"

        # RSA -> EC, live
        result = await store.put(lid, NAME, second.pem())
        assert result.live, result.details
        assert "applied live" in result.details
        assert await served(port, "b.example.com", str(root_ca)) == "b.example.com"

        # EC -> RSA, blocks in another order (leaf, chain, key): the chain still verifies
        result = await store.put(lid, NAME, third.cert + b"".join(third.chain) + third.key)
        assert result.live, result.details
        assert await served(port, "c.example.com", str(root_ca)) == "c.example.com"
        assert haproxy.proc.poll() is None and haproxy.proc.pid == pid  # same process: no reload

        # no open transaction is left behind
        answer = (await stats.query(reactor, sock, "show ssl cert")).decode()
        assert "# transaction" not in answer and path in answer

        # a certificate this haproxy does not use is stored, not swapped
        result = await store.put(lid, "unused.pem", first.pem())
        assert not result.live and "does not use" in result.details

        # a configuration that claims a file haproxy never loaded: haproxy refuses, we say so
        listeners.used.add((lid, store.path(lid, "unused.pem")))
        result = await store.put(lid, "unused.pem", first.pem())
        assert not result.live and "not referenced" in result.details

        # deleting the file in use: haproxy keeps serving from memory, and we say so
        details = await store.delete(lid, NAME)
        assert "keeps serving it from memory" in details
        assert not os.path.exists(path)
        assert await served(port) == "c.example.com"
        assert haproxy.proc.pid == pid and haproxy.proc.poll() is None
    finally:
        haproxy.stop()
