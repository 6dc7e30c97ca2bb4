"""The PAC file (proxy auto-config) that mirrors the client's routing rules for a browser.

``FindProxyForURL`` answers ``DIRECT`` where a DIRECT rule matches, and the client's port
(``SOCKS5 host:port; PROXY host:port``) for TUNNEL and REJECT, so a rejected destination reaches
the client and is refused there, with its reason.

It never makes the browser resolve a name: names are compared with ``dnsDomainIs`` and
``shExpMatch`` only (no ``isInNet``, ``dnsResolve`` or ``isResolvable``), and IP-CIDR rules
apply only when the URL's host is an IP literal, compared by the PAC's own arithmetic. A
``,resolve`` CIDR rule cannot be mirrored without resolving, so for a name the PAC sends it to
the client, which decides there. Every value is written as a JSON string literal.
"""

from __future__ import annotations

import json

from jproxy.policy.rules import Action, Kind, Rule, RuleSet

CONTENT_TYPE = "application/x-ns-proxy-autoconfig"

# The helpers the rules' conditions call: the URL's port, and an IP literal in a network.
# An IPv6 literal is expanded to 8 groups of 16 bits; an IPv4 one to 2 (its 32 bits).
_HELPERS = r"""
function gjPort(url) {
  var m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/(\[[^\]]*\]|[^\/:?#]*)(:(\d+))?/.exec(url);
  if (m && m[3]) return parseInt(m[3], 10);
  var scheme = url.substring(0, url.indexOf(":")).toLowerCase();
  return (scheme == "https" || scheme == "wss") ? 443 : (scheme == "ftp" ? 21 : 80);
}
function gjGroups(host) {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(host)) {
    var b = host.split(".");
    for (var i = 0; i < 4; i++) if (+b[i] > 255) return null;
    return [(+b[0]) * 256 + (+b[1]), (+b[2]) * 256 + (+b[3])];
  }
  if (host.charAt(0) == "[") host = host.substring(1, host.length - 1);
  if (host.indexOf(":") < 0 || !/^[0-9a-fA-F:]+$/.test(host)) return null;
  var halves = host.split("::");
  if (halves.length > 2) return null;
  var head = halves[0] ? halves[0].split(":") : [];
  var tail = halves.length == 2 && halves[1] ? halves[1].split(":") : [];
  var fill = 8 - head.length - tail.length;
  if (fill < 0 || (halves.length == 1 && fill != 0)) return null;
  var groups = [];
  for (var j = 0; j < head.length; j++) groups.push(parseInt(head[j], 16));
  for (var k = 0; k < fill; k++) groups.push(0);
  for (var n = 0; n < tail.length; n++) groups.push(parseInt(tail[n], 16));
  return groups;
}
function gjInNet(groups, net, bits) {
  if (groups === null || groups.length != net.length) return false;
  for (var i = 0; i < net.length && bits > 0; i++) {
    var take = bits >= 16 ? 16 : bits;
    var mask = (0xffff << (16 - take)) & 0xffff;
    if ((groups[i] & mask) != net[i]) return false;
    bits -= take;
  }
  return true;
}
"""


def _literal(text: str) -> str:
    return json.dumps(text)


def _groups(rule: Rule) -> list[int]:
    packed = rule.network.network_address.packed
    return [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]


def _condition(rule: Rule) -> str:
    """The JavaScript test of one rule, on ``host`` (lower case), ``port`` and ``ip``."""
    kind, value = rule.kind, rule.value
    if kind is Kind.MATCH:
        return "true"
    if kind is Kind.DST_PORT:
        low, high = rule.ports
        return f"port == {low}" if low == high else f"(port >= {low} && port <= {high})"
    if kind is Kind.DOMAIN:
        return f"(ip === null && host == {_literal(value)})"
    if kind is Kind.DOMAIN_SUFFIX:
        return (
            f"(ip === null && (host == {_literal(value)} ||"
            f" dnsDomainIs(host, {_literal('.' + value)})))"
        )
    if kind is Kind.DOMAIN_KEYWORD:
        return f"(ip === null && shExpMatch(host, {_literal('*' + value + '*')}))"
    return f"(ip !== null && {_in_network(rule)})"


def _in_network(rule: Rule) -> str:
    return f"gjInNet(ip, {json.dumps(_groups(rule))}, {rule.network.prefixlen})"


def pac_file(rules: RuleSet, proxy: str) -> str:
    """The PAC text for ``rules``; ``proxy`` is the client's port as the browser reaches it
    (``HOST:PORT``, an IPv6 host in brackets).

    A ``,resolve`` CIDR rule needs the name's addresses, which the browser must not look up:
    from it on, a name is sent to the client (which resolves and decides), an IP literal is
    still decided by the PAC.
    """
    through = _literal(f"SOCKS5 {proxy}; PROXY {proxy}")
    lines = [
        "// gjproxy: proxy auto-config mirroring the client's routing rules.",
        _HELPERS.strip(),
        "function FindProxyForURL(url, host) {",
        "  host = host.toLowerCase();",
        "  var port = gjPort(url);",
        "  var ip = gjGroups(host);",
    ]
    for rule in rules.rules:
        answer = '"DIRECT"' if rule.action is Action.DIRECT else through
        if rule.resolve:
            lines.append(f"  if (ip === null) return {through};  // {rule.text}")
            lines.append(f"  if ({_in_network(rule)}) return {answer};  // {rule.text}")
            continue
        lines.append(f"  if ({_condition(rule)}) return {answer};  // {rule.text}")
    lines += [f"  return {through};", "}", ""]
    return "\n".join(lines)
