"""The TOML configuration file: every command-line flag has a key in it; a flag beats the file.

Sections are named after the subcommand (``[server]``, ``[client]``, ``[admin]``); a key is the
flag's long name with dashes turned into underscores (``--allow-legacy`` -> ``allow_legacy``).
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SECTIONS = ("admin", "client", "egress", "server", "socks_users")
"""Every table a config file may have; another is a misspelling, reported as unknown."""


class ConfigError(Exception):
    """A bad config file or flag value; the CLI prints it as one line and exits with 2."""


def load(path: str | None) -> dict[str, Any]:
    """The config file as a dict ({} without one); unknown sections are a ConfigError."""
    if path is None:
        return {}
    try:
        with Path(path).open("rb") as file:
            config = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    for name in config:
        if name not in SECTIONS:
            guess = difflib.get_close_matches(name, SECTIONS, n=1)
            hint = f"; did you mean [{guess[0]}]?" if guess else ""
            known = ", ".join(f"[{section}]" for section in SECTIONS)
            raise ConfigError(f"config: unknown section [{name}] (known: {known}){hint}")
    return config


def resolve(
    args: argparse.Namespace, config: dict[str, Any], section: str, defaults: dict[str, Any]
) -> dict[str, Any]:
    """Merge flag > file > default for every key in ``defaults``; unknown file keys are errors."""
    table = config.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config: [{section}] must be a table")
    unknown = set(table) - set(defaults)
    if unknown:
        raise ConfigError(f"config: unknown key(s) in [{section}]: {', '.join(sorted(unknown))}")
    merged = {}
    for key, default in defaults.items():
        flag = getattr(args, key, None)
        value = flag if flag is not None else table.get(key, default)
        if isinstance(default, list) and isinstance(value, str):
            value = [value]  # a list key takes one value as a plain string too
        if default is not None and not isinstance(value, type(default)):
            raise ConfigError(f"config: [{section}] {key} must be a {type(default).__name__}")
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ConfigError(f"config: [{section}] {key} must be a list of strings")
        merged[key] = value
    return merged


def show_defaults(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Append "(default: ...)" to the help of each option whose key is in ``defaults``.

    The options themselves default to None (so that the config file can tell a flag from no
    flag); ``defaults`` is the one place each default is written. ``--config`` has none.
    """
    for action in parser._actions:
        if action.option_strings and action.help not in (None, argparse.SUPPRESS):
            if action.dest in defaults or action.dest == "config":
                action.help += f" (default: {_default_text(defaults.get(action.dest))})"


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if value is False or value in ("", []):
        return "off"
    if value is True:
        return "on"
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return str(value)


def host_port_text(address: tuple) -> str:
    """``(host, port, ...)`` as ``HOST:PORT`` or ``[IPv6]:PORT``: ``host_port``'s inverse."""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListenError(Exception):
    """A listener could not bind: one line naming where, why, and the flag that moves it."""


def listening(flag: str, address: tuple, start: Callable[[], T]) -> T:
    """``start()``, with an OSError turned into a ListenError that names ``flag``."""
    try:
        return start()
    except OSError as error:
        # gevent's bind errors carry the address as a tuple in strerror: say why once, plainly.
        why = os.strerror(error.errno) if (error.errno or 0) > 0 else error.strerror or str(error)
        where = host_port_text(address)
        raise ListenError(
            f"cannot listen on {where}: {why} (choose another with {flag} HOST:PORT)"
        ) from None


def host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``; bad text is a ConfigError."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def add_tunnel_options(parser: argparse.ArgumentParser) -> None:
    """The tunnel settings that server and client share (defaults: jproxy.tunnel.mux)."""
    parser.add_argument(
        "--window", type=int, metavar="BYTES", help="3.1 flow-control window per stream"
    )
    parser.add_argument(
        "--grace",
        type=float,
        metavar="S",
        help="on SIGTERM, seconds open streams may finish before they are reset",
    )


def check_tunnel_options(settings: dict[str, Any]) -> None:
    if not 4096 <= settings["window"] <= 1 << 30:
        raise ConfigError("--window must be 4096..1073741824 bytes")
    settings["grace"] = float(settings["grace"])
    if settings["grace"] < 0:
        raise ConfigError("--grace must not be negative")
