"""``gjproxy server``: the tunnel endpoint, with its admin listener and metrics page."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from jproxy.config import (
    ConfigError,
    add_tunnel_options,
    check_tunnel_options,
    host_port,
    load,
    resolve,
)
from jproxy.egress import EgressPolicy, RuleError
from jproxy.handlers.admin import serve_admin
from jproxy.handlers.descriptors import raise_fd_limit
from jproxy.handlers.dialer import Dialer
from jproxy.handlers.resolver import SystemResolver
from jproxy.handlers.server import ServerLimits, TunnelServer
from jproxy.handlers.signals import Termination
from jproxy.keys import KeyFileError, UserDirectory, reload_on_sighup
from jproxy.passwords import load_admin_credentials

log = logging.getLogger("gjproxy.server")

DEFAULTS = {
    "listen": "0.0.0.0:16384",
    "users": "users",
    "allow_legacy": False,
    "admin": "127.0.0.1:8080",
    "metrics": "",
    "max_tunnels": ServerLimits.max_tunnels,
    "max_streams": ServerLimits.max_streams,
    "idle_timeout": ServerLimits.idle_timeout,
    "connect_timeout": ServerLimits.connect_timeout,
    "handshake_timeout": ServerLimits.handshake_timeout,
    "window": ServerLimits.window,
    "grace": ServerLimits.grace,
}
EGRESS_DEFAULTS = {"allow": [], "deny": []}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "server",
        help="run the tunnel server",
        description="Serve jProxy tunnels: log clients in by key and open their connections.",
    )
    parser.add_argument("--config", help="TOML file; its [server] keys are the flags' names")
    parser.add_argument("--listen", metavar="HOST:PORT", help="default 0.0.0.0:16384")
    parser.add_argument("--users", metavar="DIR", help="user files directory (default ./users)")
    parser.add_argument(
        "--allow-legacy",
        action="store_const",
        const=True,
        help="also accept the legacy dialect 3.0 (the Java client; no integrity protection)",
    )
    parser.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="admin protocol listener (default 127.0.0.1:8080; on only with admin credentials)",
    )
    parser.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics over HTTP here (off)"
    )
    parser.add_argument("--max-tunnels", type=int, help="tunnels served at once (default 64)")
    parser.add_argument("--max-streams", type=int, help="streams per tunnel (default 1024)")
    parser.add_argument("--idle-timeout", type=float, help="seconds before an idle stream ends")
    parser.add_argument("--connect-timeout", type=float, help="outbound connect timeout (s)")
    parser.add_argument("--handshake-timeout", type=float, help="handshake+login timeout (s)")
    add_tunnel_options(parser)
    parser.add_argument(
        "--allow-egress",
        action="append",
        metavar="CIDR[:PORTS]",
        help="let streams reach this network (repeatable; e.g. 127.0.0.0/8, [::1]/128:8000-8999)."
        " Loopback, private, link-local and multicast ranges are denied unless allowed",
    )
    parser.add_argument(
        "--deny-egress",
        action="append",
        metavar="CIDR[:PORTS]",
        help="never let streams reach this network (repeatable; beats every allow rule)",
    )
    parser.set_defaults(handler=run)


def settings_from(args: argparse.Namespace, environ=os.environ) -> dict:
    config = load(args.config)
    settings = resolve(args, config, "server", DEFAULTS)
    settings["listen"] = host_port(settings["listen"], "--listen")
    settings["admin"] = host_port(settings["admin"], "--admin")
    settings["metrics"] = settings["metrics"] and host_port(settings["metrics"], "--metrics")
    for key in ("max_tunnels", "max_streams"):
        if settings[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1")
    check_tunnel_options(settings)
    for key in ("idle_timeout", "connect_timeout", "handshake_timeout"):
        settings[key] = float(settings[key])
        if settings[key] <= 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be positive")
    settings["egress"] = egress_policy(args, config)
    settings["admin_credentials"] = load_admin_credentials(config, environ)  # logs if absent
    return settings


def egress_policy(args: argparse.Namespace, config: dict) -> EgressPolicy:
    """``[egress]`` allow/deny lists, each replaced by its flags when any is given."""
    flags = argparse.Namespace(allow=args.allow_egress, deny=args.deny_egress)
    rules = resolve(flags, config, "egress", EGRESS_DEFAULTS)
    for key, texts in rules.items():
        if not all(isinstance(text, str) for text in texts):
            raise ConfigError(f"config: [egress] {key} must be a list of strings")
    try:
        return EgressPolicy.from_rules(rules["allow"], rules["deny"])
    except RuleError as error:
        raise ConfigError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    termination = Termination()
    try:
        settings = settings_from(args)
        users = UserDirectory(settings["users"])
    except (ConfigError, KeyFileError) as error:
        sys.stderr.write(f"gjproxy server: {error}\n")
        return 2
    limits = ServerLimits(
        max_tunnels=settings["max_tunnels"],
        max_streams=settings["max_streams"],
        idle_timeout=settings["idle_timeout"],
        connect_timeout=settings["connect_timeout"],
        handshake_timeout=settings["handshake_timeout"],
        window=settings["window"],
        grace=settings["grace"],
    )
    fds = raise_fd_limit(limits.max_tunnels)
    dialer = Dialer(SystemResolver(), settings["egress"], limits.connect_timeout, fds)
    server = TunnelServer(
        settings["listen"],
        users,
        allow_legacy=settings["allow_legacy"],
        limits=limits,
        dialer=dialer,
    )
    services: list = []
    try:
        server.start()
        services.append(server)
        if settings["admin_credentials"] is not None:
            services.append(
                serve_admin(
                    settings["admin"], settings["admin_credentials"], server.counters, server.tuning
                )
            )
        if settings["metrics"]:
            # Imported only when asked for: prometheus_client pulls in http, email and wsgiref,
            # about 5 MB of memory in every gjproxy process that would otherwise load it.
            from jproxy.handlers.prometheus import serve_metrics

            services.append(serve_metrics(settings["metrics"], server.counters, server.tuning))
        dialer.policy = dialer.policy.listening_on([service.address for service in services])
        _log_egress(dialer.policy)
    except OSError as error:
        sys.stderr.write(f"gjproxy server: cannot listen: {error}\n")
        for service in services:
            service.stop()
        return 1
    sighup = reload_on_sighup(users)
    signal_name = termination.wait()
    log.info("%s: shutting down", signal_name)
    sighup.cancel()
    for service in reversed(services):
        service.stop()
    return 0


def _log_egress(policy: EgressPolicy) -> None:
    allow = ", ".join(rule.text for rule in policy.allow) or "none"
    deny = ", ".join(rule.text for rule in policy.deny) or "none"
    ports = ", ".join(str(port) for port in sorted({port for _, port in policy.listeners}))
    log.info(
        "egress: allow %s; deny %s; this host's own ports %s and private ranges denied by default",
        allow,
        deny,
        ports,
    )
