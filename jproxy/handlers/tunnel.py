"""One logged-in tunnel on a socket: a reader greenlet, a writer greenlet, and its streams.

The reader decrypts frames, feeds the messages to the ``Mux`` and hands the events to the
stream relays. The writer is the only greenlet that seals and sends, so frames leave in the
order their nonces were counted. Control messages (connect requests and replies, window
updates) go before data; half-closes and disconnects queue behind the data they end. Data
waits in one queue bounded in bytes, in which every stream puts at most one read
(``buffer_size``) at a time, so no stream starves behind a bulk one.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent.event import Event

from jproxy.datagrams import TYPES as DATAGRAM_TYPES
from jproxy.handlers.relay import LEGACY_INBOUND_LIMIT, StreamRelay
from jproxy.metrics import Counters
from jproxy.mux import (
    ConnectAnswered,
    ConnectRequested,
    DataReceived,
    EofReceived,
    Mux,
    ProtocolError,
    Send,
    Stream,
    StreamClosed,
    WindowOpened,
)
from jproxy.session import Session
from jproxy.tuning import RelayTuning
from schemas.errors import WireError
from schemas.jproxy import ConnectStatus, DisconnectReason

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
WRITE_BATCH = 256 * 1024
DATA_QUEUE_LIMIT = 1 << 20
CONTROL_QUEUE_LIMIT = 16384
"""Unsent control messages a tunnel may hold; a peer that makes us answer more but does not
read the answers is cut off."""
DEFAULT_IDLE_TIMEOUT = 300.0
SOCKET_TIMEOUT = 30.0
"""A tunnel that takes no bytes from us for this long is dead; its reads poll at this pace."""


_TUNNEL_GONE = DisconnectReason.GENERAL


class TunnelClosed(ConnectionError):
    """The tunnel ended; the stream that waited on it cannot go on."""


class Tunnel:
    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        mux: Mux,
        *,
        counters: Counters,
        tuning: RelayTuning,
        on_connect_request: Callable[[Tunnel, ConnectRequested], None] | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        name: str = "tunnel",
    ) -> None:
        self.sock = sock
        self.session = session
        self.mux = mux
        self.counters = counters
        self.tuning = tuning
        self.idle_timeout = idle_timeout
        self.name = name
        self.closed = Event()
        self._on_connect_request = on_connect_request
        self.datagrams = None
        """The tunnel's UDP associations and ICMP echoes (``TunnelDatagrams``), when served."""
        self._relays: dict[Stream, StreamRelay] = {}
        self._answers: dict[Stream, gevent.event.AsyncResult] = {}
        self._control: deque[bytes] = deque()
        self._data: deque[list[bytes]] = deque()
        self._data_bytes = 0
        self._work = Event()
        self._space = Event()
        self._space.set()
        self._last_received = time.monotonic()
        sock.settimeout(SOCKET_TIMEOUT)

    # --- lifetime ---------------------------------------------------------------------------

    def run(self, pipelined: bytes = b"") -> None:
        """Serve the tunnel until either side ends it; then every stream's socket is closed."""
        writer = gevent.spawn(self._write_loop)
        writer.link(lambda _: self.closed.set())
        try:
            self._read_loop(pipelined)
        finally:
            self.closed.set()
            writer.kill()
            self._end_streams()
            if self.datagrams is not None:
                self.datagrams.close()
            self.sock.close()

    def close(self) -> None:
        """End the tunnel from outside (shutdown, SIGTERM): the reader wakes and cleans up."""
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _end_streams(self) -> None:
        for stream in self.mux.close_all():
            relay = self._relays.pop(stream, None)
            if relay is not None:
                relay.peer_closed(stream.reason or _TUNNEL_GONE)
            answer = self._answers.pop(stream, None)
            if answer is not None:
                answer.set_exception(TunnelClosed("the tunnel closed"))
        for relay in list(self._relays.values()):
            relay.peer_closed(_TUNNEL_GONE)
        self._space.set()

    # --- streams ----------------------------------------------------------------------------

    def open_stream(
        self, host: str, port: int, sock: socket.socket, timeout: float
    ) -> tuple[StreamRelay, ConnectAnswered]:
        """Client side: ask the server for a stream that will carry ``sock``.

        The relay exists before the request leaves, so data the server sends right after its
        reply waits in the relay until ``StreamRelay.run`` starts. Raises ``TunnelClosed`` or
        ``gevent.Timeout``.
        """
        if self.closed.is_set():
            raise TunnelClosed("the tunnel is closed")
        stream, request = self.mux.open(host, port)
        relay = self.attach(stream, sock)
        answer = self._answers[stream] = gevent.event.AsyncResult()
        self.send_control(request)
        try:
            answered = answer.get(timeout=timeout)
        except gevent.Timeout:
            self.send_control(self.mux.disconnect(stream, _TUNNEL_GONE))
            self.forget(stream)
            raise
        finally:
            self._answers.pop(stream, None)
        if answered.status is not ConnectStatus.OK:
            self.forget(stream)
        return relay, answered

    def attach(self, stream: Stream, sock: socket.socket) -> StreamRelay:
        """A relay for ``stream`` over ``sock``; received data queues in it until it runs."""
        relay = self._relays[stream] = StreamRelay(self, stream, sock)
        sock.settimeout(self.idle_timeout)
        return relay

    def forget(self, stream: Stream) -> None:
        self._relays.pop(stream, None)

    # --- writing ----------------------------------------------------------------------------

    def send_control(self, message: bytes | None) -> None:
        if message is None or self.closed.is_set():
            return
        if len(self._control) >= CONTROL_QUEUE_LIMIT:
            log.warning("%s: peer does not read our answers, closing the tunnel", self.name)
            self.close()
            return
        self._control.append(message)
        self._work.set()

    def send_after_data(self, message: bytes | None) -> None:
        """A half-close or disconnect: it must not overtake the stream's queued data.

        It skips the wait for queue space (at most two such messages per stream).
        """
        if message is not None and not self.closed.is_set():
            self._data.append([message])
            self._data_bytes += len(message)
            self._work.set()

    def send_data(self, messages: list[bytes]) -> None:
        """Queue one read's worth of data messages, waiting while the queue is full."""
        while self._data_bytes >= DATA_QUEUE_LIMIT and not self.closed.is_set():
            self._space.clear()
            self._space.wait(SOCKET_TIMEOUT)
        if self.closed.is_set():
            raise TunnelClosed("the tunnel is closed")
        self._data.append(messages)
        self._data_bytes += sum(map(len, messages))
        self._work.set()

    def send_datagram(self, message: bytes) -> bool:
        """Queue one datagram's message without waiting; ``False`` (the caller drops it and
        counts) while the data queue is full or the tunnel is closed."""
        if self._data_bytes >= DATA_QUEUE_LIMIT or self.closed.is_set():
            return False
        self._data.append([message])
        self._data_bytes += len(message)
        self._work.set()
        return True

    def _write_loop(self) -> None:
        seal, sendall = self.session.seal, self.sock.sendall
        control, data = self._control, self._data
        try:
            while True:
                if not control and not data:
                    self._work.clear()
                    self._work.wait()
                frames = [seal(message) for message in control]
                control.clear()
                size = 0
                while data and size < WRITE_BATCH:
                    batch = data.popleft()
                    frames.extend(seal(message) for message in batch)
                    size += sum(map(len, batch))
                self._data_bytes -= size
                self._space.set()
                sendall(b"".join(frames))
        except OSError as error:
            log.info("%s: write failed: %s", self.name, error)
            self.close()

    # --- reading ----------------------------------------------------------------------------

    def _read_loop(self, pipelined: bytes) -> None:
        chunk = pipelined
        datagrams = self.datagrams
        datagram_types = DATAGRAM_TYPES if datagrams is not None else frozenset()
        try:
            while not self.closed.is_set():
                if chunk:
                    for message in self.session.feed(chunk):
                        if message[:1] and message[0] in datagram_types:
                            datagrams.receive(message)
                            continue
                        for event in self.mux.receive(message):
                            self._dispatch(event)
                chunk = self._recv()
                if chunk == b"":
                    self.session.finish()
                    log.info("%s: peer closed the tunnel", self.name)
                    return
        except (ProtocolError, WireError) as error:  # WireError includes FrameError
            log.warning("%s: closing the tunnel: %s", self.name, error)
        except OSError as error:
            if not self.closed.is_set():
                log.info("%s: read failed: %s", self.name, error)

    def _recv(self) -> bytes | None:
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            busy = self.mux.streams or self.mux.other_channels
            if not busy and time.monotonic() - self._last_received > self.idle_timeout:
                log.info("%s: idle for %ss, closing", self.name, self.idle_timeout)
                return b""
            return None
        self._last_received = time.monotonic()
        return data

    def _dispatch(self, event) -> None:
        if isinstance(event, DataReceived):
            relay = self._relays.get(event.stream)
            if relay is not None:
                relay.deliver(event.data)
                if not self.mux.flow_control and relay.inbound_bytes > LEGACY_INBOUND_LIMIT:
                    relay.wait_drained(self.idle_timeout)  # 3.0: stall the tunnel, no windows
        elif isinstance(event, Send):
            self.send_control(event.message)
        elif isinstance(event, ConnectRequested):
            if self._on_connect_request is not None:
                self._on_connect_request(self, event)
        elif isinstance(event, ConnectAnswered):
            answer = self._answers.get(event.stream)
            if answer is not None:
                answer.set(event)
            else:  # nobody waits any more: the SOCKS client gave up
                self.send_control(self.mux.disconnect(event.stream, _TUNNEL_GONE))
        else:
            relay = self._relays.get(event.stream)
            if relay is None:
                return
            if isinstance(event, WindowOpened):
                relay.window_opened()
            elif isinstance(event, EofReceived):
                relay.peer_eof()
            elif isinstance(event, StreamClosed):
                relay.peer_closed(event.reason)
