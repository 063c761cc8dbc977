"""docs/configuration.rst and conf/amphora-agent.conf are generated from the schema's metadata."""

import os
from dataclasses import fields

import pytest

from amphora import configdoc
from amphora.config import SECTIONS, parse_config

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def test_generated_files_are_in_sync_with_the_schema():
    assert configdoc.stale(REPO) == [], "stale: run `python -m amphora.configdoc` in the checkout"


@pytest.mark.parametrize("section, f", [(name, f) for name, cls in SECTIONS.items() for f in fields(cls)],
                         ids=lambda v: getattr(v, "name", v))
def test_every_option_is_documented(section, f):
    assert f.metadata["help"].strip(), f"{section}.{f.name} has no help text"
    if f.metadata["required"]:
        assert f.metadata["example"], f"{section}.{f.name} is required and has no example"
    assert section in configdoc.render_reference() and f"``{f.name}``" in configdoc.render_reference()


def test_every_section_has_its_own_docstring():
    for name, cls in SECTIONS.items():
        assert not configdoc.section_help(cls).startswith(cls.__name__ + "("), f"[{name}] has no docstring"


def test_shown_defaults_parse_back_to_the_defaults():
    for cls in SECTIONS.values():
        for f in fields(cls):
            if not f.metadata["required"] and f.name != "binary":  # binaries must exist
                assert f.metadata["parse"](configdoc.ini_value(f.default)) == f.default, f.name


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "conf").mkdir()
    assert configdoc.main([str(tmp_path)]) == 0
    assert configdoc.main([str(tmp_path), "--check"]) == 0
    with open(tmp_path / "conf" / "amphora-agent.conf", "a") as f:
        f.write("# hand edit\n")
    assert configdoc.main([str(tmp_path), "--check"]) == 1
    assert "conf/amphora-agent.conf is stale" in capsys.readouterr().err


def test_generated_sample_is_a_valid_configuration(pki):
    text = configdoc.render_sample().replace("/etc/octavia/certs/server.pem", pki.paths["server"]).replace(
        "/etc/octavia/certs/client_ca.pem", pki.paths["ca"])
    assert parse_config(text).agent.amphora_id == "6e2bc8a0-2548-4fb7-a5f0-fb1ef4a696ce"


def test_readme_minimal_configuration_is_valid(pki):
    """The front page's minimal configuration is accepted as it stands (with real certificate files)."""
    readme = open(os.path.join(REPO, "README.rst"), encoding="utf-8").read()
    section = readme.split("A minimal configuration\n")[1].split("\nRoutes\n")[0]
    block = section.split("::\n\n", 1)[1].split("\n\n", 3)
    text = "\n".join(line[4:] for line in "\n\n".join(block[:3]).splitlines())
    text = text.replace("/etc/octavia/certs/server.pem", pki.paths["server"]).replace(
        "/etc/octavia/certs/client_ca.pem", pki.paths["ca"])
    cfg = parse_config(text)
    assert cfg.heartbeat.controllers == (("192.0.2.10", 5555),) and cfg.heartbeat.key
