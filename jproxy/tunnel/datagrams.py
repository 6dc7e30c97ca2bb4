"""UDP associations and ICMP echoes of one tunnel, sans-I/O: tunnel messages in, events out.

Both ends run one ``Datagrams`` beside the channel core of the tunnel's streams
(``jproxy.tunnel.mux``). On the wire UDP associations and ICMP echoes take their ids from the
same 16-bit connection-id space as TCP streams, so this core skips the ids in ``streams`` (the
channel core's) and the channel core skips the ids in ``channels`` (this core's). Ids are
handed out in rotation, so a released id is the last to be reused: a datagram still in flight
for an old association does not reach a new one.

An association lives from its request until a dissociate goes either way (or its request is
refused); an echo from its request until its reply (or until the client stops waiting and
calls ``forget``). A server keeps at most ``max_associations`` per tunnel and answers echoes
at most ``echo_rate`` per second (bursts of ``echo_burst``); what exceeds them is refused with
status 6 (connection limit). Time is an argument; nothing here reads a clock or logs.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from jproxy.tunnel.mux import (
    DEFAULT_MAX_CHANNELS,
    ID_SPACE,
    MAX_ELAPSED_MS,
    Exhausted,
    ProtocolViolation,
)
from schemas.errors import WireError
from schemas.fast import (
    UDP_ASSOCIATE_REPLY,
    UDP_ASSOCIATE_REQUEST,
    UDP_DISSOCIATE,
    UDP_PACKET,
)
from schemas.fields import build, parse
from schemas.jproxy import (
    ConnectStatus,
    Dialect,
    Direction,
    DisconnectReason,
    IcmpEchoReply,
    IcmpEchoRequest,
    MessageType,
    address_for,
)

DEFAULT_MAX_ASSOCIATIONS = 256
DEFAULT_ECHO_RATE = 10.0
DEFAULT_ECHO_BURST = 20
TYPES = frozenset({MessageType.UDP_ASSOCIATE, MessageType.UDP_PACKET})
TYPES |= {MessageType.UDP_DISSOCIATE, MessageType.ICMP_ECHO}
"""The message types this core handles (the tunnel hands it every message of these)."""
_UDP_PACKET = UDP_PACKET.type_code


class Kind(enum.Enum):
    UDP = "udp"
    ICMP = "icmp"


@dataclass(eq=False, slots=True)
class Channel:
    """One UDP association or ICMP echo; handlers hold these, never bare ids."""

    id: int
    kind: Kind
    host: str
    port: int = 0
    open: bool = False
    """A UDP association the server accepted: datagrams may flow."""


@dataclass(frozen=True, slots=True)
class AssociateRequested:
    """Server: bind ``local_port`` (0: any) and talk to the channel's host and port."""

    channel: Channel
    local_port: int


@dataclass(frozen=True, slots=True)
class AssociateAnswered:
    """Client: the server's answer to ``associate``."""

    channel: Channel
    status: ConnectStatus
    bound_port: int


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    channel: Channel
    data: bytes


@dataclass(frozen=True, slots=True)
class Dissociated:
    """The peer ended the association."""

    channel: Channel
    reason: DisconnectReason


@dataclass(frozen=True, slots=True)
class EchoRequested:
    """Server: ping the channel's host with ``data``, waiting at most ``timeout_ms``."""

    channel: Channel
    timeout_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EchoAnswered:
    """Client: the server's answer to ``echo``."""

    channel: Channel
    status: ConnectStatus
    elapsed_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """Server: a request this core refused by itself; send ``message``, count ``why``."""

    message: bytes
    why: str


Event = AssociateRequested | AssociateAnswered | DatagramReceived | Dissociated
Event |= EchoRequested | EchoAnswered | Refused


@dataclass
class RateLimit:
    """A token bucket: ``rate`` per second, at most ``burst`` at once."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    def allow(self, now: float) -> bool:
        if self.stamp is None:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Datagrams:
    """The datagram channels of one tunnel; ``sends`` is the direction this end writes."""

    def __init__(
        self,
        sends: Direction,
        dialect: Dialect,
        *,
        streams: Collection[int] = (),
        max_channels: int = DEFAULT_MAX_CHANNELS,
        max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
        echo_rate: float = DEFAULT_ECHO_RATE,
        echo_burst: int = DEFAULT_ECHO_BURST,
    ) -> None:
        self.is_server = sends is Direction.SERVER_TO_CLIENT
        self.dialect = dialect
        self.strict = dialect is Dialect.SECURE_3_1
        self.streams = streams
        self.max_channels = max_channels
        """The tunnel's one budget of channels of every kind (streams included)."""
        self.max_associations = max_associations
        self.echo_limit = RateLimit(echo_rate, echo_burst)
        self.channels: dict[int, Channel] = {}
        self._next_id = 0
        receivers = {
            True: {
                UDP_ASSOCIATE_REQUEST.type_code: self._on_associate_request,
                MessageType.ICMP_ECHO: self._on_echo_request,
            },
            False: {
                UDP_ASSOCIATE_REPLY.type_code: self._on_associate_reply,
                MessageType.ICMP_ECHO: self._on_echo_reply,
            },
        }[self.is_server]
        if not self.strict:  # ICMP echo is not part of dialect 3.0
            receivers.pop(MessageType.ICMP_ECHO)
        self._receivers = {**receivers, UDP_DISSOCIATE.type_code: self._on_dissociate}

    # --- the client's requests ----------------------------------------------------------------

    def associate(self, host: str, port: int, local_port: int = 0) -> tuple[Channel, bytes]:
        """Client: a UDP association with ``host:port`` (a name goes unresolved)."""
        channel = self._add(Kind.UDP, host, port)
        kind = address_for(host)["type"]
        return channel, UDP_ASSOCIATE_REQUEST.build(channel.id, local_port, port, kind, host)

    def echo(self, host: str, timeout_ms: int, data: bytes) -> tuple[Channel, bytes]:
        """Client (3.1): one ICMP echo to ``host`` from the server's side."""
        if not self.strict:
            raise ValueError("ICMP echo needs dialect 3.1")
        channel = self._add(Kind.ICMP, host)
        message = build(
            IcmpEchoRequest,
            {
                "connection_id": channel.id,
                "timeout_ms": min(max(timeout_ms, 0), 0xFFFF),
                "address": address_for(host),
                "data": data,
            },
        )
        return channel, message

    # --- either end -----------------------------------------------------------------------------

    def packet(self, channel: Channel, data: bytes) -> bytes | None:
        """The message carrying one datagram; ``None`` when the association is not open."""
        if not channel.open or self.channels.get(channel.id) is not channel:
            return None
        return UDP_PACKET.build(channel.id, data)

    def dissociate(self, channel: Channel, reason: DisconnectReason) -> bytes | None:
        """End an association from this side; ``None`` when it already ended."""
        if self.channels.get(channel.id) is not channel:
            return None
        self.forget(channel)
        return UDP_DISSOCIATE.build(channel.id, reason)

    def forget(self, channel: Channel) -> None:
        """Release the channel's id without a message (an answer never came, the tunnel ended)."""
        channel.open = False
        if self.channels.get(channel.id) is channel:
            del self.channels[channel.id]

    def close_all(self) -> list[Channel]:
        channels = list(self.channels.values())
        for channel in channels:
            self.forget(channel)
        return channels

    # --- the server's answers -------------------------------------------------------------------

    def answer(self, channel: Channel, status: ConnectStatus, bound_port: int) -> bytes | None:
        """Server: the reply to an ``AssociateRequested``; a failure forgets the channel."""
        if self.channels.get(channel.id) is not channel or channel.open:
            return None
        if status is ConnectStatus.OK:
            channel.open = True
        else:
            self.forget(channel)
        return UDP_ASSOCIATE_REPLY.build(channel.id, status, bound_port)

    def echo_reply(
        self, channel: Channel, status: ConnectStatus, elapsed_ms: int, data: bytes
    ) -> bytes | None:
        """Server: the reply to an ``EchoRequested``; the id is free again."""
        if self.channels.get(channel.id) is not channel:
            return None
        self.forget(channel)
        return self._echo_reply(channel.id, status, elapsed_ms, data)

    @staticmethod
    def _echo_reply(channel_id: int, status: ConnectStatus, elapsed_ms: int, data: bytes) -> bytes:
        fields = {
            "connection_id": channel_id,
            "status": status,
            "elapsed_ms": min(max(elapsed_ms, 0), MAX_ELAPSED_MS),
            "data": data,
        }
        return build(IcmpEchoReply, fields)

    # --- receiving ------------------------------------------------------------------------------

    def receive(self, message: bytes, now: float) -> list[Event]:
        """Events for one decrypted message of a type in ``TYPES``.

        Raises ``ProtocolViolation`` for a malformed message in 3.1 (3.0 tolerates them).
        """
        try:
            if message[0] == _UDP_PACKET:
                return self._on_packet(*UDP_PACKET.parse(message))
            receiver = self._receivers.get(message[0])
            return [] if receiver is None else receiver(message, now)
        except WireError as error:
            if self.strict:
                raise ProtocolViolation(str(error)) from None
            return []

    def _on_packet(self, channel_id: int, data: bytes) -> list[Event]:
        channel = self.channels.get(channel_id)
        if channel is None or not channel.open:
            return []  # in flight after this end dissociated: not an error
        return [DatagramReceived(channel, bytes(data))]

    def _on_dissociate(self, message: bytes, _now: float) -> list[Event]:
        channel_id, reason = UDP_DISSOCIATE.parse(message)
        channel = self.channels.get(channel_id)
        if channel is None or channel.kind is not Kind.UDP:
            return []
        self.forget(channel)
        return [Dissociated(channel, reason)]

    def _on_associate_request(self, message: bytes, _now: float) -> list[Event]:
        channel_id, local_port, port, _, host = UDP_ASSOCIATE_REQUEST.parse(message)
        refusal = self._refusal(channel_id)
        if refusal is None and self._udp_count() >= self.max_associations:
            refusal = ConnectStatus.CONNECTION_LIMIT, f"{self.max_associations} associations open"
        if refusal is not None:
            status, why = refusal
            return [Refused(UDP_ASSOCIATE_REPLY.build(channel_id, status, 0), why)]
        channel = self._insert(Channel(channel_id, Kind.UDP, host, port))
        return [AssociateRequested(channel, local_port)]

    def _on_associate_reply(self, message: bytes, _now: float) -> list[Event]:
        channel_id, status, bound_port = UDP_ASSOCIATE_REPLY.parse(message)
        channel = self.channels.get(channel_id)
        if channel is None or channel.kind is not Kind.UDP or channel.open:
            return []
        if status is ConnectStatus.OK:
            channel.open = True
        else:
            self.forget(channel)
        return [AssociateAnswered(channel, status, bound_port)]

    def _on_echo_request(self, message: bytes, now: float) -> list[Event]:
        fields = parse(IcmpEchoRequest, message)
        refusal = self._refusal(fields.connection_id)
        if refusal is None and not self.echo_limit.allow(now):
            refusal = ConnectStatus.CONNECTION_LIMIT, f"over {self.echo_limit.rate:g} echoes/s"
        if refusal is not None:
            status, why = refusal
            reply = self._echo_reply(fields.connection_id, status, 0, b"")
            return [Refused(reply, why)]
        channel = self._insert(Channel(fields.connection_id, Kind.ICMP, fields.address.host))
        return [EchoRequested(channel, fields.timeout_ms, fields.data)]

    def _on_echo_reply(self, message: bytes, _now: float) -> list[Event]:
        fields = parse(IcmpEchoReply, message)
        channel = self.channels.get(fields.connection_id)
        if channel is None or channel.kind is not Kind.ICMP:
            return []
        self.forget(channel)
        return [EchoAnswered(channel, fields.status, fields.elapsed_ms, fields.data)]

    # --- bookkeeping ----------------------------------------------------------------------------

    def _refusal(self, channel_id: int) -> tuple[ConnectStatus, str] | None:
        if channel_id in self.channels or channel_id in self.streams:
            return ConnectStatus.GENERAL_FAILURE, f"connection id {channel_id} is in use"
        if len(self.channels) + len(self.streams) >= self.max_channels:
            return ConnectStatus.CONNECTION_LIMIT, f"{self.max_channels} channels open"
        return None

    def _udp_count(self) -> int:
        return sum(channel.kind is Kind.UDP for channel in self.channels.values())

    def _add(self, kind: Kind, host: str, port: int = 0) -> Channel:
        for _ in range(ID_SPACE):
            candidate = self._next_id
            self._next_id = (self._next_id + 1) % ID_SPACE
            if candidate not in self.channels and candidate not in self.streams:
                return self._insert(Channel(candidate, kind, host, port))
        raise Exhausted("no free connection id")

    def _insert(self, channel: Channel) -> Channel:
        self.channels[channel.id] = channel
        return channel
