"""``--console`` and ``--console-secret``, shared by ``gjproxy client`` and ``gjproxy server``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from jproxy.config import ConfigError, host_port, host_port_text, listening
from jproxy.handlers.console.live import LiveConsole

log = logging.getLogger(__name__)

SECRET_VARIABLE = "GJPROXY_CONSOLE_SECRET"
DEFAULTS = {"console": "", "console_secret": ""}
"""The config keys (merged into each command's DEFAULTS)."""


def add_console_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--console",
        metavar="HOST:PORT",
        help="serve the live console (a web page, a JSON API, a clash-compatible API) here;"
        f" it needs a secret: --console-secret or ${SECRET_VARIABLE}",
    )
    parser.add_argument(
        "--console-secret",
        metavar="SECRET",
        help=f"the console's secret (better: ${SECRET_VARIABLE}, which ps does not show)",
    )


def check_console(settings: dict, environ=os.environ) -> None:
    """``console`` becomes ``(host, port)`` or "", and ``console_secret`` is resolved: the flag
    or the file, else the environment; a console without a secret is a ConfigError."""
    settings["console_secret"] = settings["console_secret"] or environ.get(SECRET_VARIABLE, "")
    if not settings["console"]:
        return
    settings["console"] = host_port(settings["console"], "--console")
    if not settings["console_secret"]:
        raise ConfigError(f"--console needs a secret: --console-secret or ${SECRET_VARIABLE}")


def start_console(settings: dict, role: str, version: str):
    """Start the console's port and its sampler; the ``ConsoleServer`` (its ``live`` is the
    ``LiveConsole`` for the hooks; ``stop`` stops both). ``ListenError`` names ``--console``."""
    from jproxy.handlers.console.web import ConsoleServer  # h11 and wsproto: only when asked

    live = LiveConsole(role, version)
    server = ConsoleServer(settings["console"], live, settings["console_secret"])
    listening("--console", settings["console"], server.start)
    live.start()
    if not _is_loopback(server.address[0]):
        log.warning(
            "console on %s, not on loopback: anyone who reaches it can try the secret;"
            " prefer 127.0.0.1 and an SSH forward (docs/console.md)",
            host_port_text(server.address),
        )
    return server


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
