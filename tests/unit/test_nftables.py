"""amphora.nftables without nft: the schema check, the rendered table, and apply's
all-or-nothing handling of nft's answer (a fake runner)."""

from __future__ import annotations

import ipaddress
import json
import os
from types import SimpleNamespace

import pytest
from twisted.internet.defer import fail, succeed

from amphora.errors import InvalidRequest, NotFound, OperationFailed
from amphora.netlink import Interface
from amphora.nftables import InterfaceRules, RulesUnavailable, parse_rules, render


def body(*rules) -> bytes:
    return json.dumps(list(rules)).encode()


def test_rules_are_normalised():
    parsed = parse_rules(body({"protocol": "UDP", "cidr": "10.1.2.3/8", "port": 53.0},
                              {"protocol": "VRRP", "cidr": None, "port": 112}))
    assert parsed == [{"protocol": "UDP", "cidr": "10.0.0.0/8", "port": 53},
                      {"protocol": "VRRP", "cidr": None, "port": 112}]
    assert parse_rules(b"[]") == []


@pytest.mark.parametrize("raw", [
    b"nope", b"{}", b'[1]', b'[{"protocol": "tcp", "cidr": null, "port": 1}]',
    b'[{"protocol": "TCP", "cidr": null, "port": 1.5}]', b'[{"protocol": "TCP", "cidr": null, "port": "80"}]',
    b'[{"protocol": "TCP", "port": 80}]', b'[{"protocol": "TCP", "cidr": "fe80::/129", "port": 80}]',
    b'[{"protocol": "TCP", "cidr": "10.0.0.0/8\\"; flush ruleset; \\"", "port": 80}]',
])
def test_what_the_schema_refuses_is_400(raw):
    with pytest.raises(InvalidRequest):
        parse_rules(raw)


def test_render_replaces_the_table_in_one_script():
    text = render({"eth1": [{"protocol": "TCP", "cidr": "0.0.0.0/0", "port": 80},
                            {"protocol": "SCTP", "cidr": "2001:db8::/32", "port": 9}],
                   "eth0": []})
    lines = text.splitlines()
    assert lines[:3] == ["table inet amphora_table", "delete table inet amphora_table",
                         "table inet amphora_table {"]
    assert "        tcp dport 80 counter accept" in lines  # a /0 names no source
    assert "        ip6 saddr 2001:db8::/32 sctp dport 9 counter accept" in lines
    assert '        iifname "eth0" goto vip_0' in lines and '        iifname "eth1" goto vip_1' in lines
    assert "policy drop;" in text and text.count("counter drop") == 2


class FakeNetlink:
    def __init__(self, links):
        self.links = links

    def interfaces(self, namespace, name=None):
        return succeed(self.links)


def rules_for(tmp_path, runner, namespace="amp-ns"):
    config = SimpleNamespace(network=SimpleNamespace(namespace=namespace),
                             agent=SimpleNamespace(state_dir=str(tmp_path)))
    links = [Interface("lo", 1, True, ()), Interface("eth1", 2, False,
                                                     (ipaddress.ip_interface("203.0.113.5/24"),))]
    return InterfaceRules(config, None, netlink=FakeNetlink(links), runner=runner)


def test_a_refused_table_changes_nothing(tmp_path):
    answers = [succeed((b"", b"", 0)), succeed((b"", b"Error: syntax error", 1)), fail(OSError("gone"))]
    calls = []

    def runner(reactor, argv, **kwargs):
        calls.append(argv)
        return answers.pop(0)

    rules = rules_for(tmp_path, runner)
    first = body({"protocol": "TCP", "cidr": None, "port": 80})
    rules.put("203.0.113.5", first)
    assert rules.stored() == {"eth1": parse_rules(first)}
    assert calls[0][-2:] == ["-f", rules.script + ".new"]
    script = open(rules.script).read()
    for expected in ("syntax error", "cannot run"):
        d = rules.put("203.0.113.5", body({"protocol": "UDP", "cidr": None, "port": 53}))
        failure = []
        d.addErrback(failure.append)
        assert failure and failure[0].check(OperationFailed) and expected in str(failure[0].value.details)
        assert rules.stored() == {"eth1": parse_rules(first)} and open(rules.script).read() == script
        assert not os.path.exists(rules.script + ".new")


def test_lookup_and_namespace_errors(tmp_path):
    def runner(*a, **k):
        raise AssertionError("nft must not run")

    outcomes = []
    rules_for(tmp_path, runner).put("203.0.113.9", b"[]").addErrback(outcomes.append)
    rules_for(tmp_path, runner).put("127.0.0.1", b"[]").addErrback(outcomes.append)  # lo is never a VIP interface
    rules_for(tmp_path, runner, namespace="").put("203.0.113.5", b"[]").addErrback(outcomes.append)
    assert [o.type for o in outcomes] == [NotFound, NotFound, RulesUnavailable]
    assert outcomes[2].value.status == 503 and "[network] namespace" in outcomes[2].value.details
