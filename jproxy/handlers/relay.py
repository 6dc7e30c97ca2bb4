"""One stream's local socket joined to the tunnel: two pumps, like gevent's portforwarder.

``pump_out`` reads the local socket and hands data to the tunnel writer, never more than the
stream's flow-control window allows. ``pump_in`` writes what the tunnel delivered to the local
socket and, as the socket takes it, grants the peer more window. In 3.1 an EOF travels as a
half-close; the stream ends when both directions are done, when either side resets, or when the
stream stays idle for ``idle_timeout`` seconds.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

from jproxy.mux import Stream
from schemas.jproxy import DisconnectReason

if TYPE_CHECKING:
    from jproxy.handlers.tunnel import Tunnel

log = logging.getLogger(__name__)

LEGACY_INBOUND_LIMIT = 1 << 20
"""3.0 has no windows: above this many undelivered bytes the tunnel reader waits for us."""


class _Idle(Exception):
    """Neither direction moved for the idle timeout."""


class StreamRelay:
    def __init__(self, tunnel: Tunnel, stream: Stream, sock: socket.socket) -> None:
        self.tunnel = tunnel
        self.stream = stream
        self.sock = sock
        self.bytes_out = 0
        self.bytes_in = 0
        self._inbound: deque[bytes] = deque()
        self.inbound_bytes = 0
        self._inbound_ready = Event()
        self.drained = Event()
        self.drained.set()
        self._window_opened = Event()
        self._peer_eof = False
        self._peer_closed: DisconnectReason | None = None
        self._failed: DisconnectReason | None = None
        self._last_activity = time.monotonic()

    # --- called by the tunnel reader ------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        self._inbound.append(data)
        self.inbound_bytes += len(data)
        self.drained.clear()
        self._inbound_ready.set()

    def window_opened(self) -> None:
        self._window_opened.set()

    def peer_eof(self) -> None:
        self._peer_eof = True
        self._inbound_ready.set()

    def peer_closed(self, reason: DisconnectReason) -> None:
        self._peer_closed = reason
        self._inbound_ready.set()
        self._window_opened.set()

    # --- the relay -------------------------------------------------------------------------

    def run(self, early_data: bytes = b"") -> None:
        """Relay until the stream ends; always closes the socket and says goodbye to the peer."""
        out = gevent.spawn(self._pump_out, early_data)
        try:
            self._pump_in()
            if self._failed is None and self._peer_closed is None:
                out.join()  # we saw the peer's EOF; our direction may still be sending
        finally:
            out.kill()
            self.sock.close()
            reason = self._failed or self._peer_closed or DisconnectReason.CLIENT_CLOSED
            self.tunnel.send_after_data(self.tunnel.mux.disconnect(self.stream, reason))
            self.tunnel.forget(self.stream)

    def _pump_out(self, early_data: bytes) -> None:
        tunnel, mux, stream = self.tunnel, self.tunnel.mux, self.stream
        pending = early_data
        try:
            while True:
                if not pending:
                    allowance = self._wait_for_window()
                    if allowance == 0:
                        return
                    pending = self._recv(min(tunnel.tuning.buffer_size, allowance))
                    if pending is None:
                        continue
                    if not pending:
                        tunnel.send_after_data(mux.half_close(stream))
                        self._inbound_ready.set()  # in 3.0 that was a disconnect: stop pump_in
                        return
                allowance = mux.allowance(stream)
                chunk, pending = pending[:allowance], pending[allowance:]
                if not chunk:
                    continue
                self.bytes_out += len(chunk)
                tunnel.counters.transferred(len(chunk))
                tunnel.send_data(mux.data(stream, chunk))
        except _Idle:
            self._fail(DisconnectReason.GENERAL)
        except OSError as error:
            log.debug("stream %d: local read failed: %s", stream.id, error)
            self._fail(DisconnectReason.RESET)

    def _wait_for_window(self) -> int:
        """The current send allowance, waiting while the peer's window is closed."""
        mux, stream = self.tunnel.mux, self.stream
        while True:
            allowance = mux.allowance(stream)
            if allowance or self._peer_closed is not None or not mux.is_live(stream):
                return allowance
            self._window_opened.clear()
            if not self._window_opened.wait(self.tunnel.idle_timeout):
                log.info(
                    "stream %d: no window granted for %ss", stream.id, self.tunnel.idle_timeout
                )
                self._fail(DisconnectReason.GENERAL)
                return 0

    def _recv(self, size: int) -> bytes | None:
        """Data from the local socket; ``None`` after a quiet spell that is not yet idle."""
        try:
            data = self.sock.recv(size)
        except TimeoutError:
            if time.monotonic() - self._last_activity > self.tunnel.idle_timeout:
                log.info(
                    "stream %d: idle for %ss, closing", self.stream.id, self.tunnel.idle_timeout
                )
                raise _Idle from None
            return None
        self._last_activity = time.monotonic()
        return data

    def _pump_in(self) -> None:
        tunnel, mux, stream = self.tunnel, self.tunnel.mux, self.stream
        while True:
            if not self._inbound:
                self.drained.set()
                ended = self._peer_closed is not None or self._failed is not None
                if ended or not mux.is_live(stream):
                    return
                if self._peer_eof:
                    self._shutdown_write()
                    return
                self._inbound_ready.clear()
                self._inbound_ready.wait()
                continue
            data = b"".join(self._inbound)
            self._inbound.clear()
            self.inbound_bytes = 0
            try:
                self.sock.sendall(data)
            except OSError as error:
                log.debug("stream %d: local write failed: %s", stream.id, error)
                self._fail(DisconnectReason.BROKEN_PIPE)
                return
            self._last_activity = time.monotonic()
            self.bytes_in += len(data)
            tunnel.counters.transferred(len(data))
            tunnel.send_control(mux.consumed(stream, len(data)))

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _fail(self, reason: DisconnectReason) -> None:
        if self._failed is None:
            self._failed = reason
        self._inbound_ready.set()
        self._window_opened.set()
