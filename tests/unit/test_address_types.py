"""IPv6 is address type 2 in jProxy (both dialects, as the Java code has it) and 4 in SOCKS5.

Issue 9 found gjproxy sending SOCKS5's 4 inside the tunnel: the Java server threw "Unknown
address type: 4" and the Java client's 2 was dropped by gjproxy. These tests pin the bytes the
Java client sent, through construct and the fast codec, in frames of both dialects, and the
crossing from a SOCKS request (type 4) to a tunnel connect (type 2).
"""

from __future__ import annotations

import os

import pytest

from jproxy.socks.socks5 import ConnectRequested, Socks5Server
from jproxy.tunnel.session import Role, Session
from schemas import WireError, build, parse, socks5
from schemas import jproxy as wire
from schemas.fast import TCP_CONNECT_REQUEST

JAVA_CONNECT_TO_V6_LOOPBACK = bytes.fromhex("01 0000 9c68 02 10" + "00" * 15 + "01")
"""The Java 3.0 client's connect to [::1]:40040 (id 0), decrypted, as issue 9 quotes it."""

SOCKS_NO_AUTH = bytes.fromhex("050100")
SOCKS_CONNECT_TO_V6_LOOPBACK = bytes.fromhex("05010004" + "00" * 15 + "01" + "9c68")


def _sessions(dialect: wire.Dialect) -> tuple[Session, Session]:
    key = os.urandom(16)
    return Session(dialect, key, Role.CLIENT), Session(dialect, key, Role.SERVER)


@pytest.mark.parametrize("dialect", list(wire.Dialect), ids=lambda d: d.name)
def test_ipv6_connect_is_type_2_both_ways_through_a_tunnel(dialect: wire.Dialect) -> None:
    # gjproxy as the client: both builders write what the Java server reads.
    fields = {"connection_id": 0, "port": 40040, "address": wire.address_for("::1")}
    built = TCP_CONNECT_REQUEST.build(0, 40040, wire.AddressType.IPV6, "::1")
    assert built == build(wire.TcpConnectRequest, fields) == JAVA_CONNECT_TO_V6_LOOPBACK

    # gjproxy as the server: the Java client's bytes, out of a frame, read by both parsers.
    client, server = _sessions(dialect)
    [received] = server.feed(client.seal(JAVA_CONNECT_TO_V6_LOOPBACK))
    expected = (0, 40040, wire.AddressType.IPV6, "::1")
    assert TCP_CONNECT_REQUEST.fast_parse(received) == expected
    assert TCP_CONNECT_REQUEST.parse(received) == expected
    schema, parsed = wire.parse_message(received, wire.Direction.CLIENT_TO_SERVER)
    assert schema is wire.TcpConnectRequest
    assert parsed.address.type is wire.AddressType.IPV6
    assert parsed.address.host == "::1"


@pytest.mark.parametrize(
    ("message", "hex_bytes"),
    [
        (wire.TcpConnectRequest, "01 0000 9c68 04 10" + "00" * 15 + "01"),
        (wire.UdpAssociateRequest, "02 0000 0000 9c68 04 10" + "00" * 15 + "01"),
        (wire.IcmpEchoRequest, "03 0000 07d0 04 10" + "00" * 15 + "01" + "0000"),
    ],
    ids=lambda value: getattr(value, "name", ""),
)
def test_socks5_ipv6_code_is_unknown_inside_the_tunnel(message, hex_bytes: str) -> None:
    """What gjproxy sent before: the Java server threw "Unknown address type: 4"."""
    with pytest.raises(WireError) as caught:
        parse(message, bytes.fromhex(hex_bytes))
    assert (caught.value.field, caught.value.reason) == (
        "address.type",
        "unknown AddressType value 4",
    )
    if message is wire.TcpConnectRequest:
        assert TCP_CONNECT_REQUEST.fast_parse(bytes.fromhex(hex_bytes)) is None


def test_socks5_connect_type_4_becomes_tunnel_connect_type_2() -> None:
    """The client's crossing: SOCKS ATYP 4 -> host text -> jProxy type 2, never the number."""
    [_, request] = Socks5Server().receive(SOCKS_NO_AUTH + SOCKS_CONNECT_TO_V6_LOOPBACK)
    assert request == ConnectRequested("::1", 40040)
    assert parse(socks5.SocksRequest, SOCKS_CONNECT_TO_V6_LOOPBACK).address.type == 4
    address = wire.address_for(request.host)
    assert address["type"] is wire.AddressType.IPV6
    connect = TCP_CONNECT_REQUEST.build(0, request.port, address["type"], request.host)
    assert connect == JAVA_CONNECT_TO_V6_LOOPBACK


def test_the_two_enums_differ_only_in_ipv6() -> None:
    assert {m.name: int(m) for m in wire.AddressType} == {"IPV4": 1, "IPV6": 2, "DOMAIN": 3}
    assert {m.name: int(m) for m in socks5.AddressType} == {"IPV4": 1, "DOMAIN": 3, "IPV6": 4}
    for host, name in (("192.0.2.1", "IPV4"), ("2001:db8::1", "IPV6"), ("example.org", "DOMAIN")):
        assert wire.AddressType.of(host) is wire.AddressType[name]
        assert socks5.AddressType.of(host) is socks5.AddressType[name]


def test_socks_reply_for_an_ipv6_bound_address_uses_type_4() -> None:
    reply = build(
        socks5.SocksReply,
        {
            "reply": socks5.ReplyCode.SUCCEEDED,
            "address": {"type": socks5.AddressType.of("::1"), "host": "::1"},
            "port": 80,
        },
    )
    assert reply == bytes.fromhex("05000004" + "00" * 15 + "01" + "0050")
