"""``gjproxy client``: a local SOCKS5/SOCKS4/HTTP proxy port whose connections travel through
one tunnel, or straight out, or nowhere, as the routing rules say; and port forwards."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from functools import partial

import gevent

from jproxy import version
from jproxy.commands.route import (
    add_front_options,
    front_settings,
    own_listeners,
    reload_front,
    rule_set,
    start_forwards,
)
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
)
from jproxy.handlers.console.options import DEFAULTS as CONSOLE_DEFAULTS
from jproxy.handlers.console.options import add_console_options, check_console, start_console
from jproxy.handlers.net.heap import keep_heap_reserve
from jproxy.handlers.net.router import DIRECT_TIMEOUT, client_router, direct_dialer
from jproxy.handlers.net.signals import Reloader, Termination
from jproxy.handlers.socks.client_port import ClientPort
from jproxy.handlers.socks.port import MAX_CLIENTS
from jproxy.handlers.tunnel.client import DEFAULT_GRACE
from jproxy.handlers.tunnel.keylog import add_keylog_option, key_log_path, open_key_log
from jproxy.handlers.tunnel.pool import CONNECT_TIMEOUT, TunnelPool
from jproxy.policy.passwords import SOCKS_PASSWORD_VARIABLE
from jproxy.tunnel.balance import FAILBACK_AFTER, Strategy
from jproxy.tunnel.keys import KeyFileError, load_client_key, require_private
from jproxy.tunnel.mux import DEAD_AFTER, DEFAULT_WINDOW, KEEPALIVE_INTERVAL
from schemas.jproxy import Dialect

log = logging.getLogger("gjproxy.client")

DIALECTS = {"3.1": Dialect.SECURE_3_1, "3.0": Dialect.LEGACY_3_0}
DEFAULTS = {
    "server": ["127.0.0.1:16384"],
    "key": "key.dat",
    "socks": "127.0.0.1:1080",
    "dialect": "3.1",
    "socks_user": "",
    "socks_password": "",
    "max_socks": MAX_CLIENTS,
    "metrics": "",
    "keylog": "",
    "window": DEFAULT_WINDOW,
    "keepalive": KEEPALIVE_INTERVAL,
    "grace": DEFAULT_GRACE,
    "rules": [],
    "access_log": "",
    "forward": [],
    "forward_udp": [],
    "tunnels": 1,
    "strategy": Strategy.FAILOVER.value,
    "failback_after": FAILBACK_AFTER,
    "connect_timeout": CONNECT_TIMEOUT,
    **CONSOLE_DEFAULTS,
}
MAX_TUNNELS = 64


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "client",
        help="run the local SOCKS5/SOCKS4/HTTP proxy that tunnels to a gjproxy server",
        description="Serve SOCKS5, SOCKS4/4a and HTTP proxy on one local port and carry each"
        " connection through one jProxy tunnel, or as the routing rules say.",
    )
    add_server_options(parser)
    parser.add_argument(
        "--socks", metavar="HOST:PORT", help="the local port: SOCKS5, SOCKS4/4a and HTTP proxy"
    )
    parser.add_argument(
        "--socks-user",
        metavar="USER",
        help="require RFC 1929 user/password on the SOCKS port; the password comes from"
        f" ${SOCKS_PASSWORD_VARIABLE} or [client] socks_password",
    )
    parser.add_argument(
        "--max-socks",
        type=int,
        metavar="N",
        help="SOCKS connections served at once; the next one gets reply 0x01 (general failure)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics here: traffic, the tunnel's state and its server",
    )
    add_front_options(parser)
    add_keylog_option(parser)
    add_console_options(parser)
    add_tunnel_options(parser)
    parser.add_argument(
        "--keepalive",
        type=float,
        metavar="S",
        help=f"3.1: ping a tunnel quiet this long; silent {DEAD_AFTER}x this: rebuild it",
    )
    add_pool_options(parser)
    show_defaults(parser, DEFAULTS)
    parser.set_defaults(handler=run)


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    """How many tunnels, to which servers (``jproxy.tunnel.balance``)."""
    parser.add_argument(
        "--tunnels",
        type=int,
        metavar="N",
        help="tunnels to each server in use; a new stream takes the least loaded one",
    )
    parser.add_argument(
        "--strategy",
        choices=[strategy.value for strategy in Strategy],
        help="which --server takes new streams: the first healthy one, the lowest keepalive"
        " round trip, or each in turn",
    )
    parser.add_argument(
        "--failback-after",
        type=float,
        metavar="S",
        help="a server that failed takes new streams again once healthy this long",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        help="a SOCKS request waits this long for a tunnel while none is up, then gets 0x01",
    )


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """How a command reaches the tunnel server (``client`` and ``ping`` alike)."""
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file; its [client] keys are the flags' names"
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        action="append",
        help="the tunnel server; give it again for more servers, tried in order when one fails",
    )
    parser.add_argument("--key", metavar="FILE", help="client key file, mode 0600")
    parser.add_argument("--dialect", choices=sorted(DIALECTS), help="jProxy dialect")


def settings_from(args: argparse.Namespace, environ=os.environ) -> dict:
    settings = resolve(args, load(args.config), "client", DEFAULTS)
    if not settings["server"]:
        raise ConfigError("config: [client] server must name at least one HOST:PORT")
    settings["server"] = [host_port(server, "--server") for server in settings["server"]]
    settings["socks"] = host_port(settings["socks"], "--socks")
    settings["metrics"] = settings["metrics"] and host_port(settings["metrics"], "--metrics")
    check_tunnel_options(settings)
    check_pool_options(settings)
    settings["keepalive"] = float(settings["keepalive"])
    if settings["keepalive"] <= 0:
        raise ConfigError("--keepalive must be positive")
    if settings["dialect"] not in DIALECTS:
        raise ConfigError(f"dialect must be one of {', '.join(sorted(DIALECTS))}")
    settings["dialect"] = DIALECTS[settings["dialect"]]
    settings["keylog"] = key_log_path(args, environ, settings["keylog"])
    check_console(settings, environ)
    if settings["max_socks"] < 1:
        raise ConfigError("--max-socks must be at least 1")
    password = environ.get(SOCKS_PASSWORD_VARIABLE) or settings["socks_password"]
    if settings["socks_user"] and not password:
        raise ConfigError(f"--socks-user needs a password in ${SOCKS_PASSWORD_VARIABLE}")
    settings["socks_users"] = {settings["socks_user"]: password} if settings["socks_user"] else None
    front_settings(settings)
    return settings


def check_pool_options(settings: dict) -> None:
    if not 1 <= settings["tunnels"] <= MAX_TUNNELS:
        raise ConfigError(f"--tunnels must be 1..{MAX_TUNNELS}")
    strategies = {strategy.value: strategy for strategy in Strategy}
    if settings["strategy"] not in strategies:
        raise ConfigError(f"strategy must be one of {', '.join(strategies)}")
    settings["strategy"] = strategies[settings["strategy"]]
    for key in ("failback_after", "connect_timeout"):
        settings[key] = float(settings[key])
        if settings[key] < 0 or (key == "connect_timeout" and not settings[key]):
            raise ConfigError(f"--{key.replace('_', '-')} must be positive")


def run(args: argparse.Namespace) -> int:
    termination = Termination()
    try:
        settings = settings_from(args)
        key = load_client_key(settings["key"])
        require_private(settings["key"])
        key_log = open_key_log(settings["keylog"])
    except (ConfigError, KeyFileError) as error:
        sys.stderr.write(f"gjproxy client: {error}\n")
        return 2
    except OSError as error:
        sys.stderr.write(f"gjproxy client: cannot open the key log: {error}\n")
        return 2
    keep_heap_reserve()
    tunnels = TunnelPool(
        settings["server"],
        key,
        settings["dialect"],
        tunnels=settings["tunnels"],
        strategy=settings["strategy"],
        failback_after=settings["failback_after"],
        connect_timeout=settings["connect_timeout"],
        key_log=key_log,
        window=settings["window"],
        keepalive=settings["keepalive"],
    )
    router = client_router(tunnels, rule_set(settings["rules"]), settings["access_log"])
    listener = ClientPort(
        settings["socks"],
        router,
        users=settings["socks_users"],
        max_clients=settings["max_socks"],
    )
    reloader = client_reloader(args, settings, tunnels, listener)
    reload_front(reloader, router)
    sighups = [reloader.on_sighup()]  # before the port is announced, as on the server
    services = []
    try:
        listening("--socks", settings["socks"], listener.start)
        services.append(listener)
        warn_if_open(listener)
        services += start_forwards(settings, router)
        if settings["metrics"]:
            # Imported only when asked for, as on the server (prometheus_client costs ~5 MB).
            from jproxy.handlers.admin.prometheus import serve_client_metrics

            metrics = partial(serve_client_metrics, settings["metrics"], tunnels)
            services.append(listening("--metrics", settings["metrics"], metrics))
        if settings["console"]:
            console = start_console(settings, "client", version())
            services.append(console)
            router.console = console.live
            router.access_log.observer = console.live.access
            console.live.watch_client(tunnels)
    except ListenError as error:
        sys.stderr.write(f"gjproxy client: {error}\n")
        for sighup in sighups:
            sighup.cancel()
        for service in services:
            service.stop()
        return 1
    router.dialer = direct_dialer(own_listeners(services), DIRECT_TIMEOUT)
    tunnels.start()
    status = serve_until_stopped(tunnels, listener, termination, settings["grace"])
    for sighup in sighups:
        sighup.cancel()
    for service in services[1:]:  # serve_until_stopped stopped the listener
        service.stop()
    return status


def warn_if_open(listener: ClientPort) -> None:
    """The client's port without authentication off loopback lends the tunnel to its network
    (SOCKS4 and HTTP too: with a login, SOCKS4 is refused and HTTP needs Basic auth)."""
    host = listener.address[0]
    if listener.users is None and not ipaddress.ip_address(host.partition("%")[0]).is_loopback:
        log.warning(
            "SOCKS5/SOCKS4/HTTP on %s without authentication: anyone who reaches it can use the"
            " tunnel (require a login with --socks-user, or listen on 127.0.0.1)",
            host,
        )


SOCKS_LOGIN_KEYS = ("socks_user", "socks_password", "socks_users")


def client_reloader(
    args: argparse.Namespace, settings: dict, tunnels: TunnelPool, listener: ClientPort
) -> Reloader:
    """SIGHUP for the client: the SOCKS port's login and limit, and the next tunnels' settings
    are reloaded; a command that adds settings registers its own ``on_change`` on it."""
    reloader = Reloader(
        args.config or "the command line (no --config file)",
        partial(settings_from, args),
        settings,
        lambda key: f"[client] {key}",
        secrets=(*SOCKS_LOGIN_KEYS, "console_secret"),
    )

    def socks_login(fresh: dict) -> None:
        listener.users = fresh["socks_users"]

    def max_socks(fresh: dict) -> None:
        listener.max_clients = fresh["max_socks"]

    def next_tunnels(fresh: dict) -> None:
        tunnels.window, tunnels.keepalive = fresh["window"], fresh["keepalive"]

    reloader.on_change(SOCKS_LOGIN_KEYS, socks_login)
    reloader.on_change(["max_socks"], max_socks)
    reloader.on_change(["window", "keepalive"], next_tunnels)
    reloader.on_change(["connect_timeout", "failback_after"], partial(pool_choices, tunnels))
    return reloader


def pool_choices(tunnels: TunnelPool, fresh: dict) -> None:
    """SIGHUP: how long a request waits for a tunnel, and when a server takes streams back."""
    tunnels.connect_timeout = fresh["connect_timeout"]
    tunnels.balancer.failback_after = fresh["failback_after"]


def serve_until_stopped(
    tunnels: TunnelPool, listener: ClientPort, termination: Termination, grace: float
) -> int:
    """Run until SIGTERM/SIGINT or a login failure that retrying cannot fix."""
    signalled = gevent.spawn(termination.wait)
    fatal = gevent.spawn(tunnels.stopped.wait)
    gevent.wait([signalled, fatal], count=1)
    if signalled.ready():
        log.info("%s: shutting down", signalled.value)
    signalled.kill()
    fatal.kill()
    listener.close()  # no new SOCKS connections; the open ones may finish within the grace
    tunnels.drain(grace)
    tunnels.stop()  # resets what is left
    listener.stop(timeout=1.0)
    if tunnels.fatal is not None:
        sys.stderr.write(f"gjproxy client: {tunnels.fatal}\n")
        return 1
    return 0
