"""The TOML configuration file: every command-line flag has a key in it; a flag beats the file.

Sections are named after the subcommand (``[server]``, ``[client]``, ``[admin]``); a key is the
flag's long name with dashes turned into underscores (``--allow-legacy`` -> ``allow_legacy``).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MAX_PORT = 65535
SECTIONS = ("admin", "client", "egress", "server", "socks_users")
"""Every table a config file may have; another is a misspelling, reported as unknown."""


class ConfigError(Exception):
    """A bad config file or flag value; the CLI prints it as one line and exits with 2."""


class ConfigFile(dict):
    """A config file's tables, and where each key is written, for messages that point at it."""

    def __init__(self, tables: dict[str, Any], path: str, text: str) -> None:
        super().__init__(tables)
        self.path = path
        self.text = text

    def where(self, section: str, key: str | None = None) -> str:
        """``FILE line N`` of ``[section]`` or of its ``key``; ``config`` when not found."""
        current = None
        for number, line in enumerate(self.text.splitlines(), 1):
            header = re.match(r"\s*\[\s*([^\]\s]+)\s*\]", line)
            if header:
                current = header.group(1)
                if key is None and current == section:
                    return f"{self.path} line {number}"
            elif current == section and key and re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", line):
                return f"{self.path} line {number}"
        return "config"


def where(config: dict[str, Any], section: str, key: str | None = None) -> str:
    """Where a message about ``[section] key`` points: the file's line, or ``config``."""
    return config.where(section, key) if isinstance(config, ConfigFile) else "config"


def load(path: str | None) -> dict[str, Any]:
    """The config file as a dict ({} without one); unknown sections are a ConfigError."""
    if path is None:
        return {}
    try:
        text = Path(path).read_bytes().decode("utf-8")
        config = ConfigFile(tomllib.loads(text), path, text)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text: {error.reason}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    for name in config:
        if name not in SECTIONS:
            guess = difflib.get_close_matches(name, SECTIONS, n=1)
            hint = f"; did you mean [{guess[0]}]?" if guess else ""
            known = ", ".join(f"[{section}]" for section in SECTIONS)
            raise ConfigError(
                f"{config.where(name)}: unknown section [{name}] (known: {known}){hint}"
            )
    return config


def resolve(
    args: argparse.Namespace, config: dict[str, Any], section: str, defaults: dict[str, Any]
) -> dict[str, Any]:
    """Merge flag > file > default for every key in ``defaults``; unknown file keys are errors."""
    table = config.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where(config, section)}: [{section}] must be a table")
    unknown = sorted(set(table) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{where(config, section, unknown[0])}: unknown key(s) in [{section}]:"
            f" {_unknown_keys(unknown, defaults)}"
        )
    merged = {}
    for key, default in defaults.items():
        flag = getattr(args, key, None)
        value = flag if flag is not None else table.get(key, default)
        if isinstance(default, list) and isinstance(value, str):
            value = [value]  # a list key takes one value as a plain string too
        if isinstance(default, float) and _is_kind(value, int):
            value = float(value)  # 300 for a number of seconds is as good as 300.0
        wrong_kind = default is not None and not _is_kind(value, type(default))
        if wrong_kind or (isinstance(value, list) and not all(isinstance(v, str) for v in value)):
            raise ConfigError(
                f"{where(config, section, key)}: [{section}] {key} must be {_kind_text(default)}"
            )
        merged[key] = value
    return merged


def _is_kind(value: Any, kind: type) -> bool:
    """``isinstance``, except that TOML's true and false are not numbers."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _unknown_keys(unknown: list[str], known: Iterable[str]) -> str:
    """The unknown keys, each with a "did you mean" when a known key is close to it."""
    texts = []
    for key in unknown:
        guess = difflib.get_close_matches(key, list(known), n=1)
        texts.append(f"{key} (did you mean {guess[0]}?)" if guess else key)
    return ", ".join(texts)


def _kind_text(default: Any) -> str:
    """What a key holds, in the words of a config file, with an example."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return f"a whole number like {default}"
    if isinstance(default, float):
        return f"a number like {default:g}"
    if isinstance(default, list):
        example = default[0] if default else "..."
        return f'a list of strings like ["{example}"] (or one string)'
    if isinstance(default, str) and default.rpartition(":")[2].isdigit():
        return 'a string like "HOST:PORT"'
    return f'a string like "{default}"' if default else "a string"


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
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    if not 0 <= int(port) <= MAX_PORT:
        raise ConfigError(f"{what}: port {int(port)} is out of range: a port is 0..{MAX_PORT}")
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
