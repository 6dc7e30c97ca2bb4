"""``gjproxy ping``: ICMP echo from the server's side, through one tunnel (dialect 3.1).

Prints a line per echo (sequence number and round-trip time through the tunnel) and a summary
like ping(8); exits 0 when any reply came, 1 otherwise, 2 for bad flags or files.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import gevent

from jproxy.commands.client import DEFAULTS as CLIENT_DEFAULTS
from jproxy.commands.client import DIALECTS, add_server_options
from jproxy.config import ConfigError, host_port, load, resolve, show_defaults
from jproxy.handlers.tunnel.client import open_tunnel, serve_tunnel
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.metrics import Counters
from jproxy.tunnel.handshake import LoginError
from jproxy.tunnel.keys import KeyFileError, load_client_key, require_private
from jproxy.tunnel.statuses import NOT_ALLOWED_TEXT
from schemas.jproxy import ConnectStatus, Dialect

DEFAULTS = {
    "count": 4,
    "interval": 1.0,
    **{key: CLIENT_DEFAULTS[key] for key in ("server", "key", "dialect")},
}
PAYLOAD = bytes(range(0x10, 0x10 + 56))
"""56 data bytes, as ping(8) sends by default."""
ECHO_TIMEOUT = 2.0
LOGIN_TIMEOUT = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ping",
        help="ping a host from the server's side, through the tunnel",
        description="Send ICMP echo requests from the gjproxy server (dialect 3.1).",
    )
    parser.add_argument("host", metavar="HOST", help="name or IP address to ping")
    parser.add_argument("-c", dest="count", type=int, metavar="N", help="echoes to send")
    parser.add_argument("-i", dest="interval", type=float, metavar="SECONDS", help="between echoes")
    add_server_options(parser)
    show_defaults(parser, DEFAULTS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        count = DEFAULTS["count"] if args.count is None else args.count
        interval = DEFAULTS["interval"] if args.interval is None else args.interval
        if count < 1 or interval < 0:
            raise ConfigError("-c must be at least 1 and -i not negative")
        settings = resolve(args, load(args.config), "client", DEFAULTS)
        servers = [host_port(server, "--server") for server in settings["server"]]
        dialect = DIALECTS.get(settings["dialect"])
        if dialect is None:
            raise ConfigError(f"dialect must be one of {', '.join(sorted(DIALECTS))}")
        key = load_client_key(settings["key"])
        require_private(settings["key"])
    except (ConfigError, KeyFileError) as error:
        sys.stderr.write(f"gjproxy ping: {error}\n")
        return 2
    if dialect is not Dialect.SECURE_3_1:
        sys.stderr.write("gjproxy ping: ICMP echo is part of dialect 3.1 only\n")
        return 1
    tunnel = _first_tunnel(servers, key, dialect)
    if tunnel is None:
        return 1
    runner = gevent.spawn(serve_tunnel, tunnel)
    try:
        return _ping(tunnel.datagrams, args.host, count, interval)
    finally:
        tunnel.close()
        runner.join(5)


def _first_tunnel(servers: list[tuple[str, int]], key, dialect: Dialect):
    """A tunnel to the first server of the list that lets us in; None (said why) otherwise."""
    for host, port in servers:
        try:
            return open_tunnel(
                (host, port), key, dialect, login_timeout=LOGIN_TIMEOUT, counters=Counters()
            )
        except (OSError, gevent.Timeout, LoginError) as error:
            sys.stderr.write(f"gjproxy ping: cannot reach {host}:{port}: {error}\n")
    return None


def _ping(datagrams, host: str, count: int, interval: float) -> int:
    print(f"PING {host} from the gjproxy server: {len(PAYLOAD)} data bytes", flush=True)
    times: list[float] = []
    for sequence in range(1, count + 1):
        started = time.monotonic()
        try:
            answer = datagrams.echo(host, int(ECHO_TIMEOUT * 1000), PAYLOAD, ECHO_TIMEOUT + 5)
        except (gevent.Timeout, TunnelClosed) as error:
            print(f"seq={sequence}: no answer from the gjproxy server ({error})", flush=True)
            break
        elapsed = (time.monotonic() - started) * 1000
        if answer.status is ConnectStatus.OK and answer.data == PAYLOAD:
            times.append(elapsed)
            print(f"{len(answer.data)} bytes from {host}: seq={sequence} time={elapsed:.3f} ms")
        elif answer.status is ConnectStatus.OK:
            print(f"seq={sequence}: reply with different data ({len(answer.data)} bytes)")
        else:
            print(f"seq={sequence}: {_explain(answer.status)}")
        sys.stdout.flush()
        if sequence < count:
            gevent.sleep(max(interval - (time.monotonic() - started), 0))
    _summary(host, count, times)
    return 0 if times else 1


def _explain(status: ConnectStatus) -> str:
    return {
        ConnectStatus.TIMED_OUT: "timed out",
        ConnectStatus.UNKNOWN_HOST: "unknown host",
        ConnectStatus.UNREACHABLE: "unreachable",
        ConnectStatus.CONNECTION_LIMIT: "refused: over the server's echo rate limit",
        ConnectStatus.NOT_ALLOWED: NOT_ALLOWED_TEXT,
        ConnectStatus.GENERAL_FAILURE: "the server cannot ping (ICMP unavailable: see its log)",
    }.get(status, status.name)


def _summary(host: str, sent: int, times: list[float]) -> None:
    loss = 100 * (sent - len(times)) / sent
    print(f"--- {host} ping statistics ---")
    print(f"{sent} packets transmitted, {len(times)} received, {loss:.0f}% packet loss")
    if times:
        average = math.fsum(times) / len(times)  # statistics.fmean, without importing it
        print(f"rtt min/avg/max = {min(times):.3f}/{average:.3f}/{max(times):.3f} ms")
    sys.stdout.flush()
