"""The TOML configuration file: every command-line flag has a key in it; a flag beats the file.

Sections are named after the subcommand (``[server]``, ``[client]``, ``[admin]``); a key is the
flag's long name with dashes turned into underscores (``--allow-legacy`` -> ``allow_legacy``).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A bad config file or flag value; the CLI prints it as one line and exits with 2."""


def load(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with Path(path).open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


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
        if default is not None and not isinstance(value, type(default)):
            raise ConfigError(f"config: [{section}] {key} must be a {type(default).__name__}")
        merged[key] = value
    return merged


def host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``; bad text is a ConfigError."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def add_tunnel_options(parser: argparse.ArgumentParser) -> None:
    """The tunnel settings that server and client share (defaults: jproxy.channels)."""
    parser.add_argument(
        "--window", type=int, metavar="BYTES", help="3.1 flow-control window per stream (1 MiB)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        metavar="S",
        help="on SIGTERM, seconds open streams may finish before they are reset"
        " (server 5, client 1)",
    )


def check_tunnel_options(settings: dict[str, Any]) -> None:
    if not 4096 <= settings["window"] <= 1 << 30:
        raise ConfigError("--window must be 4096..1073741824 bytes")
    settings["grace"] = float(settings["grace"])
    if settings["grace"] < 0:
        raise ConfigError("--grace must not be negative")
