"""The PAC file run by a real JavaScript engine (node) says what the rules core says."""

from __future__ import annotations

import json
import subprocess

from jproxy.policy.pac import pac_file
from jproxy.policy.rules import Action, RuleSet
from tests.peers import require_tool

RULES = RuleSet.parse(
    [
        "DOMAIN,exact.example,DIRECT",
        "DOMAIN-SUFFIX,corp.example,DIRECT",
        "DOMAIN-KEYWORD,ads,REJECT",
        "DST-PORT,8000-8099,DIRECT",
        "IP-CIDR,10.0.0.0/8,DIRECT",
        "IP-CIDR,172.16.0.0/12,DIRECT",
        "IP-CIDR6,fd00::/8,DIRECT",
        "IP-CIDR6,2001:db8:abcd::/48,DIRECT",
        "MATCH,TUNNEL",
    ]
)

# The PAC helpers browsers provide, as the PAC standard (Netscape 1996) defines them; a
# resolving one fails the test if called.
HARNESS = r"""
function dnsDomainIs(host, domain) {
  return host.length >= domain.length && host.substring(host.length - domain.length) == domain;
}
function shExpMatch(str, exp) {
  var re = new RegExp("^" + exp.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")
    .replace(/\?/g, ".") + "$");
  return re.test(str);
}
function isInNet() { throw new Error("isInNet called"); }
function dnsResolve() { throw new Error("dnsResolve called"); }
var cases = JSON.parse(process.argv[2]);
console.log(JSON.stringify(cases.map(function (c) { return FindProxyForURL(c[0], c[1]); })));
"""

CASES = [
    ("https://exact.example/", "exact.example"),
    ("https://www.exact.example/", "www.exact.example"),
    ("http://Sub.Corp.Example/x", "Sub.Corp.Example"),
    ("http://corp.example/", "corp.example"),
    ("http://notcorp.example/", "notcorp.example"),
    ("http://myads.example/", "myads.example"),
    ("http://web.example:8080/", "web.example"),
    ("http://web.example:8100/", "web.example"),
    ("http://10.2.3.4/", "10.2.3.4"),
    ("http://11.2.3.4/", "11.2.3.4"),
    ("http://172.31.255.255/", "172.31.255.255"),
    ("http://172.32.0.1/", "172.32.0.1"),
    ("http://[fd00::1]/", "fd00::1"),
    ("http://[fe00::1]/", "fe00::1"),
    ("https://[2001:db8:abcd:1::5]/", "2001:db8:abcd:1::5"),
    ("https://[2001:db8:abce::5]/", "2001:db8:abce::5"),
    ("http://10.example/", "10.example"),
]


def _port(url: str) -> int:
    authority = url.split("/")[2]
    tail = authority.rsplit("]", 1)[-1]
    if ":" in tail:
        return int(tail.rsplit(":", 1)[1])
    return 443 if url.startswith("https") else 80


def test_the_pac_agrees_with_the_rules(tmp_path):
    node = require_tool("node")
    script = tmp_path / "pac.js"
    script.write_text(pac_file(RULES, "127.0.0.1:1080") + HARNESS)
    done = subprocess.run(
        [node, str(script), json.dumps(CASES)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    for (url, host), answer in zip(CASES, answers, strict=True):
        action = RULES.decide(host, _port(url), []).action
        expected = (
            "DIRECT" if action is Action.DIRECT else "SOCKS5 127.0.0.1:1080; PROXY 127.0.0.1:1080"
        )
        assert answer == expected, (url, action)
