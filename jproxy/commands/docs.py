"""``gjproxy docs``: write docs/protocol.md from the schemas."""

from __future__ import annotations

import argparse
from pathlib import Path

from jproxy import docs

DEFAULT_OUT = Path("docs/protocol.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "docs",
        help="write the protocol description generated from the schemas",
        description="Write docs/protocol.md, the byte layouts of every packet, generated from"
        " the construct schemas in schemas/ (the one definition of each layout).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where to write it (default: {DEFAULT_OUT}, relative to the current directory)",
    )
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(docs.render(), encoding="utf-8")
    print(f"wrote {out}")
    return 0
