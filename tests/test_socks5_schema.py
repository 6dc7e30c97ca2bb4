"""SOCKS5 schemas against hand-checked bytes (RFC 1928/1929): both directions, every packet."""

from __future__ import annotations

import pytest

from schemas import WireError, build, parse
from schemas.socks5 import (
    PACKETS,
    AddressType,
    Command,
    Method,
    ReplyCode,
    SocksMethodReply,
    SocksMethodRequest,
    SocksPasswordReply,
    SocksPasswordRequest,
    SocksReply,
    SocksRequest,
    SocksUdpDatagram,
    packet_size,
)

IPV4 = AddressType.IPV4
IPV6 = AddressType.IPV6
DOMAIN = AddressType.DOMAIN

# (schema, wire bytes as hex, fields): parse(hex) == fields and build(fields) == hex.
VECTORS = [
    (SocksMethodRequest, "050100", {"version": 5, "method_count": 1, "methods": [0]}),
    (SocksMethodRequest, "0503000102", {"version": 5, "method_count": 3, "methods": [0, 1, 2]}),
    (SocksMethodRequest, "050180", {"version": 5, "method_count": 1, "methods": [0x80]}),
    (SocksMethodReply, "0500", {"version": 5, "method": Method.NO_AUTH}),
    (SocksMethodReply, "0502", {"version": 5, "method": Method.USERNAME_PASSWORD}),
    (SocksMethodReply, "05ff", {"version": 5, "method": Method.NO_ACCEPTABLE}),
    (
        SocksPasswordRequest,
        "0105616c69636506736563726574",
        {
            "version": 1,
            "username_length": 5,
            "username": b"alice",
            "password_length": 6,
            "password": b"secret",
        },
    ),
    (
        SocksPasswordRequest,
        "010000",
        {
            "version": 1,
            "username_length": 0,
            "username": b"",
            "password_length": 0,
            "password": b"",
        },
    ),
    (SocksPasswordReply, "0100", {"version": 1, "status": 0}),
    (SocksPasswordReply, "0101", {"version": 1, "status": 1}),
    (SocksPasswordReply, "01ff", {"version": 1, "status": 0xFF}),
    (
        SocksRequest,
        "050100017f0000010050",
        {
            "version": 5,
            "command": Command.CONNECT,
            "reserved": None,
            "address": {"type": IPV4, "host": "127.0.0.1"},
            "port": 80,
        },
    ),
    (
        SocksRequest,
        "05010004200108800000000000000000000000010016",
        {
            "version": 5,
            "command": Command.CONNECT,
            "reserved": None,
            "address": {"type": IPV6, "host": "2001:880::1"},
            "port": 22,
        },
    ),
    (
        SocksRequest,
        "050100030b6578616d706c652e636f6d01bb",
        {
            "version": 5,
            "command": Command.CONNECT,
            "reserved": None,
            "address": {"type": DOMAIN, "host": "example.com"},
            "port": 443,
        },
    ),
    (
        SocksRequest,
        "05030001000000000000",
        {
            "version": 5,
            "command": Command.UDP_ASSOCIATE,
            "reserved": None,
            "address": {"type": IPV4, "host": "0.0.0.0"},
            "port": 0,
        },
    ),
    (
        SocksRequest,
        "05020001c0a800011f90",
        {
            "version": 5,
            "command": Command.BIND,
            "reserved": None,
            "address": {"type": IPV4, "host": "192.168.0.1"},
            "port": 8080,
        },
    ),
    # The reply the Java jProxy 3.0 client sent (vectors/java-3.0, application_steps).
    (
        SocksReply,
        "050000017f0000016db1",
        {
            "version": 5,
            "reply": ReplyCode.SUCCEEDED,
            "reserved": None,
            "address": {"type": IPV4, "host": "127.0.0.1"},
            "port": 0x6DB1,
        },
    ),
    (
        SocksReply,
        "0500000400000000000000000000000000000001abcd",
        {
            "version": 5,
            "reply": ReplyCode.SUCCEEDED,
            "reserved": None,
            "address": {"type": IPV6, "host": "::1"},
            "port": 0xABCD,
        },
    ),
    (
        SocksReply,
        "05050003096c6f63616c686f73740000",
        {
            "version": 5,
            "reply": ReplyCode.CONNECTION_REFUSED,
            "reserved": None,
            "address": {"type": DOMAIN, "host": "localhost"},
            "port": 0,
        },
    ),
    (
        SocksUdpDatagram,
        "0000000108080808003571756572",
        {
            "reserved": None,
            "fragment": 0,
            "address": {"type": IPV4, "host": "8.8.8.8"},
            "port": 53,
            "data": b"quer",
        },
    ),
    (
        SocksUdpDatagram,
        "0000000304686f7374007b",
        {
            "reserved": None,
            "fragment": 0,
            "address": {"type": DOMAIN, "host": "host"},
            "port": 123,
            "data": b"",
        },
    ),
    (
        SocksUdpDatagram,
        "00000204fe800000000000000000000000000001ffff00",
        {
            "reserved": None,
            "fragment": 2,
            "address": {"type": IPV6, "host": "fe80::1"},
            "port": 0xFFFF,
            "data": b"\x00",
        },
    ),
]

IDS = [f"{schema.name}-{hex_bytes}" for schema, hex_bytes, _ in VECTORS]


def test_every_packet_has_a_vector() -> None:
    assert {schema.name for schema, _, _ in VECTORS} == {schema.name for schema in PACKETS}


@pytest.mark.parametrize(("schema", "hex_bytes", "fields"), VECTORS, ids=IDS)
def test_parse(schema, hex_bytes, fields) -> None:
    assert parse(schema, bytes.fromhex(hex_bytes)) == fields


@pytest.mark.parametrize(("schema", "hex_bytes", "fields"), VECTORS, ids=IDS)
def test_build(schema, hex_bytes, fields) -> None:
    assert build(schema, fields).hex() == hex_bytes


def _header_size(raw: bytes, fields: dict) -> int:
    """Bytes before the payload: a datagram's payload runs to its end, so it may be cut anywhere."""
    return len(raw) - len(fields.get("data", b""))


@pytest.mark.parametrize(("schema", "hex_bytes", "fields"), VECTORS, ids=IDS)
def test_truncated_at_every_byte(schema, hex_bytes, fields) -> None:
    raw = bytes.fromhex(hex_bytes)
    for end in range(_header_size(raw, fields)):
        with pytest.raises(WireError) as caught:
            parse(schema, raw[:end])
        assert caught.value.packet == schema.name


@pytest.mark.parametrize(("schema", "hex_bytes", "fields"), VECTORS, ids=IDS)
def test_packet_size_waits_for_the_whole_packet(schema, hex_bytes, fields) -> None:
    raw = bytes.fromhex(hex_bytes)
    cuts = range(_header_size(raw, fields))
    assert [packet_size(schema, raw[:end]) for end in cuts] == [None] * len(cuts)
    assert packet_size(schema, raw) == len(raw)


STREAM_VECTORS = [vector for vector in VECTORS if vector[0] is not SocksUdpDatagram]


@pytest.mark.parametrize(("schema", "hex_bytes", "fields"), STREAM_VECTORS)
def test_packet_size_stops_at_the_end(schema, hex_bytes, fields) -> None:
    raw = bytes.fromhex(hex_bytes)
    assert packet_size(schema, raw + b"\x05\x01\x00") == len(raw)


@pytest.mark.parametrize(
    ("schema", "hex_bytes", "field"),
    [
        (SocksMethodRequest, "0401", "version"),
        (SocksMethodRequest, "0500", "method_count"),
        (SocksMethodReply, "0501", "method"),
        (SocksPasswordRequest, "050000", "version"),
        (SocksRequest, "05000001", "command"),
        (SocksRequest, "05040001", "command"),
        (SocksRequest, "05010002", "address.type"),
        (SocksRequest, "0501000300", "address.host"),
        (SocksRequest, "050100030261ff0050", "address.host"),
        (SocksReply, "05090001", "reply"),
        (SocksUdpDatagram, "00000005", "address.type"),
    ],
)
def test_defects_name_their_field(schema, hex_bytes, field) -> None:
    raw = bytes.fromhex(hex_bytes)
    assert packet_size(schema, raw) == len(raw)
    with pytest.raises(WireError) as caught:
        parse(schema, raw)
    assert (caught.value.packet, caught.value.field) == (schema.name, field)


@pytest.mark.parametrize(
    "address",
    [
        {"type": IPV4, "host": "::1"},
        {"type": IPV4, "host": "not an address"},
        {"type": IPV6, "host": "10.0.0.1"},
        {"type": DOMAIN, "host": ""},
        {"type": DOMAIN, "host": "x" * 256},
        {"type": DOMAIN, "host": "bücher.example"},
        {"type": 2, "host": "1.2.3.4"},
    ],
)
def test_unbuildable_addresses(address) -> None:
    with pytest.raises(WireError) as caught:
        build(SocksReply, {"reply": ReplyCode.SUCCEEDED, "address": address, "port": 1})
    assert caught.value.field.startswith("address.")


def test_lengths_are_rebuilt_and_bounded() -> None:
    fields = {"username": b"u" * 255, "password": b""}
    assert build(SocksPasswordRequest, fields)[:2] == b"\x01\xff"
    with pytest.raises(WireError):
        build(SocksPasswordRequest, {"username": b"u" * 256, "password": b""})
    with pytest.raises(WireError):
        build(SocksMethodRequest, {"methods": []})
    with pytest.raises(WireError):
        build(SocksMethodRequest, {"methods": [0] * 256})


def test_trailing_bytes_are_a_defect() -> None:
    with pytest.raises(WireError) as caught:
        parse(SocksRequest, bytes.fromhex("050100017f000001005000"))
    assert (caught.value.packet, caught.value.field) == ("SocksRequest", "")


def test_reserved_bytes_are_ignored_when_received() -> None:
    request = parse(SocksRequest, bytes.fromhex("0501ff017f0000010050"))
    assert request.address.host == "127.0.0.1"
    datagram = parse(SocksUdpDatagram, bytes.fromhex("abcd00017f0000010050"))
    assert datagram.port == 80
