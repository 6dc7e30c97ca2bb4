"""One stream's local socket joined to the tunnel.

The greenlet that calls ``run`` reads the local socket and hands the data to the tunnel
writer, never more than the stream's flow-control window allows. What the tunnel delivers is
written to the local socket by a writer greenlet that exists only while there is something to
write, and that grants the peer more window as the socket takes the data. An idle stream
therefore costs one parked greenlet, not two (a thousand open streams are a few MB less).

In 3.1 an EOF travels as a half-close; the stream ends when both directions are done, when
either side resets, or when it stays idle for ``idle_timeout`` seconds. When the peer ends the
stream, the socket's read side is shut down, which wakes the reading greenlet.
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
        self.inbound_bytes = 0
        self._inbound: deque[bytes] = deque()
        self._writer: gevent.Greenlet | None = None
        self._drained: Event | None = None
        self._window: Event | None = None
        self._inbound_done = Event()
        self._running = False  # until run(): the SOCKS reply has not been sent yet
        self._peer_eof = False
        self._peer_closed: DisconnectReason | None = None
        self._failed: DisconnectReason | None = None
        self._last_activity = time.monotonic()

    @property
    def ending(self) -> str:
        """How the stream ended, for the access log: closed, reset, idle or cut."""
        if self._failed is not None:
            return "idle" if self._failed is DisconnectReason.GENERAL else "reset"
        if self.tunnel.closed.is_set():
            return "cut"
        if self._peer_closed in (DisconnectReason.RESET, DisconnectReason.BROKEN_PIPE):
            return "reset"
        return "closed"

    # --- called by the tunnel reader ------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self._running and self._writer is None and not self._inbound_done.is_set():
            data = self._write_without_waiting(data)
            if not data:
                return
        self._inbound.append(data)
        self.inbound_bytes += len(data)
        self._start_writer()

    def _write_without_waiting(self, data: bytes) -> bytes:
        """Send what the socket takes at once (gevent's timeout 0); return the rest.

        Most deliveries fit in the socket buffer, so no writer greenlet is needed for them.
        """
        try:
            sent = self.sock.send(data, 0, 0.0)
        except BlockingIOError:
            return data
        except OSError as error:
            log.debug("stream %d: local write failed: %s", self.stream.id, error)
            self._fail(DisconnectReason.BROKEN_PIPE)
            return b""
        self._written(sent)
        return data[sent:]

    def _written(self, count: int) -> None:
        self._last_activity = time.monotonic()
        self.bytes_in += count
        self.tunnel.counters.transferred(count)
        self.tunnel.send_control(self.tunnel.mux.consumed(self.stream, count))

    def window_opened(self) -> None:
        if self._window is not None:
            self._window.set()

    def peer_eof(self) -> None:
        self._peer_eof = True
        self._start_writer()

    def peer_closed(self, reason: DisconnectReason) -> None:
        self._peer_closed = reason
        self.window_opened()
        if self._inbound_done.is_set() and self._running:  # our reader may be waiting: wake it
            self._shutdown(socket.SHUT_RD)
        else:
            self._start_writer()

    def wait_drained(self, timeout: float) -> None:
        """Block (the tunnel reader, in 3.0) until the writer delivered what is queued."""
        if self._writer is not None:
            self._drained = self._drained or Event()
            self._drained.wait(timeout)

    # --- the relay -------------------------------------------------------------------------

    def run(self, early_data: bytes = b"") -> None:
        """Relay until the stream ends; always closes the socket and says goodbye to the peer."""
        self._running = True
        if self._inbound or self._peer_eof or self._ended():
            self._start_writer()  # what arrived before the stream's socket was ready
        try:
            self._pump_out(early_data)
            self._wait_for_inbound()
        finally:
            if self._writer is not None:
                self._writer.kill()
            self.sock.close()
            reason = self._failed or self._peer_closed or DisconnectReason.CLIENT_CLOSED
            self.tunnel.send_after_data(self.tunnel.mux.disconnect(self.stream, reason))
            self.tunnel.forget(self.stream)

    def _ended(self) -> bool:
        return self._failed is not None or self._peer_closed is not None

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
                        if not self._ended():
                            tunnel.send_after_data(mux.half_close(stream))
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
            if not self._ended():
                log.debug("stream %d: local read failed: %s", stream.id, error)
                self._fail(DisconnectReason.RESET)

    def _wait_for_window(self) -> int:
        """The current send allowance, waiting while the peer's window is closed."""
        mux, stream = self.tunnel.mux, self.stream
        while True:
            allowance = mux.allowance(stream)
            if allowance or self._ended() or not mux.is_live(stream):
                return allowance
            self._window = self._window or Event()
            self._window.clear()
            if not self._window.wait(self.tunnel.idle_timeout):
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
            self._check_idle()
            return None
        self._last_activity = time.monotonic()
        return data

    def _check_idle(self) -> None:
        if time.monotonic() - self._last_activity > self.tunnel.idle_timeout:
            log.info("stream %d: idle for %ss, closing", self.stream.id, self.tunnel.idle_timeout)
            raise _Idle

    def _wait_for_inbound(self) -> None:
        """After our side finished sending: wait until the peer's direction is done too."""
        if self._ended() or not self.tunnel.mux.is_live(self.stream):
            if self._writer is not None:  # deliver what already arrived, then close
                self._writer.join(self.tunnel.idle_timeout)
            return
        try:
            while not self._inbound_done.wait(self.tunnel.idle_timeout):
                self._check_idle()
        except _Idle:
            self._fail(DisconnectReason.GENERAL)

    # --- the writer greenlet --------------------------------------------------------------

    def _start_writer(self) -> None:
        if self._running and self._writer is None and not self._inbound_done.is_set():
            self._writer = gevent.spawn(self._write)

    def _write(self) -> None:
        """Write everything queued; then act on the peer's EOF or goodbye, if it came."""
        try:
            while self._inbound and self._failed is None:
                data = b"".join(self._inbound)
                self._inbound.clear()
                self.inbound_bytes = 0
                self.sock.sendall(data)
                self._written(len(data))
            if self._ended():
                self._finish_inbound(socket.SHUT_RD)  # wakes the reading greenlet
            elif self._peer_eof:
                self._finish_inbound(socket.SHUT_WR)
        except OSError as error:
            log.debug("stream %d: local write failed: %s", self.stream.id, error)
            self._fail(DisconnectReason.BROKEN_PIPE)
        finally:
            self._writer = None
            if self._drained is not None:
                self._drained.set()
                self._drained = None

    def _finish_inbound(self, how: int) -> None:
        self._inbound_done.set()
        self._shutdown(how)

    def _shutdown(self, how: int) -> None:
        try:
            self.sock.shutdown(how)
        except OSError:
            pass

    def _fail(self, reason: DisconnectReason) -> None:
        if self._failed is None:
            self._failed = reason
        self.window_opened()
        self._finish_inbound(socket.SHUT_RD)
