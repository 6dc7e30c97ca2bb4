"""Hot-path codecs derived from the schemas, not written a second time.

construct interprets a schema on every call (about 20 us). The frame envelope and the data
messages are parsed and built for every chunk a tunnel carries, the control messages (connect,
disconnect, half-close, window update) several times for every stream. So this module reads
the fixed-size integer fields out of the schemas once and packs them with one ``struct.Struct``.
A control message that the fast path does not read (any defect) goes to its schema, which
raises the ``WireError`` naming the packet and the field. Tests prove both paths agree.
"""

from __future__ import annotations

import abc
import operator
import struct
from collections.abc import Callable, Sequence
from typing import Any

import construct as c

from schemas import introspect, jproxy
from schemas.errors import WireError
from schemas.fields import build, parse
from schemas.introspect import Field, Integer


def _struct_of(fields: Sequence[Integer], packet: str) -> struct.Struct:
    order = fields[0].format[0]
    if any(field.format[0] != order for field in fields):
        raise TypeError(f"{packet} mixes byte orders")
    return struct.Struct(order + "".join(field.format[1:] for field in fields))


def header_of(schema: c.Construct) -> tuple[struct.Struct, tuple[object, ...]]:
    """The leading run of fixed integer fields of ``schema`` as one Struct, plus constants."""
    header, _ = introspect.leading_integers(schema)
    fields = [field.integer for field in header]
    return _struct_of(fields, schema.name), tuple(field.constant for field in fields)


def _optional_tails(field: Field) -> frozenset[bytes]:
    """What an ``Optional`` one-byte trailer lets follow the fixed fields, asked of construct."""
    shape = field.shape
    if not (
        isinstance(shape, introspect.Choice)
        and len(shape.options) == 2
        and isinstance(shape.options[1], introspect.Nothing)
        and shape.options[0].size == 1
    ):
        raise TypeError(f"{field.path} is not an optional one-byte trailer")
    accepted = introspect.byte_values(shape.options[0].construct)
    return frozenset([b"", *(bytes([value]) for value in accepted)])


def _decoder(field: Integer) -> Callable[[int], Any]:
    """Parsed integer to the schema's value: an enum member (KeyError if unknown) or the int."""
    if field.enum_type is None:
        return int
    return {int(member): member for member in field.enum_type}.__getitem__


class _ControlCodec(abc.ABC):
    """What the control-message codecs share: values in schema order, the schema as fallback.

    ``parse`` returns the values of the fields listed in ``names`` (enum fields as members) and
    ``build`` takes them in that order. Bytes or values that the fast path does not take go to
    the schema, which handles them (an enum given by name) or raises the precise WireError.
    """

    def __init__(self, schema: c.Construct, header: list[Integer], names: tuple[str, ...]):
        constants = [field.constant is not None for field in header]
        if constants[:1] != [True] or any(constants[1:]):
            raise TypeError(f"{schema.name} does not start with its only constant, a type byte")
        type_field, *value_fields = header
        if not all(field.reproduced for field in header):
            raise TypeError(f"{schema.name} has a field the fast codec would not check")
        self.schema = schema
        self.names = names
        self.type_code: int = type_field.constant
        header_struct = _struct_of(header, schema.name)
        self.size = header_struct.size
        self._pack = header_struct.pack
        self._unpack_from = header_struct.unpack_from
        self._decoders = tuple(_decoder(field) for field in value_fields)
        self._enum_values = tuple(
            (index, frozenset(field.enum_type))
            for index, field in enumerate(value_fields)
            if field.enum_type is not None
        )

    def values_of(self, fields: c.Container) -> tuple[Any, ...]:
        """The values of ``names`` in fields that construct parsed."""
        values = []
        for name in self.names:
            value = fields
            for part in name.split("."):
                value = value[part]
            values.append(value)
        return tuple(values)

    def fields_of(self, values: Sequence[Any]) -> dict[str, Any]:
        """construct's build input (nested dicts) for ``values`` in the order of ``names``."""
        fields: dict[str, Any] = {}
        for name, value in zip(self.names, values, strict=True):
            *parents, leaf = name.split(".")
            target = fields
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        return fields

    @abc.abstractmethod
    def fast_parse(self, message: bytes | memoryview) -> tuple[Any, ...] | None:
        """The values of a well-formed message; None for anything else (then ask the schema)."""

    @abc.abstractmethod
    def fast_build(self, values: Sequence[Any]) -> bytes | None:
        """The message for values the fast path takes as they are; None for anything else."""

    def parse(self, message: bytes | memoryview) -> tuple[Any, ...]:
        """The values of ``names`` in one whole message; WireError as the schema raises it."""
        values = self.fast_parse(message)
        if values is None:
            values = self.values_of(parse(self.schema, bytes(message)))
        return values

    def build(self, *values: Any) -> bytes:
        """The message carrying ``values`` (in the order of ``names``); WireError if it can't."""
        wire = self.fast_build(values)
        if wire is None:
            wire = build(self.schema, self.fields_of(values))
        return wire

    def _known_enums(self, values: Sequence[Any]) -> bool:
        for index, members in self._enum_values:
            if values[index] not in members:
                return False
        return True


class FixedMessageCodec(_ControlCodec):
    """A control message made only of fixed integer fields: a type byte, ids, enums, counts.

    The schema may end with an optional one-byte trailer (the Java client's zero after a
    disconnect): parsing accepts what the schema accepts there, building leaves it out.
    """

    def __init__(self, schema: c.Construct) -> None:
        header, rest = introspect.leading_integers(schema)
        *trailer, terminated = rest
        if terminated.construct is not c.Terminated or len(trailer) > 1:
            raise TypeError(f"{schema.name} is not fixed integer fields and a trailer")
        names = tuple(field.path for field in header[1:])
        super().__init__(schema, [field.integer for field in header], names)
        self._tails = _optional_tails(trailer[0]) if trailer else frozenset([b""])

    def fast_parse(self, message: bytes | memoryview) -> tuple[Any, ...] | None:
        size = self.size
        if len(message) != size and (
            len(message) < size or bytes(message[size:]) not in self._tails
        ):
            return None
        code, *values = self._unpack_from(message)
        if code != self.type_code:
            return None
        try:
            return tuple(map(operator.call, self._decoders, values))
        except KeyError:  # an unknown enum value
            return None

    def fast_build(self, values: Sequence[Any]) -> bytes | None:
        if not self._known_enums(values):
            return None
        try:
            return self._pack(self.type_code, *values)
        except struct.error:
            return None


class ConnectRequestCodec(_ControlCodec):
    """TcpConnectRequest: a fixed header derived from the schema, then the host bytes.

    The header runs from the type byte through the address type and the host's length byte.
    Only the host is read by hand, with the functions the schema's address adapter calls.
    """

    def __init__(self, schema: c.Construct = jproxy.TcpConnectRequest) -> None:
        header, rest = introspect.leading_integers(schema)
        host = rest[0] if len(rest) == 2 and rest[1].construct is c.Terminated else None
        if (
            host is None
            or not header
            or header[-1].integer.enum_type is not jproxy.AddressType
            or not isinstance(host.shape, introspect.Prefixed)
            or not isinstance(host.shape.body, introspect.Rest)
        ):
            raise TypeError(f"{schema.name} is not a fixed header and an address type and host")
        value_names = tuple(field.path for field in header[1:])
        integers = [field.integer for field in header]
        super().__init__(schema, [*integers, host.shape.length], (*value_names, host.path))

    def fast_parse(self, message: bytes | memoryview) -> tuple[Any, ...] | None:
        size = self.size
        if len(message) < size:
            return None
        code, *values = self._unpack_from(message)
        try:
            *fixed, kind, host_length = map(operator.call, self._decoders, values)
            if code != self.type_code or len(message) != size + host_length:
                return None
            return (*fixed, kind, jproxy.host_from_wire(kind, bytes(message[size:])))
        except (KeyError, ValueError):  # an unknown enum value, a host that does not fit
            return None

    def fast_build(self, values: Sequence[Any]) -> bytes | None:
        *fixed, kind, host = values
        if not self._known_enums(values):
            return None
        try:
            raw = jproxy.host_to_wire(jproxy.AddressType(kind), host)
            return self._pack(self.type_code, *fixed, kind, len(raw)) + raw
        except (ValueError, struct.error):
            return None


class SchemaCodec(_ControlCodec):
    """A control message read and written by its schema alone, with the fast codecs' interface
    (``type_code``, ``parse``, ``build``): the ICMP echo messages, whose address and data no
    fast path covers and which are rare enough (one pair per echo) not to need one."""

    def __init__(self, schema: c.Construct, names: tuple[str, ...]) -> None:
        self.schema = schema
        self.names = names
        self.type_code = introspect.leading_integers(schema)[0][0].integer.constant
        self._enum_values = ()

    def fast_parse(self, message: bytes | memoryview) -> None:
        return None

    def fast_build(self, values: Sequence[Any]) -> None:
        return None


class DataMessageCodec:
    """``type, connection_id, length, data`` messages (TCP and UDP packets)."""

    def __init__(self, schema: c.Construct) -> None:
        self.schema = schema
        self.header, constants = header_of(schema)
        if len(constants) != 3 or constants[0] is None:
            raise TypeError(f"{schema.name} is not a type/id/length/data message")
        self.type_code: int = constants[0]
        self.header_size = self.header.size
        self._pack = self.header.pack
        self._unpack_from = self.header.unpack_from

    def build(self, connection_id: int, data: bytes | memoryview) -> bytes:
        """The message bytes carrying ``data`` (at most 65535 bytes) on ``connection_id``."""
        return self.prefix(connection_id, len(data)) + data

    def prefix(self, connection_id: int, length: int) -> bytes:
        """The header of a message carrying ``length`` data bytes: one header serves every
        full-size piece of a long payload."""
        try:
            return self._pack(self.type_code, connection_id, length)
        except struct.error as error:  # connection id or data length out of range
            raise WireError(self.schema.name, "", str(error)) from None

    def parse(self, message: bytes | memoryview) -> tuple[int, bytes | memoryview]:
        """``(connection_id, data)`` of one whole message; ``data`` is a slice of ``message``."""
        size = self.header_size
        if len(message) < size:
            raise WireError(self.schema.name, "", f"needs {size} header bytes, got {len(message)}")
        code, connection_id, length = self._unpack_from(message)
        if code != self.type_code:
            raise WireError(self.schema.name, "type", f"expected 0x{self.type_code:02x}")
        if len(message) != size + length:
            raise WireError(
                self.schema.name, "length", f"says {length}, {len(message) - size} bytes follow"
            )
        return connection_id, message[size:]


class FrameHeaderCodec:
    """The one-byte frame envelope header: how many ciphertext bytes follow it."""

    def __init__(self, schema: c.Construct = jproxy.Frame) -> None:
        self.header, _ = header_of(schema)
        self.size = self.header.size
        if self.size != 1:
            raise TypeError(f"{schema.name}'s header is not one byte")
        self.body_lengths = tuple(self._length_or_zero(self.header.pack(n)) for n in range(256))
        """The body length each header byte announces, indexed by the byte; 0 for a header
        that ``body_length`` rejects. The frame openers look it up once per frame."""

    def _length_or_zero(self, header: bytes) -> int:
        try:
            return self.body_length(header)
        except WireError:
            return 0

    def body_length(self, header: bytes | memoryview) -> int:
        """Ciphertext bytes announced by a frame header; a zero block count is an error."""
        if len(header) < self.size:
            raise WireError("Frame", "blocks", f"needs {self.size} header byte, got {len(header)}")
        (blocks,) = self.header.unpack_from(header)
        if blocks == 0:
            raise WireError("Frame", "blocks", "must be 1..255, got 0")
        return blocks * jproxy.BLOCK_SIZE

    def build(self, ciphertext_length: int) -> bytes:
        blocks, rest = divmod(ciphertext_length, jproxy.BLOCK_SIZE)
        if rest or not 1 <= blocks <= jproxy.MAX_BLOCKS:
            raise WireError("Frame", "blocks", f"{ciphertext_length} bytes is not 1..255 blocks")
        return self.header.pack(blocks)


TCP_PACKET = DataMessageCodec(jproxy.TcpPacket)
UDP_PACKET = DataMessageCodec(jproxy.UdpPacket)
FRAME_HEADER = FrameHeaderCodec()

TCP_CONNECT_REQUEST = ConnectRequestCodec(jproxy.TcpConnectRequest)
TCP_CONNECT_REPLY = FixedMessageCodec(jproxy.TcpConnectReply)
TCP_DISCONNECT = FixedMessageCodec(jproxy.TcpDisconnect)
TCP_WINDOW_UPDATE = FixedMessageCodec(jproxy.TcpWindowUpdate)
TCP_HALF_CLOSE = FixedMessageCodec(jproxy.TcpHalfClose)
KEEPALIVE = FixedMessageCodec(jproxy.KeepAlive)
UDP_ASSOCIATE_REQUEST = ConnectRequestCodec(jproxy.UdpAssociateRequest)
UDP_ASSOCIATE_REPLY = FixedMessageCodec(jproxy.UdpAssociateReply)
UDP_DISSOCIATE = FixedMessageCodec(jproxy.UdpDissociate)
CONTROL_CODECS = (
    TCP_CONNECT_REQUEST,
    TCP_CONNECT_REPLY,
    TCP_DISCONNECT,
    TCP_WINDOW_UPDATE,
    TCP_HALF_CLOSE,
    KEEPALIVE,
)
"""The codecs of the control messages: the stream's, each sent at least once per stream, and
the tunnel's keepalive."""
_ID_HEADER = _struct_of(
    [field.integer for field in introspect.leading_integers(jproxy.TcpPacket)[0][:2]],
    "TcpPacket",
)


def connection_id_of(message: bytes | memoryview) -> int | None:
    """The connection id of a message too broken for its own codec (every message of a
    channel carries it right after the type byte, as TcpPacket's layout says); None when the
    message is too short to hold one. 3.0 answers or resets what it can find this way."""
    if len(message) < _ID_HEADER.size:
        return None
    return _ID_HEADER.unpack_from(message)[1]


ICMP_ECHO_REQUEST = SchemaCodec(
    jproxy.IcmpEchoRequest,
    ("connection_id", "timeout_ms", "address.type", "address.host", "data"),
)
ICMP_ECHO_REPLY = SchemaCodec(
    jproxy.IcmpEchoReply, ("connection_id", "status", "elapsed_ms", "data")
)
DATAGRAM_CODECS = (UDP_ASSOCIATE_REQUEST, UDP_ASSOCIATE_REPLY, UDP_DISSOCIATE)
"""The codecs of the UDP association control messages, sent once per association."""
