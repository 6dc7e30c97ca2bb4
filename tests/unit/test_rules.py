"""The routing rules core: parsing, order, name versus address, ``,resolve`` as a question."""

from __future__ import annotations

import pytest

from jproxy.policy.rules import DEFAULT, Action, NeedAddresses, RuleError, RuleSet, parse_rule

RULES = RuleSet.parse(
    [
        "DOMAIN,exact.example,DIRECT",
        "DOMAIN-SUFFIX,Corp.Example.,DIRECT",
        "DOMAIN-KEYWORD,ads,REJECT",
        "DST-PORT,25,REJECT",
        "DST-PORT,8000-8099,DIRECT",
        "IP-CIDR,10.0.0.0/8,DIRECT",
        "IP-CIDR6,fd00::/8,DIRECT",
        "IP-CIDR,192.168.0.0/16,REJECT,resolve",
        "MATCH,TUNNEL",
    ]
)


@pytest.mark.parametrize(
    ("host", "port", "action", "rule"),
    [
        ("exact.example", 443, Action.DIRECT, "DOMAIN,exact.example,DIRECT"),
        ("sub.exact.example", 443, Action.TUNNEL, "MATCH,TUNNEL"),
        ("corp.example", 443, Action.DIRECT, "DOMAIN-SUFFIX,corp.example,DIRECT"),
        ("DB.corp.example.", 5432, Action.DIRECT, "DOMAIN-SUFFIX,corp.example,DIRECT"),
        ("notcorp.example", 443, Action.TUNNEL, "MATCH,TUNNEL"),
        ("myads.example", 443, Action.REJECT, "DOMAIN-KEYWORD,ads,REJECT"),
        ("mail.example", 25, Action.REJECT, "DST-PORT,25,REJECT"),
        ("x.example", 8050, Action.DIRECT, "DST-PORT,8000-8099,DIRECT"),
        ("10.1.2.3", 80, Action.DIRECT, "IP-CIDR,10.0.0.0/8,DIRECT"),
        ("fd12::1", 80, Action.DIRECT, "IP-CIDR6,fd00::/8,DIRECT"),
        ("192.168.1.1", 80, Action.REJECT, "IP-CIDR,192.168.0.0/16,REJECT,resolve"),
        ("11.0.0.1", 80, Action.TUNNEL, "MATCH,TUNNEL"),
    ],
)
def test_first_match_wins(host, port, action, rule):
    decision = RULES.decide(host, port, [])
    assert (decision.action, decision.rule) == (action, rule)


def test_a_name_is_never_matched_against_a_network_without_resolve():
    rules = RuleSet.parse(["IP-CIDR,127.0.0.0/8,DIRECT"])
    assert rules.decide("localhost", 80) == DEFAULT  # no question asked, no lookup


def test_resolve_asks_for_the_addresses_and_decides_with_them():
    assert RULES.decide("printer.lan", 80) == NeedAddresses("printer.lan")
    decision = RULES.decide("printer.lan", 80, ["192.168.7.7"])
    assert decision.action is Action.REJECT
    assert RULES.decide("printer.lan", 80, []).action is Action.TUNNEL  # unresolvable
    # a rule before the ,resolve one decides first: no question
    assert RULES.decide("ads.lan", 80).action is Action.REJECT


def test_no_rules_means_tunnel():
    assert RuleSet().decide("example.org", 443) == DEFAULT


def test_canonical_text_and_no_resolve_spelling():
    assert parse_rule("ip-cidr, 10.0.0.0/8 ,direct,no-resolve").text == "IP-CIDR,10.0.0.0/8,DIRECT"
    assert parse_rule("match,reject").text == "MATCH,REJECT"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("GEOIP,CN,DIRECT", "unknown type"),
        ("DOMAIN,a.example", "expected DOMAIN,VALUE,ACTION"),
        ("DOMAIN,a.example,PROXY", "TUNNEL, DIRECT or REJECT"),
        ("DOMAIN,a..example,DIRECT", "empty label"),
        ("DOMAIN,10.0.0.1,DIRECT", "use IP-CIDR"),
        ("DOMAIN-KEYWORD,a b,DIRECT", "keyword"),
        ("IP-CIDR,10.0.0.1/8,DIRECT", "host bits"),
        ("IP-CIDR,fd00::/8,DIRECT", "use IP-CIDR6"),
        ("IP-CIDR6,10.0.0.0/8,DIRECT", "use IP-CIDR"),
        ("DST-PORT,0,DIRECT", "1..65535"),
        ("DST-PORT,90-80,DIRECT", "1..65535"),
        ("DOMAIN,a.example,DIRECT,resolve", "only IP-CIDR"),
        ("MATCH,TUNNEL,extra,more", "expected MATCH,ACTION"),
    ],
)
def test_bad_rules_say_what_is_wrong(text, says):
    with pytest.raises(RuleError) as error:
        parse_rule(text)
    assert says in str(error.value)
    assert repr(text) in str(error.value)
