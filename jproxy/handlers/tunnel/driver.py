"""One logged-in tunnel on a socket: its reader, its sending, its sweep, and its streams.

The reader is a libev watcher callback in the hub (no greenlet switch per chunk): it receives
into one buffer, opens the frames, feeds their messages to the channel core
(``jproxy.tunnel.mux``) and carries out what comes back: data is gathered per stream and written
once per received chunk, and the window updates that the deliveries earn leave before the next
chunk is read. Nothing it calls may block; the one wait of the protocol (3.0's stall for a
stream over its bound) pauses the watcher until a delivery or a timer resumes it.

Sending: whoever has messages seals and sends them at once when nothing is queued ahead; only
what the socket does not take waits, for a writer greenlet that exists while there is such a
backlog. Frames leave in the order their nonces were counted; control messages may overtake
queued data, half-closes and disconnects never do. A stream that finds the data queue full
pauses its reader until the queue has room again. One sweep greenlet a second applies the
core's deadlines (idle streams, keepalive, a dead peer) and cuts a tunnel whose socket took no
bytes for ``WRITE_STALL`` seconds.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent import get_hub
from gevent.event import AsyncResult, Event

from jproxy.handlers.net.sockets import raw_socket, send_all, send_now
from jproxy.handlers.tunnel.relay import StreamRelay
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel.datagrams import TYPES as DATAGRAM_TYPES
from jproxy.tunnel.mux import Channel, Channels, Do, Ending, Exhausted, ProtocolViolation
from jproxy.tunnel.mux import Event as CoreEvent
from jproxy.tunnel.session import Session
from schemas.errors import WireError
from schemas.jproxy import ConnectStatus

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
WRITE_BATCH = 64 * 1024
"""Bytes of messages sealed for one send: small enough that the peer starts opening frames
while we seal the next batch."""
DATA_QUEUE_LIMIT = 1 << 20
CONTROL_QUEUE_LIMIT = 16384
"""Unsent control messages a tunnel may hold; a peer that makes us answer more but does not
read the answers is cut off."""
WRITE_STALL = 30.0
"""A tunnel whose socket takes no bytes from us for this long is dead."""
SWEEP_INTERVAL = 1.0
LEGACY_STALL = 3.0
"""3.0: how long one stream over its bound may stall the tunnel before it is cut."""
_READABLE = 1  # libev's EV_READ


class TunnelClosed(ConnectionError):
    """The tunnel ended; the stream that waited on it cannot go on."""


class Tunnel:
    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        channels: Channels,
        *,
        counters: Counters,
        tuning: RelayTuning,
        on_connect_request: Callable[[Tunnel, Channel], None] | None = None,
        name: str = "tunnel",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self.clock = clock
        """The time source of every deadline (tests pass a fake clock)."""
        self.session = session
        self.channels = channels
        self.counters = counters
        self.tuning = tuning
        self.name = name
        self.closed = Event()
        self.planned = False
        """True when the tunnel ended by our choice or the peer's clean close with no stream."""
        self._on_connect_request = on_connect_request
        self.datagrams = None
        """The tunnel's UDP associations and ICMP echoes (``TunnelDatagrams``), when served."""
        self._control: deque[bytes] = deque()
        self._data: deque[bytes] = deque()
        self._unsent: memoryview | None = None
        self._queued = 0
        self._busy = False
        self._dispatching = False
        """While a received chunk is carried out, messages wait for the one send at its end."""
        self._room_waiters: list[Callable[[], None]] = []
        """Streams whose readers paused because the data queue was full."""
        self._reader = None
        """The libev watcher of the tunnel socket's readability, while the tunnel reads."""
        self._stalled: dict[StreamRelay, float] = {}
        """3.0: the streams the reader waits for, each with the time it is cut at."""
        self._stall_timer = None
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._recv_into = raw_socket(sock).recv_into
        self._feed = session.feed
        self._progress_at = self.clock()
        self._handlers = {
            Do.SEND: self._send_event,
            Do.SEND_AFTER_DATA: self._send_after_data_event,
            Do.WINDOW: self._window_event,
            Do.EOF: self._eof_event,
            Do.CLOSED: self._closed_event,
            Do.CONNECT: self._connect_event,
            Do.ANSWERED: self._answered_event,
            Do.OVER_BOUND: lambda channel, value: None,  # the reader waits after the chunk
            Do.WARNING: self._warning_event,
            Do.INFO: self._info_event,
            Do.DEAD: self._dead_event,
        }
        sock.settimeout(None)

    # --- lifetime ---------------------------------------------------------------------------

    def run(self, pipelined: bytes = b"", first: bytes | None = None) -> None:
        """Serve the tunnel until either side ends it; then every stream is ended.

        ``first`` is a message to send before anything else (the 3.1 client's ping).
        """
        if first is not None:
            self.send_control(first)
        sweeper = gevent.spawn(self._sweep_loop)
        try:
            self._read(pipelined)
            self.closed.wait()
        finally:
            self.closed.set()
            self._stop_reading()
            if self._stall_timer is not None:
                self._stall_timer.stop()
            sweeper.kill()
            self._end_streams()
            self.sock.close()

    def close(self, planned: bool = True) -> None:
        """End the tunnel from outside (shutdown, a dead peer): the reader wakes and cleans up."""
        self.planned = self.planned or planned
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _end_streams(self) -> None:
        self.perform(self.channels.close_all())
        if self.datagrams is not None:
            self.datagrams.close()
        self._wake_room_waiters()

    # --- streams ----------------------------------------------------------------------------

    def open_stream(
        self, host: str, port: int, sock: socket.socket, timeout: float
    ) -> tuple[StreamRelay, tuple[ConnectStatus, int]]:
        """Client side: ask the server for a stream that will carry ``sock``.

        The relay exists before the request leaves, so data the server sends right after its
        reply waits in the relay until ``StreamRelay.run`` starts. Raises ``TunnelClosed``,
        ``Exhausted`` or ``gevent.Timeout``; returns the relay and ``(status, elapsed_ms)``.
        """
        if self.closed.is_set():
            raise TunnelClosed("the tunnel is closed")
        request = self.channels.open(host, port, self.clock())
        relay = StreamRelay(self, request.channel, sock)
        answer = relay.answer = AsyncResult()
        self.send_control(request.value)
        try:
            answered = answer.get(timeout=timeout)
        except gevent.Timeout:
            self.perform(self.channels.close(request.channel, Ending.FAILED))
            raise
        except ConnectionResetError:
            raise TunnelClosed("the tunnel closed") from None
        finally:
            relay.answer = None
        return relay, answered

    def fail_pending(self, error: Callable[[], BaseException]) -> int:
        """Client side: every stream still waiting for its connect answer gets ``error()``
        raised in ``open_stream`` (its server stopped answering: the caller asks elsewhere)."""
        failed = 0
        for channel in list(self.channels.channels.values()):
            relay = channel.handler
            if relay is not None and relay.answer is not None and not relay.answer.ready():
                relay.answer.set_exception(error())
                failed += 1
        return failed

    def answer(self, channel: Channel, status: ConnectStatus, elapsed_ms: int) -> bool:
        """Server side: answer a connect request; False when nobody waits for it any more."""
        self.perform(self.channels.answer(channel, status, elapsed_ms, self.clock()))
        return self.channels.is_live(channel)

    def attach(self, channel: Channel, sock: socket.socket) -> StreamRelay:
        """Server side: a relay for ``channel`` over ``sock`` (the connect succeeded)."""
        return StreamRelay(self, channel, sock)

    # --- sending ----------------------------------------------------------------------------

    def perform(self, events: list[CoreEvent]) -> None:
        """Carry out the core's commands; the messages among them leave in one send."""
        handlers = self._handlers
        for kind, channel, value in events:
            handlers[kind](channel, value)
        self._flush()

    def send_control(self, message: bytes) -> None:
        self._queue_control(message)
        self._flush()

    def has_room(self) -> bool:
        """Whether a stream may send data now; when not, ``wake_when_room`` tells it later."""
        return self._queued < DATA_QUEUE_LIMIT or self.closed.is_set()

    def wake_when_room(self, resume: Callable[[], None]) -> None:
        self._room_waiters.append(resume)

    def _wake_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for resume in waiters:
            resume()

    def send_data(self, messages: list[bytes]) -> None:
        """Send one read's worth of data messages (the caller asked ``has_room`` first)."""
        if self.closed.is_set():
            raise TunnelClosed("the tunnel is closed")
        if not self._busy:
            self._send_direct(messages)
            return
        self._data.extend(messages)
        self._queued += sum(map(len, messages))

    def send_datagram(self, message: bytes) -> bool:
        """Send one datagram's message without ever waiting; ``False`` (the caller drops it and
        counts) while the data queue is full or the tunnel is closed."""
        if self._queued >= DATA_QUEUE_LIMIT or self.closed.is_set():
            return False
        self.send_data([message])
        return True

    def _queue_control(self, message: bytes) -> None:
        """Queue a control message; the caller flushes (``perform``, or the end of a chunk)."""
        if self.closed.is_set():
            return
        if len(self._control) >= CONTROL_QUEUE_LIMIT:
            log.warning("%s: peer does not read our answers, closing the tunnel", self.name)
            self.close(planned=False)
            return
        self._control.append(message)

    def _queue_after_data(self, message: bytes) -> None:
        """Queue a half-close or disconnect behind the data already queued."""
        if not self.closed.is_set():
            self._data.append(message)
            self._queued += len(message)

    def _flush(self) -> None:
        """Send what is queued now, unless a writer greenlet owns the socket or a chunk is being
        carried out (its end flushes)."""
        if self._busy or self._dispatching or self.closed.is_set():
            return
        messages = list(self._control)
        self._control.clear()
        if self._data:
            messages.extend(self._data)
            self._data.clear()
            self._queued = 0
        if messages:
            self._send_direct(messages)

    def _send_direct(self, messages: list[bytes]) -> None:
        """Seal and send without waiting; what the socket does not take goes to the writer."""
        wire = self.session.seal_all(messages)
        try:
            sent = send_now(self.sock, wire)
        except OSError as error:
            self._write_failed(error)
            return
        if sent < len(wire):
            self._unsent = memoryview(wire)[sent:]
            self._queued += len(wire) - sent
            self._busy = True
            gevent.spawn(self._write_backlog)
        else:
            self._progress_at = self.clock()

    def _write_backlog(self) -> None:
        seal_all, sock = self.session.seal_all, self.sock
        control, data = self._control, self._data
        try:
            while True:
                if self._unsent is not None:
                    unsent, self._unsent = self._unsent, None
                    send_all(sock, unsent)
                    self._queued -= len(unsent)
                self._progress_at = self.clock()
                if self._queued < DATA_QUEUE_LIMIT and self._room_waiters:
                    self._wake_room_waiters()
                if not control and not data:
                    return
                messages = list(control)
                control.clear()
                size = 0
                while data and size < WRITE_BATCH:
                    message = data.popleft()
                    size += len(message)
                    messages.append(message)
                self._queued -= size
                wire = seal_all(messages)
                self._unsent = memoryview(wire)
                self._queued += len(wire)
        except OSError as error:
            self._write_failed(error)
        finally:
            self._busy = False

    def _write_failed(self, error: OSError) -> None:
        if not self.closed.is_set():
            log.info("%s: write failed: %s", self.name, error)
        self.close(planned=False)

    # --- the core's commands ----------------------------------------------------------------

    def _send_event(self, channel: Channel | None, message: bytes) -> None:
        self._queue_control(message)

    def _send_after_data_event(self, channel: Channel | None, message: bytes) -> None:
        self._queue_after_data(message)

    def _window_event(self, channel: Channel, _: object) -> None:
        if channel.handler is not None:
            channel.handler.window_opened()

    def _eof_event(self, channel: Channel, _: object) -> None:
        if channel.handler is not None:
            channel.handler.peer_eof()

    def _closed_event(self, channel: Channel, ending: Ending) -> None:
        relay = channel.handler
        if relay is None:
            return  # server: still connecting; its answer finishes the goodbye
        if relay.answer is not None and not relay.answer.ready():
            relay.answer.set_exception(ConnectionResetError("the tunnel closed"))
        relay.peer_closed(ending)

    def _connect_event(self, channel: Channel, _: object) -> None:
        if self._on_connect_request is None:
            self.perform(
                self.channels.answer(channel, ConnectStatus.GENERAL_FAILURE, 0, self.clock())
            )
        else:
            self._on_connect_request(self, channel)

    def _answered_event(self, channel: Channel, value: tuple[ConnectStatus, int]) -> None:
        relay = channel.handler
        if relay is not None and relay.answer is not None:
            relay.answer.set(value)
        else:  # nobody waits any more: the SOCKS client gave up
            self.perform(self.channels.close(channel, Ending.FAILED))

    def _warning_event(self, channel: Channel | None, text: str) -> None:
        where = f" stream {channel.id}" if channel is not None else ""
        log.warning("%s:%s %s", self.name, where, text)

    def _info_event(self, channel: Channel | None, text: str) -> None:
        where = f" stream {channel.id}" if channel is not None else ""
        log.info("%s:%s %s", self.name, where, text)

    def _dead_event(self, _: object, text: str) -> None:
        log.warning("%s: %s, closing the tunnel", self.name, text)
        self.close(planned=False)

    # --- reading ----------------------------------------------------------------------------

    def _read(self, pipelined: bytes) -> None:
        """Start the reader: what came with the login first, then the watcher's callbacks."""
        if self.datagrams is not None:
            self._feed = self._datagrams_taken(self._feed)
        self._reader = get_hub().loop.io(self.sock.fileno(), _READABLE)
        self._reader.start(self._on_readable)
        if pipelined:
            self._received(pipelined)

    def _on_readable(self) -> None:
        """The watcher's callback (in the hub: it must never block): one chunk."""
        try:
            count = self._recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError as error:
            if not self.closed.is_set():
                log.info("%s: read failed: %s", self.name, error)
            self._stop_reading()
            return
        self._received(self._view[:count])  # nothing: the peer closed the tunnel

    def _received(self, data: bytes) -> None:
        """Carry out one chunk, or the peer's close (no data); a broken protocol, or anything
        else that goes wrong, ends the tunnel: in the hub nothing may escape and leave the
        tunnel half alive."""
        try:
            if data:
                self._dispatch(self.channels.receive(self._feed(data), self.clock()))
                return
            self.session.finish()  # a frame the close cut short is a WireError
            self.planned = not self.channels.channels
            level = logging.INFO if self.planned else logging.WARNING
            log.log(level, "%s: peer closed the tunnel", self.name)
        except (ProtocolViolation, WireError) as error:  # WireError includes FrameError
            log.warning("%s: closing the tunnel: %s", self.name, error)
        except Exception:
            log.exception("%s: closing the tunnel after an internal error", self.name)
        self._stop_reading()

    def _stop_reading(self) -> None:
        """The reading is over: the tunnel ends (``run`` wakes and cleans up)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()
            reader.close()
        self.closed.set()

    def _datagrams_taken(self, feed: Callable[[bytes], list[bytes]]) -> Callable:
        """``feed``, but UDP and ICMP messages go to ``self.datagrams`` instead of the core."""
        receive = self.datagrams.receive

        def feed_streams(data: bytes) -> list[bytes]:
            streams = []
            for message in feed(data):
                if message[:1] and message[0] in DATAGRAM_TYPES:
                    receive(message)
                else:
                    streams.append(message)
            return streams

        return feed_streams

    def _dispatch(self, events: list[CoreEvent]) -> None:
        """Carry out one chunk's events: data goes out once per stream, at the end, and every
        message all this causes (window updates, answers) leaves in one send after it."""
        touched: list[StreamRelay] = []
        over: list[StreamRelay] = []
        self._dispatching = True
        try:
            self._carry_out(events, touched, over)
            now = self.clock()
            for relay in touched:
                relay.deliver_arrived(now)
        finally:
            self._dispatching = False
        self._flush()
        if over and self._reader is not None:
            self._stall(over)

    def _carry_out(
        self, events: list[CoreEvent], touched: list[StreamRelay], over: list[StreamRelay]
    ) -> None:
        """Gather each stream's data in ``touched``; act on everything else in order (a
        stream's gathered data is delivered before its other events)."""
        handlers = self._handlers
        for kind, channel, value in events:
            if kind is Do.DATA:
                relay = channel.handler
                if relay is None:
                    continue  # the server answers before it attaches: nothing can be lost
                if not relay.arrived:
                    touched.append(relay)
                relay.arrived.append(value)
                continue
            relay = channel.handler if channel is not None else None
            if relay is not None and relay.arrived:
                relay.deliver_arrived(self.clock())
            if kind is Do.OVER_BOUND and relay is not None:
                over.append(relay)
            handlers[kind](channel, value)

    def _stall(self, over: list[StreamRelay]) -> None:
        """3.0, no windows: streams over their bound stop the tunnel reader until their
        sockets take enough, each for at most ``LEGACY_STALL`` seconds counted from now or from
        when its socket began to refuse data, whichever is earlier; then it is cut. So several
        stalled readers cost the other streams about one stall, not one each. No greenlet:
        the relays' deliveries and a timer call ``stall_eased``."""
        now = self.clock()
        for relay in over:
            relay.stalling = True
            self._stalled[relay] = min(now, relay.blocked_since or now) + LEGACY_STALL
        self._reader.stop()
        self.stall_eased()

    def stall_eased(self) -> None:
        """Cut the stalled streams whose time is up; read again once none is over its bound."""
        if self._stall_timer is not None:
            self._stall_timer.stop()
            self._stall_timer = None
        now = self.clock()
        for relay, deadline in list(self._stalled.items()):
            if relay.over_bound and now < deadline:
                self._stall_timer = get_hub().loop.timer(deadline - now)
                self._stall_timer.start(self.stall_eased)
                return
            del self._stalled[relay]
            relay.stalling = False
            if relay.over_bound:
                log.warning(
                    "%s: stream %d: its reader took less than the tunnel brought for %gs; cut",
                    self.name,
                    relay.channel.id,
                    LEGACY_STALL,
                )
                relay.abort(Ending.CUT)
        if self._reader is not None and not self.closed.is_set():
            self._reader.start(self._on_readable)

    # --- the sweep --------------------------------------------------------------------------

    def _sweep_loop(self) -> None:
        interval = min(SWEEP_INTERVAL, self.channels.keepalive / 3)
        while not self.closed.wait(interval):
            self.sweep(self.clock())

    def sweep(self, now: float) -> None:
        """Apply every deadline due at ``now``: idle streams, keepalive, a stalled socket."""
        self.perform(self.channels.sweep(now))
        if self._busy and now - self._progress_at > WRITE_STALL:
            log.warning("%s: peer took no bytes for %gs, closing", self.name, WRITE_STALL)
            self.close(planned=False)


__all__ = ["Exhausted", "Tunnel", "TunnelClosed"]
