"""A development PKI and configuration, made with ``cryptography``.

``python -m amphora.devpki DIR [PORT]`` (or ``amphora-devpki DIR [PORT]``) writes, once:

- ``ca.pem`` / ``ca-key.pem``: a CA that signs both sides;
- ``server.pem``: the agent's certificate (CN = amphora id, DNS SANs localhost and the amphora id,
  127.0.0.1, ::1) followed by its key;
- ``client.pem`` / ``client-key.pem``: a controller's client certificate;
- ``agent.conf``: a configuration that uses them, listening on 127.0.0.1:PORT
  (default 9443), with its state under ``DIR``.

Existing files are kept, so a second ``make run`` reuses the same identity.
The same functions make the certificates the tests need (other CAs, expired
or intermediate-signed certificates).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class DevPKIError(Exception):
    """The development directory is unusable as it is."""


@dataclass
class Issued:
    cert: x509.Certificate
    key: object

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL
            if isinstance(self.key, rsa.RSAPrivateKey)
            else serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_key(kind: str = "rsa"):
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "amphora-agent dev CA", issuer: Issued | None = None,
            key_kind: str = "rsa", days: int = 3650) -> Issued:
    """A CA certificate: self-signed, or an intermediate signed by ``issuer``."""
    key = new_key(key_kind)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def issue(ca: Issued, cn: str, *, server: bool = False, client: bool = False,
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), key_kind: str = "rsa",
          not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None, key=None) -> Issued:
    """A leaf certificate signed by ``ca``."""
    key = key or new_key(key_kind)
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _write_once(path: str, data: bytes, mode: int = 0o600) -> None:
    if os.path.exists(path):
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


DEV_CONFIG = """\
# Development configuration written by amphora.devpki; edit freely, it is kept.
[agent]
amphora_id = {amphora_id}
bind_host = 127.0.0.1
bind_port = {port}
state_dir = {dir}/state
run_dir = {dir}/run
certs_dir = {dir}/certs
log_dir = {dir}/log

[tls]
server_cert = {dir}/server.pem
client_ca = {dir}/ca.pem

[heartbeat]
# Watch them with: python -m amphora.heartbeat.receiver --bind 127.0.0.1:5555 --key {hb_key}
controllers = 127.0.0.1:5555
interval = 10
key = {hb_key}
"""


def make_dev_environment(directory: str, port: int = 9443) -> dict[str, str]:
    """Write the development PKI and config into ``directory`` unless present."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {name: os.path.join(directory, name) for name in
             ("ca.pem", "ca-key.pem", "server.pem", "client.pem", "client-key.pem", "agent.conf")}
    present = [name for name, p in paths.items() if os.path.exists(p)]
    if present and len(present) < len(paths):
        # Mixing new keys with old ones would give certificates that no longer
        # match each other or the config; say so instead.
        missing = sorted(set(paths) - set(present))
        raise DevPKIError(f"{directory} holds only part of a development environment "
                          f"(missing: {', '.join(missing)}); remove it and run again")
    if not present:
        amphora_id = str(uuid.uuid4())
        ca = make_ca()
        # Octavia's client checks the amphora id against the DNS names (urllib3 2 reads only the SANs).
        server = issue(ca, amphora_id, server=True, dns=("localhost", amphora_id), ips=("127.0.0.1", "::1"))
        client = issue(ca, "octavia-controller", client=True)
        _write_once(paths["ca.pem"], ca.cert_pem, 0o644)
        _write_once(paths["ca-key.pem"], ca.key_pem)
        _write_once(paths["server.pem"], server.cert_pem + server.key_pem)
        _write_once(paths["client.pem"], client.cert_pem)
        _write_once(paths["client-key.pem"], client.key_pem)
        _write_once(paths["agent.conf"], DEV_CONFIG.format(
            amphora_id=amphora_id, port=port, dir=directory,
            hb_key=os.urandom(16).hex()).encode(), 0o644)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].isdigit()):
        print("usage: amphora-devpki DIR [PORT]", file=sys.stderr)
        return 2
    try:
        paths = make_dev_environment(argv[0], *(int(a) for a in argv[1:]))
    except DevPKIError as e:
        print(f"amphora-devpki: {e}", file=sys.stderr)
        return 1
    print(paths["agent.conf"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
