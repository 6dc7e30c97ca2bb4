"""SOCKS4 and SOCKS4a on the wire: the CONNECT request and its reply.

SOCKS4 (the NEC protocol memo) has no greeting: the client's first packet is its request,
an IPv4 address and a NUL-terminated user id. SOCKS4a lets a client that cannot resolve the
name send ``0.0.0.x`` (x not 0) as the address and the name, NUL-terminated, after the user id.
The port comes before the address, big-endian. The reply's version byte is 0, not 4.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

import construct as c

from schemas import WireError, introspect
from schemas.fields import StrictEnum, doc, packet, parse
from schemas.socks5 import MAX_FIELD_LENGTH, NotFast, _byte_table, _IpAddress

VERSION = 4
REPLY_VERSION = 0
MAX_TEXT = MAX_FIELD_LENGTH
"""The longest user id or name gjproxy reads (SOCKS4 sets no bound; SOCKS5's is 255)."""


class Command(enum.IntEnum):
    CONNECT = 1
    BIND = 2


class ReplyCode(enum.IntEnum):
    GRANTED = 90
    REJECTED = 91
    """request rejected or failed"""
    NO_IDENTD = 92
    IDENTD_MISMATCH = 93


def is_socks4a(address: str) -> bool:
    """Whether a request's address is SOCKS4a's marker ``0.0.0.x`` with x not 0."""
    return address.startswith("0.0.0.") and address != "0.0.0.0"


class _Text(c.Adapter):
    """NUL-terminated bytes (at most ``MAX_TEXT`` before the NUL), kept as ASCII text."""

    def __init__(self) -> None:
        super().__init__(c.NullTerminated(c.GreedyBytes))

    def _decode(self, obj: bytes, context: c.Container, path: str) -> str:
        if len(obj) > MAX_TEXT:
            raise c.ValidationError(f"longer than {MAX_TEXT} bytes", path=path)
        try:
            return obj.decode("ascii")
        except UnicodeDecodeError:
            raise c.ValidationError("not ASCII", path=path) from None

    def _encode(self, obj: str, context: c.Container, path: str) -> bytes:
        return obj.encode("ascii")


_Port = c.Int16ub

Socks4Request = packet(
    "Socks4Request",
    "version" / doc(c.Const(VERSION, c.Int8ub), "VN, protocol version, 4"),
    "command" / doc(StrictEnum(c.Int8ub, Command), "CD: 1 CONNECT, 2 BIND (gjproxy answers 91)"),
    "port" / doc(_Port, "DSTPORT"),
    "address" / doc(_IpAddress(4), "DSTIP; SOCKS4a: 0.0.0.x (x not 0) means a name follows"),
    "user_id" / doc(_Text(), "USERID, up to 255 bytes, then a NUL byte (gjproxy ignores it)"),
    "socks4a"
    / doc(
        c.Computed(lambda this: is_socks4a(this.address)),
        "no bytes: whether DSTIP is 0.0.0.x with x not 0 (SOCKS4a)",
    ),
    "host"
    / doc(
        c.If(c.this.socks4a, _Text()),
        "SOCKS4a only: the host name, up to 255 bytes, then a NUL byte",
    ),
    doc_text="client -> server, the first bytes of a SOCKS4 or SOCKS4a connection",
)

Socks4Reply = packet(
    "Socks4Reply",
    "version" / doc(c.Const(REPLY_VERSION, c.Int8ub), "VN of the reply, 0"),
    "reply"
    / doc(
        StrictEnum(c.Int8ub, ReplyCode),
        "90 granted, 91 rejected or failed, 92 and 93 identd (never sent by gjproxy)",
    ),
    "port" / doc(_Port, "DSTPORT (ignored by clients)"),
    "address" / doc(_IpAddress(4), "DSTIP (ignored by clients)"),
    doc_text="server -> client; after any reply but 90 the server closes",
)

PACKETS: tuple[c.Construct, ...] = (Socks4Request, Socks4Reply)


class Request(NamedTuple):
    """A ``Socks4Request``: ``host`` is the IPv4 address or, for SOCKS4a, the name."""

    command: Command
    host: str
    port: int
    user_id: str


class Socks4RequestReader:
    """Reads the request at the start of a client's buffer, by what the schema says of its
    fields (byte tables, the port's format, the address decoder); construct judges defects."""

    def __init__(self, schema: c.Struct) -> None:
        self.schema = schema
        self._tables = [
            _byte_table(introspect.field(schema, name).construct) for name in ("version", "command")
        ]
        port = introspect.field(schema, "port")
        self._port = struct.Struct(port.integer.format)
        address = introspect.field(schema, "address")
        self._address_at = address.offset
        self._decode_address = address.shape.construct._decode
        self._fixed = address.offset + address.shape.size

    def read(self, data: bytes | bytearray) -> tuple[int, Request] | None:
        """``(size, request)``, ``None`` while incomplete; a defect raises ``WireError``."""
        if len(data) < self._fixed:
            return None
        values = [table[byte] for table, byte in zip(self._tables, data, strict=False)]
        if not all(isinstance(value, int) for value in values):
            parse(self.schema, bytes(data))  # names the defective field
        address = self._decode_address(bytes(data[self._address_at : self._fixed]), None, "")
        user_end = self._nul(data, self._fixed, "user_id")
        if user_end is None:
            return None
        end, host = user_end + 1, address
        if is_socks4a(address):
            host_end = self._nul(data, end, "host")
            if host_end is None:
                return None
            host, end = bytes(data[end:host_end]), host_end + 1
        user_id = bytes(data[self._fixed : user_end])
        try:
            if isinstance(host, bytes):
                host = host.decode("ascii") if host else None
            user_text = user_id.decode("ascii")
            if host is None:
                raise NotFast
        except (UnicodeDecodeError, NotFast):
            parse(self.schema, bytes(data[:end]))  # names the defect
            raise WireError(self.schema.name, "host", "empty host name") from None
        (port,) = self._port.unpack_from(data, len(self._tables))
        return end, Request(values[1], host, port, user_text)

    def _nul(self, data: bytes | bytearray, start: int, field: str) -> int | None:
        """Where the NUL ending the text at ``start`` is; ``None`` while it may still come."""
        end = data.find(0, start, start + MAX_TEXT + 1)
        if end >= 0:
            return end
        if len(data) < start + MAX_TEXT + 1:
            return None
        raise WireError(self.schema.name, field, f"no NUL within {MAX_TEXT} bytes")


REQUEST_READER = Socks4RequestReader(Socks4Request)
