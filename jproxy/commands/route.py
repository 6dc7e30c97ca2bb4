"""``gjproxy route HOST[:PORT]``: which way the client's rules send a destination, and why.

Also the client's routing and forwarding settings (``--rule``, ``--access-log``,
``--forward``, ``--forward-udp``), which ``gjproxy client`` adds to its own options, and
what its SIGHUP ``Reloader`` does with them (new rules and access log; forwards need a restart).
"""

from __future__ import annotations

import argparse
import sys

from jproxy.config import ConfigError, listening, load, show_defaults
from jproxy.handlers.dns.resolver import ResolveError, SystemResolver
from jproxy.handlers.net.router import Router
from jproxy.handlers.net.signals import Reloader, access_log_mover
from jproxy.handlers.tunnel.forward import TcpForward, UdpForward, parse_forward
from jproxy.policy.hostnames import ip_literal
from jproxy.policy.rules import NeedAddresses, RuleError, RuleSet

RESOLVE_TIMEOUT = 5.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "route",
        help="show which way the client's rules send HOST[:PORT] (TUNNEL, DIRECT, REJECT)",
        description="Print the routing decision for HOST[:PORT] (port 443 by default) and the"
        " rule that made it, from --rule flags and the [client] rules of --config.",
    )
    parser.add_argument("target", metavar="HOST[:PORT]", help="a name or an IP address")
    parser.add_argument("--config", metavar="FILE", help="TOML file whose [client] rules are used")
    parser.add_argument(
        "--rule", dest="rules", action="append", metavar="RULE", help="a rule, as for the client"
    )
    show_defaults(parser, {"rules": []})
    parser.set_defaults(handler=run)


def add_front_options(parser: argparse.ArgumentParser) -> None:
    """The client's routing, logging and forwarding options."""
    parser.add_argument(
        "--rule",
        dest="rules",
        action="append",
        metavar="RULE",
        help="a routing rule, clash style: DOMAIN|DOMAIN-SUFFIX|DOMAIN-KEYWORD|IP-CIDR|IP-CIDR6"
        "|DST-PORT,VALUE,TUNNEL|DIRECT|REJECT[,resolve] or MATCH,ACTION; repeatable, first"
        " match wins; [client] rules in the config file; SIGHUP reloads them",
    )
    parser.add_argument(
        "--access-log",
        metavar="FILE|-",
        help="one JSON line per connection (the server's format, plus route and rule)",
    )
    parser.add_argument(
        "--forward",
        action="append",
        metavar="[BIND:]PORT:HOST:PORT",
        help="forward a local TCP port through the tunnel to HOST:PORT (BIND: 127.0.0.1);"
        " repeatable",
    )
    parser.add_argument(
        "--forward-udp",
        action="append",
        metavar="[BIND:]PORT:HOST:PORT",
        help="forward a local UDP port through the tunnel to HOST:PORT; repeatable",
    )


def rule_set(texts: list[str]) -> RuleSet:
    try:
        return RuleSet.parse(texts)
    except RuleError as error:
        raise ConfigError(f"--rule: {error}") from None


def rules_from(args: argparse.Namespace) -> RuleSet:
    """The rules of ``--rule`` flags or, without any, of the config file's [client] rules."""
    texts = args.rules
    if texts is None:
        table = load(args.config).get("client", {})
        texts = table.get("rules", []) if isinstance(table, dict) else []
    return rule_set([texts] if isinstance(texts, str) else texts)


def front_settings(settings: dict) -> None:
    """Check the routing and forwarding settings (a bad rule refuses the whole config file,
    also on SIGHUP); the forwards in their parsed form. The rules stay text, as the reload
    compares and logs them; ``rule_set`` parses them for use."""
    rule_set(settings["rules"])
    settings["forward"] = [parse_forward(text, "--forward") for text in settings["forward"]]
    settings["forward_udp"] = [
        parse_forward(text, "--forward-udp") for text in settings["forward_udp"]
    ]


def start_forwards(settings: dict, router: Router) -> list:
    """Start every forward (``ListenError`` names the flag of one that cannot bind)."""
    started = []
    for kind, flag, specs in (
        (TcpForward, "--forward", settings["forward"]),
        (UdpForward, "--forward-udp", settings["forward_udp"]),
    ):
        for spec in specs:
            forward = kind(spec, router)
            listening(flag, spec.listen, forward.start)
            started.append(forward)
    return started


def own_listeners(services: list) -> list[tuple[str, int]]:
    """Where this client listens: DIRECT never connects there (it would loop)."""
    return [service.address[:2] for service in services]


def reload_front(reloader: Reloader, router: Router) -> None:
    """On the client's SIGHUP: new rules and a moved access log take effect; the access log
    is reopened every time (logrotate). Forwards listen on ports: they need a restart."""

    def new_rules(fresh: dict) -> None:
        router.rules = rule_set(fresh["rules"])

    reloader.every_time(router.access_log.reopen)
    reloader.on_change(["rules"], new_rules)
    reloader.on_change(["access_log"], access_log_mover(router.access_log, "[client] access_log"))


def run(args: argparse.Namespace) -> int:
    try:
        rules = rules_from(args)
    except ConfigError as error:
        sys.stderr.write(f"gjproxy route: {error}\n")
        return 2
    host, sep, port_text = args.target.rpartition(":")
    if not sep or ":" in host and not host.startswith("["):
        host, port_text = args.target, "443"
    host = host.strip("[]")
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        sys.stderr.write(f"gjproxy route: bad port in {args.target!r}\n")
        return 2
    port = int(port_text)
    decision = rules.decide(host, port)
    if isinstance(decision, NeedAddresses):
        try:
            addresses = SystemResolver().resolve(host, RESOLVE_TIMEOUT)
        except ResolveError as error:
            print(f"({host} does not resolve here: {error})")
            addresses = []
        else:
            print(f"({host} resolves to {', '.join(addresses)})")
        decision = rules.decide(host, port, addresses)
    shown = f"[{host}]" if ip_literal(host) is not None and ":" in host else host
    print(f"{shown}:{port} -> {decision.action.value} (rule: {decision.rule})")
    return 0
