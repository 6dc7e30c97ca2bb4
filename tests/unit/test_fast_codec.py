"""schemas.fast (the hot-path codec) agrees with the construct schemas it is derived from."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import fast, jproxy
from schemas.errors import WireError
from schemas.fields import build, parse

VECTORS = Path(__file__).parents[1] / "vectors"
CODECS = {"TcpPacket": fast.TCP_PACKET, "UdpPacket": fast.UDP_PACKET}
MESSAGES = json.loads((VECTORS / "jproxy-messages.json").read_text())
NEGATIVE = json.loads((VECTORS / "jproxy-negative.json").read_text())


def _vectors(entries: list[dict[str, Any]], *schemas: str) -> list[Any]:
    return [
        pytest.param(entry, id=f"{entry['schema']}-{entry['note']}")
        for entry in entries
        if entry["schema"] in schemas
    ]


@pytest.mark.parametrize("entry", _vectors(MESSAGES, *CODECS))
def test_data_message_vector(entry: dict[str, Any]) -> None:
    codec, wire = CODECS[entry["schema"]], bytes.fromhex(entry["hex"])
    connection_id, data = entry["fields"]["connection_id"], bytes.fromhex(entry["fields"]["data"])
    assert codec.parse(wire) == (connection_id, data)
    assert codec.build(connection_id, data) == wire
    assert bytes(codec.parse(memoryview(wire))[1]) == data


@pytest.mark.parametrize("entry", _vectors(MESSAGES, *CODECS))
def test_data_message_every_truncation_raises(entry: dict[str, Any]) -> None:
    codec, wire = CODECS[entry["schema"]], bytes.fromhex(entry["hex"])
    view = memoryview(wire)
    for end in range(len(wire)):
        with pytest.raises(WireError) as caught:
            codec.parse(view[:end])
        assert caught.value.packet == entry["schema"]


@pytest.mark.parametrize("entry", _vectors(NEGATIVE, *CODECS))
def test_data_message_negative_vector(entry: dict[str, Any]) -> None:
    with pytest.raises(WireError) as caught:
        CODECS[entry["schema"]].parse(bytes.fromhex(entry["hex"]))
    assert caught.value.packet == entry["schema"]


@pytest.mark.parametrize("entry", _vectors(MESSAGES, "Frame"))
def test_frame_header_vector(entry: dict[str, Any]) -> None:
    wire = bytes.fromhex(entry["hex"])
    body_length = len(bytes.fromhex(entry["fields"]["ciphertext"]))
    assert fast.FRAME_HEADER.body_length(wire[: fast.FRAME_HEADER.size]) == body_length
    assert fast.FRAME_HEADER.build(body_length) == wire[: fast.FRAME_HEADER.size]


@pytest.mark.parametrize("header", [b"", b"\x00", memoryview(b"\x00\x01")])
def test_frame_header_rejects_empty_and_zero(header: bytes | memoryview) -> None:
    with pytest.raises(WireError) as caught:
        fast.FRAME_HEADER.body_length(header)
    assert (caught.value.packet, caught.value.field) == ("Frame", "blocks")


@pytest.mark.parametrize("length", [0, 15, 17, 256 * 16])
def test_frame_header_build_rejects_bad_lengths(length: int) -> None:
    with pytest.raises(WireError):
        fast.FRAME_HEADER.build(length)


_HEADER = struct.Struct(">BHH")
_NEAR_MESSAGES = st.builds(
    lambda code, connection_id, length, data: _HEADER.pack(code, connection_id, length) + data,
    st.sampled_from([0x21, 0x22, 0x41]),
    st.integers(0, 0xFFFF),
    st.integers(0, 8),
    st.binary(max_size=8),
)
"""Headers with small lengths, so that the length matches what follows about 1 time in 9."""


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS)
@settings(deadline=None)  # speed is bench/codec.py's business, not a test's
@given(connection_id=st.integers(0, 0xFFFF), data=st.binary(max_size=4096))
def test_fast_and_construct_build_the_same_bytes(
    codec: fast.DataMessageCodec, connection_id: int, data: bytes
) -> None:
    wire = build(codec.schema, {"connection_id": connection_id, "data": data})
    assert codec.build(connection_id, data) == wire
    assert codec.parse(wire) == (connection_id, data)


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS)
@settings(deadline=None)
@given(wire=st.binary(max_size=12) | _NEAR_MESSAGES)
def test_fast_and_construct_accept_the_same_bytes(
    codec: fast.DataMessageCodec, wire: bytes
) -> None:
    """On any bytes both paths either agree on the fields or both raise WireError."""
    try:
        fields = parse(codec.schema, wire)
    except WireError:
        with pytest.raises(WireError):
            codec.parse(wire)
    else:
        assert codec.parse(wire) == (fields.connection_id, fields.data)


def test_frame_header_agrees_with_schema_on_every_block_count() -> None:
    for blocks in range(256):
        wire = bytes([blocks]) + bytes(blocks * jproxy.BLOCK_SIZE)
        if blocks == 0:
            with pytest.raises(WireError):
                parse(jproxy.Frame, wire)
            with pytest.raises(WireError):
                fast.FRAME_HEADER.body_length(wire)
        else:
            frame = parse(jproxy.Frame, wire)
            assert fast.FRAME_HEADER.body_length(wire) == len(frame.ciphertext)


@pytest.mark.parametrize(("connection_id", "size"), [(-1, 0), (0x10000, 0), (0, 0x10000)])
def test_build_rejects_values_the_header_cannot_carry(connection_id: int, size: int) -> None:
    with pytest.raises(WireError) as caught:
        fast.TCP_PACKET.build(connection_id, bytes(size))
    assert caught.value.packet == "TcpPacket"


# --- control messages ----------------------------------------------------------------------

CONTROL = {codec.schema.name: codec for codec in (*fast.CONTROL_CODECS, *fast.DATAGRAM_CODECS)}


def _schema_values(codec: Any, wire: bytes) -> tuple[Any, ...]:
    return codec.values_of(parse(codec.schema, wire))


def _assert_parsed_alike(codec: Any, wire: bytes) -> None:
    """Both paths agree on the values or raise the same WireError; and whatever the schema
    accepts, the fast path reads by itself."""
    try:
        expected = _schema_values(codec, wire)
    except WireError as schema_error:
        assert codec.fast_parse(wire) is None
        with pytest.raises(WireError) as fast_error:
            codec.parse(memoryview(wire))
        assert fast_error.value.args == schema_error.args
    else:
        assert codec.fast_parse(wire) == expected


@pytest.mark.parametrize("entry", _vectors(MESSAGES, *CONTROL))
def test_control_message_vector_takes_the_fast_path(entry: dict[str, Any]) -> None:
    codec, wire = CONTROL[entry["schema"]], bytes.fromhex(entry["hex"])
    values = codec.fast_parse(wire)
    assert values is not None
    assert values == _schema_values(codec, wire) == codec.parse(memoryview(wire))
    built = codec.fast_build(values)
    assert built == build(codec.schema, codec.fields_of(values))
    assert built == wire or entry["fields"].get("legacy_pad") == 0


def test_disconnect_reads_the_java_pad_and_builds_without_it() -> None:
    reason = jproxy.DisconnectReason.RESET
    assert fast.TCP_DISCONNECT.parse(bytes.fromhex("41000104")) == (1, reason)
    assert fast.TCP_DISCONNECT.fast_parse(bytes.fromhex("4100010400")) == (1, reason)
    assert fast.TCP_DISCONNECT.build(1, reason) == bytes.fromhex("41000104")


def test_values_are_enum_members() -> None:
    _, status, _ = fast.TCP_CONNECT_REPLY.parse(bytes.fromhex("0100070513 88"))
    assert status is jproxy.ConnectStatus.UNKNOWN_HOST
    (_, reason) = fast.TCP_DISCONNECT.parse(bytes.fromhex("41000302"))
    assert reason is jproxy.DisconnectReason.CLIENT_CLOSED
    _, _, kind, host = fast.TCP_CONNECT_REQUEST.parse(bytes.fromhex("010000005003026869"))
    assert (kind, host) == (jproxy.AddressType.DOMAIN, "hi")
    assert kind is jproxy.AddressType.DOMAIN


@pytest.mark.parametrize("entry", _vectors(MESSAGES, *CONTROL))
def test_control_message_every_truncation_raises_as_the_schema_does(entry: dict[str, Any]) -> None:
    """Every prefix is refused (but the Java disconnect without its pad, a whole message)."""
    codec, wire = CONTROL[entry["schema"]], bytes.fromhex(entry["hex"])
    refused = 0
    for end in range(len(wire)):
        _assert_parsed_alike(codec, wire[:end])
        refused += codec.fast_parse(wire[:end]) is None
    assert refused == len(wire) - (entry["fields"].get("legacy_pad") == 0)


@pytest.mark.parametrize("entry", _vectors(NEGATIVE, *CONTROL))
def test_control_message_negative_vector(entry: dict[str, Any]) -> None:
    codec, wire = CONTROL[entry["schema"]], bytes.fromhex(entry["hex"])
    assert codec.fast_parse(wire) is None
    with pytest.raises(WireError) as caught:
        codec.parse(wire)
    assert {"packet": caught.value.packet, "field": caught.value.field} == entry["error"]


_ENUM_FIELDS = [
    # codec, message with {} for the enum byte, the field, its enum, values around it
    (fast.TCP_CONNECT_REPLY, "01 0007 {} 1388", "status", jproxy.ConnectStatus, (7, 1388)),
    (fast.TCP_DISCONNECT, "41 0001 {}", "reason", jproxy.DisconnectReason, (1,)),
    (
        fast.TCP_CONNECT_REQUEST,
        "01 0000 01bb {} 04 c0000201",
        "address.type",
        jproxy.AddressType,
        (0, 443, "192.0.2.1"),
    ),
]


@pytest.mark.parametrize(
    ("codec", "template", "field", "enum_type", "_"),
    _ENUM_FIELDS,
    ids=[codec.schema.name for codec, *_ in _ENUM_FIELDS],
)
def test_unknown_enum_values_raise_naming_packet_and_field(
    codec: Any, template: str, field: str, enum_type: type, _: Any
) -> None:
    unknown = [value for value in range(256) if value not in set(enum_type)]
    assert unknown
    for value in unknown:
        wire = bytes.fromhex(template.format(f"{value:02x}"))
        assert codec.fast_parse(wire) is None
        with pytest.raises(WireError) as caught:
            codec.parse(wire)
        assert (caught.value.packet, caught.value.field) == (codec.schema.name, field)
        assert f"unknown {enum_type.__name__} value {value}" in caught.value.reason


@pytest.mark.parametrize(
    ("codec", "field", "enum_type", "around"),
    [(codec, field, enum_type, around) for codec, _, field, enum_type, around in _ENUM_FIELDS],
    ids=[codec.schema.name for codec, *_ in _ENUM_FIELDS],
)
def test_build_refuses_unknown_enum_values(
    codec: Any, field: str, enum_type: type, around: tuple[Any, ...]
) -> None:
    position = codec.names.index(field)
    for value in (-1, max(enum_type) + 1, 255):
        values = [*around[:position], value, *around[position:]]
        assert codec.fast_build(values) is None
        with pytest.raises(WireError) as caught:
            codec.build(*values)
        assert (caught.value.packet, caught.value.field) == (codec.schema.name, field)


def test_build_takes_what_the_schema_takes() -> None:
    """Enum names and plain ints are the schema's input too; the schema builds what is slow."""
    wire = bytes.fromhex("01000705 1388")
    assert fast.TCP_CONNECT_REPLY.build(7, "UNKNOWN_HOST", 5000) == wire
    assert fast.TCP_CONNECT_REPLY.build(7, 5, 5000) == wire
    assert fast.TCP_CONNECT_REQUEST.build(1, 80, 3, "example.org") == build(
        jproxy.TcpConnectRequest,
        {"connection_id": 1, "port": 80, "address": jproxy.address_for("example.org")},
    )


@pytest.mark.parametrize(
    "values",
    [
        (0x10000, jproxy.ConnectStatus.OK, 0),
        (0, jproxy.ConnectStatus.OK, -1),
        (0, jproxy.ConnectStatus.OK, 0x10000),
    ],
)
def test_build_rejects_integers_the_fields_cannot_carry(values: tuple[Any, ...]) -> None:
    with pytest.raises(WireError) as caught:
        fast.TCP_CONNECT_REPLY.build(*values)
    with pytest.raises(WireError) as schema_error:
        build(jproxy.TcpConnectReply, fast.TCP_CONNECT_REPLY.fields_of(values))
    assert caught.value.args == schema_error.value.args


@pytest.mark.parametrize(
    "schema", [jproxy.TcpPacket, jproxy.Frame, jproxy.Hello, jproxy.LoginReply]
)
def test_codecs_refuse_schemas_they_cannot_reproduce(schema: Any) -> None:
    """A schema change the fast path does not understand fails at import, not on the wire."""
    for codec_type in (fast.FixedMessageCodec, fast.ConnectRequestCodec):
        with pytest.raises(TypeError):
            codec_type(schema)


_IDS = st.integers(0, 0xFFFF) | st.sampled_from([-1, 0x10000])
_HOSTS = (
    st.ip_addresses().map(str)
    | st.text(alphabet="abcxyz019.-", min_size=0, max_size=260)
    | st.sampled_from(["", "xn--bcher-kva.example", "bücher.example", "1.2.3", "::1", "a" * 256])
)
_CONTROL_VALUES = {
    "TcpConnectRequest": st.tuples(
        _IDS, _IDS, st.sampled_from(jproxy.AddressType) | st.integers(0, 5), _HOSTS
    ),
    "TcpConnectReply": st.tuples(
        _IDS, st.sampled_from(jproxy.ConnectStatus) | st.integers(-1, 8), _IDS
    ),
    "TcpDisconnect": st.tuples(_IDS, st.sampled_from(jproxy.DisconnectReason) | st.integers(-1, 6)),
    "TcpWindowUpdate": st.tuples(_IDS, st.integers(0, 0xFFFFFFFF) | st.sampled_from([-1, 1 << 32])),
    "TcpHalfClose": st.tuples(_IDS),
    "UdpAssociateRequest": st.tuples(
        _IDS, _IDS, _IDS, st.sampled_from(jproxy.AddressType) | st.integers(0, 5), _HOSTS
    ),
    "UdpAssociateReply": st.tuples(
        _IDS, st.sampled_from(jproxy.ConnectStatus) | st.integers(-1, 8), _IDS
    ),
    "UdpDissociate": st.tuples(_IDS, st.sampled_from(jproxy.DisconnectReason) | st.integers(-1, 6)),
    "KeepAlive": st.tuples(st.sampled_from(jproxy.KeepAliveKind) | st.integers(-1, 3)),
}
"""Values for each control message, valid about half the time."""


def _built_or_empty(codec: Any, values: tuple[Any, ...]) -> bytes:
    try:
        return build(codec.schema, codec.fields_of(values))
    except WireError:
        return b""


def _near(codec: Any) -> st.SearchStrategy[bytes]:
    """Messages the schema built from random values: whole, cut short or lengthened."""
    return st.builds(
        lambda wire, cut, extra: wire[: len(wire) - cut] + extra,
        _CONTROL_VALUES[codec.schema.name].map(lambda values: _built_or_empty(codec, values)),
        st.sampled_from([0, 0, 1, 2]),
        st.sampled_from([b"", b"", b"\x00", b"\x01"]) | st.binary(max_size=3),
    )


_NEAR_CONNECT_REQUESTS = st.builds(
    lambda connection_id, port, kind, length, host: (
        struct.pack(">BHHBB", 0x01, connection_id, port, kind, length) + host
    ),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 5),
    st.integers(0, 17),
    st.binary(max_size=17) | st.ip_addresses().map(lambda address: address.packed),
)
"""Connect requests with random host bytes, whose length and type sometimes agree."""


_CONTROL_WIRES = {
    name: st.binary(max_size=12)
    | _near(codec)
    | (_NEAR_CONNECT_REQUESTS if codec is fast.TCP_CONNECT_REQUEST else st.nothing())
    for name, codec in CONTROL.items()
}
"""Bytes for each control message, built once: a strategy made anew for every example was
validated anew each time, a third of the test's time."""


@pytest.mark.parametrize("codec", CONTROL.values(), ids=CONTROL)
@settings(deadline=None, max_examples=400)  # few random bytes are well-formed messages
@given(data=st.data())
def test_fast_and_construct_parse_the_same_control_bytes(codec: Any, data: st.DataObject) -> None:
    _assert_parsed_alike(codec, data.draw(_CONTROL_WIRES[codec.schema.name]))


@pytest.mark.parametrize("codec", CONTROL.values(), ids=CONTROL)
@settings(deadline=None)
@given(data=st.data())
def test_fast_and_construct_build_the_same_control_bytes(codec: Any, data: st.DataObject) -> None:
    """For any values both build the same bytes or raise the same WireError; and whatever
    the schema builds from ints and enum members, the fast path builds by itself."""
    values = data.draw(_CONTROL_VALUES[codec.schema.name])
    try:
        expected = build(codec.schema, codec.fields_of(values))
    except WireError as schema_error:
        with pytest.raises(WireError) as fast_error:
            codec.build(*values)
        assert fast_error.value.args == schema_error.args
    else:
        assert codec.fast_build(values) == expected
        assert codec.parse(expected) == codec.values_of(parse(codec.schema, expected))


def test_frame_header_lengths_by_byte_agree_with_body_length() -> None:
    for byte in range(256):
        header = bytes([byte])
        try:
            expected = fast.FRAME_HEADER.body_length(header)
        except WireError:
            expected = 0
        assert fast.FRAME_HEADER.body_lengths[byte] == expected
