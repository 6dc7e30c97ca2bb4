"""One stream's local socket joined to its tunnel channel.

The greenlet that calls ``run`` reads the local socket and hands the data to the tunnel,
never more than the channel's window allows, sending it itself when nothing is queued ahead.
What the tunnel delivers is written at once when the socket takes it; what it does not take
waits in a backlog written by a greenlet that exists only while there is a backlog. Each
delivery grants the peer more window at once.

No socket timeouts: the tunnel's one sweep ends idle streams (``abort``). A stream that ends
abnormally (a reset either way, the tunnel lost, idle, 3.0 over its bound) is reset to the
local application (SO_LINGER 0, then close), never ended with a clean EOF.

The relay knows its tunnel only through ``Link``, so this module does not import the tunnel.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Protocol

import gevent
from gevent.event import AsyncResult, Event

from jproxy.channels import LEGACY_BOUND, Channel, Channels, Ending, Side
from jproxy.channels import Event as CoreEvent
from jproxy.handlers.sockets import reset, send_now, wait_readable
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning

log = logging.getLogger(__name__)

YIELD_EVERY = 256 * 1024
"""A stream whose socket always has data lets the others run after this many bytes."""
_ABNORMAL = frozenset({Ending.RESET, Ending.CUT, Ending.IDLE})


class Link(Protocol):
    """What a relay needs of its tunnel."""

    channels: Channels
    counters: Counters
    tuning: RelayTuning
    clock: Callable[[], float]

    def perform(self, events: list[CoreEvent]) -> None: ...

    def send_data(self, messages: list[bytes]) -> None: ...


class StreamRelay:
    __slots__ = (
        "link",
        "channel",
        "sock",
        "bytes_in",
        "bytes_out",
        "blocked_since",
        "arrived",
        "answer",
        "_backlog",
        "_writer",
        "_window",
        "_below_bound",
        "_done",
        "_running",
        "_peer_eof",
        "_ended",
    )

    def __init__(self, link: Link, channel: Channel, sock: socket.socket) -> None:
        self.link = link
        self.channel = channel
        self.sock = sock
        self.bytes_in = 0
        self.bytes_out = 0
        self.blocked_since: float | None = None
        """Since when data waits that the local socket would not take (None: nothing waits)."""
        self.arrived: list[bytes] = []
        """Data of the chunk the tunnel reader is working on; ``deliver_arrived`` sends it."""
        self.answer: AsyncResult | None = None
        self._backlog: deque[bytes] = deque()
        self._writer: gevent.Greenlet | None = None
        self._window: Event | None = None
        self._below_bound: Event | None = None
        self._done = Event()
        """Set when nothing more will reach the local socket (the inbound direction is done)."""
        self._running = False  # until run(): the SOCKS reply has not been sent yet
        self._peer_eof = False
        self._ended: Ending | None = None
        channel.handler = self
        sock.settimeout(None)

    @property
    def ending(self) -> Ending:
        """How the stream ended, for the access log."""
        return self.channel.ending or self._ended or Ending.CLOSED

    # --- called by the tunnel -------------------------------------------------------------

    def deliver_arrived(self, now: float) -> None:
        """Write what the last received chunk carried, as one write when the socket takes it."""
        arrived = self.arrived
        if not arrived:
            return
        data = arrived[0] if len(arrived) == 1 else b"".join(arrived)
        arrived.clear()
        if self._ended is not None:
            return
        if self._running and self._writer is None and not self._backlog:
            sent = self._send_now(data, now)
            if sent == len(data):
                return
            data = data[sent:]
            if self._ended is not None:
                return
        self._backlog.append(data)
        if self.blocked_since is None:
            self.blocked_since = now
        self._start_writer()

    def window_opened(self) -> None:
        if self._window is not None:
            self._window.set()

    def peer_eof(self) -> None:
        self._peer_eof = True
        self._start_writer()

    def peer_closed(self, ending: Ending) -> None:
        """The peer (or the tunnel, or the sweep) ended the stream."""
        if ending in _ABNORMAL:
            self.abort(ending)
            return
        self._peer_eof = True
        self._start_writer()  # deliver the backlog, then close (run() starts it if not yet)
        self.window_opened()

    def wait_below_bound(self, deadline: float) -> bool:
        """3.0: wait until the local socket took enough that the stream is under its bound,
        at the latest until ``deadline`` (monotonic); False if it is still over it then."""
        self._below_bound = self._below_bound or Event()
        while self.channel.undelivered > LEGACY_BOUND and self._ended is None:
            remaining = deadline - self.link.clock()
            if remaining <= 0:
                return False
            self._below_bound.clear()
            self._below_bound.wait(remaining)
        return True

    def abort(self, ending: Ending) -> None:
        """End the stream now: reset the local socket, drop what was not delivered."""
        if self._ended is not None:
            return
        self._ended = ending
        self._backlog.clear()
        self.link.perform(self.link.channels.close(self.channel, ending))
        if self.answer is not None and not self.answer.ready():
            self.answer.set_exception(ConnectionResetError("the stream ended"))
        reset(self.sock)
        self._wake_all()

    # --- the relay -------------------------------------------------------------------------

    def run(self, early_data: bytes = b"") -> None:
        """Relay until the stream ends; always closes the socket and says goodbye to the peer."""
        self._running = True
        if self._backlog or self._peer_eof:
            self._start_writer()  # what arrived before the stream's socket was ready
        try:
            if self._ended is None and self._pump(early_data) and self._done.is_set():
                # Local EOF, and the peer's direction is already done: the half-close and the
                # disconnect leave together.
                channels = self.link.channels
                self.link.perform(
                    channels.finish(self.channel) + channels.close(self.channel, Ending.CLOSED)
                )
            if self.channel.ours is not Side.CLOSED:
                self._done.wait()  # the peer's direction: its EOF or goodbye, or the sweep
            elif self._writer is not None:  # 3.0: our EOF was the goodbye; deliver, then close
                self._writer.join(self.link.channels.idle_timeout)
        finally:
            if self._writer is not None:
                self._writer.kill()
            ending = self._ended or Ending.CLOSED
            self.link.perform(self.link.channels.close(self.channel, ending))
            if self._ended is None:
                self.sock.close()

    def _pump(self, pending: bytes) -> bool:
        """Local socket to tunnel, until the stream ends; True at an EOF whose half-close (or
        3.0 disconnect) is still to be sent, when the peer's direction is already done."""
        link, channels, channel, sock = self.link, self.link.channels, self.channel, self.sock
        counters, tuning = link.counters, link.tuning
        since_yield, idle = 0, True
        try:
            while True:
                allowance = channels.allowance(channel)
                if not allowance:
                    if not self._wait_for_window():
                        return False
                    continue
                if not pending:
                    wanted = min(tuning.buffer_size, allowance)
                    if idle:
                        wait_readable(sock)
                    pending = sock.recv(wanted)
                    idle = len(pending) < wanted  # a full read: more is likely waiting
                    if not pending:
                        if self._done.is_set():
                            return True
                        link.perform(channels.finish(channel))
                        return False
                    allowance = channels.allowance(channel)
                    if not allowance:
                        continue
                chunk = pending
                if len(chunk) > allowance:
                    chunk, pending = pending[:allowance], pending[allowance:]
                else:
                    pending = b""
                self.bytes_out += len(chunk)
                counters.transferred(len(chunk))
                link.send_data(channels.data(channel, chunk, link.clock()))
                since_yield += len(chunk)
                if since_yield >= YIELD_EVERY:  # neither recv nor a direct send yields
                    since_yield = 0
                    gevent.sleep(0)
        except OSError as error:
            # gevent wakes a reader whose socket we shut down with EBADF: not a failure then.
            if self._ended is None and not self._done.is_set():
                log.debug("stream %d: local read failed: %s", channel.id, error)
                self.abort(Ending.RESET)
        return False

    def _wait_for_window(self) -> bool:
        """Wait for window credit; False when nothing more may be sent on this stream."""
        channel = self.channel
        if channel.ours is not Side.OPEN or channel.theirs is Side.CLOSED or self._ended:
            return False
        if self.link.channels.allowance(channel):
            return True
        self._window = self._window or Event()
        self._window.clear()
        self._window.wait()
        return True

    # --- writing to the local socket ------------------------------------------------------

    def _send_now(self, data: bytes, now: float) -> int:
        """What the socket takes without waiting; a failure aborts the stream."""
        try:
            sent = send_now(self.sock, data)
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
        if self._below_bound is not None and self.channel.undelivered <= LEGACY_BOUND:
            self._below_bound.set()

    def _start_writer(self) -> None:
        if self._running and self._writer is None and not self._done.is_set():
            self._writer = gevent.spawn(self._write)

    def _write(self) -> None:
        """Write the backlog; then act on the peer's EOF or goodbye, if it came."""
        sock, backlog = self.sock, self._backlog
        try:
            while backlog and self._ended is None:
                data = backlog.popleft() if len(backlog) == 1 else b"".join(backlog)
                backlog.clear()
                view = memoryview(data)
                while view:  # report each piece the socket takes: its window leaves at once
                    sent = sock.send(view)
                    view = view[sent:]
                    self._written(sent, self.link.clock())
                if not backlog:
                    self.blocked_since = None
            if self._ended is None and self._peer_eof:
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
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._done.set()

    def _close_both_ways(self) -> None:
        self._wake_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes our reading greenlet
        except OSError:
            pass

    def _wake_all(self) -> None:
        self._done.set()
        self.window_opened()
        if self._below_bound is not None:
            self._below_bound.set()
