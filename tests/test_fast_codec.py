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

VECTORS = Path(__file__).parent / "vectors"
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
