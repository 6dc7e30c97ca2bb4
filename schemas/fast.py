"""Hot-path codecs derived from the schemas, not written a second time.

construct interprets a schema on every call (tens of microseconds). The frame envelope and the
data messages are parsed and built for every chunk a tunnel carries, so for them this module
reads the fixed-size header fields out of the schema once and packs them with one
``struct.Struct``. Tests prove the fast path and the schema agree on every vector.
"""

from __future__ import annotations

import struct

import construct as c

from schemas import jproxy
from schemas.errors import WireError


def _format_of(field: c.Construct) -> tuple[str, object]:
    """The struct format of one fixed-size integer field, and its constant value if any."""
    const = None
    while not isinstance(field, c.FormatField):
        if isinstance(field, c.Const):
            const = field.value
        if not isinstance(field, c.Subconstruct):
            raise TypeError(f"{field!r} is not a fixed-size integer field")
        field = field.subcon
    return field.fmtstr, const


def header_of(schema: c.Construct) -> tuple[struct.Struct, tuple[object, ...]]:
    """The leading run of fixed integer fields of ``schema`` as one Struct, plus constants."""
    order, formats, constants = None, [], []
    for field in schema.subcons:
        try:
            fmt, const = _format_of(field)
        except TypeError:
            break
        if order not in (None, fmt[0]):
            raise TypeError(f"{schema.name} mixes byte orders")
        order = fmt[0]
        formats.append(fmt[1:])
        constants.append(const)
    return struct.Struct(order + "".join(formats)), tuple(constants)


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

    def build(self, connection_id: int, data: bytes) -> bytes:
        """The message bytes carrying ``data`` (at most 65535 bytes) on ``connection_id``."""
        try:
            return self._pack(self.type_code, connection_id, len(data)) + data
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
