"""``gjproxy quickstart``: keys, server and client on this machine, a SOCKS5 port to try.

The first run makes a key pair and an admin password in a local folder (the password is shown
once; only its hash is kept); later runs reuse them. Server and client run in this one process.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from jproxy.config import ConfigError, host_port
from jproxy.egress import EgressPolicy
from jproxy.handlers.admin import serve_admin
from jproxy.handlers.client import TunnelClient
from jproxy.handlers.dialer import Dialer
from jproxy.handlers.resolver import SystemResolver
from jproxy.handlers.server import ServerLimits, TunnelServer
from jproxy.handlers.signals import Termination
from jproxy.handlers.socks5 import Socks5Listener
from jproxy.keys import (
    KeyFileError,
    UserDirectory,
    generate,
    load_client_key,
    save_client_key,
    save_user,
)
from jproxy.passwords import AdminCredentials, hash_password
from schemas.jproxy import Dialect

TUNNEL_UP_TIMEOUT = 15.0
LOOPBACK = ["127.0.0.0/8", "::1/128"]
"""Everything runs on this host, so the quickstart lets streams reach its loopback."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="run server and client on localhost with keys made on first use",
        description="Make keys in DIR if there are none, start a tunnel server and a client on "
        "localhost, and serve SOCKS5 until Ctrl-C.",
    )
    parser.add_argument("--dir", default="gjproxy-quickstart", help="default ./gjproxy-quickstart")
    parser.add_argument("--socks", default="127.0.0.1:1080", metavar="HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:16384", metavar="HOST:PORT")
    parser.add_argument("--admin", default="127.0.0.1:8080", metavar="HOST:PORT")
    parser.set_defaults(handler=run)


def _first_run(folder: Path) -> str | None:
    """Make keys and an admin password hash in ``folder``; the password, if made now."""
    key_file, hash_file = folder / "key.dat", folder / "admin-password-hash"
    if not key_file.exists():
        key, record = generate("quickstart")
        save_client_key(key, key_file)
        save_user(record, folder / "users")
    if hash_file.exists():
        return None
    password = secrets.token_urlsafe(12)
    hash_file.write_text(hash_password(password) + "\n")
    hash_file.chmod(0o600)
    return password


def run(args: argparse.Namespace) -> int:
    termination = Termination()
    try:
        socks, listen, admin = (
            host_port(args.socks, "--socks"),
            host_port(args.listen, "--listen"),
            host_port(args.admin, "--admin"),
        )
        folder = Path(args.dir)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        new_password = _first_run(folder)
        key = load_client_key(folder / "key.dat")
        users = UserDirectory(folder / "users")
        password_hash = (folder / "admin-password-hash").read_text().strip()
    except (ConfigError, KeyFileError, OSError) as error:
        sys.stderr.write(f"gjproxy quickstart: {error}\n")
        return 2
    loopback = EgressPolicy.from_rules(LOOPBACK, [])
    dialer = Dialer(SystemResolver(), loopback, ServerLimits.connect_timeout)
    server = TunnelServer(listen, users, dialer=dialer)
    started = []
    try:
        server.start()
        started.append(server)
        tunnels = TunnelClient(server.address, key, Dialect.SECURE_3_1)
        listener = Socks5Listener(socks, tunnels)
        listener.start()
        started.append(listener)
        credentials = AdminCredentials("admin", password_hash, str(folder / "admin-password-hash"))
        started.append(serve_admin(admin, credentials, server.counters, server.tuning))
        dialer.policy = dialer.policy.listening_on([service.address for service in started])
    except OSError as error:
        sys.stderr.write(f"gjproxy quickstart: cannot listen: {error}\n")
        for service in started:
            service.stop()
        return 1
    tunnels.start()
    if not tunnels.wait_until_up(TUNNEL_UP_TIMEOUT):
        sys.stderr.write("gjproxy quickstart: the tunnel did not come up; see the log above\n")
        return 1
    host, port = listener.address
    print(f"\ngjproxy is running. SOCKS5 proxy: {host}:{port}  (keys in {folder}/, Ctrl-C stops)")
    if new_password is not None:
        admin_port = started[-1].address[1]
        print(
            f"admin: gjproxy admin --port {admin_port} --user admin stats"
            f"   (password, shown once: {new_password})"
        )
    print(
        f"egress: loopback allowed ({', '.join(LOOPBACK)}): this machine's own services are "
        "reachable through the proxy"
    )
    print(f"try:   curl --socks5-hostname {host}:{port} https://example.com/")
    sys.stdout.flush()
    termination.wait()
    tunnels.stop()
    for service in reversed(started):
        service.stop()
    return 0
