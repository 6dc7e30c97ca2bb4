"""``gjproxy keygen USER``: a new key pair for one user, as the two key files.

The key file goes to the user's client; the user file ``<UPPERHEX hash>.dat`` goes to the
server's users directory. By default both go under ``--out DIR`` (DIR/key.dat, DIR/users/);
``--key-out`` and ``--users-dir`` put each where it belongs, for example straight into a running
server's users directory. Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jproxy.tunnel import keys

FAILURE = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="generate a key pair: a client key file and a server user file",
        description="Generate an RSA-2048 key pair for USER: the client key file (private,"
        " mode 0600) and the server's user file, named after the login hash in upper-case hex"
        " (HASH.dat). Existing files are never overwritten.",
    )
    parser.add_argument("user", metavar="USER", help="user name the server logs for this key")
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=".",
        help="where both go: DIR/key.dat, DIR/users/ (default: .)",
    )
    parser.add_argument(
        "--key-out", metavar="FILE", help="the client key file (default: DIR/key.dat)"
    )
    parser.add_argument(
        "--users-dir",
        metavar="DIR",
        help="the server's users directory to add the user file to (default: DIR/users)",
    )
    parser.set_defaults(handler=run)


def _write_pair(user: str, key_path: Path, users_dir: Path) -> tuple[keys.UserRecord, Path]:
    """Generate and write both files: ``(record, user file path)``; all or nothing."""
    client_key, record = keys.generate(user)
    try:
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise keys.KeyFileError(f"{key_path.parent}: cannot create: {error.strerror}") from None
    keys.save_client_key(client_key, key_path)
    try:
        user_path = keys.save_user(record, users_dir)
    except keys.KeyFileError:
        key_path.unlink()  # a client key that no server file matches is no use
        raise
    return record, user_path


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key_path = Path(args.key_out) if args.key_out else out / "key.dat"
    users_dir = Path(args.users_dir) if args.users_dir else out / "users"
    try:
        record, user_path = _write_pair(args.user, key_path, users_dir)
    except (ValueError, keys.KeyFileError) as error:
        sys.stderr.write(f"gjproxy keygen: {error}\n")
        return FAILURE
    print(f"login hash: {record.login_hash.hex().upper()}")
    print(f"client key: {key_path}")
    print(f"user file:  {user_path}  (a running server loads it on SIGHUP)")
    return 0
