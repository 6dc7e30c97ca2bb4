"""``gjproxy dissector``: write the Wireshark Lua dissector generated from the schemas."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dissector",
        help="write the Wireshark/tshark Lua dissector generated from the schemas",
        description="Write a Lua dissector for jProxy 3 and the admin protocol (Wireshark 4.0).",
    )
    parser.add_argument(
        "-o", "--out", type=Path, help="where to write it (default: standard output)"
    )
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    # Imported here, as in docs: every gjproxy process builds this command's parser, and only
    # `gjproxy dissector` needs the generator (with importlib.resources, about 0.6 MB of RSS).
    from jproxy.gen import dissector

    text = dissector.render()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0
