"""Every channel of one tunnel, sans-I/O: messages and local happenings in, commands out.

One ``Channels`` per tunnel end. It owns the 16-bit connection-id space, each channel's
lifecycle, the 3.1 flow-control windows, the idle deadlines and the tunnel's keepalive. It
never touches a socket, never reads a clock (every call that needs the time takes ``now``) and
never logs: what a handler must do, say or log comes back as a list of ``Event`` tuples
``(kind, channel, value)``, dispatched on ``kind`` (an ``IntEnum``), never on ``isinstance``.

Two errors leave it: ``ProtocolViolation`` (the peer broke the protocol; the tunnel must end)
and ``Exhausted`` (this end ran out of ids or channel slots; the caller refuses one request).

Lifecycles. A channel has one state per side (``Side``: ours, what this end did; theirs, what
the peer did), and a move on one side is looked up in its kind's transition table, as h11
tracks the client and the server of one HTTP connection. A move the table does not hold is
stray (a late message for a side that already ended) and is ignored.

Connection ids. The Java client frees an id as soon as it sends a disconnect and may hand it
to a new stream while the server's own disconnect for the old one is still in flight. Here an
id stays taken until both sides are ``CLOSED`` (3.1, where each side answers the other's
disconnect), or until the first disconnect (3.0: the Java peers never answer). Ids are handed
out in rotation, so a freed id is the last to be reused. Handlers hold ``Channel`` objects; a
call for a channel that no longer owns its id does nothing.

Adding a kind of channel (UDP associations and ICMP echoes share this id space on the wire):
1. add a ``Kind`` member and its ``TABLES`` entry (which moves each side may make);
2. give its messages fast codecs (``schemas/fast.py``) and add ``_on_<message>`` receivers to
   ``_RECEIVERS``, keyed by type byte; they find the channel with ``_live(id)``, move sides
   with ``_move`` and return events;
3. open it with ``open(kind, ...)`` (client) or ``_accept(kind, ...)`` (server, in the
   request's receiver); answer it with ``answer``; end it with ``close``. Ids, limits, idle
   deadlines and ``close_all`` then work for it unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Container
from typing import Any, NamedTuple

from schemas.errors import WireError
from schemas.fast import (
    KEEPALIVE,
    TCP_CONNECT_REPLY,
    TCP_CONNECT_REQUEST,
    TCP_DISCONNECT,
    TCP_HALF_CLOSE,
    TCP_PACKET,
    TCP_WINDOW_UPDATE,
)
from schemas.jproxy import (
    MESSAGES,
    SECURE_ONLY,
    ConnectStatus,
    Dialect,
    Direction,
    DisconnectReason,
    KeepAliveKind,
    MessageType,
    address_for,
    parse_message,
)

ID_SPACE = 1 << 16
DEFAULT_WINDOW = 1 << 20
WINDOW_UPDATE_SHARE = 4
"""A receiver grants credit once a quarter of the window was delivered: few updates (each is a
frame and a syscall on both ends), and the sender still has three quarters in flight."""
DEFAULT_MAX_CHANNELS = 1024
DEFAULT_IDLE_TIMEOUT = 300.0
MAX_ELAPSED_MS = 0xFFFF
MAX_WINDOW = 1 << 31
LEGACY_BOUND = 1 << 20
"""3.0 has no windows: a stream holding more undelivered bytes than this is over its bound."""
KEEPALIVE_INTERVAL = 5.0
"""3.1: the client pings a tunnel it heard nothing on for this long."""
DEAD_AFTER = 3
"""A 3.1 client whose server stays silent for this many keepalive intervals drops the tunnel."""

_KNOWN_TYPES = frozenset(int(code) for code in MessageType)
_TCP_PACKET = TCP_PACKET.type_code
_DATA_HEADER_SIZE = TCP_PACKET.header_size
_unpack_data_header = TCP_PACKET.header.unpack_from
_PING = KEEPALIVE.build(KeepAliveKind.PING)
_PONG = KEEPALIVE.build(KeepAliveKind.PONG)


class Kind(enum.Enum):
    """What a channel carries; each kind has its own transition table."""

    TCP = "tcp"


class Side(enum.IntEnum):
    """The state of one side (ours or theirs) of a channel."""

    CONNECTING = 0
    OPEN = 1
    EOF = 2
    """will send no more data (TCP half-close)"""
    CLOSED = 3
    """sent (ours) or received (theirs) the disconnect, or the connect failed"""


class Move(enum.IntEnum):
    """What one side may do; the tables say from which states."""

    CONNECTED = 0
    EOF = 1
    CLOSE = 2


TCP_TABLE: dict[tuple[Side, Move], Side] = {
    (Side.CONNECTING, Move.CONNECTED): Side.OPEN,
    (Side.CONNECTING, Move.CLOSE): Side.CLOSED,
    (Side.OPEN, Move.EOF): Side.EOF,
    (Side.OPEN, Move.CLOSE): Side.CLOSED,
    (Side.EOF, Move.CLOSE): Side.CLOSED,
}
"""One side of a TCP stream: connect, then maybe a half-close, then the disconnect."""

TABLES: dict[Kind, dict[tuple[Side, Move], Side]] = {Kind.TCP: TCP_TABLE}


class Ending(enum.Enum):
    """How a channel ended, as the access log names it."""

    CLOSED = "closed"
    """both sides finished normally"""
    RESET = "reset"
    """one side ended abnormally (a reset, a broken pipe, a window overrun)"""
    CUT = "cut"
    """the tunnel went away, or 3.0: the stream stayed over its bound too long"""
    IDLE = "idle"
    """nothing moved for the idle timeout (or no window was granted for that long)"""
    FAILED = "failed"
    """the connect did not succeed"""


_ENDING_OF = {
    DisconnectReason.GENERAL: Ending.CLOSED,
    DisconnectReason.CLIENT_CLOSED: Ending.CLOSED,
    DisconnectReason.BROKEN_PIPE: Ending.RESET,
    DisconnectReason.RESET: Ending.RESET,
}
"""3.1: what the peer's disconnect reason means. In 3.0 a reason means nothing: the Java peers
send RESET for every close, a clean one included, so a 3.0 disconnect always ends the stream
in order (CLOSED: what came before it is delivered, then FIN)."""
_REASON_OF = {
    Ending.CLOSED: DisconnectReason.CLIENT_CLOSED,
    Ending.RESET: DisconnectReason.RESET,
    Ending.CUT: DisconnectReason.RESET,
    Ending.IDLE: DisconnectReason.RESET,
    Ending.FAILED: DisconnectReason.GENERAL,
}


class Do(enum.IntEnum):
    """The kinds of ``Event``: what the handler must do."""

    SEND = 0
    """send ``value`` (a message) to the peer; it may go ahead of queued data"""
    SEND_AFTER_DATA = 1
    """send ``value`` (a half-close or disconnect) behind the channel's queued data"""
    DATA = 2
    """deliver ``value`` (bytes) to the channel's local socket: the data of consecutive
    messages of one channel in one ``receive``, joined"""
    WINDOW = 3
    """the peer granted credit: a sender waiting on the window may go on"""
    EOF = 4
    """the peer sends no more: shut down the local socket's write side once delivered"""
    CLOSED = 5
    """the channel ended (``value``: an ``Ending``); RESET and CUT reset the local socket"""
    CONNECT = 6
    """server: the peer asks to connect (``value``: ``(host, port)``); answer it"""
    ANSWERED = 7
    """client: the peer answered (``value``: ``(ConnectStatus, elapsed_ms)``)"""
    OVER_BOUND = 8
    """3.0: the channel holds more than ``LEGACY_BOUND`` undelivered bytes"""
    WARNING = 9
    """log ``value`` at WARNING"""
    INFO = 10
    """log ``value`` at INFO"""
    DEAD = 11
    """the peer stayed silent too long: end the tunnel"""


class Event(NamedTuple):
    kind: Do
    channel: Channel | None
    value: Any = None


class ProtocolViolation(Exception):
    """The peer broke the protocol in a way that ends the whole tunnel."""


class Exhausted(Exception):
    """This end ran out of something (ids, channel slots): one request is refused."""


class Channel:
    """One channel of the tunnel. ``handler`` is the I/O layer's; the core never touches it."""

    __slots__ = (
        "id",
        "kind",
        "ours",
        "theirs",
        "host",
        "port",
        "send_window",
        "receive_window",
        "unacknowledged",
        "undelivered",
        "active_at",
        "ending",
        "peer_reason",
        "handler",
    )

    def __init__(self, channel_id: int, kind: Kind, host: str, port: int, now: float) -> None:
        self.id = channel_id
        self.kind = kind
        self.ours = self.theirs = Side.CONNECTING
        self.host = host
        self.port = port
        self.send_window = self.receive_window = 0
        self.unacknowledged = 0
        self.undelivered = 0
        self.active_at = now
        self.ending: Ending | None = None
        self.peer_reason: DisconnectReason | None = None
        """The reason the peer's disconnect carried, when that disconnect ended the stream
        (not when it answered ours): the access log records it."""
        self.handler: Any = None

    def __repr__(self) -> str:
        return f"<{self.kind.value} {self.id} {self.ours.name}/{self.theirs.name}>"


class Channels:
    """The channels of one tunnel end. ``sends`` is the direction of the messages it writes."""

    def __init__(
        self,
        sends: Direction,
        dialect: Dialect,
        *,
        max_message: int,
        now: float,
        window: int = DEFAULT_WINDOW,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        keepalive: float = KEEPALIVE_INTERVAL,
    ) -> None:
        self.sends = sends
        self.receives = (
            Direction.SERVER_TO_CLIENT
            if sends is Direction.CLIENT_TO_SERVER
            else Direction.CLIENT_TO_SERVER
        )
        self.dialect = dialect
        self.flow_control = dialect is Dialect.SECURE_3_1
        self.is_client = sends is Direction.CLIENT_TO_SERVER
        self.window = window
        self.update_threshold = max(1, window // WINDOW_UPDATE_SHARE)
        self.max_channels = min(max_channels, ID_SPACE)
        self.max_data = max_message - TCP_PACKET.header_size
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.channels: dict[int, Channel] = {}
        self.other_channels: Container[int] = ()
        """Ids that UDP associations and ICMP echoes hold (``jproxy.tunnel.datagrams``): the wire
        has
        one id space for every kind, so they are neither handed out nor accepted here."""
        self.heard_at = now
        self.pinged_at = now
        self.rtt: float | None = None
        """3.1 client: the round trip of the last ping answered (the console shows it)."""
        self.dropped_bytes = 0
        """Data that arrived for a channel whose local side is gone (counted, not kept)."""
        self._next_id = 0
        self._receivers = {
            codec.type_code: (codec.parse, handler)
            for codec, handler in _RECEIVERS.items()
            if MESSAGES[(self.receives, MessageType(codec.type_code))] is codec.schema
            and (self.flow_control or codec.type_code not in SECURE_ONLY)
        }

    # --- opening and answering --------------------------------------------------------------

    def open(self, host: str, port: int, now: float, kind: Kind = Kind.TCP) -> Event:
        """Client: a new channel to ``host:port`` and the request that asks for it (SEND).

        ``Exhausted`` when the tunnel has no free id or slot. An IP literal travels as an IPv4
        or IPv6 address, anything else as a name the server resolves.
        """
        if len(self.channels) >= self.max_channels:
            raise Exhausted(f"{self.max_channels} channels open on this tunnel")
        channel = self._add(Channel(self._free_id(), kind, host, port, now))
        address_type = address_for(host)["type"]
        return Event(
            Do.SEND, channel, TCP_CONNECT_REQUEST.build(channel.id, port, address_type, host)
        )

    def answer(
        self, channel: Channel, status: ConnectStatus, elapsed_ms: int, now: float
    ) -> list[Event]:
        """Server: the reply to a CONNECT event; a failure frees the channel on both ends.

        If the peer gave up meanwhile, the answer is the disconnect that completes its goodbye.
        """
        if not self._owns(channel) or channel.ours is not Side.CONNECTING:
            return []
        channel.active_at = now
        if channel.theirs is Side.CLOSED:
            return self.close(channel, Ending.CLOSED)
        self._settle(channel, status)
        return [Event(Do.SEND, channel, self._connect_reply(channel.id, status, elapsed_ms))]

    @staticmethod
    def _connect_reply(channel_id: int, status: ConnectStatus, elapsed_ms: int) -> bytes:
        elapsed_ms = min(max(elapsed_ms, 0), MAX_ELAPSED_MS)
        return TCP_CONNECT_REPLY.build(channel_id, status, elapsed_ms)

    # --- this end's data and ends -----------------------------------------------------------

    def allowance(self, channel: Channel) -> int:
        """Data bytes ``channel`` may send now (0: wait for WINDOW, or nothing more may go)."""
        if channel.ours is not Side.OPEN or channel.theirs is Side.CLOSED:
            return 0
        return channel.send_window if self.flow_control else 1 << 30

    def data(self, channel: Channel, payload: bytes, now: float) -> list[bytes]:
        """The messages carrying ``payload`` (at most ``allowance``), each fitting one frame.

        The hot path: it returns the messages themselves, not ``Event`` tuples.
        """
        if len(payload) > self.allowance(channel):
            raise ValueError("payload exceeds the channel's send allowance")
        channel.active_at = now
        if self.flow_control:
            channel.send_window -= len(payload)
        step, cid = self.max_data, channel.id
        if len(payload) <= step:
            return [TCP_PACKET.build(cid, payload)]
        view = memoryview(payload)
        whole = len(payload) - len(payload) % step
        prefix = TCP_PACKET.prefix(cid, step)
        messages = [prefix + view[start : start + step] for start in range(0, whole, step)]
        if whole < len(payload):
            messages.append(TCP_PACKET.build(cid, view[whole:]))
        return messages

    def delivered(self, channel: Channel, count: int, now: float) -> list[Event]:
        """The local socket took ``count`` received bytes; in 3.1 maybe grant more credit."""
        channel.active_at = now
        channel.undelivered -= count
        if not self.flow_control or channel.ours is Side.CLOSED or channel.theirs is Side.CLOSED:
            return []
        channel.unacknowledged += count
        if channel.unacknowledged < self.update_threshold:
            return []
        increment, channel.unacknowledged = channel.unacknowledged, 0
        channel.receive_window += increment
        return [Event(Do.SEND, channel, TCP_WINDOW_UPDATE.build(channel.id, increment))]

    def finish(self, channel: Channel) -> list[Event]:
        """The local socket sent EOF: a 3.1 half-close; in 3.0 (no half-close) the disconnect."""
        if not self._owns(channel) or channel.ours is not Side.OPEN:
            return []
        if channel.theirs is Side.CLOSED:
            return []  # the peer is gone: the disconnect, not a half-close, answers it
        if not self.flow_control:
            return self.close(channel, Ending.CLOSED)
        channel.ours = _step(channel, channel.ours, Move.EOF)
        return [Event(Do.SEND_AFTER_DATA, channel, TCP_HALF_CLOSE.build(channel.id))]

    def close(self, channel: Channel, ending: Ending) -> list[Event]:
        """End ``channel`` from this side (its disconnect); nothing if already done or replaced.

        ``ending`` is kept for the access log unless the peer's end came first.
        """
        if not self._owns(channel) or channel.ours is Side.CLOSED:
            return []
        self._end(channel, ending)
        channel.ours = _step(channel, channel.ours, Move.CLOSE)
        message = TCP_DISCONNECT.build(channel.id, _REASON_OF[ending])
        if channel.theirs is Side.CLOSED or not self.flow_control:
            self._release(channel)
        return [Event(Do.SEND_AFTER_DATA, channel, message)]

    def close_all(self) -> list[Event]:
        """The tunnel is gone: every channel is cut, without messages."""
        events = []
        for channel in list(self.channels.values()):
            self._end(channel, Ending.CUT)
            channel.ours = channel.theirs = Side.CLOSED
            self._release(channel)
            events.append(Event(Do.CLOSED, channel, channel.ending))
        return events

    # --- time -------------------------------------------------------------------------------

    def sweep(self, now: float) -> list[Event]:
        """Deadlines at ``now``: idle channels end, a quiet tunnel is pinged or declared dead.

        A channel on which nothing moved (data either way, a window update, a delivery) for
        ``idle_timeout`` ends as IDLE; one that waited for window credit that long says so.
        """
        events: list[Event] = []
        limit = now - self.idle_timeout
        for channel in [c for c in self.channels.values() if c.active_at < limit]:
            if channel.ours is Side.CLOSED:
                continue  # waiting for the peer's goodbye: the id stays taken, nothing to do
            stalled = channel.send_window == 0 and self.flow_control and channel.ours is Side.OPEN
            why = "no window granted" if stalled else "idle"
            events.append(Event(Do.INFO, channel, f"{why} for {self.idle_timeout:g}s, closing"))
            events += self.close(channel, Ending.IDLE)
            events.append(Event(Do.CLOSED, channel, channel.ending))
        if self.flow_control and self.is_client:
            events += self._keepalive(now)
        return events

    def _keepalive(self, now: float) -> list[Event]:
        """3.1 client: ping a quiet tunnel; a server silent for several intervals is dead.

        The server never pings and never judges silence (it cannot know the client's
        interval): TCP keepalive and the write stall find a vanished client.
        """
        silent = now - self.heard_at
        if silent > self.keepalive * DEAD_AFTER:
            return [Event(Do.DEAD, None, f"peer silent for {silent:.0f}s")]
        if silent >= self.keepalive and now - self.pinged_at >= self.keepalive:
            self.pinged_at = now
            return [Event(Do.SEND, None, _PING)]
        return []

    def ping(self, now: float) -> Event:
        """3.1 client: the ping to send right after login (it proves we hold the session key)."""
        self.pinged_at = now
        return Event(Do.SEND, None, _PING)

    # --- the peer's messages ----------------------------------------------------------------

    def receive(self, messages: list[bytes], now: float) -> list[Event]:
        """Events for the decrypted messages of one received chunk.

        Raises ``ProtocolViolation`` when the tunnel must end.
        """
        self.heard_at = now
        events: list[Event] = []
        receivers, channels, flow_control = self._receivers, self.channels, self.flow_control
        # Enum members as locals: looking one up on its class costs ~70 ns per message.
        data_type, header_size = _TCP_PACKET, _DATA_HEADER_SIZE
        open_, closed = Side.OPEN, Side.CLOSED
        run: list[bytes] = []  # the data of consecutive messages for ``carrier``
        carrier = None
        for message in messages:
            # The fast path: well-formed data for an open channel, within its window (3.1) or
            # not crossing its bound (3.0). Anything else goes to ``_on_data``.
            if message and message[0] == data_type and len(message) >= header_size:
                _, channel_id, size = _unpack_data_header(message)
                channel = channels.get(channel_id)
                if (
                    channel is not None
                    and size == len(message) - header_size
                    and channel.theirs is open_
                    and channel.ours is not closed
                    and (
                        channel.receive_window >= size
                        if flow_control
                        else not channel.undelivered <= LEGACY_BOUND < channel.undelivered + size
                    )
                ):
                    channel.active_at = now
                    channel.undelivered += size
                    if flow_control:
                        channel.receive_window -= size
                    if channel is not carrier:
                        if run:
                            events.append(_delivery(carrier, run))
                            run = []
                        carrier = channel
                    run.append(message[header_size:])
                    continue
            if run:
                events.append(_delivery(carrier, run))
                run, carrier = [], None
            if message and message[0] == data_type:
                self._on_data(message, now, events)
                continue
            receiver = receivers.get(message[0] if message else None)
            if receiver is None:
                events += self._on_other(message)
                continue
            parse, handler = receiver
            try:
                values = parse(message)
            except WireError as error:
                events += self._on_malformed(message, error)
                continue
            events += handler(self, now, *values)
        if run:
            events.append(_delivery(carrier, run))
        return events

    def _on_other(self, message: bytes) -> list[Event]:
        """A message this end does not act on: unknown, meant for the other end, or not 3.0's."""
        if not message or message[0] not in _KNOWN_TYPES:
            kind = message[:1].hex() or "-"
            return [Event(Do.WARNING, None, f"ignored a tunnel message of unknown type {kind}")]
        try:
            schema, fields = parse_message(bytes(message), self.receives)
        except WireError as error:
            return self._on_malformed(message, error)
        if MessageType(fields.type) in SECURE_ONLY and not self.flow_control:
            return [Event(Do.INFO, None, f"ignored {schema.name}: not part of dialect 3.0")]
        return [Event(Do.INFO, None, f"ignored {schema.name}: not handled by this end")]

    def _on_malformed(self, message: bytes, error: WireError) -> list[Event]:
        """3.1 ends the tunnel; 3.0 answers what it can and ignores the rest, with a warning."""
        if self.flow_control:
            raise ProtocolViolation(str(error))
        events = [Event(Do.WARNING, None, f"malformed message (3.0 goes on): {error}")]
        if message[0] == TCP_CONNECT_REQUEST.type_code and len(message) >= 3 and not self.is_client:
            channel_id = int.from_bytes(message[1:3], "big")
            if channel_id not in self.channels:  # answer, or the Java client waits forever
                reply = self._connect_reply(channel_id, ConnectStatus.GENERAL_FAILURE, 0)
                events.append(Event(Do.SEND, None, reply))
        return events

    def _on_data(self, message: bytes, now: float, events: list[Event]) -> None:
        try:
            channel_id, data = TCP_PACKET.parse(message)
        except WireError as error:
            if self.flow_control or len(message) < 3:
                raise ProtocolViolation(str(error)) from None
            # 3.0: the stream lost bytes, so it cannot go on; the tunnel can.
            events.append(Event(Do.WARNING, None, f"malformed data, stream reset: {error}"))
            channel = self.channels.get(int.from_bytes(message[1:3], "big"))
            if channel is not None and channel.theirs is Side.OPEN:
                events += self._reset(channel)
            return
        channel = self.channels.get(channel_id)
        if channel is None or channel.theirs is not Side.OPEN:
            return  # data still in flight after this end closed: not an error
        size = len(data)
        if channel.ours is Side.CLOSED:
            self.dropped_bytes += size  # our local side is gone; the disconnect is on its way
            return
        channel.active_at = now
        channel.undelivered += size
        if self.flow_control:
            channel.receive_window -= size
            if channel.receive_window < 0:
                events.append(Event(Do.WARNING, channel, "peer overran its window, reset"))
                events += self._reset(channel)
                return
            events.append(Event(Do.DATA, channel, data))
            return
        events.append(Event(Do.DATA, channel, data))
        if channel.undelivered > LEGACY_BOUND and channel.undelivered - size <= LEGACY_BOUND:
            events.append(Event(Do.OVER_BOUND, channel, channel.undelivered))

    def _on_connect_request(
        self, now: float, channel_id: int, port: int, _address_type: Any, host: str
    ) -> list[Event]:
        if channel_id in self.channels or channel_id in self.other_channels:
            text = f"refused connect: connection id {channel_id} is still in use"
            reply = self._connect_reply(channel_id, ConnectStatus.GENERAL_FAILURE, 0)
            return [Event(Do.WARNING, None, text), Event(Do.SEND, None, reply)]
        if len(self.channels) >= self.max_channels:
            text = f"refused connect to {host}:{port}: {self.max_channels} channels open"
            reply = self._connect_reply(channel_id, ConnectStatus.CONNECTION_LIMIT, 0)
            return [Event(Do.WARNING, None, text), Event(Do.SEND, None, reply)]
        channel = self._add(Channel(channel_id, Kind.TCP, host, port, now))
        return [Event(Do.CONNECT, channel, (host, port))]

    def _on_connect_reply(
        self, now: float, channel_id: int, status: ConnectStatus, elapsed_ms: int
    ) -> list[Event]:
        channel = self.channels.get(channel_id)
        if channel is None or channel.theirs is not Side.CONNECTING:
            return []
        channel.active_at = now
        if channel.ours is Side.CLOSED:  # we gave up meanwhile; a failure is their goodbye
            move = Move.CONNECTED if status is ConnectStatus.OK else Move.CLOSE
            channel.theirs = _step(channel, channel.theirs, move)
            if channel.theirs is Side.CLOSED:
                self._release(channel)
            return []
        self._settle(channel, status)
        return [Event(Do.ANSWERED, channel, (status, elapsed_ms))]

    def _on_disconnect(self, now: float, channel_id: int, reason: DisconnectReason) -> list[Event]:
        channel = self.channels.get(channel_id)
        if channel is None or channel.theirs is Side.CLOSED:
            return []
        channel.theirs = _step(channel, channel.theirs, Move.CLOSE)
        already_done = channel.ours is Side.CLOSED
        if not already_done:
            channel.peer_reason = reason
        self._end(channel, _ENDING_OF[reason] if self.flow_control else Ending.CLOSED)
        if already_done or not self.flow_control:
            self._release(channel)
        return [] if already_done else [Event(Do.CLOSED, channel, channel.ending)]

    def _on_window_update(self, now: float, channel_id: int, increment: int) -> list[Event]:
        channel = self.channels.get(channel_id)
        if channel is None or channel.ours is Side.CLOSED:
            return []
        channel.active_at = now
        channel.send_window += increment
        if channel.send_window > MAX_WINDOW:
            warning = Event(Do.WARNING, channel, "peer granted an absurd window, reset")
            return [warning, *self._reset(channel)]
        return [Event(Do.WINDOW, channel)]

    def _on_half_close(self, now: float, channel_id: int) -> list[Event]:
        channel = self.channels.get(channel_id)
        if channel is None or channel.theirs is not Side.OPEN:
            return []
        channel.theirs = _step(channel, channel.theirs, Move.EOF)
        channel.active_at = now
        return [Event(Do.EOF, channel)]

    def _on_keepalive(self, now: float, kind: KeepAliveKind) -> list[Event]:
        if kind is KeepAliveKind.PING:
            return [Event(Do.SEND, None, _PONG)]
        self.rtt = now - self.pinged_at
        return []

    # --- bookkeeping ------------------------------------------------------------------------

    def _settle(self, channel: Channel, status: ConnectStatus) -> None:
        """The connect's outcome moves both sides: open, or closed and the id freed."""
        move = Move.CONNECTED if status is ConnectStatus.OK else Move.CLOSE
        channel.ours = _step(channel, channel.ours, move)
        channel.theirs = _step(channel, channel.theirs, move)
        if move is Move.CLOSE:
            self._end(channel, Ending.FAILED)
            self._release(channel)

    def _reset(self, channel: Channel) -> list[Event]:
        """End ``channel`` abnormally from our side: disconnect RESET, and tell the handler."""
        events = self.close(channel, Ending.RESET)
        channel.ending = Ending.RESET
        return [*events, Event(Do.CLOSED, channel, Ending.RESET)]

    def _add(self, channel: Channel) -> Channel:
        channel.send_window = channel.receive_window = self.window
        self.channels[channel.id] = channel
        return channel

    @staticmethod
    def _end(channel: Channel, ending: Ending) -> None:
        if channel.ending is None:
            channel.ending = ending

    def _release(self, channel: Channel) -> None:
        if self.channels.get(channel.id) is channel:
            del self.channels[channel.id]

    def _owns(self, channel: Channel) -> bool:
        return self.channels.get(channel.id) is channel

    def is_live(self, channel: Channel) -> bool:
        """Whether ``channel`` still owns its id and this end has not closed it."""
        return self._owns(channel) and channel.ours is not Side.CLOSED

    def _free_id(self) -> int:
        for _ in range(ID_SPACE):
            candidate = self._next_id
            self._next_id = (self._next_id + 1) % ID_SPACE
            if candidate not in self.channels and candidate not in self.other_channels:
                return candidate
        raise Exhausted("no free connection id")


def _delivery(channel: Channel, run: list[bytes]) -> Event:
    """One DATA event for the data of consecutive messages of ``channel``."""
    return Event(Do.DATA, channel, run[0] if len(run) == 1 else b"".join(run))


def _step(channel: Channel, side: Side, move: Move) -> Side:
    """The state ``side`` reaches by ``move`` in the channel's kind's table (callers checked
    that the move is allowed, so a miss is a bug of this module)."""
    return TABLES[channel.kind][side, move]


_RECEIVERS = {
    TCP_CONNECT_REQUEST: Channels._on_connect_request,
    TCP_CONNECT_REPLY: Channels._on_connect_reply,
    TCP_DISCONNECT: Channels._on_disconnect,
    TCP_WINDOW_UPDATE: Channels._on_window_update,
    TCP_HALF_CLOSE: Channels._on_half_close,
    KEEPALIVE: Channels._on_keepalive,
}
"""The control messages the core acts on, by codec; each end receives only some of them."""
