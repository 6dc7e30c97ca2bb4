"""SOCKS5 schemas against hand-checked bytes (RFC 1928/1929): both directions, every packet;
and the readers derived from them against construct, on vectors and on random bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import WireError, build, parse
from schemas.socks5 import (
    METHOD_REQUEST_READER,
    PACKETS,
    PASSWORD_REQUEST_READER,
    REQUEST_READER,
    UDP_DATAGRAM_READER,
    AddressType,
    Command,
    Greeting,
    Login,
    Method,
    NotFast,
    ReplyCode,
    Request,
    SocksMethodReply,
    SocksMethodRequest,
    SocksPasswordReply,
    SocksPasswordRequest,
    SocksReader,
    SocksReply,
    SocksRequest,
    SocksUdpDatagram,
    UdpDatagram,
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


# --- the readers a server uses: the derived fast path against construct --------------------

READERS = {
    "greeting": METHOD_REQUEST_READER,
    "login": PASSWORD_REQUEST_READER,
    "request": REQUEST_READER,
}

READER_VECTORS = [
    (METHOD_REQUEST_READER, "050100", Greeting(b"\x00")),
    (METHOD_REQUEST_READER, "0503000102", Greeting(b"\x00\x01\x02")),
    (METHOD_REQUEST_READER, "05ff" + bytes(range(255)).hex(), Greeting(bytes(range(255)))),
    (PASSWORD_REQUEST_READER, "0105616c69636506736563726574", Login(b"alice", b"secret")),
    (PASSWORD_REQUEST_READER, "010000", Login(b"", b"")),
    (PASSWORD_REQUEST_READER, "0102ffff01ff", Login(b"\xff\xff", b"\xff")),
    (REQUEST_READER, "050100017f0000010050", Request(Command.CONNECT, "127.0.0.1", 80)),
    (
        REQUEST_READER,
        "05010004200108800000000000000000000000010016",
        Request(Command.CONNECT, "2001:880::1", 22),
    ),
    (
        REQUEST_READER,
        "050100030b6578616d706c652e636f6d01bb",
        Request(Command.CONNECT, "example.com", 443),
    ),
    (REQUEST_READER, "05030001000000000000", Request(Command.UDP_ASSOCIATE, "0.0.0.0", 0)),
    (REQUEST_READER, "05020001c0a800011f90", Request(Command.BIND, "192.168.0.1", 8080)),
    (REQUEST_READER, "0501ff017f000001ffff", Request(Command.CONNECT, "127.0.0.1", 0xFFFF)),
]


@pytest.mark.parametrize(("reader", "hex_bytes", "fields"), READER_VECTORS)
def test_reader_takes_valid_packets_without_construct(
    reader: SocksReader, hex_bytes: str, fields: tuple
) -> None:
    raw = bytes.fromhex(hex_bytes)
    for data in (raw, bytearray(raw), raw + b"\x05\x01\x00"):
        assert reader.read_fast(data) == (len(raw), fields)
        assert reader.read(data) == (len(raw), fields)
        assert reader.read_with_construct(data) == (len(raw), fields)


@pytest.mark.parametrize(("reader", "hex_bytes", "fields"), READER_VECTORS)
def test_reader_waits_at_every_cut(reader: SocksReader, hex_bytes: str, fields: tuple) -> None:
    raw = bytes.fromhex(hex_bytes)
    assert [reader.read_fast(raw[:end]) for end in range(len(raw))] == [None] * len(raw)


@pytest.mark.parametrize(
    ("reader", "hex_bytes", "field"),
    [
        (METHOD_REQUEST_READER, "04", "version"),
        (METHOD_REQUEST_READER, "0500", "method_count"),
        (PASSWORD_REQUEST_READER, "05", "version"),
        (REQUEST_READER, "04010001", "version"),
        (REQUEST_READER, "0500", "command"),
        (REQUEST_READER, "05040001", "command"),
        (REQUEST_READER, "05010002", "address.type"),
        (REQUEST_READER, "05010005", "address.type"),
        (REQUEST_READER, "0501000300", "address.host"),
        (REQUEST_READER, "050100030261ff", "address.host"),  # before the port arrives
        (REQUEST_READER, "050100030261ff0050", "address.host"),
    ],
)
def test_reader_leaves_defects_to_the_schema(
    reader: SocksReader, hex_bytes: str, field: str
) -> None:
    raw = bytes.fromhex(hex_bytes)
    with pytest.raises(NotFast):
        reader.read_fast(raw)
    with pytest.raises(WireError) as caught:
        reader.read(raw)
    assert (caught.value.packet, caught.value.field) == (reader.schema.name, field)
    with pytest.raises(WireError) as by_schema:
        parse(reader.schema, raw)
    assert str(caught.value) == str(by_schema.value)


_GREETINGS = st.binary(min_size=1, max_size=255).map(
    lambda methods: build(SocksMethodRequest, {"methods": list(methods)})
)
_LOGINS = st.builds(
    lambda username, password: build(
        SocksPasswordRequest, {"username": username, "password": password}
    ),
    st.binary(max_size=255),
    st.binary(max_size=255),
)
_ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(lambda address: {"type": IPV4, "host": str(address)}),
    st.ip_addresses(v=6).map(lambda address: {"type": IPV6, "host": str(address)}),
    st.text(st.characters(max_codepoint=127), min_size=1, max_size=255).map(
        lambda name: {"type": DOMAIN, "host": name}
    ),
)
_REQUESTS = st.builds(
    lambda command, address, port: build(
        SocksRequest, {"command": command, "address": address, "port": port}
    ),
    st.sampled_from(Command),
    _ADDRESSES,
    st.integers(0, 0xFFFF),
)
_INTERESTING_BYTES = st.sampled_from([0, 1, 2, 3, 4, 5, 9, 0x80, 0xFF]) | st.integers(0, 255)


@st.composite
def _damaged(draw: st.DrawFn, packets: st.SearchStrategy[bytes]) -> bytes:
    """A valid packet, maybe with a byte or two changed, maybe cut, maybe with bytes after."""
    data = bytearray(draw(packets))
    for _ in range(draw(st.integers(0, 2))):
        data[draw(st.integers(0, len(data) - 1))] = draw(_INTERESTING_BYTES)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=3))


_CLIENT_BYTES = st.one_of(
    st.binary(max_size=24),
    st.lists(_INTERESTING_BYTES, max_size=24).map(bytes),
    _damaged(_GREETINGS),
    _damaged(_LOGINS),
    _damaged(_REQUESTS),
    st.one_of(_GREETINGS, _LOGINS, _REQUESTS),
)


class Defect(NamedTuple):
    packet: str
    field: str
    reason: str


def _outcome(read: Callable[[bytes | bytearray], object], data: bytes | bytearray) -> object:
    """What ``read`` returns, or the ``Defect`` its WireError names."""
    try:
        return read(data)
    except WireError as error:
        return Defect(error.packet, error.field, error.reason)


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS)
@settings(deadline=None, max_examples=300)  # speed is bench/socks5.py's business
@given(data=_CLIENT_BYTES)
def test_fast_path_agrees_with_construct(reader: SocksReader, data: bytes) -> None:
    """On any bytes the fast path gives construct's answer, or hands over a defect."""
    by_schema = _outcome(reader.read_with_construct, data)
    try:
        assert reader.read_fast(bytearray(data)) == by_schema
    except NotFast:
        assert isinstance(by_schema, Defect)
    assert _outcome(reader.read, bytearray(data)) == by_schema


_DATAGRAMS = st.builds(
    lambda fragment, address, port, data: build(
        SocksUdpDatagram,
        {"fragment": fragment, "address": address, "port": port, "data": data},
    ),
    st.sampled_from([0, 0, 1, 0x80]),
    _ADDRESSES,
    st.integers(0, 0xFFFF),
    st.binary(max_size=8),
)


def _datagram_by_construct(data: bytes) -> UdpDatagram:
    fields = parse(SocksUdpDatagram, data)
    return UdpDatagram(fields.fragment, fields.address.host, fields.port, fields.data)


@settings(deadline=None, max_examples=400)
@given(data=st.one_of(st.binary(max_size=24), _damaged(_DATAGRAMS), _DATAGRAMS))
def test_udp_datagram_reader_agrees_with_construct(data: bytes) -> None:
    """On any bytes the fast reader gives construct's answer or construct's defect; whatever
    construct accepts, the fast path reads by itself."""
    expected = _outcome(_datagram_by_construct, data)
    assert _outcome(UDP_DATAGRAM_READER.read, data) == expected
    if not isinstance(expected, Defect):
        assert UDP_DATAGRAM_READER.read_fast(data) == expected
