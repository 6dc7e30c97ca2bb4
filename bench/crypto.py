"""Throughput of the frame layer: seal + open of full frames, per dialect, in MB/s of messages.

Two patterns: one frame per ``feed`` call, and a 64 KiB receive chunk that cuts frames
anywhere (what a tunnel reading its socket sees). Also RSA login costs. Run:
``python bench/crypto.py``; it takes a few seconds.
"""

from __future__ import annotations

import os
import time

from jproxy.tunnel import crypto
from jproxy.tunnel.keys import generate
from jproxy.tunnel.session import Role, Session
from schemas.jproxy import Dialect

FRAMES = 20_000
CHUNK = 64 * 1024
BATCH = 256  # frames sealed before feeding: a 1 MB stream, sized to stay in cache
LOGINS = 50


def _pair(dialect: Dialect) -> tuple[Session, Session]:
    key = crypto.new_session_key()
    return Session(dialect, key, Role.CLIENT), Session(dialect, key, Role.SERVER)


def frame_by_frame(dialect: Dialect) -> float:
    sender, receiver = _pair(dialect)
    message = os.urandom(sender.max_message)
    start = time.perf_counter()
    for _ in range(FRAMES):
        receiver.feed(sender.seal(message))
    return FRAMES * len(message) / (time.perf_counter() - start) / 1e6


def chunked(dialect: Dialect) -> float:
    sender, receiver = _pair(dialect)
    message = os.urandom(sender.max_message)
    received = 0
    start = time.perf_counter()
    for _ in range(FRAMES // BATCH):
        stream = b"".join([sender.seal(message) for _ in range(BATCH)])
        for offset in range(0, len(stream), CHUNK):
            received += len(receiver.feed(stream[offset : offset + CHUNK]))
    elapsed = time.perf_counter() - start
    return received * len(message) / elapsed / 1e6


def logins_per_second(dialect: Dialect) -> float:
    """Server wrap + client unwrap of one session key, the RSA part of every login."""
    client_key, record = generate("bench")
    start = time.perf_counter()
    for _ in range(LOGINS):
        wrapped = crypto.wrap_key(record.public_key, crypto.new_session_key(), dialect)
        crypto.unwrap_key(client_key.private_key, wrapped, dialect)
    return LOGINS / (time.perf_counter() - start)


def main() -> None:
    print(f"{FRAMES} full frames each, seal + open, MB/s of message bytes")
    for dialect in Dialect:
        name = f"3.{int(dialect)}"
        print(f"  {name} frame by frame: {frame_by_frame(dialect):8.0f} MB/s")
        print(f"  {name} 64 KiB chunks:  {chunked(dialect):8.0f} MB/s")
        print(f"  {name} key wrap+unwrap: {logins_per_second(dialect):7.0f} logins/s")


if __name__ == "__main__":
    main()
