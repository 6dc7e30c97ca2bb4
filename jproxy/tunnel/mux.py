"""Every channel of one tunnel, sans-I/O: messages and local happenings in, commands out.

One ``Channels`` per tunnel end multiplexes every kind of channel (``Kind``): TCP streams, UDP
associations and ICMP echoes. It owns the one 16-bit connection-id space they share on the
wire, each channel's lifecycle, the one admission budget (``max_channels`` channels of every
kind, and within it ``max_associations`` UDP associations and ``echo_rate`` echoes a second),
the 3.1 flow-control windows, 3.0's bound on undelivered data, and every protocol timer: idle
streams (or streams no window was granted to), idle UDP associations (server), the 3.0 stall
deadline, the write stall and the client's keepalive. It never touches a socket, never reads a
clock (every call that needs the time takes ``now``; ``next_deadline`` says when to call
``handle_timer``) and never logs: what a driver must do, say or log comes back as a list of
``Event`` tuples ``(kind, channel, value)``, dispatched on ``kind`` (a ``Do``), never on
``isinstance``. The data fast paths (``data``, ``packet``) return the messages themselves.

Two errors leave it: ``ProtocolViolation`` (the peer broke the protocol; the tunnel must end)
and ``Exhausted`` (this end ran out of ids or channel slots; the caller refuses one request).

Lifecycles. A channel has one state per side (``Side``: ours, what this end did; theirs, what
the peer did), and every move of a side goes through ``_move``, which looks it up in its kind's
transition table (``TABLES``), as h11 tracks the client and the server of one HTTP connection.
The table is the only guard: a move it does not hold is not made. From the peer that is a stray
(a late message for a side that already ended, or for an id that changed hands) and is ignored;
from this end it is a call that came too late (the channel already ended) and does nothing.
A message of one kind for a channel of another kind is a stray too.

Connection ids. The Java client frees an id as soon as it sends a disconnect and may hand it
to a new stream while the server's own disconnect for the old one is still in flight. Here a
stream's id stays taken until both sides are ``CLOSED`` (3.1, where each side answers the
other's disconnect), or until the first disconnect (3.0: the Java peers never answer); an
association's until the first dissociate (the protocol has no answer to it); an echo's until
its reply. Ids are handed out in rotation, so a freed id is the last to be reused. Drivers hold
``Channel`` objects; a call for a channel that no longer owns its id does nothing.

Adding a kind of channel:
1. add a ``Kind`` member, its transition table in ``TABLES`` and its disconnect reasons in
   ``_REASONS``;
2. give its messages codecs in ``schemas/fast.py`` (a ``SchemaCodec`` when no fast path is
   needed) and add ``_on_<message>`` receivers to ``_RECEIVERS``, keyed by codec; a receiver
   finds its channel with ``_channel(id, kind)``, moves sides with ``_move`` and returns
   events; a request the server accepts goes through ``_admit`` (ids, the budget);
3. give the client a method that opens it (``open``, ``associate`` and ``echo`` do it with
   ``_new``), the server a way to answer it (``answer``, ``echo_reply``) and add the ``Do``
   members its driver acts on. ``close``, ``close_all``, the budget and the id rotation then
   work for it unchanged; an idle deadline is a line in ``_idle_limit``.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from schemas.errors import WireError
from schemas.fast import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    KEEPALIVE,
    TCP_CONNECT_REPLY,
    TCP_CONNECT_REQUEST,
    TCP_DISCONNECT,
    TCP_HALF_CLOSE,
    TCP_PACKET,
    TCP_WINDOW_UPDATE,
    UDP_ASSOCIATE_REPLY,
    UDP_ASSOCIATE_REQUEST,
    UDP_DISSOCIATE,
    UDP_PACKET,
    connection_id_of,
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
DEFAULT_MAX_ASSOCIATIONS = 256
DEFAULT_ECHO_RATE = 10.0
DEFAULT_ECHO_BURST = 20
DEFAULT_IDLE_TIMEOUT = 300.0
MAX_ELAPSED_MS = 0xFFFF
MAX_WINDOW = 1 << 31
LEGACY_BOUND = 1 << 20
"""3.0 has no windows: a stream holding more undelivered bytes than this is over its bound."""
LEGACY_STALL = 3.0
"""3.0: how long streams over their bound may stop the tunnel's reading before they are cut."""
WRITE_STALL = 30.0
"""A tunnel whose socket takes no bytes from us for this long is dead."""
KEEPALIVE_INTERVAL = 5.0
"""3.1: the client pings a tunnel it heard nothing on for this long."""
DEAD_AFTER = 3
"""A 3.1 client whose server stays silent for this many keepalive intervals drops the tunnel."""
IDLE_CHECK = 1.0
"""Idle deadlines are checked at most this often: they only move later as channels work, so
an exact timer per channel would mostly fire for nothing."""

_KNOWN_TYPES = frozenset(int(code) for code in MessageType)
_TCP_PACKET = TCP_PACKET.type_code
_UDP_PACKET = UDP_PACKET.type_code
_DATA_HEADER_SIZE = TCP_PACKET.header_size
_unpack_data_header = TCP_PACKET.header.unpack_from
PING = KEEPALIVE.build(KeepAliveKind.PING)
"""The client's keepalive; its first is the 3.1 login's proof (``handlers/tunnel/handshake``),
and a new core counts it as sent at its ``now``."""
_PONG = KEEPALIVE.build(KeepAliveKind.PONG)


class Kind(enum.Enum):
    """What a channel carries; each kind has its own transition table."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


class Side(enum.IntEnum):
    """The state of one side (ours or theirs) of a channel."""

    CONNECTING = 0
    OPEN = 1
    EOF = 2
    """will send no more data (TCP half-close)"""
    CLOSED = 3
    """sent (ours) or received (theirs) the disconnect, or the request failed"""


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
UDP_TABLE: dict[tuple[Side, Move], Side] = {
    (Side.CONNECTING, Move.CONNECTED): Side.OPEN,
    (Side.CONNECTING, Move.CLOSE): Side.CLOSED,
    (Side.OPEN, Move.CLOSE): Side.CLOSED,
}
"""One side of a UDP association: associated, then dissociated (no half-close)."""
ICMP_TABLE: dict[tuple[Side, Move], Side] = {(Side.CONNECTING, Move.CLOSE): Side.CLOSED}
"""One side of an ICMP echo: a request, then its reply (or the client stops waiting)."""

TABLES: dict[Kind, dict[tuple[Side, Move], Side]] = {
    Kind.TCP: TCP_TABLE,
    Kind.UDP: UDP_TABLE,
    Kind.ICMP: ICMP_TABLE,
}


class Ending(enum.Enum):
    """How a channel ended; the access log writes its value."""

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
    REFUSED = "refused"
    """the egress policy did not allow the target"""


_ENDING_OF = {
    DisconnectReason.GENERAL: Ending.CLOSED,
    DisconnectReason.CLIENT_CLOSED: Ending.CLOSED,
    DisconnectReason.BROKEN_PIPE: Ending.RESET,
    DisconnectReason.RESET: Ending.RESET,
}
"""3.1: what the peer's disconnect (or dissociate) reason means. In 3.0 a reason means
nothing: the Java peers send RESET for every close, a clean one included, so a 3.0 disconnect
always ends the stream in order (CLOSED: what came before it is delivered, then FIN)."""
_REASONS = {
    Kind.TCP: {
        Ending.CLOSED: DisconnectReason.CLIENT_CLOSED,
        Ending.RESET: DisconnectReason.RESET,
        Ending.CUT: DisconnectReason.RESET,
        Ending.IDLE: DisconnectReason.RESET,
        Ending.FAILED: DisconnectReason.GENERAL,
        Ending.REFUSED: DisconnectReason.GENERAL,
    },
    Kind.UDP: {
        Ending.CLOSED: DisconnectReason.CLIENT_CLOSED,
        Ending.RESET: DisconnectReason.RESET,
        Ending.CUT: DisconnectReason.RESET,
        Ending.IDLE: DisconnectReason.GENERAL,
        Ending.FAILED: DisconnectReason.GENERAL,
        Ending.REFUSED: DisconnectReason.GENERAL,
    },
}
"""The reason this end's disconnect (TCP) or dissociate (UDP) gives for each ending; an echo
ends without a message of this end's."""
_END_MESSAGES = {Kind.TCP: TCP_DISCONNECT, Kind.UDP: UDP_DISSOCIATE}


class Do(enum.IntEnum):
    """The kinds of ``Event``: what the driver must do."""

    SEND = 0
    """send ``value`` (a message) to the peer; it may go ahead of queued data"""
    SEND_AFTER_DATA = 1
    """send ``value`` (a half-close, disconnect or dissociate) behind the queued data"""
    DATA = 2
    """deliver ``value`` (bytes) to the stream's local socket: the data of consecutive
    messages of one stream in one ``receive``, joined"""
    WINDOW = 3
    """the peer granted credit: a sender waiting on the window may go on"""
    EOF = 4
    """the peer sends no more: shut down the local socket's write side once delivered"""
    CLOSED = 5
    """the channel ended (``value``: an ``Ending``); RESET and CUT reset a stream's socket"""
    CONNECT = 6
    """server: the peer asks for a stream (``value``: ``(host, port)``); ``answer`` it"""
    ANSWERED = 7
    """client: the peer answered a stream's or association's request (``value``:
    ``(ConnectStatus, elapsed_ms)`` for a stream, ``(ConnectStatus, bound_port)`` for an
    association); a failure has ended the channel already"""
    WARNING = 8
    """log ``value`` at WARNING"""
    INFO = 9
    """log ``value`` at INFO"""
    DEAD = 10
    """the peer is gone (silent too long, or took no bytes too long): end the tunnel"""
    ASSOCIATE = 11
    """server: the peer asks for a UDP association with the channel's host and port, from
    local port ``value`` (0: any); ``answer`` it"""
    DATAGRAM = 12
    """deliver ``value`` (one datagram) to the association's socket"""
    ECHO = 13
    """server: ping the channel's host (``value``: ``(timeout_ms, data)``); ``echo_reply``"""
    ECHOED = 14
    """client: the echo's answer (``value``: ``(ConnectStatus, elapsed_ms, data)``)"""
    PAUSE_READING = 15
    """3.0: the stream went over its bound (``value``: its undelivered bytes): stop reading
    the tunnel until RESUME_READING (said once while any stream is over)"""
    RESUME_READING = 16
    """3.0: no stream is over its bound any more (delivered, ended or cut): read again"""


class Event(NamedTuple):
    kind: Do
    channel: Channel | None
    value: Any = None


class ProtocolViolation(Exception):
    """The peer broke the protocol in a way that ends the whole tunnel."""


class Exhausted(Exception):
    """This end ran out of something (ids, channel slots): one request is refused."""


class Channel:
    """One channel of the tunnel. ``handler`` is the driver's; the core never touches it."""

    __slots__ = (
        "id",
        "kind",
        "table",
        "ours",
        "theirs",
        "host",
        "port",
        "send_window",
        "receive_window",
        "unacknowledged",
        "undelivered",
        "blocked_since",
        "active_at",
        "ending",
        "peer_reason",
        "handler",
    )

    def __init__(self, channel_id: int, kind: Kind, host: str, port: int, now: float) -> None:
        self.id = channel_id
        self.kind = kind
        self.table = TABLES[kind]
        """Its kind's transition table (looked up once: a stream makes about seven moves)."""
        self.ours = self.theirs = Side.CONNECTING
        self.host = host
        self.port = port
        self.send_window = self.receive_window = 0
        self.unacknowledged = 0
        self.undelivered = 0
        """Stream data received and not yet taken by the local socket."""
        self.blocked_since: float | None = None
        """Since when undelivered data waits (None: nothing waits)."""
        self.active_at = now
        self.ending: Ending | None = None
        self.peer_reason: DisconnectReason | None = None
        """The reason the peer's disconnect carried, when that disconnect ended the stream
        (not when it answered ours): the access log records it."""
        self.handler: Any = None

    def __repr__(self) -> str:
        return f"<{self.kind.value} {self.id} {self.ours.name}/{self.theirs.name}>"


class RateLimit:
    """A token bucket: ``rate`` per second, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp: float | None = None

    def allow(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


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
        max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
        echo_rate: float = DEFAULT_ECHO_RATE,
        echo_burst: int = DEFAULT_ECHO_BURST,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        udp_idle_timeout: float | None = None,
        keepalive: float = KEEPALIVE_INTERVAL,
    ) -> None:
        self.sends = sends
        self.receives = (
            Direction.SERVER_TO_CLIENT
            if sends is Direction.CLIENT_TO_SERVER
            else Direction.CLIENT_TO_SERVER
        )
        self.dialect = dialect
        self.secure = dialect is Dialect.SECURE_3_1
        """Dialect 3.1: windows, half-closes, ICMP, keepalive, and a broken message ends the
        tunnel (3.0 goes on where it can)."""
        self.is_client = sends is Direction.CLIENT_TO_SERVER
        self.window = window
        self.update_threshold = max(1, window // WINDOW_UPDATE_SHARE)
        self.max_channels = min(max_channels, ID_SPACE)
        self.max_associations = max_associations
        self.echo_limit = RateLimit(echo_rate, echo_burst)
        self.max_data = max_message - TCP_PACKET.header_size
        self.idle_timeout = idle_timeout
        self.udp_idle_timeout = udp_idle_timeout
        """Server: an association with no datagram either way for this long is dissociated
        (None: never; the client's SOCKS side ends its own)."""
        self.keepalive = keepalive
        self.channels: dict[int, Channel] = {}
        self.associations = 0
        self.in_flight = 0
        """3.1: stream bytes sent and not yet granted back by the peer's window updates, over
        every open channel (kept as they change: the client's pool weighs tunnels by it at
        every new stream)."""
        self.heard_at = now
        self.pinged_at = now
        self.rtt: float | None = None
        """3.1 client: the round trip of the last ping answered (the console shows it)."""
        self.ponged_at: float | None = None
        """When that answer came: the client's pool tells an unanswered ping by it."""
        self.dropped_bytes = 0
        """Data that arrived for a channel whose local side is gone (counted, not kept)."""
        self.stalled: dict[Channel, float] = {}
        """3.0: the streams over their bound that stop the reading, each with its deadline."""
        self.write_blocked_since: float | None = None
        """Since when the tunnel socket has refused our bytes (None: it takes them)."""
        self._next_id = 0
        self._idle_checked = now
        self._receivers = {
            codec.type_code: (codec.parse, handler)
            for codec, handler in _RECEIVERS.items()
            if MESSAGES[(self.receives, MessageType(codec.type_code))] is codec.schema
            and (self.secure or codec.type_code not in SECURE_ONLY)
        }

    # --- opening and answering --------------------------------------------------------------

    def open(self, host: str, port: int, now: float) -> Event:
        """Client: a new stream to ``host:port`` and the request that asks for it (SEND).

        ``Exhausted`` when the tunnel has no free id or slot. An IP literal travels as an IPv4
        or IPv6 address, anything else as a name the server resolves.
        """
        channel = self._new(Kind.TCP, host, port, now)
        address_type = address_for(host)["type"]
        return Event(
            Do.SEND, channel, TCP_CONNECT_REQUEST.build(channel.id, port, address_type, host)
        )

    def associate(self, host: str, port: int, now: float, local_port: int = 0) -> Event:
        """Client: a UDP association with ``host:port`` (a name goes unresolved), the server's
        socket bound to ``local_port`` (0: any), and its request (SEND). ``Exhausted`` too."""
        channel = self._new(Kind.UDP, host, port, now)
        address_type = address_for(host)["type"]
        request = UDP_ASSOCIATE_REQUEST.build(channel.id, local_port, port, address_type, host)
        return Event(Do.SEND, channel, request)

    def echo(self, host: str, timeout_ms: int, data: bytes, now: float) -> Event:
        """Client (3.1): one ICMP echo to ``host`` from the server's side, and its request."""
        if not self.secure:
            raise ValueError("ICMP echo needs dialect 3.1")
        channel = self._new(Kind.ICMP, host, 0, now)
        timeout_ms = min(max(timeout_ms, 0), 0xFFFF)
        address_type = address_for(host)["type"]
        request = ICMP_ECHO_REQUEST.build(channel.id, timeout_ms, address_type, host, data)
        return Event(Do.SEND, channel, request)

    def answer(
        self, channel: Channel, status: ConnectStatus, value: int, now: float
    ) -> list[Event]:
        """Server: the reply to a CONNECT (``value``: elapsed ms) or an ASSOCIATE (``value``:
        the bound port); a failure frees the channel on both ends.

        If the peer gave up meanwhile, a stream's answer is the disconnect that completes its
        goodbye; an association's is nothing (its dissociate freed the id).
        """
        if not self._owns(channel) or channel.ours is not Side.CONNECTING:
            return []
        channel.active_at = now
        if channel.theirs is Side.CLOSED:
            return self.close(channel, Ending.CLOSED)
        self._settle(channel, status)
        if channel.kind is Kind.UDP:
            reply = UDP_ASSOCIATE_REPLY.build(channel.id, status, value)
        else:
            reply = self._connect_reply(channel.id, status, value)
        return [Event(Do.SEND, channel, reply)]

    def echo_reply(
        self, channel: Channel, status: ConnectStatus, elapsed_ms: int, data: bytes
    ) -> list[Event]:
        """Server: the reply to an ECHO; the id is free again."""
        if not self._owns(channel) or not self._end_both(channel):
            return []
        return [Event(Do.SEND, channel, self._echo_reply(channel.id, status, elapsed_ms, data))]

    @staticmethod
    def _connect_reply(channel_id: int, status: ConnectStatus, elapsed_ms: int) -> bytes:
        elapsed_ms = min(max(elapsed_ms, 0), MAX_ELAPSED_MS)
        return TCP_CONNECT_REPLY.build(channel_id, status, elapsed_ms)

    @staticmethod
    def _echo_reply(channel_id: int, status: ConnectStatus, elapsed_ms: int, data: bytes) -> bytes:
        elapsed_ms = min(max(elapsed_ms, 0), MAX_ELAPSED_MS)
        return ICMP_ECHO_REPLY.build(channel_id, status, elapsed_ms, data)

    # --- this end's data and ends -----------------------------------------------------------

    def allowance(self, channel: Channel) -> int:
        """Data bytes ``channel`` may send now (0: wait for WINDOW, or nothing more may go)."""
        if channel.ours is not Side.OPEN or channel.theirs is Side.CLOSED:
            return 0
        return channel.send_window if self.secure else 1 << 30

    def data(self, channel: Channel, payload: bytes, now: float) -> list[bytes]:
        """The messages carrying ``payload`` (at most ``allowance``), each fitting one frame.

        The hot path: it returns the messages themselves, not ``Event`` tuples.
        """
        if len(payload) > self.allowance(channel):
            raise ValueError("payload exceeds the channel's send allowance")
        channel.active_at = now
        if self.secure:
            channel.send_window -= len(payload)
            self.in_flight += len(payload)
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

    def packet(self, channel: Channel, data: bytes, now: float) -> bytes | None:
        """The message carrying one datagram; None when the association is not open."""
        if not self._owns(channel) or channel.ours is not Side.OPEN:
            return None
        channel.active_at = now
        return UDP_PACKET.build(channel.id, data)

    def delivered(self, channel: Channel, count: int, now: float) -> list[Event]:
        """The local socket took ``count`` received bytes; in 3.1 maybe grant more credit, in
        3.0 maybe read again."""
        channel.active_at = now
        channel.undelivered -= count
        events: list[Event] = []
        if not channel.undelivered:
            channel.blocked_since = None
        if self.stalled and channel in self.stalled and channel.undelivered <= LEGACY_BOUND:
            events += self._unstall(channel)
        if not self.secure or channel.ours is Side.CLOSED or channel.theirs is Side.CLOSED:
            return events
        channel.unacknowledged += count
        if channel.unacknowledged < self.update_threshold:
            return events
        increment, channel.unacknowledged = channel.unacknowledged, 0
        channel.receive_window += increment
        events.append(Event(Do.SEND, channel, TCP_WINDOW_UPDATE.build(channel.id, increment)))
        return events

    def waiting(self, channel: Channel, now: float) -> None:
        """The local socket did not take all the data delivered to it: it waits from ``now``."""
        if channel.blocked_since is None:
            channel.blocked_since = now

    def finish(self, channel: Channel) -> list[Event]:
        """The local socket sent EOF: a 3.1 half-close; in 3.0 (no half-close) the disconnect."""
        if not self._owns(channel) or channel.theirs is Side.CLOSED:
            return []  # gone, or the peer is: the disconnect, not a half-close, answers it
        if not self.secure:
            return self.close(channel, Ending.CLOSED) if channel.ours is Side.OPEN else []
        if not self._move(channel, "ours", Move.EOF):
            return []
        return [Event(Do.SEND_AFTER_DATA, channel, TCP_HALF_CLOSE.build(channel.id))]

    def close(self, channel: Channel, ending: Ending) -> list[Event]:
        """End ``channel`` from this side (its disconnect or dissociate; an echo just stops
        waiting); nothing if already done or replaced.

        ``ending`` is kept for the access log unless the peer's end came first.
        """
        if not self._owns(channel) or not self._move(channel, "ours", Move.CLOSE):
            return []
        self._end(channel, ending)
        events = self._unstall(channel) if channel in self.stalled else []
        if channel.kind is Kind.ICMP:
            self._release(channel)
            return events
        end = _END_MESSAGES[channel.kind].build(channel.id, _REASONS[channel.kind][ending])
        if channel.kind is Kind.UDP or channel.theirs is Side.CLOSED or not self.secure:
            self._release(channel)  # no answer comes (an association, 3.0), or it came
        return [*events, Event(Do.SEND_AFTER_DATA, channel, end)]

    def close_all(self) -> list[Event]:
        """The tunnel is gone: every channel is cut, without messages."""
        events = []
        for channel in list(self.channels.values()):
            self._end(channel, Ending.CUT)
            channel.ours = channel.theirs = Side.CLOSED
            self._release(channel)
            events.append(Event(Do.CLOSED, channel, channel.ending))
        self.stalled.clear()
        return events

    # --- the tunnel socket ------------------------------------------------------------------

    def write_blocked(self, now: float) -> None:
        """The tunnel socket refused bytes: the write-stall deadline runs from ``now``."""
        if self.write_blocked_since is None:
            self.write_blocked_since = now

    def wrote(self, now: float, blocked: bool) -> None:
        """The tunnel socket took bytes at ``now``; ``blocked``: some still wait."""
        self.write_blocked_since = now if blocked else None

    # --- time -------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When ``handle_timer`` has something to do, at the latest (it may do nothing then:
        activity moves idle deadlines later)."""
        deadlines = [self._idle_checked + IDLE_CHECK]
        if self.stalled:
            deadlines.append(min(self.stalled.values()))
        if self.write_blocked_since is not None:
            deadlines.append(self.write_blocked_since + WRITE_STALL)
        if self.secure and self.is_client:
            since = self.pinged_at if self._answered() else max(self.heard_at, self.pinged_at)
            deadlines.append(since + self.keepalive)
            deadlines.append(self.heard_at + self.keepalive * DEAD_AFTER)
        return min(deadlines)

    def handle_timer(self, now: float) -> list[Event]:
        """Every deadline due at ``now``: 3.0 streams stalled too long are cut, idle channels
        end, a quiet tunnel is pinged, a silent peer or a socket that took nothing is dead."""
        events: list[Event] = []
        for channel, deadline in list(self.stalled.items()):
            if deadline <= now:
                text = f"its reader took less than the tunnel brought for {LEGACY_STALL:g}s; cut"
                events.append(Event(Do.WARNING, channel, text))
                events += self._cut(channel)
        if now >= self._idle_checked + IDLE_CHECK:
            self._idle_checked = now
            events += self._idle(now)
        if self.write_blocked_since is not None and now - self.write_blocked_since >= WRITE_STALL:
            events.append(Event(Do.DEAD, None, f"peer took no bytes for {WRITE_STALL:g}s"))
        if self.secure and self.is_client:
            events += self._keepalive(now)
        return events

    def _idle(self, now: float) -> list[Event]:
        """Channels on which nothing moved (data either way, a window update, a delivery) for
        their kind's idle limit end as IDLE; a stream that waited for window credit says so."""
        events: list[Event] = []
        for channel in list(self.channels.values()):
            limit = self._idle_limit(channel)
            if limit is None or channel.active_at + limit > now or channel.ours is Side.CLOSED:
                continue  # a closed side waits for the peer's goodbye: the id stays taken
            stalled = (
                channel.kind is Kind.TCP
                and channel.send_window == 0
                and self.secure
                and channel.ours is Side.OPEN
            )
            why = "no window granted" if stalled else "idle"
            events.append(Event(Do.INFO, channel, f"{why} for {limit:g}s, closing"))
            events += self.close(channel, Ending.IDLE)
            events.append(Event(Do.CLOSED, channel, channel.ending))
        return events

    def _idle_limit(self, channel: Channel) -> float | None:
        if channel.kind is Kind.TCP:
            return self.idle_timeout
        if channel.kind is Kind.UDP and channel.ours is Side.OPEN:
            return self.udp_idle_timeout
        return None  # an echo's wait is the client's; a request waits for its answer

    def _keepalive(self, now: float) -> list[Event]:
        """3.1 client: ping once per interval, busy or not, while the last ping was answered
        (each round trip is a health sample for the tunnel pool); an unanswered ping is
        repeated only while the tunnel is quiet; a server silent for several intervals is dead.

        The server never pings and never judges silence (it cannot know the client's
        interval): TCP keepalive and the write stall find a vanished client.
        """
        silent = now - self.heard_at
        if silent >= self.keepalive * DEAD_AFTER:
            return [Event(Do.DEAD, None, f"peer silent for {silent:.0f}s")]
        due = now - self.pinged_at >= self.keepalive
        if due and (silent >= self.keepalive or self._answered()):
            self.pinged_at = now
            return [Event(Do.SEND, None, PING)]
        return []

    def _answered(self) -> bool:
        return self.ponged_at is not None and self.ponged_at >= self.pinged_at

    # --- the peer's messages ----------------------------------------------------------------

    def receive(self, messages: list[bytes], now: float) -> list[Event]:
        """Events for the decrypted messages of one received chunk.

        Raises ``ProtocolViolation`` when the tunnel must end.
        """
        self.heard_at = now
        events: list[Event] = []
        receivers, channels, secure = self._receivers, self.channels, self.secure
        # Enum members as locals: looking one up on its class costs ~70 ns per message.
        data_type, header_size = _TCP_PACKET, _DATA_HEADER_SIZE
        open_, closed, tcp = Side.OPEN, Side.CLOSED, Kind.TCP
        run: list[bytes] = []  # the data of consecutive messages for ``carrier``
        carrier = None
        for message in messages:
            # The fast path: well-formed data for an open stream, within its window (3.1) or
            # not crossing its bound (3.0). Anything else goes to ``_on_data``.
            if message and message[0] == data_type and len(message) >= header_size:
                _, channel_id, size = _unpack_data_header(message)
                channel = channels.get(channel_id)
                if (
                    channel is not None
                    and size == len(message) - header_size
                    and channel.theirs is open_
                    and channel.ours is not closed
                    and channel.kind is tcp
                    and (
                        channel.receive_window >= size
                        if secure
                        else not channel.undelivered <= LEGACY_BOUND < channel.undelivered + size
                    )
                ):
                    channel.active_at = now
                    channel.undelivered += size
                    if secure:
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
        if MessageType(fields.type) in SECURE_ONLY and not self.secure:
            return [Event(Do.INFO, None, f"ignored {schema.name}: not part of dialect 3.0")]
        return [Event(Do.INFO, None, f"ignored {schema.name}: not handled by this end")]

    def _on_malformed(self, message: bytes, error: WireError) -> list[Event]:
        """3.1 ends the tunnel; 3.0 answers what it can and ignores the rest, with a warning."""
        if self.secure:
            raise ProtocolViolation(str(error))
        events = [Event(Do.WARNING, None, f"malformed message (3.0 goes on): {error}")]
        if message[0] == TCP_CONNECT_REQUEST.type_code and not self.is_client:
            channel_id = connection_id_of(message)
            if channel_id is not None and channel_id not in self.channels:
                # answer, or the Java client waits forever
                reply = self._connect_reply(channel_id, ConnectStatus.GENERAL_FAILURE, 0)
                events.append(Event(Do.SEND, None, reply))
        return events

    def _on_data(self, message: bytes, now: float, events: list[Event]) -> None:
        try:
            channel_id, data = TCP_PACKET.parse(message)
        except WireError as error:
            channel_id = connection_id_of(message)
            if self.secure or channel_id is None:
                raise ProtocolViolation(str(error)) from None
            # 3.0: the stream lost bytes, so it cannot go on; the tunnel can.
            events.append(Event(Do.WARNING, None, f"malformed data, stream reset: {error}"))
            channel = self._channel(channel_id, Kind.TCP)
            if channel is not None and channel.theirs is Side.OPEN:
                events += self._reset(channel)
            return
        channel = self._channel(channel_id, Kind.TCP)
        if channel is None or channel.theirs is not Side.OPEN:
            return  # data still in flight after this end closed: a stray, not an error
        size = len(data)
        if channel.ours is Side.CLOSED:
            self.dropped_bytes += size  # our local side is gone; the disconnect is on its way
            return
        channel.active_at = now
        channel.undelivered += size
        if self.secure:
            channel.receive_window -= size
            if channel.receive_window < 0:
                events.append(Event(Do.WARNING, channel, "peer overran its window, reset"))
                events += self._reset(channel)
                return
            events.append(Event(Do.DATA, channel, data))
            return
        events.append(Event(Do.DATA, channel, data))
        if channel.undelivered > LEGACY_BOUND and channel not in self.stalled:
            events += self._stall(channel, now)

    def _on_connect_request(
        self, now: float, channel_id: int, port: int, _address_type: Any, host: str
    ) -> list[Event]:
        refusal = self._admit(channel_id, Kind.TCP)
        if refusal is not None:
            status, why = refusal
            reply = self._connect_reply(channel_id, status, 0)
            return _refused(Do.WARNING, f"refused connect to {host}:{port}: {why}", reply)
        channel = self._add(Channel(channel_id, Kind.TCP, host, port, now))
        return [Event(Do.CONNECT, channel, (host, port))]

    def _on_associate_request(
        self, now: float, channel_id: int, local_port: int, port: int, _address_type: Any, host: str
    ) -> list[Event]:
        refusal = self._admit(channel_id, Kind.UDP)
        if refusal is not None:
            status, why = refusal
            reply = UDP_ASSOCIATE_REPLY.build(channel_id, status, 0)
            text = f"refused a UDP association with {host}:{port}: {why}"
            return _refused(Do.INFO, text, reply)
        channel = self._add(Channel(channel_id, Kind.UDP, host, port, now))
        return [Event(Do.ASSOCIATE, channel, local_port)]

    def _on_echo_request(
        self, now: float, channel_id: int, timeout_ms: int, _address_type: Any, host: str, data
    ) -> list[Event]:
        refusal = self._admit(channel_id, Kind.ICMP)
        if refusal is None and not self.echo_limit.allow(now):
            why = f"over {self.echo_limit.rate:g} echoes/s"
            refusal = ConnectStatus.CONNECTION_LIMIT, why
        if refusal is not None:
            status, why = refusal
            reply = self._echo_reply(channel_id, status, 0, b"")
            return _refused(Do.INFO, f"refused an echo to {host}: {why}", reply)
        channel = self._add(Channel(channel_id, Kind.ICMP, host, 0, now))
        return [Event(Do.ECHO, channel, (timeout_ms, bytes(data)))]

    def _on_connect_reply(
        self, now: float, channel_id: int, status: ConnectStatus, elapsed_ms: int
    ) -> list[Event]:
        return self._on_reply(self._channel(channel_id, Kind.TCP), now, status, elapsed_ms)

    def _on_associate_reply(
        self, now: float, channel_id: int, status: ConnectStatus, bound_port: int
    ) -> list[Event]:
        return self._on_reply(self._channel(channel_id, Kind.UDP), now, status, bound_port)

    def _on_reply(
        self, channel: Channel | None, now: float, status: ConnectStatus, value: int
    ) -> list[Event]:
        """The answer to a stream's or an association's request moves both sides."""
        if channel is None or channel.theirs is not Side.CONNECTING:
            return []  # a stray: no request of ours waits for it
        channel.active_at = now
        if channel.ours is Side.CLOSED:  # we gave up meanwhile; a failure is their goodbye
            if status is not ConnectStatus.OK and self._move(channel, "theirs", Move.CLOSE):
                self._release(channel)
            else:
                self._move(channel, "theirs", Move.CONNECTED)
            return []
        self._settle(channel, status)
        return [Event(Do.ANSWERED, channel, (status, value))]

    def _on_echo_reply(
        self, now: float, channel_id: int, status: ConnectStatus, elapsed_ms: int, data
    ) -> list[Event]:
        channel = self._channel(channel_id, Kind.ICMP)
        if channel is None or not self._end_both(channel):
            return []
        return [Event(Do.ECHOED, channel, (status, elapsed_ms, bytes(data)))]

    def _on_disconnect(self, now: float, channel_id: int, reason: DisconnectReason) -> list[Event]:
        return self._on_end(self._channel(channel_id, Kind.TCP), reason)

    def _on_dissociate(self, now: float, channel_id: int, reason: DisconnectReason) -> list[Event]:
        return self._on_end(self._channel(channel_id, Kind.UDP), reason)

    def _on_end(self, channel: Channel | None, reason: DisconnectReason) -> list[Event]:
        """The peer's disconnect or dissociate."""
        if channel is None or not self._move(channel, "theirs", Move.CLOSE):
            return []
        already_done = channel.ours is Side.CLOSED
        if not already_done:
            channel.peer_reason = reason
        self._end(channel, _ENDING_OF[reason] if self.secure else Ending.CLOSED)
        events = self._unstall(channel) if channel in self.stalled else []
        if channel.kind is Kind.UDP:
            self._move(channel, "ours", Move.CLOSE)  # nothing answers a dissociate
            self._release(channel)
        elif already_done or not self.secure:
            self._release(channel)
        if not already_done:
            events.append(Event(Do.CLOSED, channel, channel.ending))
        return events

    def _on_window_update(self, now: float, channel_id: int, increment: int) -> list[Event]:
        channel = self._channel(channel_id, Kind.TCP)
        if channel is None or channel.ours is Side.CLOSED:
            return []
        channel.active_at = now
        channel.send_window += increment
        self.in_flight -= increment
        if channel.send_window > MAX_WINDOW:
            warning = Event(Do.WARNING, channel, "peer granted an absurd window, reset")
            return [warning, *self._reset(channel)]
        return [Event(Do.WINDOW, channel)]

    def _on_half_close(self, now: float, channel_id: int) -> list[Event]:
        channel = self._channel(channel_id, Kind.TCP)
        if channel is None or not self._move(channel, "theirs", Move.EOF):
            return []
        channel.active_at = now
        return [Event(Do.EOF, channel)]

    def _on_udp_packet(self, now: float, channel_id: int, data) -> list[Event]:
        channel = self._channel(channel_id, Kind.UDP)
        if channel is None or channel.theirs is not Side.OPEN or channel.ours is not Side.OPEN:
            return []  # in flight after this end dissociated: a stray, not an error
        channel.active_at = now
        return [Event(Do.DATAGRAM, channel, bytes(data))]

    def _on_keepalive(self, now: float, kind: KeepAliveKind) -> list[Event]:
        if kind is KeepAliveKind.PING:
            return [Event(Do.SEND, None, _PONG)]
        self.rtt = now - self.pinged_at
        self.ponged_at = now
        return []

    # --- 3.0's stall ------------------------------------------------------------------------

    def _stall(self, channel: Channel, now: float) -> list[Event]:
        """3.0, no windows: a stream over its bound stops the reading until its socket takes
        enough, for at most ``LEGACY_STALL`` seconds counted from now or from when its socket
        began to refuse data, whichever is earlier; then it is cut. So several stalled readers
        cost the other streams about one stall, not one each."""
        first = not self.stalled
        since = now if channel.blocked_since is None else min(now, channel.blocked_since)
        self.stalled[channel] = since + LEGACY_STALL
        return [Event(Do.PAUSE_READING, channel, channel.undelivered)] if first else []

    def _unstall(self, channel: Channel) -> list[Event]:
        del self.stalled[channel]
        return [] if self.stalled else [Event(Do.RESUME_READING, None)]

    def _cut(self, channel: Channel) -> list[Event]:
        """End a stream this end gave up on (its reader stalled the tunnel too long)."""
        events = self.close(channel, Ending.CUT)
        channel.ending = Ending.CUT
        return [*events, Event(Do.CLOSED, channel, Ending.CUT)]

    # --- bookkeeping ------------------------------------------------------------------------

    def _move(self, channel: Channel, side: str, move: Move) -> bool:
        """Make ``move`` on ``side`` ("ours" or "theirs") if its kind's table holds it."""
        state = channel.table.get((getattr(channel, side), move))
        if state is None:
            return False
        setattr(channel, side, state)
        return True

    def _end_both(self, channel: Channel) -> bool:
        """An echo's reply (or the end of its wait): both sides close and the id is free."""
        if not (
            self._move(channel, "ours", Move.CLOSE) and self._move(channel, "theirs", Move.CLOSE)
        ):
            return False
        self._release(channel)
        return True

    def _settle(self, channel: Channel, status: ConnectStatus) -> None:
        """The request's outcome moves both sides: open, or closed and the id freed."""
        move = Move.CONNECTED if status is ConnectStatus.OK else Move.CLOSE
        self._move(channel, "ours", move)
        self._move(channel, "theirs", move)
        if move is Move.CLOSE:
            self._end(channel, Ending.FAILED)
            self._release(channel)

    def _reset(self, channel: Channel) -> list[Event]:
        """End ``channel`` abnormally from our side: disconnect RESET, and tell the driver."""
        events = self.close(channel, Ending.RESET)
        channel.ending = Ending.RESET
        return [*events, Event(Do.CLOSED, channel, Ending.RESET)]

    def _admit(self, channel_id: int, kind: Kind) -> tuple[ConnectStatus, str] | None:
        """Server: why a request for ``channel_id`` is refused (status and reason), or None."""
        if channel_id in self.channels:
            return ConnectStatus.GENERAL_FAILURE, f"connection id {channel_id} is still in use"
        if len(self.channels) >= self.max_channels:
            return ConnectStatus.CONNECTION_LIMIT, f"{self.max_channels} channels open"
        if kind is Kind.UDP and self.associations >= self.max_associations:
            return ConnectStatus.CONNECTION_LIMIT, f"{self.max_associations} associations open"
        return None

    def _new(self, kind: Kind, host: str, port: int, now: float) -> Channel:
        """Client: a channel of ``kind`` on a free id, within the budget."""
        if len(self.channels) >= self.max_channels:
            raise Exhausted(f"{self.max_channels} channels open on this tunnel")
        return self._add(Channel(self._free_id(), kind, host, port, now))

    def _add(self, channel: Channel) -> Channel:
        channel.send_window = channel.receive_window = self.window
        self.channels[channel.id] = channel
        if channel.kind is Kind.UDP:
            self.associations += 1
        return channel

    @staticmethod
    def _end(channel: Channel, ending: Ending) -> None:
        if channel.ending is None:
            channel.ending = ending

    def _release(self, channel: Channel) -> None:
        if self.channels.get(channel.id) is channel:
            del self.channels[channel.id]
            self.in_flight -= self.window - channel.send_window
            if channel.kind is Kind.UDP:
                self.associations -= 1
            self.stalled.pop(channel, None)

    def _channel(self, channel_id: int, kind: Kind) -> Channel | None:
        """The channel holding ``channel_id`` if it is of ``kind`` (else a stray: None)."""
        channel = self.channels.get(channel_id)
        return channel if channel is not None and channel.kind is kind else None

    def _owns(self, channel: Channel) -> bool:
        return self.channels.get(channel.id) is channel

    def is_live(self, channel: Channel) -> bool:
        """Whether ``channel`` still owns its id and this end has not closed it."""
        return self._owns(channel) and channel.ours is not Side.CLOSED

    def _free_id(self) -> int:
        for _ in range(ID_SPACE):
            candidate = self._next_id
            self._next_id = (self._next_id + 1) % ID_SPACE
            if candidate not in self.channels:
                return candidate
        raise Exhausted("no free connection id")


def _refused(level: Do, text: str, reply: bytes) -> list[Event]:
    """A request refused by the core itself: the line to log and the answer that says why."""
    return [Event(level, None, text), Event(Do.SEND, None, reply)]


def _delivery(channel: Channel, run: list[bytes]) -> Event:
    """One DATA event for the data of consecutive messages of ``channel``."""
    return Event(Do.DATA, channel, run[0] if len(run) == 1 else b"".join(run))


_RECEIVERS = {
    TCP_CONNECT_REQUEST: Channels._on_connect_request,
    TCP_CONNECT_REPLY: Channels._on_connect_reply,
    TCP_DISCONNECT: Channels._on_disconnect,
    TCP_WINDOW_UPDATE: Channels._on_window_update,
    TCP_HALF_CLOSE: Channels._on_half_close,
    KEEPALIVE: Channels._on_keepalive,
    UDP_ASSOCIATE_REQUEST: Channels._on_associate_request,
    UDP_ASSOCIATE_REPLY: Channels._on_associate_reply,
    UDP_DISSOCIATE: Channels._on_dissociate,
    UDP_PACKET: Channels._on_udp_packet,
    ICMP_ECHO_REQUEST: Channels._on_echo_request,
    ICMP_ECHO_REPLY: Channels._on_echo_reply,
}
"""The messages the core acts on, by codec; each end receives only some of them (the codec's
schema is the one ``MESSAGES`` names for the direction), 3.0 only those of its dialect."""
