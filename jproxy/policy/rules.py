"""The client's routing rules: which destinations go through the tunnel, straight out, or nowhere.

Rules are clash-style strings, tried in order, the first match wins::

    DOMAIN,host.example,ACTION         the name itself (case-insensitive)
    DOMAIN-SUFFIX,corp.example,ACTION  the name or any name under it
    DOMAIN-KEYWORD,ads,ACTION          any name containing the word
    IP-CIDR,10.0.0.0/8,ACTION          an IPv4 destination in the network
    IP-CIDR6,fd00::/8,ACTION           an IPv6 destination in the network
    DST-PORT,25,ACTION                 the port (or a range LOW-HIGH)
    MATCH,ACTION                       anything (the default is MATCH,TUNNEL)

ACTION is ``TUNNEL``, ``DIRECT`` or ``REJECT``. A name is never resolved here to match a CIDR
rule: such a rule matches IP literals only, unless it ends with ``,resolve``; then a name is
resolved (on the client's host) when the rule is reached. ``,no-resolve`` (clash's spelling of
the default) is accepted too. The core asks for the addresses with ``NeedAddresses`` and the
caller, who owns the resolver, asks again with them: nothing here does I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jproxy.policy.hostnames import InvalidHost, check_host, ip_literal


class Action(enum.Enum):
    TUNNEL = "TUNNEL"
    DIRECT = "DIRECT"
    REJECT = "REJECT"


class Kind(enum.Enum):
    DOMAIN = "DOMAIN"
    DOMAIN_SUFFIX = "DOMAIN-SUFFIX"
    DOMAIN_KEYWORD = "DOMAIN-KEYWORD"
    IP_CIDR = "IP-CIDR"
    IP_CIDR6 = "IP-CIDR6"
    DST_PORT = "DST-PORT"
    MATCH = "MATCH"


_NAME_KINDS = (Kind.DOMAIN, Kind.DOMAIN_SUFFIX, Kind.DOMAIN_KEYWORD)
_CIDR_KINDS = (Kind.IP_CIDR, Kind.IP_CIDR6)
_KEYWORD = re.compile(r"[a-z0-9_.-]+\Z")


class RuleError(ValueError):
    """A rule string that does not follow the syntax above; the message quotes it."""


@dataclass(frozen=True)
class Rule:
    kind: Kind
    value: str
    """the name, keyword, network or ports as written (lower case for names)"""
    action: Action
    resolve: bool = False
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ports: tuple[int, int] | None = None

    @property
    def text(self) -> str:
        """The rule in its canonical string form (for logs and ``gjproxy route``)."""
        parts = [self.kind.value] + ([self.value] if self.kind is not Kind.MATCH else [])
        return ",".join([*parts, self.action.value] + (["resolve"] if self.resolve else []))

    def matches_name(self, host: str, port: int) -> bool:
        """Whether the rule matches without addresses (CIDR rules: ``host`` as a literal)."""
        kind = self.kind
        if kind is Kind.MATCH:
            return True
        if kind is Kind.DST_PORT:
            return self.ports[0] <= port <= self.ports[1]
        if kind is Kind.DOMAIN:
            return host == self.value
        if kind is Kind.DOMAIN_SUFFIX:
            return host == self.value or host.endswith("." + self.value)
        if kind is Kind.DOMAIN_KEYWORD:
            return self.value in host
        return False

    def matches_address(self, address: str) -> bool:
        literal = ip_literal(address)
        return literal is not None and self.network is not None and literal in self.network


def parse_rule(text: str) -> Rule:
    """One rule string -> ``Rule``; ``RuleError`` names what is wrong with it."""
    parts = [part.strip() for part in text.split(",")]
    try:
        kind = Kind(parts[0].upper())
    except ValueError:
        known = ", ".join(kind.value for kind in Kind)
        raise RuleError(f"rule {text!r}: unknown type {parts[0]!r} (known: {known})") from None
    size = 2 if kind is Kind.MATCH else 3
    options = parts[size:]
    if len(parts) < size or len(options) > 1:
        shape = "MATCH,ACTION" if kind is Kind.MATCH else f"{kind.value},VALUE,ACTION"
        raise RuleError(f"rule {text!r}: expected {shape}")
    value = "" if kind is Kind.MATCH else parts[1]
    try:
        action = Action(parts[size - 1].upper())
    except ValueError:
        raise RuleError(
            f"rule {text!r}: the action must be TUNNEL, DIRECT or REJECT, not {parts[size - 1]!r}"
        ) from None
    resolve = False
    if options:
        if kind not in _CIDR_KINDS or options[0].lower() not in ("resolve", "no-resolve"):
            raise RuleError(f"rule {text!r}: only IP-CIDR rules take ',resolve'")
        resolve = options[0].lower() == "resolve"
    network, ports = None, None
    if kind in _NAME_KINDS:
        value = value.lower().rstrip(".")
        if kind is Kind.DOMAIN_KEYWORD:
            if not _KEYWORD.match(value):
                raise RuleError(f"rule {text!r}: a keyword is letters, digits, '.', '-', '_'")
        elif ip_literal(value) is not None:
            raise RuleError(f"rule {text!r}: an IP address: use IP-CIDR or IP-CIDR6")
        else:
            try:
                check_host(value)
            except InvalidHost as error:
                raise RuleError(f"rule {text!r}: {error}") from None
    elif kind in _CIDR_KINDS:
        try:
            network = ipaddress.ip_network(value)
        except ValueError as error:
            raise RuleError(f"rule {text!r}: {error}") from None
        if network.version != (6 if kind is Kind.IP_CIDR6 else 4):
            other = "IP-CIDR" if kind is Kind.IP_CIDR6 else "IP-CIDR6"
            raise RuleError(f"rule {text!r}: IPv{network.version} network: use {other}")
        value = str(network)
    elif kind is Kind.DST_PORT:
        ports = _port_range(value, text)
    return Rule(kind, value, action, resolve, network, ports)


def _port_range(value: str, text: str) -> tuple[int, int]:
    low, _, high = value.partition("-")
    high = high or low
    if not (low.isdigit() and high.isdigit() and 0 < int(low) <= int(high) <= 65535):
        raise RuleError(f"rule {text!r}: expected a port or LOW-HIGH in 1..65535")
    return int(low), int(high)


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str
    """the rule that decided, in canonical form; ``MATCH,TUNNEL`` for the default"""


@dataclass(frozen=True)
class NeedAddresses:
    """``host`` must be resolved for a ``,resolve`` rule: ask again with its addresses."""

    host: str


DEFAULT = Decision(Action.TUNNEL, "MATCH,TUNNEL")


class RuleSet:
    """An ordered list of rules; ``decide`` gives the first match's action."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> RuleSet:
        return cls([parse_rule(text) for text in texts])

    def decide(
        self, host: str, port: int, addresses: Sequence[str] | None = None
    ) -> Decision | NeedAddresses:
        """The decision for ``host:port``. ``addresses`` are the name's addresses once a
        ``,resolve`` rule asked for them (``NeedAddresses``); an empty list: unresolvable."""
        literal = ip_literal(host) is not None
        name = host.lower().rstrip(".")
        for rule in self.rules:
            if rule.kind in _CIDR_KINDS:
                if literal:
                    matched = rule.matches_address(host)
                elif not rule.resolve:
                    continue
                elif addresses is None:
                    return NeedAddresses(host)
                else:
                    matched = any(rule.matches_address(address) for address in addresses)
            elif rule.kind in _NAME_KINDS and literal:
                continue
            else:
                matched = rule.matches_name(name, port)
            if matched:
                return Decision(rule.action, rule.text)
        return DEFAULT

    @property
    def actions(self) -> set[Action]:
        return {rule.action for rule in self.rules} | {DEFAULT.action}
