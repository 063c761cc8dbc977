"""``make run``'s development PKI and configuration (amphora.devpki): made once, then reused."""

import os

from cryptography import x509
from cryptography.x509.oid import NameOID

from amphora import devpki
from amphora.config import load_config


def _cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())[0]


def test_dev_environment_is_a_valid_config_with_the_right_identities(tmp_path):
    paths = devpki.make_dev_environment(str(tmp_path / "dev"))
    config = load_config(paths["agent.conf"])  # the agent accepts it as is
    assert (config.agent.bind_host, config.agent.bind_port) == ("127.0.0.1", 9443)
    assert config.tls.client_ca == paths["ca.pem"] and config.tls.server_cert == paths["server.pem"]
    ca, server, client = (_cert(paths[n]) for n in ("ca.pem", "server.pem", "client.pem"))
    cn = server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == config.agent.amphora_id
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    # Octavia's client checks the amphora id, not the address, against the DNS names.
    assert config.agent.amphora_id in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    for cert in (server, client):
        cert.verify_directly_issued_by(ca)
    assert oct(os.stat(paths["ca-key.pem"]).st_mode & 0o777) == "0o600"


def test_second_run_reuses_everything(tmp_path, capsys):
    directory = str(tmp_path / "dev")
    assert devpki.main([directory]) == 0
    first = {name: open(path, "rb").read() for name, path in devpki.make_dev_environment(directory).items()}
    assert capsys.readouterr().out.strip() == os.path.join(directory, "agent.conf")
    again = {name: open(path, "rb").read() for name, path in devpki.make_dev_environment(directory).items()}
    assert again == first


def test_partial_directory_is_refused_not_mixed(tmp_path, capsys):
    from amphora import devpki

    directory = str(tmp_path / "dev")
    devpki.make_dev_environment(directory)
    os.unlink(os.path.join(directory, "client-key.pem"))
    before = open(os.path.join(directory, "ca.pem"), "rb").read()
    assert devpki.main([directory]) == 1
    assert "missing: client-key.pem" in capsys.readouterr().err
    assert open(os.path.join(directory, "ca.pem"), "rb").read() == before
    assert not os.path.exists(os.path.join(directory, "client-key.pem"))


def test_port_argument_reaches_the_config(tmp_path):
    from amphora import devpki
    from amphora.config import load_config

    assert devpki.main([str(tmp_path / "dev"), "19443"]) == 0
    assert load_config(str(tmp_path / "dev" / "agent.conf")).agent.bind_port == 19443
