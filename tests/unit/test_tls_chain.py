"""The chain the API presents (amphora.api.tls): the file's, completed with intermediates from the
client CA bundle, never a self-signed root; built once, not by OpenSSL on every handshake."""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL

from amphora import devpki
from amphora.api.tls import ServerContextFactory, completing_intermediates
from amphora.config import load_config
from tests.helpers import drain_bio, write_config


def presented_chain(server_ctx: SSL.Context, pki, trust: str) -> list[str]:
    """Handshake in memory with a client that trusts ``trust``; the subjects the server sent."""
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.use_certificate_file(pki.paths["client_cert"])
    client_ctx.use_privatekey_file(pki.paths["client_key"])
    client_ctx.load_verify_locations(trust)
    client_ctx.set_verify(SSL.VERIFY_PEER)
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    done = set()
    for _ in range(10):
        for name, conn, peer in (("client", client, server), ("server", server, client)):
            try:
                conn.do_handshake()
                done.add(name)
            except SSL.WantReadError:
                pass
            data = drain_bio(conn)
            if data:
                peer.bio_write(data)
        if done == {"client", "server"}:
            break
    assert done == {"client", "server"}  # the client verified what it got
    return [c.to_cryptography().subject.rfc4514_string() for c in client.get_peer_cert_chain()]


def _context(pki, tmp_path, server_pem: str, client_ca: str | None = None) -> SSL.Context:
    extra = {"tls": {"server_cert": server_pem, **({"client_ca": client_ca} if client_ca else {})}}
    return ServerContextFactory(load_config(write_config(pki, str(tmp_path / "agent"), 0, extra)).tls).getContext()


def test_a_leaf_of_the_root_goes_alone(pki, tmp_path):
    # the server's CA is also the client CA: OpenSSL would have sent the root too
    chain = presented_chain(_context(pki, tmp_path, pki.paths["server"]), pki, pki.paths["ca"])
    assert chain == [f"CN={pki.amphora_id}"], chain


def test_intermediates_come_from_the_file_or_the_client_ca_bundle(pki, tmp_path):
    intermediate = devpki.make_ca("test intermediate", issuer=pki.ca)
    leaf = devpki.issue(intermediate, pki.amphora_id, server=True, dns=("localhost",))
    expected = [f"CN={pki.amphora_id}", "CN=test intermediate"]
    # in the server's file
    in_file = pki.write("chain-in-file.pem", leaf.cert_pem + intermediate.cert_pem + leaf.key_pem)
    assert presented_chain(_context(pki, tmp_path, in_file), pki, pki.paths["ca"]) == expected
    # only in the client CA bundle (root + intermediate): found there, the root left out
    leaf_only = pki.write("leaf-only.pem", leaf.cert_pem + leaf.key_pem)
    bundle = pki.write("bundle.pem", pki.ca.cert_pem + intermediate.cert_pem)
    assert presented_chain(_context(pki, tmp_path, leaf_only, bundle), pki, pki.paths["ca"]) == expected


def test_completion_stops_at_the_root_and_at_impostors(pki, tmp_path):
    intermediate = devpki.make_ca("test intermediate", issuer=pki.ca)
    leaf = devpki.issue(intermediate, pki.amphora_id, server=True, dns=("localhost",))
    leaf_only = pki.write("leaf-only.pem", leaf.cert_pem + leaf.key_pem)
    # same name, other key: not the issuer
    impostor = devpki.make_ca("test intermediate", issuer=pki.ca)
    bundle = pki.write("impostor.pem", pki.ca.cert_pem + impostor.cert_pem)
    assert completing_intermediates(leaf_only, bundle) == []
    bundle = pki.write("both.pem", pki.ca.cert_pem + impostor.cert_pem + intermediate.cert_pem)
    assert completing_intermediates(leaf_only, bundle) == [x509.load_pem_x509_certificate(intermediate.cert_pem)]
    # nothing to add for a leaf of the root, or when the files cannot be read
    assert completing_intermediates(pki.paths["server"], pki.paths["ca"]) == []
    assert completing_intermediates(str(tmp_path / "missing.pem"), pki.paths["ca"]) == []
