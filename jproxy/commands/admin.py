"""``gjproxy admin``: read a running server's counters or change its relay buffer size.

Each method is one admin-protocol exchange (log in, one request, one reply); ``stats`` makes
one exchange per value. The password comes from GJPROXY_ADMIN_PASSWORD or a prompt, never
from a flag, so it stays out of shell history and process lists.
"""

from __future__ import annotations

import argparse
import enum
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence

from jproxy.admin.protocol import AdminClientConnection, LoginReplied, MethodReplied
from jproxy.admin.protocol import login_bytes as build_login
from jproxy.admin.protocol import request_bytes as build_request
from jproxy.config import ConfigError, host_port, host_port_text, load, resolve
from jproxy.handlers.admin.listener import stream_socket
from jproxy.policy.passwords import (
    PASSWORD_VARIABLE,
    SOCKS_PASSWORD_VARIABLE,
    USER_VARIABLE,
    check_secret_length,
    hash_password,
)
from jproxy.tunnel.handshake import foreign_protocol
from schemas.admin import AuthStatus, Method
from schemas.errors import WireError

TIMEOUT = 10.0
RECV_SIZE = 1024
DEFAULTS = {"host": "127.0.0.1", "port": 8080, "user": None, "password_hash": None}


class ExitStatus(enum.IntEnum):
    OK = 0
    REFUSED = 1
    USAGE = 2
    LOGIN_FAILED = 3
    PROTOCOL_ERROR = 4
    UNREACHABLE = 5


EPILOG = """\
exit status:
  0  ok
  1  the server refused the request (reply 254 invalid parameter, 255 unknown method)
     or failed internally (login status 3)
  2  usage error (bad arguments, bad config file, no user name or password)
  3  login refused: bad user name or password
  4  protocol error: the server speaks another admin protocol version or replied garbage,
     or the port is no admin port (it answered nothing, or another protocol)
  5  cannot connect, connection lost, or no reply within 10 seconds
130  interrupted (Ctrl-C, at the password prompt or while waiting for the server)

The server's address: --host and --port, else [admin] host and port in the config file, else
its [server] admin (the address the server listens on), else 127.0.0.1:8080.
"""

QUERIES: dict[str, tuple[Method, str]] = {
    "connections": (Method.CONNECTIONS_TOTAL, "connections since start"),
    "open": (Method.CONNECTIONS_OPEN, "open connections"),
    "bytes": (Method.BYTES_TRANSFERRED, "bytes transferred"),
    "get-buffer": (Method.GET_BUFFER_SIZE, "relay buffer size"),
    "tunnels": (Method.TUNNELS_OPEN, "tunnels open"),
    "users": (Method.USERS_CONNECTED, "connected users"),
    "dns": (Method.DNS_LOOKUPS, "DNS lookups"),
    "drops": (Method.DATAGRAMS_DROPPED, "datagrams dropped"),
}
"""Methods without a parameter: command-line name -> (method, label in ``stats``)."""

METHODS = (*QUERIES, "stats", "set-buffer", "hash-password")

COMMAND_DOCS: dict[str, tuple[str, str]] = {
    "stats": (
        f"methods {', '.join(str(int(method)) for method, _ in QUERIES.values())} in turn",
        "one `label: value` line each (`none` for an empty value)",
    ),
    **{
        name: (f"method {int(method)}", f"the value: {label}")
        for name, (method, label) in QUERIES.items()
    },
    "set-buffer N": (f"method {int(Method.SET_BUFFER_SIZE)} with N", "the new size"),
    "hash-password": (
        "nothing (no connection)",
        'the `password_hash = "..."` line for `[admin]`; with `--socks-user NAME`, the'
        ' `NAME = "..."` line for `[socks_users]`',
    ),
}
"""``gjproxy admin METHOD``: what each asks the server for and what it prints (docs/admin.md)."""
EMPTY = "none"
"""What ``gjproxy admin`` prints for an empty reply (no users connected, no datagram dropped)."""

_LOGIN_FAILURES = {
    AuthStatus.BAD_CREDENTIALS: (ExitStatus.LOGIN_FAILED, "login refused: bad user or password"),
    AuthStatus.BAD_VERSION: (
        ExitStatus.PROTOCOL_ERROR,
        "the server does not speak version 1 of the admin protocol",
    ),
    AuthStatus.INTERNAL_ERROR: (
        ExitStatus.REFUSED,
        "the server failed internally while checking the login (see its log)",
    ),
}


class AdminCommandError(Exception):
    """Ends the command with one line on stderr and ``status``."""

    def __init__(self, status: ExitStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "admin",
        help="query or tune a running server over the admin protocol",
        description="Query or tune a running gjproxy server over the admin protocol. The"
        f" password comes from ${PASSWORD_VARIABLE} or a prompt. METHOD is one of:"
        " stats (every value), connections (since start), open (connections open now),"
        " bytes (transferred), tunnels (open now), users (connected tunnel users),"
        " dns (DoH lookups, failures, their milliseconds, cache hits and misses),"
        " get-buffer, set-buffer N (relay buffer size in bytes), hash-password (print the"
        " password_hash line for the server's [admin] config section, or with --socks-user"
        " NAME the line for its [socks_users] table).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", help="server address (default: from the config file, else 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, help="admin port (default: from the config file, else 8080)"
    )
    parser.add_argument(
        "--user", help=f"admin user (default: [admin] user in the config file, ${USER_VARIABLE})"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file; its [admin] keys are the flags' names, and [server] admin is used"
        " (default: none)",
    )
    parser.add_argument(
        "--socks-user",
        metavar="NAME",
        help=f"with hash-password: print the [socks_users] line for NAME; the password comes"
        f" from ${SOCKS_PASSWORD_VARIABLE} or a prompt (default: none)",
    )
    parser.add_argument("method", metavar="METHOD", choices=METHODS, help=", ".join(METHODS))
    parser.add_argument("arg", metavar="ARG", nargs="?", help="N for set-buffer")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    try:
        if (args.arg is None) == (args.method == "set-buffer"):
            raise AdminCommandError(
                ExitStatus.USAGE,
                "set-buffer needs N" if args.arg is None else f"{args.method} takes no ARG",
            )
        if args.socks_user is not None and args.method != "hash-password":
            raise AdminCommandError(ExitStatus.USAGE, "--socks-user goes with hash-password")
        if args.method == "hash-password":
            print(_hash_line(args.socks_user, environ))
            return ExitStatus.OK
        host, port, user = _settings(args, environ)
        password = _password(environ)
        for label, value in _ask(args, host, port, user, password):
            value = value or EMPTY
            print(f"{label}: {value}" if label else value)
    except AdminCommandError as error:
        sys.stderr.write(f"gjproxy admin: {error}\n")
        return error.status
    except ConfigError as error:
        sys.stderr.write(f"gjproxy admin: {error}\n")
        return ExitStatus.USAGE
    return ExitStatus.OK


def _ask(
    args: argparse.Namespace, host: str, port: int, user: str, password: str
) -> Iterator[tuple[str, str]]:
    """``(label, value)`` for each value asked for; the label is empty for a single method."""
    if args.method == "stats":
        for method, label in QUERIES.values():
            yield label, _call(host, port, user, password, method)
    elif args.method == "set-buffer":
        yield "", _call(host, port, user, password, Method.SET_BUFFER_SIZE, [args.arg])
    else:
        yield "", _call(host, port, user, password, QUERIES[args.method][0])


_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
"""A server listening on every address is reached on loopback."""


def _defaults(config: Mapping) -> dict:
    """DEFAULTS, with host and port from ``[server] admin`` when the file has it."""
    server = config.get("server")
    listen = server.get("admin") if isinstance(server, dict) else None
    if listen is None:
        return DEFAULTS
    if not isinstance(listen, str):
        raise ConfigError('config: [server] admin must be a string like "HOST:PORT"')
    host, port = host_port(listen, "config: [server] admin")
    return {**DEFAULTS, "host": _WILDCARDS.get(host, host), "port": port}


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, int, str]:
    config = load(args.config)
    settings = resolve(args, config, "admin", _defaults(config))
    if not 1 <= settings["port"] <= 65535:
        raise ConfigError(f"port must be 1..65535, got {settings['port']}")
    user = settings["user"] or environ.get(USER_VARIABLE)
    if not user:
        raise ConfigError(f"no admin user: pass --user, set [admin] user or ${USER_VARIABLE}")
    if not isinstance(user, str):
        raise ConfigError("config: [admin] user must be a string")
    return settings["host"], settings["port"], user


def _prompt(text: str) -> str:
    try:
        return getpass.getpass(text)
    except EOFError:
        raise AdminCommandError(
            ExitStatus.USAGE, f"no password: set ${PASSWORD_VARIABLE} or type it at the prompt"
        ) from None


def _password(environ: Mapping[str, str]) -> str:
    return environ.get(PASSWORD_VARIABLE) or _prompt("admin password: ")


def _hash_line(socks_user: str | None, environ: Mapping[str, str]) -> str:
    """The config line to paste: ``password_hash = "..."`` under ``[admin]``, or with a SOCKS
    user name, ``NAME = "..."`` under ``[socks_users]`` (the name quoted as TOML needs)."""
    if socks_user is None:
        return f'password_hash = "{hash_password(_new_password(environ, PASSWORD_VARIABLE))}"'
    check_secret_length(socks_user, "--socks-user")
    password = _new_password(environ, SOCKS_PASSWORD_VARIABLE, f"{socks_user}'s SOCKS ")
    return f'{_toml_key(socks_user)} = "{hash_password(password)}"'


def _toml_key(name: str) -> str:
    """``name`` as a TOML key: bare when it can be, else a basic string with escapes."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return json.dumps(name)  # a JSON string is a valid TOML basic string


def _new_password(environ: Mapping[str, str], variable: str, whose: str = "admin ") -> str:
    password = environ.get(variable)
    if not password:
        password = _prompt(f"new {whose}password: ")
        if _prompt("the same again: ") != password:
            raise AdminCommandError(ExitStatus.USAGE, "the two passwords differ")
    check_secret_length(password, "the password")
    return password


def _sockets_to_try(family: int) -> Iterator[socket.socket]:
    """SCTP first when this kernel has it (a TCP-only server refuses it at once), then TCP."""
    sock, transport, _ = stream_socket(family)
    yield sock
    if transport == "SCTP":
        yield socket.socket(family, socket.SOCK_STREAM)


def _connect(host: str, port: int) -> socket.socket:
    where = host_port_text((host, port))
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise AdminCommandError(
            ExitStatus.UNREACHABLE, f"{where}: cannot resolve: {error}"
        ) from None
    last_error: OSError | None = None
    for family, _, _, _, address in addresses:
        for sock in _sockets_to_try(family):
            sock.settimeout(TIMEOUT)
            try:
                sock.connect(address)
                return sock
            except OSError as error:
                sock.close()
                last_error = error
    raise AdminCommandError(ExitStatus.UNREACHABLE, f"{where}: cannot connect: {_why(last_error)}")


def _why(error: OSError | None) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {TIMEOUT:g} s"
    return (error and error.strerror) or str(error)


Reply = LoginReplied | MethodReplied


def _next_reply(sock: socket.socket, client: AdminClientConnection, pending: list[Reply]) -> Reply:
    while not pending:
        data = sock.recv(RECV_SIZE)
        if not data:
            client.end_of_input()
            raise WireError("AdminReply", "", "the server closed the connection without a reply")
        pending += client.receive(data)
    return pending.pop(0)


def _login_reply(
    sock: socket.socket, client: AdminClientConnection, pending: list[Reply], where: str
) -> Reply:
    """The login reply; a port that closes without one (a jProxy tunnel port does) or answers
    something else is named for what it is."""
    first = b""
    try:
        while not pending:
            data = sock.recv(RECV_SIZE)
            if not data:
                break
            first += data
            pending += client.receive(data)
    except WireError:
        if foreign_protocol(first) is None:
            raise
    except ConnectionResetError:
        pass
    if pending:
        return pending.pop(0)
    what = f"it answered with {foreign_protocol(first)}" if first else "no reply to the login"
    raise AdminCommandError(
        ExitStatus.PROTOCOL_ERROR,
        f"{where}: this is not a gjproxy admin port: {what}; the admin port is the server's"
        " --admin address",
    )


def _call(
    host: str, port: int, user: str, password: str, method: Method, params: Sequence[str] = ()
) -> str:
    """One exchange: log in, call ``method``, return the reply's data or raise."""
    try:
        login, request = build_login(user, password), build_request(method, params)
    except WireError:
        raise AdminCommandError(
            ExitStatus.USAGE, "the user name, password and ARG must each be at most 255 bytes"
        ) from None
    client = AdminClientConnection(method)
    pending: list[Reply] = []
    where = host_port_text((host, port))
    try:
        with _connect(host, port) as sock:
            sock.sendall(login)
            status = _login_reply(sock, client, pending, where).status
            if status is not AuthStatus.OK:
                code, message = _LOGIN_FAILURES[status]
                raise AdminCommandError(code, f"{where}: {message}")
            sock.sendall(request)
            reply = _next_reply(sock, client, pending)
    except WireError as error:
        raise AdminCommandError(ExitStatus.PROTOCOL_ERROR, f"{where}: bad reply: {error}") from None
    except OSError as error:
        raise AdminCommandError(
            ExitStatus.UNREACHABLE, f"{where}: connection lost: {_why(error)}"
        ) from None
    if reply.code is Method.INVALID_PARAM:
        raise AdminCommandError(ExitStatus.REFUSED, f"{where}: invalid parameter: {reply.data}")
    if reply.code is Method.INVALID_METHOD:
        raise AdminCommandError(
            ExitStatus.REFUSED,
            f"{where}: the server does not offer method {int(method)}: {reply.data}",
        )
    return reply.data
