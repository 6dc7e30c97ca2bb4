"""jProxy 3 on the wire: handshake, login, the frame envelope and every tunnel message.

Every 16-bit field is big-endian (the Java implementation's wire, not PROTOCOL.md). Tunnel
messages start with a type byte whose low nibble names the transport (1 TCP, 2 UDP, 3 ICMP)
and whose high nibble names the operation (0 open, 2 data, 4 close, 6 window, 8 half-close);
low nibble 4 is the tunnel itself. Codes 0x61, 0x81, 0x03 and 0x04 exist only in dialect 3.1.
"""

from __future__ import annotations

import enum

import construct as c

from schemas.errors import WireError
from schemas.fields import AddressKind, InRange, StrictEnum, doc, ip_of, packet, parse
from schemas.introspect import field

MAGIC = b"jProxy"
MAJOR_VERSION = 3
HASH_SIZE = 32
BLOCK_SIZE = 16
MAX_BLOCKS = 255
MAX_NAME_LENGTH = 255


class Dialect(enum.IntEnum):
    """The handshake's minor version: it selects the cipher suite and the extensions."""

    LEGACY_3_0 = 0
    SECURE_3_1 = 1


class HandshakeStatus(enum.IntEnum):
    OK = 0
    REFUSED = 1


class LoginStatus(enum.IntEnum):
    OK = 0
    FAILED = 1


class MessageType(enum.IntEnum):
    TCP_CONNECT = 0x01
    UDP_ASSOCIATE = 0x02
    ICMP_ECHO = 0x03
    KEEPALIVE = 0x04
    TCP_PACKET = 0x21
    UDP_PACKET = 0x22
    TCP_DISCONNECT = 0x41
    UDP_DISSOCIATE = 0x42
    TCP_WINDOW_UPDATE = 0x61
    TCP_HALF_CLOSE = 0x81


class Direction(enum.Enum):
    """Who sends a message; codes 0x01-0x03 mean a request one way and a reply the other."""

    CLIENT_TO_SERVER = "c2s"
    SERVER_TO_CLIENT = "s2c"


class ConnectStatus(enum.IntEnum):
    """Status of a TCP connect, UDP associate or ICMP echo (the wire's values, not the spec's).

    0-6 are the Java implementation's. ``NOT_ALLOWED`` (7) is a gjproxy addition, dialect 3.1
    only: the server's egress policy refused the target (a SOCKS client sees reply 0x02,
    "connection not allowed by ruleset"). See ``status_for_dialect`` for 3.0.
    """

    OK = 0
    GENERAL_FAILURE = 1
    REFUSED = 2
    TIMED_OUT = 3
    UNREACHABLE = 4
    UNKNOWN_HOST = 5
    CONNECTION_LIMIT = 6
    NOT_ALLOWED = 7


SECURE_ONLY_STATUSES = frozenset({ConnectStatus.NOT_ALLOWED})
"""Statuses that exist only in dialect 3.1."""


def status_for_dialect(status: ConnectStatus, dialect: Dialect) -> ConnectStatus:
    """The status to send to a peer of ``dialect``.

    The Java 3.0 client answers a status it does not know by closing the SOCKS connection
    without a reply, so a 3.0 tunnel gets GENERAL_FAILURE (SOCKS 0x01) instead of a 3.1-only
    status.
    """
    if dialect is Dialect.LEGACY_3_0 and status in SECURE_ONLY_STATUSES:
        return ConnectStatus.GENERAL_FAILURE
    return status


class KeepAliveKind(enum.IntEnum):
    PING = 0
    PONG = 1


class DisconnectReason(enum.IntEnum):
    GENERAL = 1
    CLIENT_CLOSED = 2
    BROKEN_PIPE = 3
    RESET = 4


class AddressType(AddressKind):
    """jProxy's address types, the same in both dialects (the Java code's ``Constants.IPv6``
    is 2). SOCKS5 numbers IPv6 4: ``schemas.socks5.AddressType`` is a different enum."""

    IPV4 = 1
    IPV6 = 2
    DOMAIN = 3


_ADDRESS_LENGTHS = {AddressType.IPV4: 4, AddressType.IPV6: 16}


def host_from_wire(kind: AddressType, raw: bytes) -> str:
    """Host text of an address's bytes, checked against its type; ``ValueError`` if they differ.

    Shared by the ``Address`` schema and the fast connect-request codec (schemas/fast.py).
    """
    if kind in _ADDRESS_LENGTHS:
        if len(raw) != _ADDRESS_LENGTHS[kind]:
            raise ValueError(
                f"{kind.name} address needs {_ADDRESS_LENGTHS[kind]} bytes, got {len(raw)}"
            )
        return str(ip_of(raw))
    if not raw:
        raise ValueError("empty host name")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("host name is not ASCII") from None


def host_to_wire(kind: AddressType, host: str) -> bytes:
    """The address bytes of ``host`` for an address of type ``kind``; ``ValueError`` if none fit."""
    if kind is AddressType.DOMAIN:
        raw = host.encode("idna") if not host.isascii() else host.encode("ascii")
        if not 1 <= len(raw) <= MAX_NAME_LENGTH:
            raise ValueError(f"host name must be 1..{MAX_NAME_LENGTH} bytes, got {len(raw)}")
        return raw
    address = ip_of(host)
    if address is None:
        raise ValueError(f"{host!r} is not an IP address")
    if len(address.packed) != _ADDRESS_LENGTHS[kind]:
        raise ValueError(f"{host!r} is not an {kind.name} address")
    return address.packed


class _HostAdapter(c.Adapter):
    """Address bytes <-> host text, checked against the address type."""

    def _decode(self, obj: bytes, context: c.Container, path: str) -> str:
        try:
            return host_from_wire(context.type, obj)
        except ValueError as error:
            raise c.ValidationError(str(error), path=path) from None

    def _encode(self, obj: str, context: c.Container, path: str) -> bytes:
        try:
            return host_to_wire(AddressType(context.type), obj)
        except ValueError as error:
            raise c.ValidationError(str(error), path=path) from None


Address = c.Struct(
    "type"
    / doc(
        StrictEnum(c.Int8ub, AddressType),
        "1 IPv4, 2 IPv6, 3 DNS name; SOCKS5's 4 for IPv6 is unknown here",
    ),
    "host"
    / doc(
        _HostAdapter(c.Prefixed(c.Int8ub, c.GreedyBytes)),
        "length byte, then 4 (IPv4) or 16 (IPv6) address bytes or a 1..255-byte ASCII name",
    ),
)


def address_for(host: str) -> dict:
    """The ``Address`` fields for ``host``: an IP literal keeps its family, else a DNS name."""
    return {"type": AddressType.of(host), "host": host}


_Magic = doc(c.Const(MAGIC), 'ASCII "jProxy"')
_ConnectionId = doc(c.Int16ub, "stream id chosen by the client, unique among its live streams")
_Port = c.Int16ub


def _message_type(code: MessageType) -> c.Construct:
    return doc(c.Const(int(code), c.Int8ub), f"message type 0x{int(code):02x}")


def _data(what: str) -> tuple[c.Construct, c.Construct]:
    """A big-endian 16-bit length rebuilt from the bytes that follow it."""
    return (
        "length" / doc(c.Rebuild(c.Int16ub, c.len_(c.this.data)), f"{what} length"),
        "data" / doc(c.Bytes(c.this.length), what),
    )


# --- before encryption ---------------------------------------------------------------------

Hello = packet(
    "Hello",
    "magic" / _Magic,
    "major" / doc(c.Int8ub, "major version, 3"),
    "minor" / doc(c.Int8ub, "minor version: 0 legacy dialect (Java), 1 secure dialect"),
    doc_text="client -> server, first bytes of a tunnel",
)

HelloReply = packet(
    "HelloReply",
    "magic" / _Magic,
    "status" / doc(StrictEnum(c.Int8ub, HandshakeStatus), "0 accepted, 1 refused (then close)"),
    doc_text="server -> client",
)

LoginRequest = packet(
    "LoginRequest",
    "login_hash" / doc(c.Bytes(HASH_SIZE), "SHA-256(public key DER || 256-byte salt)"),
    doc_text="client -> server, right after an accepted hello",
)

LoginReply = packet(
    "LoginReply",
    "status" / doc(StrictEnum(c.Int8ub, LoginStatus), "0 logged in, 1 failed (then close)"),
    "wrapped_key"
    / doc(
        c.If(c.this.status == LoginStatus.OK, c.Bytes(c.this._params.key_size)),
        "only when status is 0: the 16-byte AES session key encrypted to the user's RSA key"
        " (RSA-OAEP-SHA256 in 3.1, PKCS#1 v1.5 in 3.0); as long as the modulus (256 bytes)",
    ),
    doc_text="server -> client; parse and build take key_size=<modulus bytes>",
)

Frame = packet(
    "Frame",
    "blocks"
    / doc(
        c.Rebuild(InRange(c.Int8ub, 1, MAX_BLOCKS), c.len_(c.this.ciphertext) // BLOCK_SIZE),
        "n, the number of 16-byte blocks that follow, 1..255",
    ),
    "ciphertext" / doc(c.Bytes(c.this.blocks * BLOCK_SIZE), "n*16 bytes of ciphertext"),
    doc_text="every message after login travels in one frame (both directions)",
)

# --- tunnel messages (the plaintext of one frame) -----------------------------------------

TcpConnectRequest = packet(
    "TcpConnectRequest",
    "type" / _message_type(MessageType.TCP_CONNECT),
    "connection_id" / _ConnectionId,
    "port" / doc(_Port, "destination port"),
    "address" / doc(Address, "destination"),
    doc_text="client -> server: open a TCP stream",
)

TcpConnectReply = packet(
    "TcpConnectReply",
    "type" / _message_type(MessageType.TCP_CONNECT),
    "connection_id" / _ConnectionId,
    "status"
    / doc(
        StrictEnum(c.Int8ub, ConnectStatus),
        "connect status (7 is gjproxy's, 3.1 only: a 3.0 peer gets 1 instead)",
    ),
    "elapsed_ms" / doc(c.Int16ub, "milliseconds the server spent connecting (capped at 65535)"),
    doc_text="server -> client",
)

TcpPacket = packet(
    "TcpPacket",
    "type" / _message_type(MessageType.TCP_PACKET),
    "connection_id" / _ConnectionId,
    *_data("stream data"),
    doc_text="both directions: stream data",
)

TcpDisconnect = packet(
    "TcpDisconnect",
    "type" / _message_type(MessageType.TCP_DISCONNECT),
    "connection_id" / _ConnectionId,
    "reason" / doc(StrictEnum(c.Int8ub, DisconnectReason), "why the stream ended"),
    "legacy_pad"
    / doc(
        c.Optional(c.OneOf(c.Int8ub, [0])),
        "one zero byte that the Java client appends; absent from servers and gjproxy",
    ),
    doc_text="both directions: the stream is gone, the id may be reused once both sides said so",
)

UdpAssociateRequest = packet(
    "UdpAssociateRequest",
    "type" / _message_type(MessageType.UDP_ASSOCIATE),
    "connection_id" / _ConnectionId,
    "local_port" / doc(_Port, "UDP port the server should bind, 0 = any"),
    "port" / doc(_Port, "the one remote port of this association"),
    "address" / doc(Address, "the one remote address of this association"),
    doc_text="client -> server: open a UDP association (the Java server ignores it)",
)

UdpAssociateReply = packet(
    "UdpAssociateReply",
    "type" / _message_type(MessageType.UDP_ASSOCIATE),
    "connection_id" / _ConnectionId,
    "status" / doc(StrictEnum(c.Int8ub, ConnectStatus), "associate status"),
    "bound_port" / doc(_Port, "UDP port the server bound"),
    doc_text="server -> client (3.1)",
)

UdpPacket = packet(
    "UdpPacket",
    "type" / _message_type(MessageType.UDP_PACKET),
    "connection_id" / _ConnectionId,
    *_data("one datagram"),
    doc_text="both directions: one datagram",
)

UdpDissociate = packet(
    "UdpDissociate",
    "type" / _message_type(MessageType.UDP_DISSOCIATE),
    "connection_id" / _ConnectionId,
    "reason" / doc(StrictEnum(c.Int8ub, DisconnectReason), "why the association ended"),
    doc_text="both directions: the association is gone",
)

IcmpEchoRequest = packet(
    "IcmpEchoRequest",
    "type" / _message_type(MessageType.ICMP_ECHO),
    "connection_id" / doc(c.Int16ub, "request id, echoed in the reply"),
    "timeout_ms" / doc(c.Int16ub, "how long the server waits for the echo reply"),
    "address" / doc(Address, "host to ping"),
    *_data("echo payload"),
    doc_text="client -> server (3.1): send one ICMP echo request",
)

IcmpEchoReply = packet(
    "IcmpEchoReply",
    "type" / _message_type(MessageType.ICMP_ECHO),
    "connection_id" / doc(c.Int16ub, "the request's id"),
    "status" / doc(StrictEnum(c.Int8ub, ConnectStatus), "0 reply received, 3 timed out, ..."),
    "elapsed_ms" / doc(c.Int16ub, "round-trip time in milliseconds"),
    *_data("echo payload as received"),
    doc_text="server -> client (3.1)",
)

TcpWindowUpdate = packet(
    "TcpWindowUpdate",
    "type" / _message_type(MessageType.TCP_WINDOW_UPDATE),
    "connection_id" / _ConnectionId,
    "increment" / doc(c.Int32ub, "bytes of stream data the sender may now send in addition"),
    doc_text="both directions (3.1): flow-control credit for one stream",
)

TcpHalfClose = packet(
    "TcpHalfClose",
    "type" / _message_type(MessageType.TCP_HALF_CLOSE),
    "connection_id" / _ConnectionId,
    doc_text="both directions (3.1): the sender will send no more data on this stream",
)

KeepAlive = packet(
    "KeepAlive",
    "type" / _message_type(MessageType.KEEPALIVE),
    "kind" / doc(StrictEnum(c.Int8ub, KeepAliveKind), "0 ping (answer it), 1 pong (the answer)"),
    doc_text="both directions (3.1): keeps an idle tunnel alive and proves the peer is there;"
    " a client sends a ping right after login, which proves it holds the session key",
)

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT

MESSAGES: dict[tuple[Direction, MessageType], c.Construct] = {
    (C2S, MessageType.TCP_CONNECT): TcpConnectRequest,
    (S2C, MessageType.TCP_CONNECT): TcpConnectReply,
    (C2S, MessageType.UDP_ASSOCIATE): UdpAssociateRequest,
    (S2C, MessageType.UDP_ASSOCIATE): UdpAssociateReply,
    (C2S, MessageType.ICMP_ECHO): IcmpEchoRequest,
    (S2C, MessageType.ICMP_ECHO): IcmpEchoReply,
    **{
        (direction, MessageType(field(schema, "type").integer.constant)): schema
        for schema in (
            TcpPacket,
            TcpDisconnect,
            UdpPacket,
            UdpDissociate,
            TcpWindowUpdate,
            TcpHalfClose,
            KeepAlive,
        )
        for direction in Direction
    },
}
"""Every tunnel message, keyed by who sends it and its type byte."""

SECURE_ONLY = frozenset(
    {
        MessageType.ICMP_ECHO,
        MessageType.TCP_WINDOW_UPDATE,
        MessageType.TCP_HALF_CLOSE,
        MessageType.KEEPALIVE,
    }
)
"""Message types that exist only in dialect 3.1."""


def message_type_of(data: bytes) -> MessageType:
    """The type of one decrypted tunnel message; ``WireError`` when it is empty or unknown."""
    if not data:
        raise WireError("Message", "type", "empty message")
    try:
        return MessageType(data[0])
    except ValueError:
        raise WireError("Message", "type", f"unknown message type 0x{data[0]:02x}") from None


def parse_message(data: bytes, direction: Direction) -> tuple[c.Construct, c.Container]:
    """Dispatch one decrypted tunnel message on its type byte: ``(schema, fields)``."""
    schema = MESSAGES[(direction, message_type_of(data))]
    return schema, parse(schema, data)


PACKETS: tuple[c.Construct, ...] = (
    Hello,
    HelloReply,
    LoginRequest,
    LoginReply,
    Frame,
    TcpConnectRequest,
    TcpConnectReply,
    TcpPacket,
    TcpDisconnect,
    UdpAssociateRequest,
    UdpAssociateReply,
    UdpPacket,
    UdpDissociate,
    TcpWindowUpdate,
    TcpHalfClose,
    IcmpEchoRequest,
    IcmpEchoReply,
    KeepAlive,
)
"""Every top-level packet of this module, in the order docs/protocol.md presents them."""
