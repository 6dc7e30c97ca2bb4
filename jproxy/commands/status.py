"""``gjproxy status``: the console's tunnels and busiest connections on a terminal.

It reads a running client's or server's console API (``/api/tunnels``, ``/api/connections``)
with its secret. Exit status: 0 when every tunnel is up, 1 otherwise (a tunnel down, none at
all on a client, or the console unreachable or refusing the secret).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from urllib.parse import parse_qs, urlsplit

from jproxy.config import ConfigError, load
from jproxy.handlers.console.options import SECRET_VARIABLE

DEFAULT_URL = "http://127.0.0.1:9090"
"""Where the quickstart puts the client's console."""
TIMEOUT = 5.0
WATCH_INTERVAL = 2.0
TOP = 10


class StatusError(Exception):
    """The console cannot be read: one line saying why."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the tunnels and busiest connections of a running client or server",
        description="Read a running gjproxy's console: its tunnels, then its busiest open"
        " connections. Exit status 0 when every tunnel is up, 1 otherwise.",
    )
    parser.add_argument(
        "--console",
        metavar="URL",
        help="the console, e.g. http://127.0.0.1:9090 (default: the config file's [client] or"
        f" [server] console, else {DEFAULT_URL}); the secret comes from ?token=,"
        f" ${SECRET_VARIABLE} or the config file's console_secret",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="the client's or server's TOML file (default: none)"
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help=f"refresh every {WATCH_INTERVAL:g} s until Ctrl-C (default: off)",
    )
    parser.add_argument(
        "--top", type=int, default=TOP, metavar="N", help=f"connections shown (default: {TOP})"
    )
    parser.set_defaults(handler=run)


def where(args: argparse.Namespace, environ=os.environ) -> tuple[str, str]:
    """The console's base URL and its secret, from the flags, the environment and the file."""
    config = load(args.config)
    table = next((config[name] for name in ("client", "server") if name in config), {})
    url = args.console or (f"http://{table['console']}" if table.get("console") else DEFAULT_URL)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    token = parse_qs(parts.query).get("token", [""])[0]
    secret = token or environ.get(SECRET_VARIABLE) or table.get("console_secret", "")
    if not secret:
        raise ConfigError(f"the console's secret: ?token= in --console, or ${SECRET_VARIABLE}")
    return f"{parts.scheme}://{parts.netloc}", secret


def fetch(base: str, path: str, secret: str) -> dict:
    # Imported here: every gjproxy process builds this command's parser, and urllib.request
    # (with ssl and http.client) would cost each server and client a few MB it never uses.
    import urllib.error
    import urllib.request

    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise StatusError(f"{base}: the console refused the secret") from None
        raise StatusError(f"{base}{path}: HTTP {error.code}") from None
    except (OSError, ValueError) as error:
        raise StatusError(f"cannot read the console at {base}: {error}") from None


def report(base: str, secret: str, top: int) -> tuple[str, bool]:
    """The text to print, and whether every tunnel is up."""
    tunnels = fetch(base, "/api/tunnels", secret)
    connections = fetch(base, "/api/connections", secret)
    rows = tunnels["tunnels"]
    lines = [f"gjproxy {tunnels['role']} at {base}", ""]
    lines += _table(
        ("SERVER", "USER", "DIALECT", "STATE", "FOR", "RTT", "CHANNELS", "UP/S", "DOWN/S"),
        [
            (
                t["server"],
                t["user"] or "-",
                t["dialect"],
                t["state"],
                _age(t["for"]),
                "-" if t["rtt_ms"] is None else f"{t['rtt_ms']:g} ms",
                str(t["channels"]),
                _bytes(t["upload_rate"]) + "/s",
                _bytes(t["download_rate"]) + "/s",
            )
            for t in rows
        ],
    )
    if not rows:
        lines.append("(no tunnel)")
    busiest = sorted(
        connections["connections"],
        key=lambda c: (c["upload_rate"] + c["download_rate"], c["upload"] + c["download"]),
        reverse=True,
    )[:top]
    lines += ["", f"open connections: {connections['open']} (the busiest {len(busiest)} below)"]
    lines += _table(
        ("FROM", "TO", "ROUTE", "USER", "UP", "DOWN", "NOW", "AGE"),
        [
            (
                c["source"],
                c["destination"],
                c["route"],
                c["user"] or "-",
                _bytes(c["upload"]),
                _bytes(c["download"]),
                _bytes(c["upload_rate"] + c["download_rate"]) + "/s",
                _age(c["age"]),
            )
            for c in busiest
        ],
    )
    all_up = all(t["state"] == "up" for t in rows) and (bool(rows) or tunnels["role"] == "server")
    return "\n".join(lines), all_up


def run(args: argparse.Namespace) -> int:
    try:
        base, secret = where(args)
    except ConfigError as error:
        sys.stderr.write(f"gjproxy status: {error}\n")
        return 2
    while True:
        try:
            text, all_up = report(base, secret, args.top)
        except StatusError as error:
            text, all_up = f"gjproxy status: {error}", False
        if args.watch:
            sys.stdout.write("\033[H\033[J")  # clear the terminal
        print(text, flush=True)
        if not args.watch:
            return 0 if all_up else 1
        try:
            time.sleep(WATCH_INTERVAL)
        except KeyboardInterrupt:
            return 0 if all_up else 1


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _bytes(count: float) -> str:
    value, unit = float(count), 0
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f} {units[unit]}" if unit else f"{int(value)} B"


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
