"""How long certificate validation holds the reactor thread, per upload.

Prints the time of ``validate_pem`` for typical uploads (RSA-2048, RSA-4096,
EC P-256, each with a two-certificate chain) and for the largest allowed body,
next to a baseline measured in the same run: md5 of the same bytes (what the
agent must do anyway) and one atomic write to a temporary directory.

    .venv/bin/python bench/certificates_validate.py
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from amphora import devpki  # noqa: E402
from amphora.certificates import md5_hex, validate_pem  # noqa: E402
from amphora.errors import InvalidRequest  # noqa: E402
from amphora.fsutil import atomic_write  # noqa: E402


def per_call(fn, seconds=0.5):
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def main():
    root = devpki.make_ca("bench root")
    inter = devpki.make_ca("bench intermediate", issuer=root)
    chain = inter.cert_pem + root.cert_pem
    now = datetime.datetime.now(datetime.timezone.utc)
    bodies = {}
    for label, kind, bits in (("RSA-2048", "rsa", 2048), ("RSA-4096", "rsa", 4096), ("EC-P256", "ec", 0)):
        key = devpki.new_key(kind) if bits != 4096 else __import__(
            "cryptography.hazmat.primitives.asymmetric.rsa", fromlist=["rsa"]).generate_private_key(65537, 4096)
        issued = devpki.issue(inter, "bench.example.com", server=True, key=key)
        bodies[label] = issued.key_pem + issued.cert_pem + chain
    big = bodies["RSA-2048"] + inter.cert_pem * ((64 * 1024 - len(bodies["RSA-2048"])) // len(inter.cert_pem))
    bodies["RSA-2048 + chain up to 64 KiB"] = big
    bodies["hostile: 64 KiB of BEGIN lines"] = (b"-----BEGIN CERTIFICATE-----\n" * 2400)[: 64 * 1024]

    def validate(body):
        try:
            validate_pem(body, now)
        except InvalidRequest:
            pass

    with tempfile.TemporaryDirectory(prefix="amp4-bench-") as tmp:
        for label, body in bodies.items():
            v = per_call(lambda: validate(body))
            m = per_call(lambda: md5_hex(body))
            w = per_call(lambda: atomic_write(os.path.join(tmp, "x.pem"), body, 0o600))
            print(f"{label:32s} {len(body):6d} B  validate {v * 1e3:7.3f} ms   md5 {m * 1e3:6.3f} ms   "
                  f"atomic write {w * 1e3:6.3f} ms   validate/write {v / w:5.2f}x")


if __name__ == "__main__":
    main()
