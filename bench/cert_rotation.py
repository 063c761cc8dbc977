#!/usr/bin/env python3
"""Server certificate rotation: time from ``PUT /1.0/certificate`` to the first TLS
handshake that presents the new certificate.

Starts ``twistd -n amphora-agent`` on loopback (certificates from tests.helpers),
then ``--rounds`` times: issues a new server certificate from the same CA, sends
it with ``PUT /1.0/certificate`` over a mutual-TLS connection, and as soon as the
answer is in opens new connections until one is served the new certificate.
Prints per round the PUT's own time (validation, OpenSSL context, two fsynced
writes) and the time to the first new handshake (counted from the PUT's start),
then the median and the maximum.

    python bench/cert_rotation.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography import x509  # noqa: E402

from amphora import devpki  # noqa: E402
from tests.helpers import TwistdAgent, free_port, make_pki, write_config  # noqa: E402


def put_certificate(pki, port: int, body: bytes) -> int:
    context = ssl.create_default_context(cafile=pki.paths["ca"])
    context.check_hostname = False
    context.load_cert_chain(pki.paths["client_cert"], pki.paths["client_key"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"PUT /1.0/certificate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return int(answer.split()[1])


def served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cert-rotation-") as root:
        pki = make_pki(os.path.join(root, "pki"))
        port = free_port()
        server_pem = os.path.join(root, "server.pem")
        with open(server_pem, "wb") as f:
            f.write(pki.server.cert_pem + pki.server.key_pem)
        config = write_config(pki, os.path.join(root, "agent"), port, {"tls": {"server_cert": server_pem}})
        agent = TwistdAgent(config, os.path.join(root, "twistd.log")).start()
        try:
            agent.wait_listening(port)
            puts, firsts, late = [], [], 0
            for i in range(args.rounds):
                issued = devpki.issue(pki.ca, pki.amphora_id, server=True, dns=("localhost", pki.amphora_id))
                started = time.perf_counter()
                code = put_certificate(pki, port, issued.cert_pem + issued.key_pem)
                answered = time.perf_counter()
                assert code == 202, code
                tries = 1
                while served_serial(port) != issued.cert.serial_number:
                    tries += 1
                first = time.perf_counter()
                puts.append((answered - started) * 1000)
                firsts.append((first - started) * 1000)
                late += tries > 1
                print(f"round {i + 1:2d}: PUT {puts[-1]:7.1f} ms, first new handshake {firsts[-1]:7.1f} ms"
                      f" ({tries} handshake{'s' if tries > 1 else ''} after the answer)")
            print(f"PUT /1.0/certificate: median {statistics.median(puts):.1f} ms, max {max(puts):.1f} ms")
            print(f"first handshake with the new certificate: median {statistics.median(firsts):.1f} ms, "
                  f"max {max(firsts):.1f} ms (from the PUT's start); rounds where the first handshake after "
                  f"the answer still showed the old one: {late}")
        finally:
            agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
