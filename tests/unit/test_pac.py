"""The PAC file generator: what it writes for each rule, and what it never writes."""

from __future__ import annotations

import re

from jproxy.policy.pac import pac_file
from jproxy.policy.rules import RuleSet

RULES = RuleSet.parse(
    [
        "DOMAIN,exact.example,DIRECT",
        "DOMAIN-SUFFIX,corp.example,DIRECT",
        "DOMAIN-KEYWORD,ads,REJECT",
        "IP-CIDR,10.0.0.0/8,DIRECT",
        "IP-CIDR,192.168.0.0/16,DIRECT,resolve",
        "DST-PORT,25,TUNNEL",
    ]
)
PROXY = '"SOCKS5 127.0.0.1:1080; PROXY 127.0.0.1:1080"'


def test_the_browser_is_never_asked_to_resolve():
    text = pac_file(RULES, "127.0.0.1:1080")
    for call in ("isInNet", "dnsResolve", "isResolvable", "myIpAddress"):
        assert call not in text


def test_each_rule_becomes_one_test_with_its_answer():
    text = pac_file(RULES, "127.0.0.1:1080")
    assert 'host == "exact.example")) return "DIRECT";' in text
    assert 'dnsDomainIs(host, ".corp.example")))) return "DIRECT";' in text
    assert f'shExpMatch(host, "*ads*"))) return {PROXY};' in text  # REJECT: to the proxy
    assert 'gjInNet(ip, [2560, 0], 8))) return "DIRECT";' in text
    assert f"port == 25) return {PROXY};" in text
    assert text.rstrip().endswith(f"return {PROXY};\n}}".rstrip())


def test_a_resolve_rule_sends_names_to_the_proxy_and_decides_literals():
    text = pac_file(RULES, "127.0.0.1:1080")
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.endswith("DIRECT,resolve"))
    assert (
        lines[first]
        == f"  if (ip === null) return {PROXY};  // IP-CIDR,192.168.0.0/16,DIRECT,resolve"
    )
    assert 'gjInNet(ip, [49320, 0], 16)) return "DIRECT"' in lines[first + 1]


def test_an_ipv6_proxy_address_and_no_rules():
    text = pac_file(RuleSet(), "[::1]:1080")
    body = text[text.index("function FindProxyForURL") :]
    assert re.findall(r"return (.*);", body) == ['"SOCKS5 [::1]:1080; PROXY [::1]:1080"']
