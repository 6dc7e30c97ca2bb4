"""SOCKS5 on the wire: RFC 1928 (methods, requests, replies, UDP) and RFC 1929 (user/password).

Every 16-bit field is big-endian ("network order"). The address types are SOCKS5's own
(1 IPv4, 3 domain name, 4 IPv6; jProxy numbers IPv6 2), and a SOCKS address has no length byte
before an IPv4 or IPv6 address: only a domain name carries one. Reserved bytes are sent as
zero and ignored when received, as RFC 1928 gives them no meaning.

The strict enums make an unknown command or address type a ``WireError`` whose ``field`` is
``"command"`` or ``"address.type"``, so a server can still answer it with reply 7 or 8.
"""

from __future__ import annotations

import abc
import enum
import functools
import io
import itertools
import operator
import struct
from typing import Generic, NamedTuple, TypeVar

import construct as c

from schemas import introspect
from schemas.fields import AddressKind, InRange, StrictEnum, doc, ip_of, packet, parse

VERSION = 5
PASSWORD_AUTH_VERSION = 1
MAX_FIELD_LENGTH = 255
"""Every SOCKS count and length is one byte: methods, user name, password, domain name."""


class AddressType(AddressKind):
    """ATYP (RFC 1928 section 4). jProxy numbers IPv6 2, not 4: ``schemas.jproxy.AddressType``
    is a different enum, and a host crosses from one to the other as text."""

    IPV4 = 1
    DOMAIN = 3
    IPV6 = 4


class Method(enum.IntEnum):
    """Authentication methods gjproxy selects (RFC 1928 section 3)."""

    NO_AUTH = 0x00
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 1
    BIND = 2
    UDP_ASSOCIATE = 3


class ReplyCode(enum.IntEnum):
    """The REP field of a reply (RFC 1928 section 6); anything but 0 is followed by a close."""

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class PasswordStatus(enum.IntEnum):
    """RFC 1929 status; on the wire any non-zero value means failure, so the field is open."""

    SUCCESS = 0
    FAILURE = 1


class _IpAddress(c.Adapter):
    """Packed address bytes <-> the address as text (dotted IPv4, compressed IPv6)."""

    def __init__(self, size: int) -> None:
        super().__init__(c.Bytes(size))
        self.size = size

    def _decode(self, obj: bytes, context: c.Container, path: str) -> str:
        return str(ip_of(obj))

    def _encode(self, obj: str, context: c.Container, path: str) -> bytes:
        address = ip_of(obj)
        packed = b"" if address is None else address.packed
        if len(packed) != self.size:
            raise c.ValidationError(f"{obj!r} is not a {self.size}-byte IP address", path=path)
        return packed


class _DomainName(c.Adapter):
    """A length-prefixed name, 1..255 ASCII bytes, kept as sent (never resolved here)."""

    def __init__(self) -> None:
        super().__init__(c.Prefixed(c.Int8ub, c.GreedyBytes))

    def _decode(self, obj: bytes, context: c.Container, path: str) -> str:
        if not obj:
            raise c.ValidationError("empty domain name", path=path)
        try:
            return obj.decode("ascii")
        except UnicodeDecodeError:
            raise c.ValidationError("domain name is not ASCII", path=path) from None

    def _encode(self, obj: str, context: c.Container, path: str) -> bytes:
        if not obj.isascii() or not 1 <= len(obj) <= MAX_FIELD_LENGTH:
            raise c.ValidationError(
                f"domain name must be 1..{MAX_FIELD_LENGTH} ASCII bytes, got {obj!r}", path=path
            )
        return obj.encode("ascii")


Address = c.Struct(
    "type" / doc(StrictEnum(c.Int8ub, AddressType), "ATYP: 1 IPv4, 3 domain name, 4 IPv6"),
    "host"
    / doc(
        c.Switch(
            c.this.type,
            {
                AddressType.IPV4: _IpAddress(4),
                AddressType.DOMAIN: _DomainName(),
                AddressType.IPV6: _IpAddress(16),
            },
            default=c.Error,
        ),
        "4 bytes (IPv4), 16 bytes (IPv6), or a length byte and a 1..255-byte ASCII name",
    ),
)

_Version = doc(c.Const(VERSION, c.Int8ub), "protocol version, 5")
_Reserved = doc(c.Padding(1), "reserved, 0x00 (ignored when received)")
_Port = c.Int16ub


def _length_prefixed(name: str, length_doc: str, data_doc: str) -> tuple[c.Construct, ...]:
    """A one-byte length rebuilt from the bytes that follow it."""
    return (
        f"{name}_length" / doc(c.Rebuild(c.Int8ub, c.len_(c.this[name])), length_doc),
        name / doc(c.Bytes(c.this[f"{name}_length"]), data_doc),
    )


SocksMethodRequest = packet(
    "SocksMethodRequest",
    "version" / _Version,
    "method_count"
    / doc(
        c.Rebuild(InRange(c.Int8ub, 1, MAX_FIELD_LENGTH), c.len_(c.this.methods)),
        "NMETHODS, 1..255",
    ),
    "methods"
    / doc(
        c.Array(c.this.method_count, c.Int8ub),
        "the methods the client supports: 0 no authentication, 1 GSSAPI, 2 user/password,"
        " 3-0x7F IANA-assigned, 0x80-0xFE private",
    ),
    doc_text="client -> server, first bytes of a SOCKS5 connection",
)

SocksMethodReply = packet(
    "SocksMethodReply",
    "version" / _Version,
    "method"
    / doc(
        StrictEnum(c.Int8ub, Method),
        "the method selected: 0 none, 2 user/password, 0xFF none acceptable (then close)",
    ),
    doc_text="server -> client",
)

SocksPasswordRequest = packet(
    "SocksPasswordRequest",
    "version"
    / doc(c.Const(PASSWORD_AUTH_VERSION, c.Int8ub), "user/password subnegotiation version, 1"),
    *_length_prefixed("username", "ULEN, 0..255", "UNAME, the user name (UTF-8 in gjproxy)"),
    *_length_prefixed("password", "PLEN, 0..255", "PASSWD, the password (UTF-8 in gjproxy)"),
    doc_text="client -> server (RFC 1929), after the server selected method 2",
)

SocksPasswordReply = packet(
    "SocksPasswordReply",
    "version"
    / doc(c.Const(PASSWORD_AUTH_VERSION, c.Int8ub), "user/password subnegotiation version, 1"),
    "status" / doc(c.Int8ub, "0 success; anything else is a failure and the server closes"),
    doc_text="server -> client (RFC 1929)",
)

SocksRequest = packet(
    "SocksRequest",
    "version" / _Version,
    "command"
    / doc(
        StrictEnum(c.Int8ub, Command),
        "1 CONNECT, 2 BIND, 3 UDP ASSOCIATE; gjproxy answers BIND and unknown codes with 7",
    ),
    "reserved" / _Reserved,
    "address"
    / doc(
        Address,
        "DST.ADDR: where to connect; for UDP ASSOCIATE the address the client will send"
        " datagrams from (often 0.0.0.0); an unknown type is answered with 8",
    ),
    "port" / doc(_Port, "DST.PORT"),
    doc_text="client -> server, once the method (and its subnegotiation) succeeded",
)

SocksReply = packet(
    "SocksReply",
    "version" / _Version,
    "reply"
    / doc(
        StrictEnum(c.Int8ub, ReplyCode),
        "0 succeeded, 1 general failure, 2 not allowed by ruleset, 3 network unreachable,"
        " 4 host unreachable, 5 connection refused, 6 TTL expired, 7 command not supported,"
        " 8 address type not supported",
    ),
    "reserved" / _Reserved,
    "address"
    / doc(
        Address,
        "BND.ADDR: the server's local address of the connection, or the UDP relay address",
    ),
    "port" / doc(_Port, "BND.PORT"),
    doc_text="server -> client; after a non-zero reply the server closes",
)

SocksUdpDatagram = packet(
    "SocksUdpDatagram",
    "reserved" / doc(c.Padding(2), "reserved, 0x0000 (ignored when received)"),
    "fragment" / doc(c.Int8ub, "FRAG: 0 for a whole datagram; gjproxy drops fragments (non-zero)"),
    "address" / doc(Address, "DST.ADDR: the remote end (source address on the way back)"),
    "port" / doc(_Port, "DST.PORT"),
    "data" / doc(c.GreedyBytes, "the datagram's payload"),
    doc_text="both directions over UDP, between a client and the server's UDP relay",
)

PACKETS: tuple[c.Construct, ...] = (
    SocksMethodRequest,
    SocksMethodReply,
    SocksPasswordRequest,
    SocksPasswordReply,
    SocksRequest,
    SocksReply,
    SocksUdpDatagram,
)
"""Every top-level packet of this module, in the order of a SOCKS5 exchange."""


def packet_size(schema: c.Construct, data: bytes) -> int | None:
    """Bytes the packet at the start of ``data`` occupies, ``None`` while they are too few.

    A stream protocol needs this to know where one packet ends. On a defect the answer is
    ``len(data)``, so that ``parse(schema, data[:size])`` reports it as a ``WireError``.
    """
    stream = io.BytesIO(data)
    try:
        _unterminated(schema).parse_stream(stream)
    except c.StreamError:
        return None
    except (c.ConstructError, ValueError):
        return len(data)
    return stream.tell()


@functools.cache
def _unterminated(schema: c.Construct) -> c.Construct:
    """``schema`` without the end-of-input check that ``packet()`` appends."""
    return c.Struct(*(sub for sub in schema.subcons if sub is not c.Terminated))


# --- readers for the server: the packets a client sends, off the front of a stream ----------
# Every new SOCKS connection passes through them, and construct takes tens of microseconds per
# packet. So they read with what they derive from the schemas above (byte tables, address
# sizes and decoders) and hand anything unusual to construct, which then names the defect
# exactly as the schema does. tests/unit/test_socks5_schema.py proves both paths agree.


class NotFast(Exception):
    """The fast path cannot vouch for these bytes: construct decides, and names any defect."""


_REFUSED = object()
"""What a byte table holds for a value its field refuses."""


def _byte_table(field: c.Construct) -> tuple[object, ...]:
    """What the one-byte ``field`` decodes each byte value to, or ``_REFUSED``."""
    values = introspect.byte_values(field)
    return tuple(values.get(value, _REFUSED) for value in range(256))


class _ByteHeader:
    """The one-byte fields a packet starts with, each checked against its byte table."""

    def __init__(self, schema: c.Struct) -> None:
        fields = itertools.takewhile(lambda field: field.size == 1, introspect.fields(schema))
        self.tables = tuple(_byte_table(field.construct) for field in fields)
        self.size = len(self.tables)

    def decode(self, data: bytes | bytearray) -> list[object] | None:
        """The decoded fields, ``None`` while some are missing; a refused value raises
        ``NotFast``. construct reads fields in order too, so it would also wait for the rest."""
        values = list(map(operator.getitem, self.tables, data))  # stops after the header
        if _REFUSED in values:
            raise NotFast
        return values if len(values) == self.size else None


def _prefixed_end(data: bytes | bytearray, start: int) -> int | None:
    """Where the bytes after the one-byte length at ``start`` end; ``None`` while incomplete."""
    if len(data) <= start:
        return None
    end = start + 1 + data[start]
    return end if len(data) >= end else None


class Greeting(NamedTuple):
    """A ``SocksMethodRequest``: the methods the client offers, one byte each."""

    methods: bytes


class Login(NamedTuple):
    """A ``SocksPasswordRequest``."""

    username: bytes
    password: bytes


class Request(NamedTuple):
    """A ``SocksRequest``: ``host`` is IP text or a name as sent."""

    command: Command
    host: str
    port: int


Fields = TypeVar("Fields", Greeting, Login, Request)


class SocksReader(abc.ABC, Generic[Fields]):
    """Reads the packet at the start of a client's stream buffer."""

    def __init__(self, schema: c.Struct) -> None:
        self.schema = schema
        self.header = _ByteHeader(schema)

    def read(self, data: bytes | bytearray) -> tuple[int, Fields] | None:
        """``(size, fields)`` of the packet at the start of ``data``, ``None`` while it is
        incomplete; a defect raises the schema's own ``WireError``."""
        try:
            return self.read_fast(data)
        except NotFast:
            return self.read_with_construct(data)

    def read_fast(self, data: bytes | bytearray) -> tuple[int, Fields] | None:
        """``read`` without construct; raises ``NotFast`` where construct has to decide."""
        header = self.header.decode(data)
        return None if header is None else self._read_rest(data, header)

    def read_with_construct(self, data: bytes | bytearray) -> tuple[int, Fields] | None:
        """``read`` by construct alone: ``packet_size``, then ``parse``."""
        size = packet_size(self.schema, data)
        if size is None:
            return None
        return size, self._fields_of(parse(self.schema, bytes(data[:size])))

    @abc.abstractmethod
    def _read_rest(
        self, data: bytes | bytearray, header: list[object]
    ) -> tuple[int, Fields] | None: ...

    @abc.abstractmethod
    def _fields_of(self, fields: c.Container) -> Fields: ...


class SocksMethodRequestReader(SocksReader[Greeting]):
    """The greeting: version, method count, one byte per method."""

    def __init__(self, schema: c.Struct) -> None:
        super().__init__(schema)
        methods = introspect.field(schema, "methods").shape
        if not (isinstance(methods, introspect.Repeat) and methods.element.size == 1):
            raise TypeError(f"{schema.name} methods are not one byte each")

    def _read_rest(
        self, data: bytes | bytearray, header: list[object]
    ) -> tuple[int, Greeting] | None:
        _, count = header
        end = self.header.size + count
        if len(data) < end:
            return None
        return end, Greeting(bytes(data[self.header.size : end]))

    def _fields_of(self, fields: c.Container) -> Greeting:
        return Greeting(bytes(fields.methods))


class SocksPasswordRequestReader(SocksReader[Login]):
    """The RFC 1929 login: version, then user name and password, each after its length byte."""

    def _read_rest(self, data: bytes | bytearray, header: list[object]) -> tuple[int, Login] | None:
        _, name_length = header
        name_end = self.header.size + name_length
        password_end = _prefixed_end(data, name_end)
        if password_end is None:
            return None
        username = bytes(data[self.header.size : name_end])
        return password_end, Login(username, bytes(data[name_end + 1 : password_end]))

    def _fields_of(self, fields: c.Container) -> Login:
        return Login(fields.username, fields.password)


class _HostField:
    """One case of the address switch: its size (``None``: a length byte says) and decoder."""

    def __init__(self, case: introspect.Shape) -> None:
        self.decode = case.construct._decode
        prefixed = isinstance(case, introspect.Prefixed)
        if prefixed and case.length.size != 1:
            raise TypeError(f"{case.construct!r} is not prefixed by one length byte")
        self.size = None if prefixed else case.size


class _AddressReader:
    """A SOCKS address (after its type byte) and the port behind it, read by what the
    ``Address`` switch of a schema says about each type."""

    def __init__(self, schema: c.Struct) -> None:
        switch = introspect.field(schema, "address.host").shape
        self._hosts = {code: _HostField(case) for code, case in switch.cases.items()}
        self._port = struct.Struct(introspect.field(schema, "port").integer.format)

    def read(
        self, data: bytes | bytearray, address_type: object, start: int
    ) -> tuple[int, str, int] | None:
        """``(end, host, port)`` of the address starting at ``start``; ``None`` while the
        bytes are too few; ``NotFast`` for what construct has to judge."""
        field = self._hosts.get(address_type)
        if field is None:
            raise NotFast
        if field.size is None:
            end = _prefixed_end(data, start)
            start += 1
        else:
            end = start + field.size if len(data) >= start + field.size else None
        if end is None:
            return None
        try:  # before the port arrives: construct decodes a host as soon as it has read it
            host = field.decode(bytes(data[start:end]), None, "")
        except (c.ConstructError, ValueError):
            raise NotFast from None
        if len(data) < end + self._port.size:
            return None
        (port,) = self._port.unpack_from(data, end)
        return end + self._port.size, host, port


class SocksRequestReader(SocksReader[Request]):
    """The request: version, command, reserved, address type, address, port."""

    def __init__(self, schema: c.Struct) -> None:
        super().__init__(schema)
        self._address = _AddressReader(schema)

    def _read_rest(
        self, data: bytes | bytearray, header: list[object]
    ) -> tuple[int, Request] | None:
        _, command, _, address_type = header
        address = self._address.read(data, address_type, self.header.size)
        if address is None:
            return None
        end, host, port = address
        return end, Request(command, host, port)

    def _fields_of(self, fields: c.Container) -> Request:
        return Request(fields.command, fields.address.host, fields.port)


class UdpDatagram(NamedTuple):
    """A ``SocksUdpDatagram``: ``host`` is IP text or a name as sent."""

    fragment: int
    host: str
    port: int
    data: bytes


class SocksUdpDatagramReader:
    """Reads one whole datagram: reserved bytes, fragment, address type, address, port, data.

    Every datagram of a UDP association passes through here, so it reads with what it derives
    from the schema (sizes, byte tables, address decoders) and hands anything unusual to
    construct, which names the defect.
    """

    def __init__(self, schema: c.Struct) -> None:
        self.schema = schema
        self._reserved = introspect.field(schema, "reserved").size
        self._fragment = _byte_table(introspect.field(schema, "fragment").construct)
        self._types = _byte_table(introspect.field(schema, "address.type").construct)
        self._address = _AddressReader(schema)

    def read(self, datagram: bytes) -> UdpDatagram:
        """The datagram's fields; a defect raises the schema's own ``WireError``."""
        try:
            return self.read_fast(datagram)
        except NotFast:
            fields = parse(self.schema, datagram)
            return UdpDatagram(fields.fragment, fields.address.host, fields.port, fields.data)

    def read_fast(self, datagram: bytes) -> UdpDatagram:
        """``read`` without construct; raises ``NotFast`` where construct has to decide."""
        start = self._reserved + 2  # the fragment and address type bytes
        if len(datagram) < start:
            raise NotFast
        fragment = self._fragment[datagram[start - 2]]
        address_type = self._types[datagram[start - 1]]
        if _REFUSED in (fragment, address_type):
            raise NotFast
        address = self._address.read(datagram, address_type, start)
        if address is None:
            raise NotFast
        end, host, port = address
        return UdpDatagram(fragment, host, port, datagram[end:])


METHOD_REQUEST_READER = SocksMethodRequestReader(SocksMethodRequest)
PASSWORD_REQUEST_READER = SocksPasswordRequestReader(SocksPasswordRequest)
REQUEST_READER = SocksRequestReader(SocksRequest)
UDP_DATAGRAM_READER = SocksUdpDatagramReader(SocksUdpDatagram)
