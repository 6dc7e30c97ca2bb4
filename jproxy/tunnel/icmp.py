"""ICMP echo messages for the server's ping sockets, sans-I/O: build a request, read a reply.

The layout is ``schemas.icmp.IcmpEcho``; this module adds the Internet checksum (RFC 1071),
which ping sockets and IPv6 raw sockets compute themselves but IPv4 raw sockets do not, and
finds the echo reply in what a socket returns (an IPv4 raw socket puts the IP header first).
"""

from __future__ import annotations

from typing import NamedTuple

from schemas.errors import WireError
from schemas.fields import build, parse
from schemas.icmp import ECHO_REPLY_TYPE, ECHO_REQUEST_TYPE, IcmpEcho, Ipv4HeaderStart


class EchoReply(NamedTuple):
    identifier: int
    sequence: int
    data: bytes


def checksum(data: bytes) -> int:
    """The 16-bit one's complement of the one's complement sum of ``data`` (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(version: int, identifier: int, sequence: int, data: bytes) -> bytes:
    """An echo request for IP ``version`` (4 or 6), its checksum filled in."""
    fields = {
        "type": ECHO_REQUEST_TYPE[version],
        "checksum": 0,
        "identifier": identifier,
        "sequence": sequence,
        "data": data,
    }
    unsummed = build(IcmpEcho, fields)
    return build(IcmpEcho, {**fields, "checksum": checksum(unsummed)})


def read_echo_reply(version: int, packet: bytes, with_ip_header: bool) -> EchoReply | None:
    """The echo reply in ``packet``; ``None`` for anything else (other ICMP, garbage)."""
    if with_ip_header:
        if not packet:
            return None
        start = Ipv4HeaderStart.parse(packet)
        if start.version != 4:
            return None
        packet = packet[start.words * 4 :]
    try:
        fields = parse(IcmpEcho, packet)
    except WireError:
        return None
    if fields.type is not ECHO_REPLY_TYPE[version]:
        return None
    return EchoReply(fields.identifier, fields.sequence, fields.data)
