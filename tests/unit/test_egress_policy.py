"""The egress policy core: rule syntax, precedence, the special ranges and the server's ports."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from jproxy.policy.egress import SPECIAL_RANGES, EgressPolicy, Rule, RuleError

DEFAULT = EgressPolicy()
LOOPBACK_ALLOWED = EgressPolicy.from_rules(["127.0.0.0/8", "::1/128"], [])


@pytest.mark.parametrize(
    ("text", "network", "ports"),
    [
        ("10.0.0.0/8", "10.0.0.0/8", None),
        ("10.1.2.3", "10.1.2.3/32", None),
        ("10.0.0.0/8:80,443", "10.0.0.0/8", ((80, 80), (443, 443))),
        ("192.168.1.0/24:8000-8999,22", "192.168.1.0/24", ((8000, 8999), (22, 22))),
        ("::1/128", "::1/128", None),
        ("::1", "::1/128", None),
        ("fd00::/8", "fd00::/8", None),
        ("[::1]/128:1000-2000", "::1/128", ((1000, 2000),)),
        ("[::1]:53", "::1/128", ((53, 53),)),
        ("[fd00::]/8", "fd00::/8", None),
        (" 127.0.0.0/8 ", "127.0.0.0/8", None),
        ("::ffff:127.0.0.0/104", "127.0.0.0/8", None),  # mapped form: judged as IPv4
        ("64:ff9b::/96", "0.0.0.0/0", None),  # every IPv4 address through NAT64
    ],
)
def test_rule_syntax(text, network, ports) -> None:
    rule = Rule.parse(text)
    assert rule.network == ipaddress.ip_network(network)
    assert rule.ports == ports


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0.0/33",
        "10.0.0.1/8",  # host bits set
        "10.0.0.0/8:",
        "10.0.0.0/8:0",
        "10.0.0.0/8:65536",
        "10.0.0.0/8:90-80",
        "10.0.0.0/8:http",
        "10.0.0.0/8:80,",
        "[::1]/128:",
        "[::1]x",
        "example.com",
        "10.0.0.0/8:80:90",
    ],
)
def test_bad_rules_name_the_rule(text) -> None:
    with pytest.raises(RuleError, match="bad egress rule"):
        Rule.parse(text)


def test_ipv6_with_ports_needs_brackets() -> None:
    assert Rule.parse("::1:80") == Rule(ipaddress.ip_network("::1:80/128"), None, "::1:80")
    assert Rule.parse("[::1]:80").ports == ((80, 80),)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "0.1.2.3",
        "10.9.8.7",
        "100.64.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:0.0.0.0",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::10.0.0.1",
        "fe80::1%eth0",
    ],
)
def test_special_ranges_are_denied_by_default(address) -> None:
    verdict = DEFAULT.judge(address, 80)
    assert not verdict.allowed
    assert "denied by default" in verdict.reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700::1111",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses_are_allowed_by_default(address) -> None:
    assert DEFAULT.judge(address, 443).allowed


def test_every_special_range_is_denied_at_its_first_and_last_address() -> None:
    for network in SPECIAL_RANGES:
        for address in (network.network_address, network.broadcast_address):
            assert not DEFAULT.judge(address, 1).allowed, address


def test_an_allow_rule_opens_a_special_range_in_both_spellings() -> None:
    for address in ("127.0.0.1", "127.0.0.53", "::ffff:127.0.0.1", "::1"):
        verdict = LOOPBACK_ALLOWED.judge(address, 80)
        assert verdict.allowed and "allowed by rule" in verdict.reason, address
    # only the ranges the rules name: the rest stays denied
    for address in ("0.0.0.0", "::", "10.0.0.1", "169.254.169.254"):
        assert not LOOPBACK_ALLOWED.judge(address, 80).allowed, address


def test_ports_of_a_rule() -> None:
    policy = EgressPolicy.from_rules(["10.0.0.0/8:80,443", "[fd00::]/8:8000-8999"], [])
    assert policy.judge("10.1.1.1", 443).allowed
    assert not policy.judge("10.1.1.1", 22).allowed
    assert policy.judge("fd00::5", 8000).allowed
    assert policy.judge("fd00::5", 8999).allowed
    assert not policy.judge("fd00::5", 9000).allowed


def test_deny_beats_allow_and_denies_public_addresses_too() -> None:
    policy = EgressPolicy.from_rules(
        ["10.0.0.0/8", "0.0.0.0/0"], ["10.6.0.0/16", "203.0.113.0/24:25"]
    )
    assert policy.judge("10.5.0.1", 80).allowed
    verdict = policy.judge("10.6.0.1", 80)
    assert not verdict.allowed
    assert verdict.reason == "denied by rule 10.6.0.0/16 (--deny-egress or [egress] deny)"
    assert not policy.judge("203.0.113.9", 25).allowed
    assert policy.judge("203.0.113.9", 80).allowed
    assert not policy.judge("::ffff:10.6.0.1", 80).allowed  # mapped spelling: same verdict


def test_the_servers_own_ports_stay_denied_when_loopback_is_allowed() -> None:
    policy = LOOPBACK_ALLOWED.listening_on([("0.0.0.0", 16384), ("127.0.0.1", 8080), ("::1", 9100)])
    for address, port in [
        ("127.0.0.1", 16384),  # wildcard listener: every local address
        ("127.0.0.9", 16384),
        ("::1", 16384),
        ("0.0.0.0", 16384),
        ("127.0.0.1", 8080),
        ("0.0.0.0", 8080),  # connect(0.0.0.0) reaches loopback listeners
        ("::ffff:127.0.0.1", 8080),
        ("::1", 9100),
    ]:
        verdict = policy.judge(address, port)
        assert not verdict.allowed, (address, port)
        assert "own listening port" in verdict.reason or "denied by default" in verdict.reason
    # the same ports elsewhere are someone else's
    assert policy.judge("127.0.0.2", 8080).allowed  # the admin listener is bound to 127.0.0.1
    assert policy.judge("93.184.216.34", 16384).allowed
    assert policy.judge("127.0.0.1", 8081).allowed


def test_a_wildcard_listener_guards_this_hosts_other_addresses_when_told() -> None:
    policy = EgressPolicy.from_rules(["0.0.0.0/0"], []).listening_on([("0.0.0.0", 16384)])
    assert policy.judge("198.51.100.7", 16384).allowed
    assert not policy.judge("198.51.100.7", 16384, this_host=True).allowed
    assert policy.guards_port(16384) and not policy.guards_port(16385)


def test_an_allow_rule_naming_the_port_opens_the_servers_own_port() -> None:
    listeners = [("127.0.0.1", 8080)]
    every_port = EgressPolicy.from_rules(["127.0.0.0/8"], []).listening_on(listeners)
    named = EgressPolicy.from_rules(["127.0.0.0/8", "127.0.0.1:8080"], []).listening_on(listeners)
    denied = EgressPolicy.from_rules(["127.0.0.1:8080"], ["127.0.0.1:8080"])
    assert not every_port.judge("127.0.0.1", 8080).allowed
    assert named.judge("127.0.0.1", 8080).allowed
    assert not denied.listening_on(listeners).judge("127.0.0.1", 8080).allowed


def test_a_bad_rule_in_a_list_is_named() -> None:
    with pytest.raises(RuleError, match="'10.0.0.0/8:x'"):
        EgressPolicy.from_rules(["127.0.0.0/8"], ["10.0.0.0/8:x"])


def test_every_refusal_names_what_would_open_it() -> None:
    policy = EgressPolicy.from_rules([], ["203.0.113.0/24"]).listening_on([("0.0.0.0", 8080)])
    assert policy.judge("127.0.0.1", 5432).reason == (
        "in 127.0.0.0/8, denied by default; open it with --allow-egress 127.0.0.1:5432"
        " (or 127.0.0.0/8, or [egress] allow)"
    )
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    assert f"({policy.judge('127.0.0.1', 5432).reason})" in readme.replace("`", "")
    assert "--allow-egress [::1]:53 (or ::1/128" in policy.judge("::1", 53).reason
    assert policy.judge("127.0.0.1", 8080).reason == (
        "the server's own listening port 8080; only an allow rule that names the port opens"
        " it: --allow-egress 127.0.0.1:8080"
    )
    assert policy.judge("203.0.113.9", 80).reason.endswith("(--deny-egress or [egress] deny)")
    # The suggested rule is one the policy accepts, and it opens exactly that destination.
    opened = EgressPolicy.from_rules(["[::1]:53", "127.0.0.1:5432"], [])
    assert opened.judge("::1", 53).allowed and opened.judge("127.0.0.1", 5432).allowed
    assert not opened.judge("127.0.0.1", 5433).allowed


def test_the_policy_reads_as_its_rules() -> None:
    assert str(EgressPolicy()) == "allow none; deny none"
    assert str(EgressPolicy.from_rules(["10.0.0.0/8:443", "::1/128"], ["10.9.0.0/16"])) == (
        "allow 10.0.0.0/8:443, ::1/128; deny 10.9.0.0/16"
    )
