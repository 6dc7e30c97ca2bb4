"""The one driver of a logged-in tunnel: it reads, feeds the core, carries out the commands,
writes, and keeps the core's timer.

The reader is a libev watcher callback in the hub (no greenlet switch per chunk): it receives
into one buffer, opens the frames, feeds their messages to the tunnel's one multiplexer
(``jproxy.tunnel.mux``, every kind of channel) and carries out what comes back: stream data is
gathered per stream and written once per received chunk, and the window updates that the
deliveries earn leave before the next chunk is read; datagrams and the datagram channels' ends
go to ``TunnelDatagrams``. Nothing it calls may block, and nothing it calls spawns into a
bounded pool: the core's admission is the bound, and a request it admits gets its greenlet
from ``on_request``. The one wait of the protocol (3.0's stall for a stream over its bound) is
the core's: it says PAUSE_READING and RESUME_READING, and its timer cuts a stream stalled too
long. One libev timer calls the core's ``handle_timer`` at its ``next_deadline``.

Sending: whoever has messages seals and sends them at once when nothing is queued ahead; only
what the socket does not take waits, for a writer greenlet that exists while there is such a
backlog. What waits waits per channel, and the writer takes the channels in turn, one message
(at most one frame) from each (deficit round-robin with a quantum of one frame): a small
request on one stream leaves after at most one frame of each other busy channel, never behind
a download's whole backlog. The kernel keeps little unsent (``TCP_NOTSENT_LOWAT``), so the
queue that decides the order is this one. Frames leave in the order their nonces were
counted; control messages may overtake queued data, half-closes and disconnects never overtake
their own channel's data. A stream that finds the data queue full
pauses its reader until the queue has room again. The core hears when the socket refuses
bytes and when it takes them again, and declares the peer dead when it took none for its
``WRITE_STALL``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import gevent
from gevent import get_hub
from gevent.event import AsyncResult
from gevent.event import Event as Flag

from jproxy.handlers.net.sockets import raw_socket, send_all, send_now
from jproxy.handlers.tunnel.datagrams import TunnelDatagrams
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.handlers.tunnel.relay import StreamRelay
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel.mux import (
    Channel,
    Channels,
    Do,
    Ending,
    Event,
    Exhausted,
    Kind,
    ProtocolViolation,
)
from jproxy.tunnel.session import Session
from schemas.errors import WireError
from schemas.jproxy import ConnectStatus

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
TIMER_FLOOR = 0.01
"""The core's timer never fires sooner than this after it is armed (no busy loop on a deadline
that is due but moves nothing)."""
WRITE_BATCH = 64 * 1024
"""Bytes of messages sealed for one send: small enough that the peer starts opening frames
while we seal the next batch."""
DATA_QUEUE_LIMIT = 1 << 20
CONTROL_QUEUE_LIMIT = 16384
"""Unsent control messages a tunnel may hold; a peer that makes us answer more but does not
read the answers is cut off."""
_READABLE = 1  # libev's EV_READ
_REQUESTS = {Kind.TCP: Do.CONNECT, Kind.UDP: Do.ASSOCIATE, Kind.ICMP: Do.ECHO}
"""The event that asks the server for a channel of each kind."""


class Tunnel:
    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        channels: Channels,
        *,
        counters: Counters,
        tuning: RelayTuning,
        on_request: Callable[[Tunnel, Event], None] | None = None,
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
        self.closed = Flag()
        self.planned = False
        """True when the tunnel ended by our choice or the peer's clean close with no stream."""
        self._on_request = on_request
        """Server: starts the work of an admitted request (CONNECT, ASSOCIATE, ECHO); must not
        block (it runs in the hub): it spawns a greenlet."""
        self.datagrams = TunnelDatagrams(self)
        """The tunnel's UDP associations and ICMP echoes."""
        self._answers: dict[Channel, AsyncResult] = {}
        """Client: the requests that wait for the server's answer (``request``)."""
        self._control: deque[bytes] = deque()
        self._data: OrderedDict[Channel, deque[bytes]] = OrderedDict()
        """The messages that wait, per channel, in the order the channels are served next."""
        self._unsent: memoryview | None = None
        self._queued = 0
        self._busy = False
        self._dispatching = False
        """While a received chunk is carried out, messages wait for the one send at its end."""
        self._room_waiters: list[Callable[[], None]] = []
        """Streams whose readers paused because the data queue was full."""
        self._reader = None
        """The libev watcher of the tunnel socket's readability, while the tunnel reads."""
        self._timer = None
        """The libev timer of the core's next deadline."""
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._recv_into = raw_socket(sock).recv_into
        self._feed = session.feed
        self._handlers = {
            Do.SEND: self._send_event,
            Do.SEND_AFTER_DATA: self._send_after_data_event,
            Do.WINDOW: self._window_event,
            Do.EOF: self._eof_event,
            Do.CLOSED: self._closed_event,
            Do.CONNECT: self._request_event,
            Do.ANSWERED: self._answered_event,
            Do.WARNING: self._warning_event,
            Do.INFO: self._info_event,
            Do.DEAD: self._dead_event,
            Do.ASSOCIATE: self._request_event,
            Do.DATAGRAM: self.datagrams.datagram,
            Do.ECHO: self._request_event,
            Do.ECHOED: self._answered_event,
            Do.PAUSE_READING: self._pause_event,
            Do.RESUME_READING: self._resume_event,
        }
        sock.settimeout(None)

    # --- lifetime ---------------------------------------------------------------------------

    def run(self, pipelined: bytes = b"") -> None:
        """Serve the tunnel until either side ends it; then every channel is ended."""
        try:
            self._arm_timer()
            self._read(pipelined)
            self.closed.wait()
        finally:
            self.closed.set()
            self._stop_timer()
            self._stop_reading()
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

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    def _end_streams(self) -> None:
        self.perform(self.channels.close_all())
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
        return relay, self.request(request, timeout)

    def request(self, request: Event, timeout: float) -> tuple:
        """Client side: send a request of the core's (a stream's, an association's or an
        echo's) and wait for its answer, the one place that does: ``TunnelClosed`` if the
        channel or the tunnel ends first; after ``gevent.Timeout`` (or any other error) the
        channel is ended, so a late answer finds nobody and is not acted on."""
        channel = request.channel
        answer = self._answers[channel] = AsyncResult()
        self.send_control(request.value)
        try:
            return answer.get(timeout=timeout)
        except BaseException:
            self.perform(self.channels.close(channel, Ending.FAILED))
            raise
        finally:
            del self._answers[channel]

    def fail_pending(self, error: Callable[[], BaseException]) -> int:
        """Client side: every stream still waiting for its connect answer gets ``error()``
        raised in ``request`` (its server stopped answering: the caller asks elsewhere)."""
        failed = 0
        for channel, answer in list(self._answers.items()):
            if channel.kind is Kind.TCP and not answer.ready():
                answer.set_exception(error())
                failed += 1
        return failed

    def answer(self, channel: Channel, status: ConnectStatus, value: int) -> bool:
        """Server side: answer a connect (``value``: elapsed ms) or associate (``value``: the
        bound port) request; False when nobody waits for it any more."""
        self.perform(self.channels.answer(channel, status, value, self.clock()))
        return self.channels.is_live(channel)

    def attach(self, channel: Channel, sock: socket.socket) -> StreamRelay:
        """Server side: a relay for ``channel`` over ``sock`` (the connect succeeded)."""
        return StreamRelay(self, channel, sock)

    # --- sending ----------------------------------------------------------------------------

    def perform(self, events: list[Event]) -> None:
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

    def send_data(self, channel: Channel, messages: list[bytes]) -> None:
        """Send one read's worth of ``channel``'s data messages (the caller asked ``has_room``
        first): at once when nothing waits, else behind that channel's own."""
        if self.closed.is_set():
            raise TunnelClosed("the tunnel is closed")
        if not self._busy and not self._data:
            self._send_direct(messages)
            return
        self._enqueue(channel, messages)

    def send_datagram(self, channel: Channel, message: bytes) -> bool:
        """Send one datagram's message without ever waiting; ``False`` (the caller drops it and
        counts) while the data queue is full or the tunnel is closed."""
        if self._queued >= DATA_QUEUE_LIMIT or self.closed.is_set():
            return False
        self.send_data(channel, [message])
        return True

    def _enqueue(self, channel: Channel, messages: list[bytes]) -> None:
        queue = self._data.get(channel)
        if queue is None:
            queue = self._data[channel] = deque()
        queue.extend(messages)
        self._queued += sum(map(len, messages))

    def _take(self, limit: int) -> list[bytes]:
        """Up to about ``limit`` bytes of waiting messages, one from each channel in turn (a
        channel served goes to the back of the line)."""
        data, taken, size = self._data, [], 0
        while data and size < limit:
            channel, queue = data.popitem(last=False)
            message = queue.popleft()
            taken.append(message)
            size += len(message)
            if queue:
                data[channel] = queue
        self._queued -= size
        return taken

    def _queue_control(self, message: bytes) -> None:
        """Queue a control message; the caller flushes (``perform``, or the end of a chunk)."""
        if self.closed.is_set():
            return
        if len(self._control) >= CONTROL_QUEUE_LIMIT:
            log.warning("%s: peer does not read our answers, closing the tunnel", self.name)
            self.close(planned=False)
            return
        self._control.append(message)

    def _queue_after_data(self, channel: Channel, message: bytes) -> None:
        """Queue a half-close, disconnect or dissociate behind its channel's queued data."""
        if not self.closed.is_set():
            self._enqueue(channel, [message])

    def _flush(self) -> None:
        """Send what is queued now (control messages, then a batch of data taken in turn),
        unless a writer greenlet owns the socket or a chunk is being carried out (its end
        flushes); what is left goes to a writer."""
        if self._busy or self._dispatching or self.closed.is_set():
            return
        messages = list(self._control)
        self._control.clear()
        if self._data:
            messages += self._take(WRITE_BATCH)
        if messages:
            self._send_direct(messages)
        if self._data and not self._busy and not self.closed.is_set():
            self._busy = True
            gevent.spawn(self._write_backlog)

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
            self.channels.write_blocked(self.clock())
            self._arm_timer()
            gevent.spawn(self._write_backlog)

    def _write_backlog(self) -> None:
        seal_all, sock = self.session.seal_all, self.sock
        control = self._control
        self.channels.write_blocked(self.clock())
        try:
            while True:
                if self._unsent is not None:
                    unsent, self._unsent = self._unsent, None
                    send_all(sock, unsent)
                    self._queued -= len(unsent)
                more = bool(control or self._data)
                self.channels.wrote(self.clock(), blocked=more)
                if self._queued < DATA_QUEUE_LIMIT and self._room_waiters:
                    self._wake_room_waiters()
                if not more:
                    return
                messages = list(control)
                control.clear()
                messages += self._take(WRITE_BATCH)
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

    def _send_after_data_event(self, channel: Channel, message: bytes) -> None:
        self._queue_after_data(channel, message)

    def _window_event(self, channel: Channel, _: object) -> None:
        if channel.handler is not None:
            channel.handler.window_opened()

    def _eof_event(self, channel: Channel, _: object) -> None:
        if channel.handler is not None:
            channel.handler.peer_eof()

    def _closed_event(self, channel: Channel, ending: Ending) -> None:
        answer = self._answers.get(channel)
        if answer is not None and not answer.ready():
            answer.set_exception(TunnelClosed(f"the request ended: {ending.value}"))
        if channel.kind is not Kind.TCP:
            self.datagrams.ended(channel, ending)
            return
        relay = channel.handler
        if relay is not None:  # the server's is None while it connects: its answer ends it
            relay.peer_closed(ending)

    def _request_event(self, channel: Channel, value: object) -> None:
        """Server: the core admitted a request; ``on_request`` starts its work (or, with none,
        it is refused)."""
        if self._on_request is not None:
            self._on_request(self, Event(_REQUESTS[channel.kind], channel, value))
        elif channel.kind is Kind.ICMP:
            failure = ConnectStatus.GENERAL_FAILURE
            self.perform(self.channels.echo_reply(channel, failure, 0, b""))
        else:
            failure = ConnectStatus.GENERAL_FAILURE
            self.perform(self.channels.answer(channel, failure, 0, self.clock()))

    def _answered_event(self, channel: Channel, value: tuple) -> None:
        """Client: the answer to a stream's, an association's or an echo's request."""
        answer = self._answers.get(channel)
        if answer is not None:
            answer.set(value)
        else:  # nobody waits any more (the SOCKS client gave up): end what it opened
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

    def _pause_event(self, _: object, __: object) -> None:
        """3.0: a stream is over its bound; the reading waits (the core's timer cuts it)."""
        if self._reader is not None:
            self._reader.stop()
        self._arm_timer()

    def _resume_event(self, _: object, __: object) -> None:
        if self._reader is not None and not self.closed.is_set():
            self._reader.start(self._on_readable)

    # --- reading ----------------------------------------------------------------------------

    def _read(self, pipelined: bytes) -> None:
        """Start the reader: what came with the login first, then the watcher's callbacks."""
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

    def _dispatch(self, events: list[Event]) -> None:
        """Carry out one chunk's events: data goes out once per stream, at the end, and every
        message all this causes (window updates, answers) leaves in one send after it."""
        touched: list[StreamRelay] = []
        self._dispatching = True
        try:
            self._carry_out(events, touched)
            now = self.clock()
            for relay in touched:
                relay.deliver_arrived(now)
        finally:
            self._dispatching = False
        self._flush()

    def _carry_out(self, events: list[Event], touched: list[StreamRelay]) -> None:
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
            relay = channel.handler if channel is not None and channel.kind is Kind.TCP else None
            if relay is not None and relay.arrived:
                relay.deliver_arrived(self.clock())
            handlers[kind](channel, value)

    # --- the core's timer -------------------------------------------------------------------

    def _arm_timer(self) -> None:
        """(Re)start the timer for the core's next deadline (in the hub; never waits)."""
        if self.closed.is_set():
            return
        self._stop_timer()
        delay = max(self.channels.next_deadline() - self.clock(), TIMER_FLOOR)
        self._timer = get_hub().loop.timer(delay)
        self._timer.start(self._on_timer)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    def _on_timer(self) -> None:
        """The timer's callback: every deadline due now, then the next one."""
        try:
            self.perform(self.channels.handle_timer(self.clock()))
        except Exception:
            log.exception("%s: closing the tunnel after an internal error", self.name)
            self.close(planned=False)
            return
        self._arm_timer()

    def sweep(self, now: float) -> None:
        """Apply every deadline due at ``now`` (tests with a fake clock call it)."""
        self.perform(self.channels.handle_timer(now))


__all__ = ["Exhausted", "Tunnel", "TunnelClosed"]
