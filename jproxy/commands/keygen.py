"""``gjproxy keygen USER [--out DIR]``: a new key pair for one user, as the two key files.

DIR/key.dat goes to the user's client; DIR/users/<UPPERHEX hash>.dat goes to the server's users
directory. Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jproxy import keys

FAILURE = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="generate a key pair: DIR/key.dat (client) and DIR/users/<hash>.dat (server)",
    )
    parser.add_argument("user", metavar="USER", help="user name the server logs for this key")
    parser.add_argument("--out", metavar="DIR", default=".", help="where to write (default: .)")
    parser.set_defaults(handler=run)


def _write_pair(user: str, out: Path) -> tuple[keys.UserRecord, Path, Path]:
    """Generate and write both files: ``(record, key path, user file path)``; all or nothing."""
    client_key, record = keys.generate(user)
    key_path = out / "key.dat"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise keys.KeyFileError(f"{out}: cannot create: {error.strerror}") from None
    keys.save_client_key(client_key, key_path)
    try:
        user_path = keys.save_user(record, out / "users")
    except keys.KeyFileError:
        key_path.unlink()  # a client key that no server file matches is no use
        raise
    return record, key_path, user_path


def run(args: argparse.Namespace) -> int:
    try:
        record, key_path, user_path = _write_pair(args.user, Path(args.out))
    except (ValueError, keys.KeyFileError) as error:
        sys.stderr.write(f"gjproxy keygen: {error}\n")
        return FAILURE
    print(f"login hash: {record.login_hash.hex().upper()}")
    print(f"client key: {key_path}")
    print(f"user file:  {user_path}")
    return 0
