"""One stream's local socket joined to its tunnel channel.

Reading the local socket is a libev watcher callback that runs in the hub: it reads once per
turn of the loop (one buffer, so no stream takes more than its share while others wait), hands
the data to the driver, which sends it at once when nothing is queued ahead, never more than
the channel's window allows. No greenlet switch per
message: the watcher pauses while the window is spent or the tunnel's queue is full, and the
tunnel resumes it. What the tunnel delivers is written at once when the socket takes it; what
it does not take waits in a backlog written by a greenlet that exists only while there is a
backlog. Each delivery grants the peer more window at once. The greenlet that calls ``run``
only waits for the stream's end, then says goodbye and closes.

No socket timeouts: the core's timer ends idle streams (a CLOSED event: ``peer_closed``). A
stream that ends abnormally (a reset of the local socket, a 3.1 peer's reset, the tunnel lost,
idle, 3.0 over its bound) is reset to the local application (SO_LINGER 0, then close), never
ended with a clean EOF. A 3.0 peer's disconnect is never abnormal, whatever its reason (the
Java peers say RESET for every close): what came before it is written, then the socket is
closed (FIN).

The relay knows its tunnel only through ``Link`` (``link.py``), so this module does not import
the driver. The stream's protocol state (its sides, window, undelivered bytes, since when they
wait, 3.0's stall) is the core's ``Channel``; the relay holds only what its sockets need.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import gevent
from gevent import get_hub
from gevent.event import Event

from jproxy.handlers.net.sockets import (
    close,
    keep_unsent_low,
    raw_socket,
    read_watcher,
    reset,
    send_now,
    send_pieces_now,
    shutdown,
)
from jproxy.handlers.tunnel.link import Link
from jproxy.tunnel.mux import Channel, Ending, Side

log = logging.getLogger(__name__)

YIELD_EVERY = 64 * 1024
"""A stream whose socket always has data lets the others run after this many bytes (one read
of the default size): no stream takes more than its share of a loop turn while others wait."""
GATHER_MAX = 64
"""Up to this many pieces of a chunk go to the socket in one sendmsg; more are joined first
(the kernel's limit on pieces is 1024)."""
_ABNORMAL = frozenset({Ending.RESET, Ending.CUT, Ending.IDLE})


class StreamRelay:
    __slots__ = (
        "link",
        "channel",
        "sock",
        "bytes_in",
        "bytes_out",
        "arrived",
        "_backlog",
        "_writer",
        "_reader",
        "_recv",
        "_pending",
        "_pumping",
        "_eof_unsent",
        "_done",
        "_running",
        "_ended",
    )

    def __init__(self, link: Link, channel: Channel, sock: socket.socket) -> None:
        self.link = link
        self.channel = channel
        self.sock = sock
        self.bytes_in = 0
        self.bytes_out = 0
        self.arrived: list[bytes] = []
        """Data of the chunk the tunnel reader is working on; ``deliver_arrived`` sends it."""
        self._backlog: list[bytes] = []
        """What the socket did not take yet, in order (a list: an empty one is 56 bytes where a
        deque is 600, and the writer always takes all of it at once)."""
        self._writer: gevent.Greenlet | None = None
        self._reader = None
        """The libev watcher of the local socket's readability, while the pump runs."""
        self._recv: Callable[[int], bytes] | None = None
        self._pending = b""
        """Read from the local socket, not yet sent: more than the window allowed."""
        self._pumping: Event | None = None
        """Cleared while the local socket is pumped to the tunnel; set when that ends."""
        self._eof_unsent = False
        self._done = Event()
        """Set when nothing more will reach the local socket (the inbound direction is done)."""
        self._running = False  # until run(): the SOCKS reply has not been sent yet
        self._ended: Ending | None = None
        channel.handler = self
        sock.settimeout(None)
        keep_unsent_low(sock)

    @property
    def _peer_done(self) -> bool:
        """The peer sends no more (its half-close or its disconnect): the core's state."""
        return self.channel.theirs >= Side.EOF

    @property
    def ending(self) -> Ending:
        """How the stream ended, for the access log."""
        return self.channel.ending or self._ended or Ending.CLOSED

    # --- called by the tunnel -------------------------------------------------------------

    def deliver_arrived(self, now: float) -> None:
        """Write what the last received chunk carried, in one syscall when the socket takes it."""
        arrived = self.arrived
        if not arrived:
            return
        if self._ended is not None:
            arrived.clear()
            return
        if self._running and self._writer is None and not self._backlog:
            pieces = arrived if len(arrived) <= GATHER_MAX else [b"".join(arrived)]
            sent = self._send_now(pieces, now)
            if sent == (len(pieces[0]) if len(pieces) == 1 else sum(map(len, pieces))):
                arrived.clear()
                return
            data = b"".join(pieces)[sent:]
            arrived.clear()
            if self._ended is not None:
                return
        else:
            data = b"".join(arrived)
            arrived.clear()
        self._backlog.append(data)
        self.link.channels.waiting(self.channel, now)
        self._start_writer()

    def window_opened(self) -> None:
        self._resume()

    def peer_eof(self) -> None:
        self._start_writer()

    def peer_closed(self, ending: Ending) -> None:
        """The peer (or the tunnel's end, or the core's timer) ended the stream."""
        if ending in _ABNORMAL:
            self.abort(ending)
            return
        self._start_writer()  # deliver the backlog, then close (run() starts it if not yet)
        self.window_opened()

    def abort(self, ending: Ending) -> None:
        """End the stream now: reset the local socket, drop what was not delivered."""
        if self._ended is not None:
            return
        self._ended = ending
        self._backlog.clear()
        self._end_pump()
        self.link.perform(self.link.channels.close(self.channel, ending))
        reset(self.sock)
        self._wake_all()

    # --- the relay -------------------------------------------------------------------------

    def run(self, early_data: bytes = b"") -> None:
        """Relay until the stream ends; always closes the socket and says goodbye to the peer."""
        self._running = True
        if self._backlog or self._peer_done:
            self._start_writer()  # what arrived before the stream's socket was ready
        try:
            if self._ended is None:
                self._pump(early_data)
                if self._eof_unsent and self._done.is_set():
                    # Local EOF, and the peer's direction is already done: the half-close and
                    # the disconnect leave together.
                    channels = self.link.channels
                    self.link.perform(
                        channels.finish(self.channel) + channels.close(self.channel, Ending.CLOSED)
                    )
            if self.channel.ours is not Side.CLOSED:
                self._done.wait()  # the peer's direction: its EOF or goodbye, or a timer
            elif self._writer is not None:  # 3.0: our EOF was the goodbye; deliver, then close
                self._writer.join(self.link.channels.idle_timeout)
        finally:
            self._end_pump()
            if self._writer is not None:
                self._writer.kill()
            ending = self._ended or Ending.CLOSED
            self.link.perform(self.link.channels.close(self.channel, ending))
            if self._ended is None:
                close(self.sock)

    # --- the local socket to the tunnel: a watcher callback, no greenlet -------------------

    def _pump(self, early_data: bytes) -> None:
        """Pump the local socket to the tunnel until that direction ends (EOF, the window
        closed for good, a failure); ``_eof_unsent`` says whether an EOF's half-close (or 3.0
        disconnect) is still to be sent because the peer's direction was already done."""
        self._pumping = Event()
        self._recv = raw_socket(self.sock).recv
        self._reader = read_watcher(self.sock)
        self._pending = early_data
        if early_data:
            self._on_readable()
        else:  # a fresh socket is most often empty: no recv that fails with EAGAIN
            self._reader.start(self._on_readable)
        self._pumping.wait()

    def _on_readable(self) -> None:
        """The watcher's callback (in the hub: it must never block)."""
        try:
            self._pump_some()
        except OSError as error:  # the tunnel closed, or the local socket failed
            if self._ended is None and not self._done.is_set():
                log.debug("stream %d: local read failed: %s", self.channel.id, error)
                self.abort(Ending.RESET)
            self._end_pump()

    def _pump_some(self) -> None:
        """Send what is pending, then what the socket has, up to ``YIELD_EVERY`` bytes, as far
        as the window allows; then wait in the loop for readability, window or queue room."""
        link, channel, reader = self.link, self.channel, self._reader
        if reader is None:
            return  # the pump ended while this callback was scheduled
        channels = link.channels
        taken, drained = 0, False
        while True:
            allowance = channels.allowance(channel)
            if not allowance:
                if channel.ours is not Side.OPEN or channel.theirs is Side.CLOSED or self._ended:
                    self._end_pump()
                else:
                    reader.stop()  # window_opened resumes
                return
            if not link.has_room():
                reader.stop()
                link.wake_when_room(self._resume)
                return
            pending = self._pending
            if pending:
                self._pending = b""
            else:
                if drained or taken >= YIELD_EVERY:  # the others run first
                    self._listen(reader)
                    return
                wanted = min(link.tuning.buffer_size, allowance)
                if wanted > channels.max_data:  # whole frames: no small frame per read
                    wanted -= wanted % channels.max_data
                try:
                    pending = self._recv(wanted)
                except BlockingIOError:
                    self._listen(reader)
                    return
                if not pending:
                    if self._done.is_set():
                        self._eof_unsent = True
                    else:
                        link.perform(channels.finish(channel))
                    self._end_pump()
                    return
                # A short read most likely emptied the socket: no recv that fails with EAGAIN.
                drained = len(pending) < wanted
                allowance = channels.allowance(channel)
                if not allowance:
                    self._pending = pending
                    continue
            if len(pending) > allowance:
                pending, self._pending = pending[:allowance], pending[allowance:]
            size = len(pending)
            taken += size
            self.bytes_out += size
            link.counters.transferred(size)
            link.send_data(channel, channels.data(channel, pending, link.clock()))

    def _resume(self) -> None:
        """Window or queue room came: the paused pump goes on (in the loop, not in the caller)."""
        reader = self._reader
        if reader is None:
            return
        if self._pending:
            get_hub().loop.run_callback(self._on_readable)
        else:
            self._listen(reader)

    def _listen(self, reader) -> None:
        """Wait in the loop for the socket to be readable (the watcher fires again while it
        is: it is level-triggered)."""
        if not reader.active:
            reader.start(self._on_readable)

    def _end_pump(self) -> None:
        reader = self._reader
        if reader is None:
            return
        self._reader = None
        reader.stop()  # gevent's own watcher: stopped, gevent's close leaves it alone
        self._pumping.set()

    # --- writing to the local socket ------------------------------------------------------

    def _send_now(self, pieces: list[bytes], now: float) -> int:
        """What the socket takes of ``pieces`` (in order, in one syscall) without waiting; a
        failure aborts the stream."""
        try:
            if len(pieces) == 1:
                sent = send_now(self.sock, pieces[0])
            else:
                sent = send_pieces_now(self.sock, pieces)
        except OSError as error:
            log.debug("stream %d: local write failed: %s", self.channel.id, error)
            self.abort(Ending.RESET)
            return 0
        if sent:
            self._written(sent, now)
        return sent

    def _written(self, count: int, now: float) -> None:
        self.bytes_in += count
        self.link.counters.transferred(count)
        self.link.perform(self.link.channels.delivered(self.channel, count, now))

    def _start_writer(self) -> None:
        """Write the backlog in a greenlet; with none, act on the peer's EOF or goodbye now
        (a shutdown never waits): most streams end without a greenlet for it."""
        if not self._running or self._writer is not None or self._done.is_set():
            return
        if self._backlog:
            self._writer = gevent.spawn(self._write)
        elif self._peer_done and self._ended is None:
            self._finish_inbound()

    def _write(self) -> None:
        """Write the backlog; then act on the peer's EOF or goodbye, if it came."""
        sock, backlog = self.sock, self._backlog
        try:
            while backlog and self._ended is None:
                data = backlog[0] if len(backlog) == 1 else b"".join(backlog)
                backlog.clear()
                view = memoryview(data)
                while view:  # report each piece the socket takes: its window leaves at once
                    sent = sock.send(view)
                    view = view[sent:]
                    self._written(sent, self.link.clock())
            if self._ended is None and self._peer_done:
                self._finish_inbound()
        except OSError as error:
            if self._ended is None:
                log.debug("stream %d: local write failed: %s", self.channel.id, error)
                self.abort(Ending.RESET)
        finally:
            self._writer = None

    def _finish_inbound(self) -> None:
        """Everything the peer sent is delivered: pass its EOF on, or close after its goodbye."""
        if self.channel.theirs is Side.CLOSED:
            self._close_both_ways()
            return
        shutdown(self.sock, socket.SHUT_WR)
        self._done.set()

    def _close_both_ways(self) -> None:
        """The peer said goodbye: our reader sees its EOF and ends the pump, then ``run``
        closes the socket (FIN, after what was written)."""
        self._wake_all()
        shutdown(self.sock, socket.SHUT_RDWR)  # our own, not gevent's: see sockets.shutdown

    def _wake_all(self) -> None:
        self._done.set()
        self.window_opened()
