"""A TCP relay on loopback that delays, caps or breaks what passes: a path between client and
server with the properties a benchmark or a test needs.

``rate`` caps every connection through it on its own (a per-flow shaper, as many real paths
have); ``delay`` lengthens the path; ``garble_first`` corrupts the first answer of the first
connection; ``cut(n)`` resets a connection. Threads, blocking sockets: it costs little CPU at
the rates it is used for (a few MB/s per flow). Written here because the kernel of these
machines has no netem, and tc's per-flow shaping would need a network namespace per run.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time


class Relay:
    """A TCP relay on 127.0.0.1 in threads, in front of ``target``: each direction of each
    connection is delayed by ``delay`` seconds (a longer path) and capped at ``rate`` bytes a
    second (a per-flow shaper; 0: none). ``garble_first`` flips a byte of the first answer on
    the first connection (a corrupted login reply). ``cut(n)`` resets connection ``n``."""

    CHUNK = 65536
    QUEUED = 16
    """Chunks held per direction: a slow side pushes back on the other through TCP."""
    BURST = 0.05

    def __init__(
        self,
        target: tuple[str, int],
        *,
        delay: float = 0.0,
        rate: float = 0.0,
        garble_first: bool = False,
    ) -> None:
        self.target, self.delay, self.rate = target, delay, rate
        self._garble = garble_first
        self.connections: list[tuple[socket.socket, socket.socket]] = []
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self.listener.accept()
            except OSError:
                return
            try:
                outside = socket.create_connection(self.target, timeout=5)
            except OSError:
                inside.close()
                continue
            outside.settimeout(None)
            garble, self._garble = self._garble, False
            self.connections.append((inside, outside))
            for source, sink, flip in ((inside, outside, False), (outside, inside, garble)):
                chunks = queue.Queue(self.QUEUED)
                threading.Thread(target=self._read, args=(source, chunks), daemon=True).start()
                threading.Thread(target=self._write, args=(sink, chunks, flip), daemon=True).start()

    def _read(self, source: socket.socket, chunks: queue.Queue) -> None:
        while True:
            try:
                data = source.recv(self.CHUNK)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, sink: socket.socket, chunks: queue.Queue, flip: bool) -> None:
        # With ``rate``: when the bytes sent so far are paid for at that rate; an idle flow
        # saves up at most BURST seconds of credit, as a token bucket would.
        paid = time.monotonic()
        while True:
            due, data = chunks.get()
            now = time.monotonic()
            wait = due - now
            if self.rate:
                paid = max(paid, now - self.BURST)
                wait = max(wait, paid - now)
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                if flip:
                    data, flip = bytes([data[0] ^ 0xFF]) + data[1:], False
                sink.sendall(data)
            except OSError:
                return
            if self.rate:
                paid += len(data) / self.rate

    def cut(self, number: int) -> None:
        """Reset both sides of connection ``number`` (a tunnel killed on the path)."""
        for sock in self.connections[number]:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)  # wakes the reader thread; sends nothing
            sock.close()  # linger 0: a reset

    def close(self) -> None:
        self.listener.close()
        for pair in self.connections:
            for sock in pair:
                sock.close()
