"""``gjproxy users [DIR]``: the users a server directory holds, one ``HASH  name`` a line."""

from __future__ import annotations

import argparse
import sys

from jproxy.tunnel.keys import KeyFileError, UserDirectory

DEFAULT_DIR = "users"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "users",
        help="list the users of a server's users directory",
        description="List the users a server would load from DIR: one line each, the login"
        " hash (the file's name) and the user name. Files the server would skip are named on"
        " stderr with the reason.",
    )
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=DEFAULT_DIR,
        help=f"the users directory (default: {DEFAULT_DIR})",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        users = UserDirectory(args.dir)
    except KeyFileError as error:
        sys.stderr.write(f"gjproxy users: {error}\n")
        return 1
    for record in users.records():
        print(f"{record.login_hash.hex().upper()}  {record.user}")
    return 0
