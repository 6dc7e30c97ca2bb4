"""The stream multiplexer of one tunnel, sans-I/O: tunnel messages in, stream events out.

Both ends run one ``Mux``. It owns the connection ids, each stream's lifecycle and, in
dialect 3.1, the per-stream flow-control windows. It never touches a socket: the handlers feed
it decrypted messages and send the messages it returns.

Connection ids. The Java client frees an id the moment it sends a disconnect and may hand it
to a new stream while the server's own disconnect for the old stream is still in flight; that
disconnect then kills the new stream. Here an id is free again only when both sides are done
with it: in 3.1 every disconnect is answered by one from the other side (unless both crossed),
and the id is released once a disconnect went each way. 3.0 peers (the Java implementation)
never answer, so in 3.0 the id is released at the first disconnect in either direction. In
both dialects ids are handed out in rotation, so a released id is the last to be reused.
Handlers hold ``Stream`` objects, not ids: an operation on a stream that is no longer the live
owner of its id is ignored, so a late call never touches a newer stream with the same id.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Container
from dataclasses import dataclass, field

from schemas.errors import WireError
from schemas.fast import (
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
    AddressType,
    ConnectStatus,
    Dialect,
    Direction,
    DisconnectReason,
    MessageType,
    address_for,
    parse_message,
)

log = logging.getLogger(__name__)

ID_SPACE = 1 << 16
DEFAULT_WINDOW = 256 * 1024
DEFAULT_MAX_STREAMS = 1024
MAX_ELAPSED_MS = 0xFFFF
_KNOWN_TYPES = frozenset(int(code) for code in MessageType)
_TCP_PACKET = TCP_PACKET.type_code


class StreamPhase(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False)
class Stream:
    """One TCP stream of the tunnel, as both ends track it."""

    id: int
    host: str = ""
    port: int = 0
    phase: StreamPhase = StreamPhase.CONNECTING
    send_window: int = 0
    receive_window: int = 0
    unacknowledged: int = 0
    sent_eof: bool = False
    received_eof: bool = False
    sent_disconnect: bool = False
    received_disconnect: bool = False
    reason: DisconnectReason | None = field(default=None)


@dataclass(frozen=True)
class ConnectRequested:
    """Server side: the client asks for a TCP connection; answer with ``Mux.answer``."""

    stream: Stream
    host: str
    port: int


@dataclass(frozen=True)
class ConnectAnswered:
    """Client side: the server's answer to ``Mux.open``."""

    stream: Stream
    status: ConnectStatus
    elapsed_ms: int


@dataclass(frozen=True)
class DataReceived:
    stream: Stream
    data: bytes


@dataclass(frozen=True)
class WindowOpened:
    """3.1: the peer granted more credit; a sender blocked on the window may go on."""

    stream: Stream


@dataclass(frozen=True)
class EofReceived:
    """3.1: the peer will send no more data on this stream (TCP half-close)."""

    stream: Stream


@dataclass(frozen=True)
class StreamClosed:
    """The peer ended the stream; deliver what was received, then close the local socket."""

    stream: Stream
    reason: DisconnectReason


@dataclass(frozen=True)
class Send:
    """A message the mux answers by itself (a refusal, a disconnect for a protocol error)."""

    message: bytes


Event = ConnectRequested | ConnectAnswered | DataReceived | WindowOpened | EofReceived
Event |= StreamClosed | Send


class ProtocolError(Exception):
    """The peer broke the tunnel protocol in a way that ends the whole tunnel."""


class Mux:
    """Streams of one tunnel. ``sends`` is the direction of the messages this end writes."""

    def __init__(
        self,
        sends: Direction,
        dialect: Dialect,
        *,
        max_message: int,
        window: int = DEFAULT_WINDOW,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        self.sends = sends
        self.receives = (
            Direction.SERVER_TO_CLIENT
            if sends is Direction.CLIENT_TO_SERVER
            else Direction.CLIENT_TO_SERVER
        )
        self.dialect = dialect
        self.flow_control = dialect is Dialect.SECURE_3_1
        self.window = window
        self.max_streams = max_streams
        self.max_data = max_message - TCP_PACKET.header_size
        self.streams: dict[int, Stream] = {}
        self.other_channels: Container[int] = ()
        """Ids that UDP associations and ICMP echoes hold (the wire's id space is shared)."""
        self._next_id = 0
        # The messages this end acts on, by type byte; ``_on_other`` looks at the rest.
        self._receivers = {
            codec.type_code: (codec.parse, handler)
            for codec, handler in self._HANDLERS.items()
            if MESSAGES[(self.receives, MessageType(codec.type_code))] is codec.schema
            and (self.flow_control or codec.type_code not in SECURE_ONLY)
        }

    # --- opening ----------------------------------------------------------------------------

    def open(self, host: str, port: int) -> tuple[Stream, bytes]:
        """Client side: a new stream to ``host:port`` and the connect request that asks for it.

        An IP literal travels as an IPv4 or IPv6 address, anything else as a name the server
        resolves.
        """
        if len(self.streams) >= min(self.max_streams, ID_SPACE):
            raise ProtocolError("too many streams on this tunnel")
        stream_id = self._free_id()
        stream = self._add(Stream(stream_id, host, port))
        address = address_for(host)
        request = TCP_CONNECT_REQUEST.build(stream_id, port, address["type"], host)
        return stream, request

    def answer(self, stream: Stream, status: ConnectStatus, elapsed_ms: int) -> bytes | None:
        """Server side: the reply to a ``ConnectRequested``; a failure forgets the stream.

        If the client disconnected while the server was connecting, the answer is the
        disconnect that completes the goodbye, and the stream is gone (check ``is_live``).
        """
        if not self.is_live(stream) or stream.phase is not StreamPhase.CONNECTING:
            return None
        if stream.received_disconnect:  # the client gave up meanwhile: finish the goodbye
            return self.disconnect(stream, DisconnectReason.GENERAL)
        if status is ConnectStatus.OK:
            stream.phase = StreamPhase.OPEN
        else:
            self._forget(stream)
        return self._connect_reply(stream.id, status, elapsed_ms)

    def _connect_reply(self, stream_id: int, status: ConnectStatus, elapsed_ms: int) -> bytes:
        elapsed_ms = min(max(elapsed_ms, 0), MAX_ELAPSED_MS)
        return TCP_CONNECT_REPLY.build(stream_id, status, elapsed_ms)

    # --- sending ----------------------------------------------------------------------------

    def allowance(self, stream: Stream) -> int:
        """How many data bytes may be sent on ``stream`` now (0: wait for ``WindowOpened``)."""
        if not self.is_live(stream) or stream.sent_eof or stream.sent_disconnect:
            return 0
        return stream.send_window if self.flow_control else 1 << 30

    def data(self, stream: Stream, payload: bytes) -> list[bytes]:
        """Messages carrying ``payload`` (at most ``allowance``), each fitting one frame."""
        if len(payload) > self.allowance(stream):
            raise ValueError("payload exceeds the stream's send allowance")
        if self.flow_control:
            stream.send_window -= len(payload)
        step, build_packet, sid = self.max_data, TCP_PACKET.build, stream.id
        view = memoryview(payload)
        return [build_packet(sid, view[i : i + step]) for i in range(0, len(payload), step)]

    def consumed(self, stream: Stream, count: int) -> bytes | None:
        """The local socket took ``count`` received bytes; maybe grant the peer more credit."""
        if not self.flow_control or not self.is_live(stream) or stream.sent_disconnect:
            return None
        stream.unacknowledged += count
        if stream.unacknowledged < self.window // 4:
            return None
        increment, stream.unacknowledged = stream.unacknowledged, 0
        stream.receive_window += increment
        return TCP_WINDOW_UPDATE.build(stream.id, increment)

    def half_close(self, stream: Stream) -> bytes | None:
        """The local side sent EOF: a 3.1 half-close, or in 3.0 (no half-close) a disconnect."""
        if not self.is_live(stream) or stream.sent_eof or stream.sent_disconnect:
            return None
        if not self.flow_control:
            return self.disconnect(stream, DisconnectReason.CLIENT_CLOSED)
        stream.sent_eof = True
        return TCP_HALF_CLOSE.build(stream.id)

    def disconnect(self, stream: Stream, reason: DisconnectReason) -> bytes | None:
        """End ``stream`` from this side; ``None`` when it already ended or was replaced."""
        if not self.is_live(stream) or stream.sent_disconnect:
            return None
        stream.sent_disconnect = True
        stream.reason = stream.reason or reason
        if stream.received_disconnect or not self.flow_control:
            self._forget(stream)
        return TCP_DISCONNECT.build(stream.id, reason)

    def close_all(self) -> list[Stream]:
        """The tunnel is gone: every stream ends without messages."""
        streams = list(self.streams.values())
        for stream in streams:
            self._forget(stream)
        return streams

    # --- receiving --------------------------------------------------------------------------

    def receive(self, message: bytes) -> list[Event]:
        """Events for one decrypted tunnel message. Raises ``ProtocolError`` to end the tunnel."""
        code = message[0] if message else None
        if code == _TCP_PACKET:
            return self._on_data(message)
        receiver = self._receivers.get(code)
        if receiver is None:
            return self._on_other(message)
        parse, handler = receiver
        try:
            values = parse(message)
        except WireError as error:
            return self._on_malformed(error)
        return handler(self, *values)

    def _on_other(self, message: bytes) -> list[Event]:
        """A message this end does not act on: unknown, for the other end, or not in 3.0."""
        if not message or message[0] not in _KNOWN_TYPES:
            log.warning("ignored a tunnel message of unknown type %s", message[:1].hex() or "-")
            return []
        try:
            schema, fields = parse_message(message, self.receives)
        except WireError as error:
            return self._on_malformed(error)
        if MessageType(fields.type) in SECURE_ONLY and not self.flow_control:
            log.debug("ignored %s: not part of dialect 3.0", schema.name)
        else:
            log.debug("ignored %s: not handled by this end", schema.name)
        return []

    def _on_malformed(self, error: WireError) -> list[Event]:
        if self.flow_control:
            raise ProtocolError(str(error)) from None
        log.debug("ignored a malformed message (dialect 3.0 tolerates them): %s", error)
        return []

    def _on_data(self, message: bytes) -> list[Event]:
        try:
            stream_id, data = TCP_PACKET.parse(message)
        except WireError as error:
            raise ProtocolError(str(error)) from None
        stream = self.streams.get(stream_id)
        if stream is None or stream.received_eof or stream.received_disconnect:
            return []  # data still in flight after this end closed: not an error
        if self.flow_control:
            stream.receive_window -= len(data)
            if stream.receive_window < 0:
                log.warning("stream %d: peer overran its flow-control window", stream_id)
                return self._reset(stream)
        return [DataReceived(stream, data)]

    def _on_connect_request(
        self, stream_id: int, port: int, _address_type: AddressType, host: str
    ) -> list[Event]:
        if stream_id in self.streams or stream_id in self.other_channels:
            log.warning("refused connect: connection id %d is still in use", stream_id)
            return [Send(self._connect_reply(stream_id, ConnectStatus.GENERAL_FAILURE, 0))]
        if len(self.streams) >= self.max_streams:
            log.warning("refused connect to %s:%d: %d streams open", host, port, self.max_streams)
            return [Send(self._connect_reply(stream_id, ConnectStatus.CONNECTION_LIMIT, 0))]
        stream = self._add(Stream(stream_id, host, port))
        return [ConnectRequested(stream, host, port)]

    def _on_connect_reply(
        self, stream_id: int, status: ConnectStatus, elapsed_ms: int
    ) -> list[Event]:
        stream = self.streams.get(stream_id)
        if stream is None or stream.phase is not StreamPhase.CONNECTING:
            log.debug("ignored connect reply for connection id %d", stream_id)
            return []
        if status is ConnectStatus.OK:
            stream.phase = StreamPhase.OPEN
        else:
            self._forget(stream)
        return [ConnectAnswered(stream, status, elapsed_ms)]

    def _on_disconnect(self, stream_id: int, reason: DisconnectReason) -> list[Event]:
        stream = self.streams.get(stream_id)
        if stream is None or stream.received_disconnect:
            return []
        stream.received_disconnect = True
        stream.reason = stream.reason or reason
        if stream.sent_disconnect or not self.flow_control:
            self._forget(stream)
        return [StreamClosed(stream, reason)]

    def _on_window_update(self, stream_id: int, increment: int) -> list[Event]:
        stream = self.streams.get(stream_id)
        if stream is None:
            return []
        stream.send_window += increment
        if stream.send_window > 1 << 31:
            log.warning("stream %d: peer granted an absurd window", stream.id)
            return self._reset(stream)
        return [WindowOpened(stream)]

    def _on_half_close(self, stream_id: int) -> list[Event]:
        stream = self.streams.get(stream_id)
        if stream is None or stream.received_eof:
            return []
        stream.received_eof = True
        return [EofReceived(stream)]

    _HANDLERS = {
        TCP_CONNECT_REQUEST: _on_connect_request,
        TCP_CONNECT_REPLY: _on_connect_reply,
        TCP_DISCONNECT: _on_disconnect,
        TCP_WINDOW_UPDATE: _on_window_update,
        TCP_HALF_CLOSE: _on_half_close,
    }
    """The control messages this module acts on; each end receives only some of them."""

    # --- bookkeeping ------------------------------------------------------------------------

    def _reset(self, stream: Stream) -> list[Event]:
        stream.received_disconnect = True
        message = self.disconnect(stream, DisconnectReason.RESET)
        self._forget(stream)
        events: list[Event] = [StreamClosed(stream, DisconnectReason.RESET)]
        return events + ([Send(message)] if message else [])

    def _add(self, stream: Stream) -> Stream:
        stream.send_window = stream.receive_window = self.window
        self.streams[stream.id] = stream
        return stream

    def _forget(self, stream: Stream) -> None:
        stream.phase = StreamPhase.CLOSED
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]

    def is_live(self, stream: Stream) -> bool:
        """Whether ``stream`` still owns its id and this side has not disconnected it."""
        return self.streams.get(stream.id) is stream

    def _free_id(self) -> int:
        for _ in range(ID_SPACE):
            candidate = self._next_id
            self._next_id = (self._next_id + 1) % ID_SPACE
            if candidate not in self.streams and candidate not in self.other_channels:
                return candidate
        raise ProtocolError("no free connection id")
