"""The ``gjproxy`` command: finds its subcommands in ``jproxy.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import gevent

from jproxy import commands, version
from jproxy.handlers.logs.repeat_limit import repeat_limited, route_hub_errors

USAGE_ERROR = 2
INTERRUPTED = 130
"""128 + SIGINT, the status a shell reports for a command ended by Ctrl-C."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one clear line and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: {message}\n")  # "gjproxy admin: ..." for a command's
        sys.exit(USAGE_ERROR)


class _Version(argparse._VersionAction):
    """argparse's ``version`` action, reading the version only when asked (see ``version``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        self.version = f"gjproxy {version()}"
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gjproxy",
        description="An encrypted jProxy 3 tunnel: a local SOCKS5 client, the tunnel server, "
        "and their tools. `gjproxy COMMAND --help` describes each command.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug details (default: off)"
    )
    parser.add_argument("--version", action=_Version)
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands", parser_class=_Parser
    )
    parser.set_defaults(command_line=parser)  # for `gjproxy docs`, which describes it
    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    # The format names no source line, thread or process: skip collecting them for every
    # record (the logging HOWTO's "Optimization"; an access line per connection pays it).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[repeat_limited(logging.StreamHandler())],
    )
    # No greenlet keeps the stack it was spawned from (10 frames, about 800 bytes for each
    # open stream's greenlet); nothing here reads spawning_stack or spawn_tree_locals.
    gevent.config.track_greenlet_tree = False
    route_hub_errors(gevent.get_hub())
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        # Ctrl-C at a prompt or during a wait; the servers handle SIGINT themselves.
        sys.stderr.write(f"\ngjproxy {args.command}: interrupted\n")  # first ends a prompt's line
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
