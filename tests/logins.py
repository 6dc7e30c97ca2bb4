"""Login bytes that the handshake tests of both layers (the cores, and the drivers on sockets)
expect, and what the recorded Java 3.0 server sent."""

from __future__ import annotations

import json

from schemas import build
from schemas.jproxy import KeepAlive, KeepAliveKind
from tests.keyfiles import JAVA

REFUSED_HELLO = b"jProxy\x01"
"""The server's hello reply with status 1: the version (or its dialect) is refused."""
PING = build(KeepAlive, {"kind": KeepAliveKind.PING})
"""The first-frame ping a 3.1 client sends after its login."""
TRANSCRIPT = json.loads((JAVA / "transcript.json").read_text())


def java_server_replies() -> bytes:
    """What the Java 3.0 server sent in the captured tunnel before its first frame."""
    [connection] = TRANSCRIPT["connections"]
    chunks = [
        bytes.fromhex(e["hex"])
        for e in connection["events"]
        if e.get("dir") == "s2c" and "hex" in e
    ]
    return chunks[0] + chunks[1]
