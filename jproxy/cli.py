"""The ``gjproxy`` command: finds its subcommands in ``jproxy.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from jproxy import commands
from jproxy.handlers.logs import repeat_limited

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one clear line and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"gjproxy: {message}\n")
        sys.exit(USAGE_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gjproxy",
        description="An encrypted jProxy 3 tunnel: a local SOCKS5 client, the tunnel server, "
        "and their tools.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[repeat_limited(logging.StreamHandler())],
    )
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
