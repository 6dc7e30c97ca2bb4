"""``gjproxy docs``: write docs/protocol.md from the schemas and docs/cli.md from the parsers."""

from __future__ import annotations

import argparse
from pathlib import Path

from jproxy.gen import cli_docs as clidocs
from jproxy.gen import protocol_docs as docs

DEFAULT_OUT = Path("docs/protocol.md")
DEFAULT_CLI_OUT = Path("docs/cli.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "docs",
        help="write the protocol description and the command line reference",
        description="Write docs/protocol.md, the byte layouts of every packet, generated from"
        " the construct schemas in schemas/ (the one definition of each layout), and"
        " docs/cli.md, this command line's reference, generated from its argument parsers.",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where to write the protocol (default: {DEFAULT_OUT}, relative to the current"
        " directory)",
    )
    parser.add_argument(
        "--cli-out",
        metavar="FILE",
        type=Path,
        default=DEFAULT_CLI_OUT,
        help=f"where to write the command line reference (default: {DEFAULT_CLI_OUT})",
    )
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    for out, text in ((args.out, docs.render()), (args.cli_out, clidocs.render(args.command_line))):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 0
