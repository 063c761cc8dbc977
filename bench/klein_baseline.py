#!/usr/bin/env python3
"""The bare Klein baseline of the API benchmarks: one route answering a fixed JSON body.

``klein_site(body)`` is the Site (``bench/request_path.py`` drives it in-process);
run as a script, it serves that Site over mutual TLS with an equivalent pyOpenSSL
context of its own (TLS >= 1.2, client certificate required by the CA, OpenSSL's
defaults otherwise: no Python callback, tickets on), as ``bench/api_throughput.py``
starts it:

    python bench/klein_baseline.py SERVER_PEM CA_PEM PORT BODY
"""

from __future__ import annotations

import sys

from klein import Klein
from twisted.web.server import Site


def klein_site(body: bytes) -> Site:
    app = Klein()

    @app.route("/info")
    def info(request):
        request.setHeader(b"content-type", b"application/json")
        return body

    site = Site(app.resource())
    site.noisy = False
    site.log = lambda request: None
    return site


def main() -> None:
    from OpenSSL import SSL
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.internet.interfaces import IOpenSSLContextFactory
    from zope.interface import implementer

    if len(sys.argv) != 5:  # `make bench` runs every script bare: this one measures nothing alone
        print("klein_baseline.py: the bare Klein server of bench/api_throughput.py (not a benchmark itself);"
              " usage: klein_baseline.py SERVER_PEM CA_PEM PORT BODY")
        return
    server_pem, ca, port, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate_chain_file(server_pem)
    ctx.use_privatekey_file(server_pem)
    ctx.load_verify_locations(ca)
    ctx.load_client_ca(ca.encode())
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    ctx.set_session_id(b"bare-klein")

    @implementer(IOpenSSLContextFactory)
    class Factory:
        def getContext(self):
            return ctx

    SSL4ServerEndpoint(reactor, port, Factory(), interface="127.0.0.1").listen(klein_site(body))
    reactor.run()


if __name__ == "__main__":
    main()
