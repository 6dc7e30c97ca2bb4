"""Where the server's outbound connections may go: the egress policy, sans I/O.

The policy judges one resolved address and port, just before the dialer connects, so a name
that resolves to 127.0.0.1 is judged as 127.0.0.1. The order, first match wins:

1. a **deny rule** that matches: denied;
2. one of **the server's own listening ports** (its tunnel, admin, metrics and SOCKS
   listeners, on the address they are bound to, or on any address of this host for a wildcard
   listener): denied, unless an allow rule matches *and names that port* in its port list;
   a rule without ports (all ports) does not open the server's own ports;
3. an **allow rule** that matches: allowed;
4. the **special ranges** (``SPECIAL_RANGES``: this host, loopback, link-local, private,
   shared CGNAT, unspecified, multicast, broadcast and reserved, of both families): denied;
5. anything else: allowed.

IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) and NAT64 addresses of the well-known prefix
(``64:ff9b::7f00:1``, which a NAT64 gateway turns into 127.0.0.1) are judged as the IPv4
address they carry, so every rule and range applies to every spelling.

Rule syntax (``--allow-egress``, ``--deny-egress``, ``[egress] allow``/``deny``)::

    ADDRESS[/PREFIX][:PORTS]          IPv4: 10.0.0.0/8, 10.1.2.3, 10.0.0.0/8:80,443
    [ADDRESS][/PREFIX][:PORTS]        IPv6 with ports: [::1]/128:1000-2000, [fd00::]/8:53
    ADDRESS[/PREFIX]                  IPv6 without ports may skip the brackets: ::1/128

An address without a prefix is one host (/32 or /128); host bits under the prefix must be
zero. PORTS is a comma-separated list of ports and ranges ``LOW-HIGH`` (1..65535); no PORTS
means every port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SPECIAL_RANGES: tuple[Network, ...] = tuple(
    ipaddress.ip_network(text)
    for text in (
        "0.0.0.0/8",  # "this network": 0.0.0.0 reaches this host
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (CGNAT)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, where cloud metadata services live
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 (broadcast)
        "::/128",  # unspecified
        "::1/128",
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed by some stacks)
        "ff00::/8",  # multicast
    )
)
"""Denied unless an allow rule matches: addresses that reach this host or its private networks."""

_WILDCARDS = (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))


class RuleError(ValueError):
    """A rule that does not follow the syntax above; the message quotes it."""


@dataclass(frozen=True)
class Rule:
    """One allow or deny rule: a network and the ports it covers (``None``: every port)."""

    network: Network
    ports: tuple[tuple[int, int], ...] | None = None
    text: str = ""

    def matches(self, address: Address, port: int) -> bool:
        return address in self.network and self.names_port(port, every=True)

    def names_port(self, port: int, *, every: bool = False) -> bool:
        """Whether the rule covers ``port``: a rule without ports covers it only if ``every``."""
        if self.ports is None:
            return every
        return any(low <= port <= high for low, high in self.ports)

    @classmethod
    def parse(cls, text: str) -> Rule:
        """A rule from its text form (module docstring); ``RuleError`` if it is not one."""
        spec = text.strip()
        try:
            if spec.startswith("["):
                address, _, rest = spec[1:].partition("]")
                prefix, _, ports = rest.partition(":")
                if prefix and not prefix.startswith("/"):
                    raise ValueError("expected /PREFIX or :PORTS after ]")
                network_text, port_text = address + prefix, ports if ":" in rest else None
            elif spec.count(":") == 1:  # IPv4 with ports
                network_text, port_text = spec.split(":")
            else:  # IPv4 or IPv6 without ports
                network_text, port_text = spec, None
            network = ipaddress.ip_network(network_text, strict=True)
            network = _unmapped_network(network)
            ports = None if port_text is None else _parse_ports(port_text)
        except ValueError as error:
            raise RuleError(f"bad egress rule {text!r}: {error}") from None
        return cls(network, ports, spec)


def _parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for item in text.split(","):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"expected PORT or LOW-HIGH, got {item!r}")
        low_port, high_port = int(low), int(high) if dash else int(low)
        if not 1 <= low_port <= high_port <= 65535:
            raise ValueError(f"ports must be 1..65535 and LOW <= HIGH, got {item!r}")
        ranges.append((low_port, high_port))
    return tuple(ranges)


_EMBEDDING_IPV4 = (
    ipaddress.ip_network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64's well-known prefix (RFC 6052)
)


def _rule_text(address: Address, port: int) -> str:
    """The allow rule for exactly one address and port: ``127.0.0.1:80``, ``[::1]:80``."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _unmapped(address: Address) -> Address:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address carries, or the address itself."""
    if isinstance(address, ipaddress.IPv6Address) and any(
        address in prefix for prefix in _EMBEDDING_IPV4
    ):
        return ipaddress.IPv4Address(address.packed[-4:])
    return address


def _unmapped_network(network: Network) -> Network:
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = _unmapped(network.network_address)
        if mapped is not network.network_address:
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


@dataclass(frozen=True)
class Verdict:
    """The policy's answer; ``reason`` names the rule or range, for the access log."""

    allowed: bool
    reason: str


@dataclass(frozen=True)
class EgressPolicy:
    """Allow and deny rules, plus the server's own listeners ``(address, port)``.

    ``judge(address, port, this_host)``: ``this_host`` says whether ``address`` is one of this
    host's own addresses (the dialer asks the kernel); it matters only for the ports of
    wildcard listeners.
    """

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    listeners: frozenset[tuple[Address, int]] = field(default_factory=frozenset)

    def __str__(self) -> str:
        """The rules as the log shows them: ``allow 10.0.0.0/8:443; deny none``."""
        allow = ", ".join(rule.text for rule in self.allow) or "none"
        deny = ", ".join(rule.text for rule in self.deny) or "none"
        return f"allow {allow}; deny {deny}"

    @classmethod
    def from_rules(cls, allow: list[str], deny: list[str]) -> EgressPolicy:
        """A policy from rule texts; ``RuleError`` names the first bad one."""
        return cls(tuple(map(Rule.parse, allow)), tuple(map(Rule.parse, deny)))

    def listening_on(self, listeners: list[tuple[str, int]]) -> EgressPolicy:
        """This policy, also guarding the server's listeners ``(host, port)`` (bound sockets)."""
        added = {(_unmapped(ipaddress.ip_address(host)), port) for host, port in listeners}
        return replace(self, listeners=self.listeners | added)

    def guards_port(self, port: int) -> bool:
        """Whether ``port`` is one of the server's own listening ports."""
        return any(port == own for _, own in self.listeners)

    def judge(self, address: str | Address, port: int, this_host: bool = False) -> Verdict:
        if isinstance(address, str):
            address = ipaddress.ip_address(address.partition("%")[0])  # judged without a zone
        target = _unmapped(address)
        for rule in self.deny:
            if rule.matches(target, port):
                return Verdict(
                    False, f"denied by rule {rule.text} (--deny-egress or [egress] deny)"
                )
        allowing = [rule for rule in self.allow if rule.matches(target, port)]
        if self._is_own_listener(target, port, this_host):
            naming = [rule for rule in allowing if rule.names_port(port)]
            if not naming:
                return Verdict(
                    False,
                    f"the server's own listening port {port}; only an allow rule that names"
                    f" the port opens it: --allow-egress {_rule_text(target, port)}",
                )
            allowing = naming
        if allowing:
            return Verdict(True, f"allowed by rule {allowing[0].text}")
        for network in SPECIAL_RANGES:
            if target in network:
                return Verdict(
                    False,
                    f"in {network}, denied by default; open it with --allow-egress"
                    f" {_rule_text(target, port)} (or {network}, or [egress] allow)",
                )
        return Verdict(True, "not in a special range")

    def _is_own_listener(self, target: Address, port: int, this_host: bool) -> bool:
        local = this_host or target.is_loopback or target.is_unspecified
        for bound, own in self.listeners:
            if own != port:
                continue
            if target == bound or (bound in _WILDCARDS and local):
                return True
            if target.is_unspecified and bound.is_loopback:  # connect(0.0.0.0) goes to loopback
                return True
        return False
