"""ICMP echo on the wire (RFC 792 for IPv4, RFC 4443 for IPv6): what the server's ping sockets
send and receive for the tunnel's ICMP echo messages.

A ping socket (``SOCK_DGRAM`` with ``IPPROTO_ICMP``/``IPPROTO_ICMPV6``) reads and writes just
this message; a raw IPv4 socket also hands over the IP header in front of it, which the server
skips. The kernel of a ping socket replaces the identifier with its own and fills in the
checksum; on a raw socket the sender computes it (IPv6 raw sockets compute it themselves).
"""

from __future__ import annotations

import enum

import construct as c

from schemas.fields import StrictEnum, doc, packet


class IcmpType(enum.IntEnum):
    """The echo types of ICMPv4 and ICMPv6; the server reads no other type."""

    ECHO_REPLY = 0
    ECHO_REQUEST = 8
    ECHO_REQUEST_V6 = 128
    ECHO_REPLY_V6 = 129


ECHO_REQUEST_TYPE = {4: IcmpType.ECHO_REQUEST, 6: IcmpType.ECHO_REQUEST_V6}
ECHO_REPLY_TYPE = {4: IcmpType.ECHO_REPLY, 6: IcmpType.ECHO_REPLY_V6}
"""Echo types by IP version."""

IcmpEcho = packet(
    "IcmpEcho",
    "type"
    / doc(
        StrictEnum(c.Int8ub, IcmpType), "8 request, 0 reply (IPv4); 128 request, 129 reply (IPv6)"
    ),
    "code" / doc(c.Const(0, c.Int8ub), "0"),
    "checksum" / doc(c.Int16ub, "one's complement sum of the message (0 while computing it)"),
    "identifier" / doc(c.Int16ub, "chosen by the sender (a ping socket's kernel sets its own)"),
    "sequence" / doc(c.Int16ub, "counts the echoes of one identifier"),
    "data" / doc(c.GreedyBytes, "payload, returned unchanged in the reply"),
    doc_text="server <-> pinged host, the payload of an ICMP or ICMPv6 datagram",
)

Ipv4HeaderStart = c.BitStruct(
    "version" / doc(c.BitsInteger(4), "4"),
    "words" / doc(c.BitsInteger(4), "IHL: header length in 32-bit words (5..15)"),
)
"""The first byte of an IPv4 header, which an IPv4 raw socket hands over before the ICMP
message: how many bytes to skip."""

PACKETS: tuple[c.Construct, ...] = (IcmpEcho,)
"""Every top-level packet of this module."""
