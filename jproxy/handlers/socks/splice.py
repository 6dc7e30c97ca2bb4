"""Two TCP sockets joined both ways: the relay of the server's plain SOCKS port.

One greenlet per direction copies what it reads; an EOF travels as a half-close (the other
socket's write side is shut down) and the splice is over when both directions are. A reset or
broken pipe on either side, or nothing moving either way for ``idle_timeout``, ends both, and
both sockets are then reset (SO_LINGER 0): neither application mistakes the end for a clean EOF.
"""

from __future__ import annotations

import socket
import time

import gevent

from jproxy.handlers.net.sockets import reset
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel.mux import Ending


class Splice:
    def __init__(
        self,
        client: socket.socket,
        target: socket.socket,
        *,
        counters: Counters,
        service: str,
        tuning: RelayTuning,
        idle_timeout: float,
    ) -> None:
        self.client = client
        self.target = target
        self.bytes_up = 0
        """from the client to the target"""
        self.bytes_down = 0
        self.ending = Ending.CLOSED
        """closed (both sides finished), reset or idle"""
        self._counters = counters
        self._service = service
        self._tuning = tuning
        self._idle_timeout = idle_timeout
        self._last_activity = time.monotonic()
        self._directions: list[gevent.Greenlet] = []

    def run(self, early_data: bytes = b"") -> None:
        """Relay until both directions are done or one fails; the sockets are closed after."""
        for sock in (self.client, self.target):
            sock.settimeout(self._idle_timeout)
        self._directions = [
            gevent.spawn(self._copy, self.client, self.target, early_data, True),
            gevent.spawn(self._copy, self.target, self.client, b"", False),
        ]
        try:
            gevent.joinall(self._directions)
        finally:
            gevent.killall(self._directions)
            for sock in (self.client, self.target):
                if self.ending is Ending.CLOSED:
                    sock.close()
                else:
                    reset(sock)

    def _copy(self, source: socket.socket, sink: socket.socket, data: bytes, up: bool) -> None:
        try:
            while True:
                if data:
                    sink.sendall(data)
                    self._moved(len(data), up)
                try:
                    data = source.recv(self._tuning.buffer_size)
                except TimeoutError:
                    if time.monotonic() - self._last_activity >= self._idle_timeout:
                        raise
                    data = b""
                    continue
                if not data:
                    break
            sink.shutdown(socket.SHUT_WR)
        except TimeoutError:
            self._abort(Ending.IDLE)
        except OSError:
            self._abort(Ending.RESET)

    def _moved(self, count: int, up: bool) -> None:
        self._last_activity = time.monotonic()
        if up:
            self.bytes_up += count
        else:
            self.bytes_down += count
        self._counters.transferred(count, self._service)

    def _abort(self, ending: Ending) -> None:
        if self.ending is Ending.CLOSED:
            self.ending = ending
        for direction in self._directions:
            if direction is not gevent.getcurrent():
                direction.kill(block=False)
