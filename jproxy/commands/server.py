"""``gjproxy server``: the tunnel endpoint, with its admin listener and metrics page."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import sys
from functools import partial

from jproxy import version
from jproxy.config import (
    ConfigError,
    ListenError,
    add_tunnel_options,
    check_tunnel_options,
    host_port,
    listening,
    load,
    resolve,
    show_defaults,
    where,
)
from jproxy.handlers.admin.listener import serve_admin
from jproxy.handlers.console.options import DEFAULTS as CONSOLE_DEFAULTS
from jproxy.handlers.console.options import add_console_options, check_console, start_console
from jproxy.handlers.dns.resolver import ResolveError, Resolver, SystemResolver
from jproxy.handlers.logs.access import AccessLog
from jproxy.handlers.net.descriptors import raise_fd_limit
from jproxy.handlers.net.dialer import Dialer
from jproxy.handlers.net.heap import HeapTrimmer, keep_heap_reserve
from jproxy.handlers.net.signals import Reloader, Termination, access_log_mover
from jproxy.handlers.socks.plain import PlainSocks5Port
from jproxy.handlers.tunnel.keylog import add_keylog_option, key_log_path, open_key_log
from jproxy.handlers.tunnel.server import ServerLimits, TunnelServer
from jproxy.handlers.workers.worker import WorkerRole, worker_role
from jproxy.metrics import Counters
from jproxy.policy.egress import EgressPolicy, Rule, RuleError
from jproxy.policy.passwords import (
    PASSWORD_VARIABLE,
    PasswordTable,
    load_admin_credentials,
    load_socks_users,
)
from jproxy.tunnel.keys import KeyFileError, UserDirectory

log = logging.getLogger("gjproxy.server")

DEFAULTS = {
    "listen": "0.0.0.0:16384",
    "users": "users",
    "allow_legacy": False,
    "admin": "127.0.0.1:8080",
    "metrics": "",
    "max_tunnels": ServerLimits.max_tunnels,
    "max_tunnels_per_user": ServerLimits.max_tunnels_per_user,
    "max_prelogin": ServerLimits.max_prelogin,
    "max_prelogin_per_address": ServerLimits.max_prelogin_per_address,
    "max_streams": ServerLimits.max_streams,
    "idle_timeout": ServerLimits.idle_timeout,
    "connect_timeout": ServerLimits.connect_timeout,
    "handshake_timeout": ServerLimits.handshake_timeout,
    "keylog": "",
    "doh": "",
    "doh_ca": "",
    "access_log": "",
    "socks": "",
    "socks_no_auth": False,
    "window": ServerLimits.window,
    "grace": ServerLimits.grace,
    "workers": "1",
    **CONSOLE_DEFAULTS,
}
EGRESS_DEFAULTS = {"allow": [], "deny": []}
MAX_WORKERS = 256


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "server",
        help="run the tunnel server",
        description="Serve jProxy tunnels: log clients in by key and open their connections.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file; its [server] keys are the flags' names"
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="where tunnels come in")
    parser.add_argument("--users", metavar="DIR", help="user files directory")
    parser.add_argument(
        "--allow-legacy",
        action="store_const",
        const=True,
        help="also accept the legacy dialect 3.0 (the Java client; no integrity protection)",
    )
    parser.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="admin protocol listener; it needs an admin account ([admin] password_hash or"
        f" ${PASSWORD_VARIABLE}) and is on whenever there is one",
    )
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    for flag, kind, metavar, text in (
        ("--max-tunnels", int, "N", "tunnels served at once"),
        ("--max-tunnels-per-user", int, "N", "proven tunnels one user may hold"),
        ("--max-prelogin", int, "N", "connections waiting for login (the least far gives way)"),
        ("--max-prelogin-per-address", int, "N", "of those, from one address (IPv6: a /64)"),
        ("--max-streams", int, "N", "channels per tunnel: streams, UDP associations, echoes"),
        ("--idle-timeout", float, "S", "seconds before an idle stream ends"),
        ("--connect-timeout", float, "S", "outbound connect timeout (s)"),
        ("--handshake-timeout", float, "S", "seconds for hello, login and the first frame"),
    ):
        parser.add_argument(flag, type=kind, metavar=metavar, help=text)
    parser.add_argument(
        "--doh",
        metavar="URL",
        help="resolve names over DNS over HTTPS (RFC 8484), e.g. https://1.1.1.1/dns-query;"
        " a host name in the URL is resolved once, at start (default: the system resolver)",
    )
    parser.add_argument(
        "--doh-ca", metavar="FILE", help="PEM CA certificates for the DoH server (default: system)"
    )
    parser.add_argument(
        "--socks",
        metavar="HOST:PORT",
        help="also serve plain SOCKS5 here, straight out (off; users from [socks_users],"
        " or no authentication with --socks-no-auth)",
    )
    parser.add_argument(
        "--socks-no-auth",
        action="store_const",
        const=True,
        help="serve --socks without authentication (only with no [socks_users])",
    )
    parser.add_argument(
        "--access-log",
        metavar="FILE|-",
        help="one JSON line per connection to FILE (reopened on SIGHUP) or - for stdout"
        " (default: the gjproxy.access logger)",
    )
    add_tunnel_options(parser)
    parser.add_argument(
        "--allow-egress",
        action="append",
        metavar="CIDR[:PORTS]",
        help="let streams reach this network (repeatable; e.g. 127.0.0.0/8, [::1]/128:8000-8999)."
        " Loopback, private, link-local and multicast ranges are denied unless allowed"
        " (default: none)",
    )
    parser.add_argument(
        "--deny-egress",
        action="append",
        metavar="CIDR[:PORTS]",
        help="never let streams reach this network (repeatable; beats every allow rule)"
        " (default: none)",
    )
    parser.add_argument(
        "--workers",
        metavar="N|auto",
        help="worker processes sharing the ports (auto: one per core); a parent process"
        " supervises them and serves admin and metrics for all",
    )
    add_keylog_option(parser)
    add_console_options(parser)
    show_defaults(parser, DEFAULTS)
    parser.set_defaults(handler=run)


def settings_from(args: argparse.Namespace, environ=os.environ) -> dict:
    config = load(args.config)
    if isinstance(config.get("server", {}).get("workers"), int):
        config["server"]["workers"] = str(config["server"]["workers"])  # a number, or "auto"
    settings = resolve(args, config, "server", DEFAULTS)
    settings["workers"] = worker_count(settings["workers"])
    settings["listen"] = host_port(settings["listen"], "--listen")
    settings["admin"] = host_port(settings["admin"], "--admin")
    settings["metrics"] = settings["metrics"] and host_port(settings["metrics"], "--metrics")
    for key in (
        "max_tunnels",
        "max_tunnels_per_user",
        "max_prelogin",
        "max_prelogin_per_address",
        "max_streams",
    ):
        if settings[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1")
    check_tunnel_options(settings)
    for key in ("idle_timeout", "connect_timeout", "handshake_timeout"):
        settings[key] = float(settings[key])
        if settings[key] <= 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be positive")
    check_doh(settings)
    settings["socks"] = settings["socks"] and host_port(settings["socks"], "--socks")
    settings["socks_users"] = socks_users(settings, config)
    settings["egress"] = egress_policy(args, config)
    settings["keylog"] = key_log_path(args, environ, settings["keylog"])
    check_console(settings, environ)
    settings["admin_credentials"] = load_admin_credentials(config, environ)
    admin_asked = args.admin is not None or "admin" in config.get("server", {})
    if admin_asked and settings["admin_credentials"] is None:
        raise ConfigError(
            "--admin needs an admin account: [admin] user and password_hash in the config file,"
            f" or ${PASSWORD_VARIABLE} (see docs/admin.md)"
        )
    return settings


def worker_count(text: str) -> int:
    """``--workers``: a number from 1, or ``auto`` for one per core this process may use."""
    if text == "auto":
        return len(os.sched_getaffinity(0))
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ConfigError(f"--workers must be auto or 1..{MAX_WORKERS}, got {text!r}")
    return int(text)


def socks_users(settings: dict, config: dict) -> PasswordTable | None:
    """The plain SOCKS port's users; None for no authentication, which must be asked for."""
    users = load_socks_users(config)
    if not settings["socks"]:
        return None
    if settings["socks_no_auth"]:
        if users.hashes:
            raise ConfigError("--socks: [socks_users] and --socks-no-auth exclude each other")
        return None
    if not users.hashes:
        raise ConfigError(
            "--socks needs users ([socks_users] in the config file) or --socks-no-auth"
        )
    return users


def check_doh(settings: dict) -> None:
    """A usable ``--doh`` URL, and a ``--doh-ca`` only with it and only when readable."""
    if settings["doh"]:
        from jproxy.handlers.dns.doh import parse_doh_url  # dnspython and h2: only when asked for

        try:
            parse_doh_url(settings["doh"])
        except ValueError as error:
            raise ConfigError(f"--doh: {error}") from None
    elif settings["doh_ca"]:
        raise ConfigError("--doh-ca needs --doh")
    if settings["doh_ca"] and not os.access(settings["doh_ca"], os.R_OK):
        raise ConfigError(f"--doh-ca: cannot read {settings['doh_ca']}")


def egress_policy(args: argparse.Namespace, config: dict) -> EgressPolicy:
    """``[egress]`` allow/deny lists, each replaced by its flags when any is given."""
    flags = argparse.Namespace(allow=args.allow_egress, deny=args.deny_egress)
    rules = resolve(flags, config, "egress", EGRESS_DEFAULTS)
    parsed = {}
    for key, texts in rules.items():
        try:
            parsed[key] = tuple(map(Rule.parse, texts))
        except RuleError as error:
            from_file = getattr(flags, key) is None  # else the flag's own text names it
            raise ConfigError(
                f"{where(config, 'egress', key)}: {error}" if from_file else str(error)
            ) from None
    return EgressPolicy(parsed["allow"], parsed["deny"])


RESTART_ONLY_LIMITS = ("max_tunnels", "max_prelogin")
"""Limits the file-descriptor reserve is sized from at start: they change with a restart."""
RELOADABLE_LIMITS = tuple(
    key for key in vars(ServerLimits()) if key in DEFAULTS and key not in RESTART_ONLY_LIMITS
)
LABELS = {"egress": "[egress]", "socks_users": "[socks_users]", "admin_credentials": "[admin]"}


def label(key: str) -> str:
    """How the log names a setting: its config file key (the flag has the same name)."""
    return LABELS.get(key, f"[server] {key}")


def server_limits(settings: dict) -> ServerLimits:
    return ServerLimits(**{key: settings[key] for key in vars(ServerLimits()) if key in settings})


def load_users(settings: dict, args: argparse.Namespace) -> UserDirectory:
    try:
        users = UserDirectory(settings["users"])
    except KeyFileError as error:
        if args.users is None:
            raise KeyFileError(f"{error} (name the folder with --users DIR)") from None
        raise
    _log_users(users)
    return users


def _log_users(users: UserDirectory) -> None:
    if len(users):
        log.info("loaded %d user(s) from %s", len(users), users.path)
    else:
        log.warning(
            "no users in %s: every login is refused until one is added"
            " (gjproxy keygen USER --users-dir %s, then SIGHUP)",
            users.path,
            users.path,
        )


def reread_users(users: UserDirectory) -> None:
    """SIGHUP: read the users folder again; one that cannot be read keeps the users."""
    try:
        users.reload()
    except KeyFileError as error:
        log.warning("SIGHUP: keeping the previous %d user(s): %s", len(users), error)
        return
    _log_users(users)


def run(args: argparse.Namespace) -> int:
    termination = Termination()
    role = worker_role()
    if role is not None:
        role.begin()
    try:
        settings = settings_from(args)
        users = load_users(settings, args)
    except (ConfigError, KeyFileError) as error:
        sys.stderr.write(f"gjproxy server: {error}\n")
        return 2
    if role is None and settings["workers"] > 1:
        from jproxy.handlers.workers.supervisor import supervise

        return supervise(settings, settings["workers"], settings["grace"], termination)
    if role is not None:
        role.adapt(settings)
    try:
        key_log = open_key_log(settings["keylog"])
    except OSError as error:
        sys.stderr.write(f"gjproxy server: cannot open the key log: {error}\n")
        return 2
    try:
        access_log = AccessLog(settings["access_log"] or None)
    except OSError as error:
        sys.stderr.write(f"gjproxy server: --access-log: {error}\n")
        return 2
    limits = server_limits(settings)
    counters = Counters()
    try:
        resolver = make_resolver(settings, counters)
    except ResolveError as error:
        sys.stderr.write(f"gjproxy server: --doh: {error}\n")
        return 1
    keep_heap_reserve()
    fds = raise_fd_limit(limits.max_tunnels + limits.max_prelogin)
    dialer = Dialer(resolver, settings["egress"], limits.connect_timeout, fds)
    slots = role and role.slots(limits.max_tunnels, limits.max_tunnels_per_user)
    server = TunnelServer(
        settings["listen"],
        users,
        allow_legacy=settings["allow_legacy"],
        limits=limits,
        counters=counters,
        dialer=dialer,
        key_log=key_log,
        access_log=access_log,
        slots=slots,
    )
    if role is not None:
        role.share(counters, server.tuning, slots)
    # From here on SIGHUP reloads: before any port is announced, so a reload sent as soon as
    # the log says "listening" never meets SIGHUP's default action (exit).
    reloader = Reloader(
        args.config or "the command line (no --config file)",
        partial(_reread_settings, args, settings, role),
        settings,
        label,
        secrets=("socks_users", "admin_credentials", "console_secret"),
    )
    reloader.every_time(partial(reread_users, users))
    reloader.every_time(access_log.reopen)
    reloader.on_change(["users"], partial(_move_users, users))
    reloader.on_change(["allow_legacy"], partial(_set_legacy, server))
    reloader.on_change(RELOADABLE_LIMITS, lambda fresh: server.set_limits(server_limits(fresh)))
    reloader.on_change(["egress"], partial(_set_egress, dialer))
    reloader.on_change(["access_log"], access_log_mover(access_log, "[server] access_log"))
    sighups = [reloader.on_sighup()]
    services: list = []
    try:
        listening("--listen", settings["listen"], server.start)
        services.append(server)
        page = (server.counters, server.tuning)
        if settings["admin_credentials"] is not None:
            admin = partial(
                serve_admin,
                settings["admin"],
                settings["admin_credentials"],
                *page,
                origins=dialer.origins,
            )
            admin_server = listening("--admin", settings["admin"], admin)
            services.append(admin_server)
            reloader.on_change(["admin_credentials"], partial(_set_admin_credentials, admin_server))
        if settings["metrics"]:
            # Imported only when asked for: prometheus_client pulls in http, email and wsgiref,
            # about 5 MB of memory in every gjproxy process that would otherwise load it.
            from jproxy.handlers.admin.prometheus import serve_metrics

            metrics = partial(serve_metrics, settings["metrics"], *page)
            services.append(listening("--metrics", settings["metrics"], metrics))
        if settings["socks"]:
            socks = partial(plain_socks_port, settings, dialer, server, access_log)
            socks_port = listening("--socks", settings["socks"], socks)
            services.append(socks_port)
            reloader.on_change(["socks_users"], partial(_set_socks_users, socks_port))
        if settings["console"]:
            console = start_console(settings, "server", version())
            services.append(console)
            server.console = console.live
            access_log.observer = console.live.access
        own = [service.address for service in services] + (role.parent_ports if role else [])
        dialer.policy = dialer.policy.listening_on(own)
        _log_egress(dialer.policy)
    except ListenError as error:
        sys.stderr.write(f"gjproxy server: {error}\n")
        for sighup in sighups:
            sighup.cancel()
        for service in services:
            service.stop()
        return 1
    trimmer = HeapTrimmer(lambda: counters.connections_open)
    trimmer.start()
    signal_name = termination.wait()
    trimmer.stop()
    log.info("%s: shutting down", signal_name)
    for sighup in sighups:
        sighup.cancel()
    for service in reversed(services):
        service.stop()
    access_log.close()
    return 0


def plain_socks_port(
    settings: dict, dialer: Dialer, server: TunnelServer, access_log: AccessLog
) -> PlainSocks5Port:
    port = PlainSocks5Port(
        settings["socks"],
        dialer,
        users=settings["socks_users"],
        counters=server.counters,
        tuning=server.tuning,
        access_log=access_log,
        idle_timeout=server.limits.idle_timeout,
    )
    port.start()
    if settings["socks_users"] is None and not ipaddress.ip_address(port.address[0]).is_loopback:
        log.warning(
            "plain SOCKS5 on %s without authentication: anyone who reaches it can use it",
            port.address[0],
        )
    return port


def make_resolver(settings: dict, counters: Counters) -> Resolver:
    """DNS over HTTPS when ``--doh`` names a server (its host resolved now), else the system's."""
    if not settings["doh"]:
        return SystemResolver()
    from jproxy.handlers.dns.doh import DohResolver

    return DohResolver.start(
        settings["doh"],
        ca_file=settings["doh_ca"] or None,
        counters=counters,
        timeout=settings["connect_timeout"],
    )


def _log_egress(policy: EgressPolicy) -> None:
    ports = ", ".join(str(port) for port in sorted({port for _, port in policy.listeners}))
    log.info(
        "egress: %s; this host's own ports %s and private ranges denied by default"
        " (--allow-egress CIDR[:PORTS] or [egress] allow opens them)",
        policy,
        ports,
    )


def _reread_settings(args: argparse.Namespace, started: dict, role: WorkerRole | None) -> dict:
    """The settings from the config file as it is now (a SIGHUP); a worker's as it runs them."""
    fresh = settings_from(args)
    if role is not None:
        role.adapt(fresh)
    credentials, first = fresh["admin_credentials"], started["admin_credentials"]
    if credentials is not None and first is not None and credentials.source == first.source:
        if credentials.source.startswith("environment"):
            # The environment was read once, at start: the same password, not a new hash.
            fresh["admin_credentials"] = first
    return fresh


def _move_users(users: UserDirectory, fresh: dict) -> None:
    try:
        users.move_to(fresh["users"])
    except KeyFileError as error:
        raise ConfigError(f"[server] users: {error}") from None


def _set_legacy(server: TunnelServer, fresh: dict) -> None:
    server.allow_legacy = fresh["allow_legacy"]


def _set_egress(dialer: Dialer, fresh: dict) -> None:
    dialer.policy = dataclasses.replace(fresh["egress"], listeners=dialer.policy.listeners)
    _log_egress(dialer.policy)


def _set_admin_credentials(admin_server, fresh: dict) -> None:
    if fresh["admin_credentials"] is None:
        raise ConfigError("[admin]: the admin account cannot be removed without a restart")
    admin_server.replace_credentials(fresh["admin_credentials"])


def _set_socks_users(port: PlainSocks5Port, fresh: dict) -> None:
    try:
        port.replace_users(fresh["socks_users"])
    except ValueError:
        raise ConfigError(
            "[socks_users]: switching the plain SOCKS port between users and no"
            " authentication needs a restart"
        ) from None
