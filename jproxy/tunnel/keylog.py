"""The key log line: what lets a capture of a tunnel be decrypted (Wireshark, `gjproxy dissector`).

Like a browser's SSLKEYLOGFILE: one line per tunnel, ``JPROXY_SESSION_KEY <id> <key>``, where
``id`` is the hex of the first bytes of the wrapped session key (as they appear in the login
reply of the capture) and ``key`` the hex of the AES-128 session key.
"""

from __future__ import annotations

LABEL = "JPROXY_SESSION_KEY"
ID_BYTES = 16
"""How many leading bytes of the wrapped key name a tunnel in the key log."""


def key_log_line(wrapped_key: bytes, session_key: bytes) -> str:
    """The key log line of one tunnel, newline included."""
    return f"{LABEL} {wrapped_key[:ID_BYTES].hex()} {session_key.hex()}\n"
