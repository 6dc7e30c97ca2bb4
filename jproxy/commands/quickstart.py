"""``gjproxy quickstart``: keys, server and client on this machine, a SOCKS5 port to try.

The first run makes a key pair and an admin password in a local folder; later runs reuse them.
Every port is opened before the password is made, and its hash is kept only once all of them
are open, so a busy port never costs the password (it is shown once; only its hash is kept).
Server and client run in this one process.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from functools import partial
from pathlib import Path
from shlex import quote

from jproxy import version
from jproxy.config import (
    ConfigError,
    ListenError,
    host_port,
    host_port_text,
    listening,
    show_defaults,
)
from jproxy.handlers.admin.listener import serve_admin
from jproxy.handlers.console.options import start_console
from jproxy.handlers.dns.resolver import SystemResolver
from jproxy.handlers.net.dialer import Dialer
from jproxy.handlers.net.router import client_router
from jproxy.handlers.net.signals import Termination
from jproxy.handlers.socks.client_port import ClientPort
from jproxy.handlers.tunnel.pool import TunnelPool
from jproxy.handlers.tunnel.server import ServerLimits, TunnelServer
from jproxy.policy.egress import EgressPolicy
from jproxy.policy.passwords import AdminCredentials, hash_password
from jproxy.tunnel.keys import (
    KeyFileError,
    UserDirectory,
    generate,
    load_client_key,
    save_client_key,
    save_user,
)
from schemas.jproxy import Dialect

TUNNEL_UP_TIMEOUT = 15.0
LOOPBACK = ["127.0.0.0/8", "::1/128"]
"""Everything runs on this host, so the quickstart lets streams reach its loopback."""
ADMIN_USER = "admin"
PASSWORD_HASH_FILE = "admin-password-hash"
DEFAULTS = {
    "dir": "gjproxy-quickstart",
    "socks": "127.0.0.1:1080",
    "listen": "127.0.0.1:16384",
    "admin": "127.0.0.1:8080",
    "console": "127.0.0.1:9090",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="run server and client on localhost with keys made on first use",
        description="Make keys and an admin password in DIR if there are none, start a tunnel"
        " server and a client on localhost, and serve SOCKS5, SOCKS4 and HTTP proxy on one port"
        " until Ctrl-C.",
    )
    parser.add_argument("--dir", metavar="DIR", help="where keys and the password hash live")
    parser.add_argument(
        "--socks", metavar="HOST:PORT", help="the proxy port to use (SOCKS5, SOCKS4, HTTP)"
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="the tunnel server's port")
    parser.add_argument("--admin", metavar="HOST:PORT", help="the admin protocol port")
    parser.add_argument(
        "--console", metavar="HOST:PORT", help="the client's live console (a new secret each run)"
    )
    show_defaults(parser, DEFAULTS)
    parser.set_defaults(handler=run, **DEFAULTS)


def _make_keys(folder: Path) -> None:
    """A key pair for user "quickstart" in ``folder`` unless it has one."""
    if not (folder / "key.dat").exists():
        key, record = generate("quickstart")
        save_client_key(key, folder / "key.dat")
        save_user(record, folder / "users")


def command_name(argv0: str | None = None) -> str:
    """How to run this gjproxy again from any shell: the lines the quickstart prints must work
    when pasted, also when the command is not on the PATH (README's command 1 puts it in
    ``.venv/bin``). A command found on the PATH stays ``gjproxy``; a path becomes absolute;
    ``python -m jproxy`` names this Python."""
    program = argv0 if argv0 is not None else sys.argv[0]
    if Path(program).name == "__main__.py":
        return f"{quote(sys.executable)} -m jproxy"
    if os.sep not in program:
        return program
    return quote(os.path.abspath(program))


def _keep_hash(path: Path, password_hash: str) -> None:
    """Write the hash, readable by its owner only from the first byte."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(password_hash + "\n")


def run(args: argparse.Namespace) -> int:
    termination = Termination()
    try:
        socks, listen, admin = (
            host_port(args.socks, "--socks"),
            host_port(args.listen, "--listen"),
            host_port(args.admin, "--admin"),
        )
        console = {"console": host_port(args.console, "--console")}
        folder = Path(args.dir)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_keys(folder)
        key_file = folder.absolute() / "key.dat"
        key = load_client_key(key_file)
        users = UserDirectory(folder / "users")
        hash_file = folder / PASSWORD_HASH_FILE
        kept_hash = hash_file.read_text().strip() if hash_file.exists() else None
    except (ConfigError, KeyFileError, OSError) as error:
        sys.stderr.write(f"gjproxy quickstart: {error}\n")
        return 2
    loopback = EgressPolicy.from_rules(LOOPBACK, [])
    dialer = Dialer(SystemResolver(), loopback, ServerLimits.connect_timeout)
    server = TunnelServer(listen, users, dialer=dialer)
    started = []
    try:
        listening("--listen", listen, server.start)
        started.append(server)
        tunnels = TunnelPool([server.address], key, Dialect.SECURE_3_1)
        router = client_router(tunnels)
        listener = ClientPort(socks, router)
        listening("--socks", socks, listener.start)
        started.append(listener)
        new_password = None if kept_hash else secrets.token_urlsafe(12)
        password_hash = kept_hash or hash_password(new_password)
        credentials = AdminCredentials(ADMIN_USER, password_hash, str(hash_file))
        admin_server = listening(
            "--admin",
            admin,
            partial(serve_admin, admin, credentials, server.counters, server.tuning),
        )
        started.append(admin_server)
        console["console_secret"] = secrets.token_urlsafe(16)
        console_server = start_console(console, "client", version())
        started.append(console_server)
        router.console = console_server.live
        router.access_log.observer = console_server.live.access
        console_server.live.watch_client(tunnels)
        dialer.policy = dialer.policy.listening_on([service.address for service in started])
        if new_password is not None:
            _keep_hash(hash_file, password_hash)
    except (ListenError, OSError) as error:
        sys.stderr.write(f"gjproxy quickstart: {error}\n")
        for service in started:
            service.stop()
        return 1
    tunnels.start()
    if not tunnels.wait_until_up(TUNNEL_UP_TIMEOUT):
        sys.stderr.write("gjproxy quickstart: the tunnel did not come up; see the log above\n")
        return 1
    host, port = listener.address
    gjproxy = command_name()
    admin_host, admin_port = admin_server.address[:2]
    admin_flags = (
        f"--port {admin_port}"
        if admin_host == "127.0.0.1"
        else f"--host {admin_host} --port {admin_port}"
    )
    server_flags = f"--server {host_port_text(server.address)} --key {quote(str(key_file))}"
    print(f"\ngjproxy is running. SOCKS5 proxy: {host}:{port}  (keys in {folder}/, Ctrl-C stops)")
    print(f"admin: {gjproxy} admin {admin_flags} --user {ADMIN_USER} stats")
    if new_password is not None:
        print(f"       password, shown once: {new_password}")
    else:
        print(
            f"       password: the one shown at the first run (its hash is in {hash_file});"
            f" to get a new one, delete that file and start the quickstart again"
        )
    print(
        f"egress: loopback allowed ({', '.join(LOOPBACK)}): this machine's own services are "
        "reachable through the proxy"
    )
    console_url = f"http://{host_port_text(console_server.address)}"
    print(f"console: {console_url}/ui/?token={console['console_secret']}")
    print(f"        {gjproxy} status --console '{console_url}/?token={console['console_secret']}'")
    print(f"ping:  {gjproxy} ping -c 3 {server_flags} 127.0.0.1")
    print(f"try:   curl --socks5-hostname {host}:{port} https://example.com/")
    print(f"       curl -x http://{host}:{port} https://example.com/", end="")
    print("   # the same port as an HTTP proxy")
    sys.stdout.flush()
    termination.wait()
    tunnels.stop()
    for service in reversed(started):
        service.stop()
    return 0
