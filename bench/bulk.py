"""CPU per MB of a bulk download in the pure cores, each end on its own: no sockets, no gevent.

What each end of a tunnel (3.1, then 3.0) does for every byte of a one-stream download, with
the real ``Session`` and ``Channels`` objects of both ends and the I/O layer's sizes:

- server: the target's bytes in reads of the default relay buffer, each read cut into data
  messages (``Channels.data``) and sealed into one piece to send (``Session.seal_all``);
- client: the tunnel's bytes in receives of the tunnel reader's buffer, opened
  (``Session.feed``), handed to the core (``Channels.receive``), each stream's data joined
  into one write per receive and reported delivered (``Channels.delivered``), whose window
  updates the client seals and the server opens and receives.

It prints the CPU time (``time.process_time``) of each end per MB of data, the median of
several rounds, and the Python function calls per MB that cProfile counts. Deterministic
enough to compare two trees on a busy machine. Run: ``python bench/bulk.py``; a few seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

from jproxy.handlers.tunnel.driver import READ_SIZE
from jproxy.tuning import DEFAULT_BUFFER_SIZE
from jproxy.tunnel import crypto
from jproxy.tunnel.mux import DEFAULT_WINDOW, Channels, Do
from jproxy.tunnel.session import Role, Session
from schemas.jproxy import ConnectStatus, Dialect, Direction

MB = 10**6


class Download:
    """One stream through a fresh pair of tunnel ends, driven a window at a time."""

    def __init__(self, dialect: Dialect) -> None:
        key = crypto.new_session_key()
        self.client = Session(dialect, key, Role.CLIENT)
        self.server = Session(dialect, key, Role.SERVER)
        self.client_core = Channels(
            Direction.CLIENT_TO_SERVER, dialect, max_message=self.client.max_message, now=0.0
        )
        self.server_core = Channels(
            Direction.SERVER_TO_CLIENT, dialect, max_message=self.server.max_message, now=0.0
        )
        request = self.client_core.open("192.0.2.1", 443, 0.0)
        self.client_channel = request.channel
        [connect] = self.server_core.receive(self.server.feed(self.client.seal(request.value)), 0.0)
        self.server_channel = connect.channel
        [reply] = self.server_core.answer(self.server_channel, ConnectStatus.OK, 0, 0.0)
        self.client_core.receive(self.client.feed(self.server.seal(reply.value)), 0.0)

    def serve(self, source: memoryview, sent: list) -> int:
        """Server: the target's bytes, one relay read at a time, as far as the window allows,
        each read sealed into one piece to send (appended to ``sent``); returns bytes taken."""
        core, channel, seal_all = self.server_core, self.server_channel, self.server.seal_all
        offset = 0
        while offset < len(source) and (allowance := core.allowance(channel)):
            chunk = source[offset : offset + min(DEFAULT_BUFFER_SIZE, allowance)]
            sent.append(seal_all(core.data(channel, chunk, 0.0)))
            offset += len(chunk)
        return offset

    def take(self, wire: memoryview, sent: list) -> int:
        """Client: the wire in tunnel-reader receives, each stream's data joined into one
        write per receive, its window updates sealed (appended to ``sent``); returns the data
        bytes delivered."""
        feed, receive, delivered = self.client.feed, self.client_core.receive, 0
        core, channel, seal_all = self.client_core, self.client_channel, self.client.seal_all
        for offset in range(0, len(wire), READ_SIZE):
            events = receive(feed(wire[offset : offset + READ_SIZE]), 0.0)
            arrived = [value for kind, _, value in events if kind is Do.DATA]
            data = arrived[0] if len(arrived) == 1 else b"".join(arrived)
            delivered += len(data)
            updates = [event.value for event in core.delivered(channel, len(data), 0.0)]
            if updates:
                sent.append(seal_all(updates))
        return delivered

    def granted(self, wire: memoryview) -> None:
        """Server: the client's window updates arrive."""
        self.server_core.receive(self.server.feed(wire), 0.0)


def _run(side: Callable[..., int], *arguments: object) -> tuple[int, float]:
    start = time.process_time()
    result = side(*arguments)
    return result, time.process_time() - start


def one_round(
    download: Download, source: memoryview, batch: int, profiles: dict[str, Any] | None = None
) -> tuple[float, float]:
    """CPU seconds of the server and of the client for ``source``: the server seals what
    the window allows (at most ``batch``), the client takes it and grants more, in turns.
    With ``profiles``, each end runs under its cProfile instead."""
    cpu = {"server": 0.0, "client": 0.0}

    def run(end: str, side: Callable[..., int], *arguments: object) -> int:
        if profiles is not None:
            return profiles[end].runcall(side, *arguments)
        result, seconds = _run(side, *arguments)
        cpu[end] += seconds
        return result

    offset = 0
    while offset < len(source):
        sent: list[bytes] = []
        offset += run("server", download.serve, source[offset : offset + batch], sent)
        wire, sent = memoryview(b"".join(sent)), []  # the sockets' part, not counted
        run("client", download.take, wire, sent)
        if sent:
            run("server", download.granted, memoryview(b"".join(sent)))
    return cpu["server"], cpu["client"]


def calls_per_mb(dialect: Dialect, source: memoryview, batch: int) -> tuple[float, float]:
    """Python function calls per MB that cProfile counts on the server and the client."""
    profiles = {"server": cProfile.Profile(), "client": cProfile.Profile()}
    one_round(Download(dialect), source, batch, profiles)
    server, client = (pstats.Stats(profiles[end]).total_calls for end in ("server", "client"))
    return server / (len(source) / MB), client / (len(source) / MB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=32, help="data per round (32)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds, median taken (7)")
    arguments = parser.parse_args()
    source = memoryview(os.urandom(arguments.megabytes * MB))
    batch = DEFAULT_WINDOW  # what the server may send before the client reads
    print(f"one-stream download, {arguments.megabytes} MB a round, median of {arguments.rounds}")
    print(f"  {'dialect':8} {'server us/MB':>13} {'client us/MB':>13} {'calls/MB':>17}")
    for dialect in (Dialect.SECURE_3_1, Dialect.LEGACY_3_0):
        download = Download(dialect)
        one_round(download, source[: 4 * MB], batch)  # warm up
        rounds = [one_round(download, source, batch) for _ in range(arguments.rounds)]
        per_mb = arguments.megabytes / 1e6
        ends = zip(*rounds, strict=True)
        server_us, client_us = (statistics.median(end) / per_mb for end in ends)
        server_calls, client_calls = calls_per_mb(dialect, source[: 8 * MB], batch)
        calls = f"{server_calls:.0f} / {client_calls:.0f}"
        print(f"  3.{int(dialect):<6} {server_us:13.0f} {client_us:13.0f} {calls:>17}")


if __name__ == "__main__":
    main()
