"""The key log file: session keys of tunnels, for decrypting captures (docs/dissector.md).

Off unless asked for (``--keylog FILE``, ``GJPROXY_KEYLOG``, ``keylog`` in the config file).
Anyone who reads the file can read the tunnels it names, so it is kept at mode 0600 (also
when it existed before) and written to by appending only.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping

from jproxy.tunnel.keylog import key_log_line

log = logging.getLogger("gjproxy.keylog")

ENVIRONMENT = "GJPROXY_KEYLOG"


class KeyLog:
    """An open key log file; ``record`` appends one tunnel's line."""

    def __init__(self, path: str) -> None:
        self.path = path
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(descriptor, 0o600)  # a file made beforehand may have let others read it
        self._file = os.fdopen(descriptor, "a", encoding="ascii")
        log.warning("key log on: session keys of every tunnel are written to %s", path)

    def record(self, wrapped_key: bytes, session_key: bytes) -> None:
        self._file.write(key_log_line(wrapped_key, session_key))
        self._file.flush()


def open_key_log(path: str) -> KeyLog | None:
    """The key log at ``path``, or None for "" (off); ``OSError`` if it cannot be opened."""
    return KeyLog(path) if path else None


def add_keylog_option(parser: argparse.ArgumentParser) -> None:
    """``--keylog FILE``, the same for the server and the client."""
    parser.add_argument(
        "--keylog",
        metavar="FILE",
        help="append every tunnel's session key to FILE (mode 0600) to decrypt captures;"
        f" also ${ENVIRONMENT}",
    )


def key_log_path(args: argparse.Namespace, environ: Mapping[str, str], configured: str) -> str:
    """Where the key log goes: the flag beats the environment, which beats the config file."""
    return args.keylog or environ.get(ENVIRONMENT) or configured
