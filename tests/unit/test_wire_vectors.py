"""The jProxy schemas against hand-written vectors and the bytes captured from Java jProxy 3.0.

Hand-written vectors (tests/vectors/jproxy-*.json) pin every packet layout both ways; the
capture (tests/vectors/java-3.0/) proves the schemas read and write what the Java client and
server really send.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import construct as c
import pytest

from schemas import jproxy
from schemas.errors import WireError
from schemas.fields import build, parse

VECTORS = Path(__file__).parents[1] / "vectors"
MESSAGES = json.loads((VECTORS / "jproxy-messages.json").read_text())
NEGATIVE = json.loads((VECTORS / "jproxy-negative.json").read_text())
JAVA = json.loads((VECTORS / "java-3.0" / "vectors.json").read_text())
SCHEMAS = {schema.name: schema for schema in jproxy.PACKETS}
TUNNEL_MESSAGES = frozenset(jproxy.MESSAGES.values())


def _entry_id(entry: dict[str, Any]) -> str:
    return f"{entry['schema']}-{entry['direction']}-{entry['note']}"


def to_json(value: Any) -> Any:
    """Parsed fields in the vectors' notation: enums by name, bytes as hex, no ``_io``."""
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items() if not key.startswith("_")}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes):
        return value.hex()
    return value


def _value_construct(field: c.Construct) -> c.Construct:
    """The construct that decides a field's Python type, past names, constants and conditions."""
    while True:
        if isinstance(field, c.Renamed | c.Const | c.Rebuild):
            field = field.subcon
        elif isinstance(field, c.IfThenElse):
            field = field.thensubcon
        else:
            return field


def from_json(schema: c.Construct, value: Any) -> Any:
    """The vectors' notation back to build input, guided by the schema: hex to bytes."""
    field = _value_construct(schema)
    if isinstance(field, c.Struct) and isinstance(value, dict):
        subcons = {sub.name: sub for sub in field.subcons if sub.name}
        return {key: from_json(subcons[key], item) for key, item in value.items()}
    if (isinstance(field, c.Bytes) or field is c.GreedyBytes) and isinstance(value, str):
        return bytes.fromhex(value)
    return value


def _wire(entry: dict[str, Any]) -> bytes:
    return bytes.fromhex(entry["hex"])


# --- hand-written vectors -----------------------------------------------------------------


def test_every_packet_and_direction_has_a_vector() -> None:
    covered = {(entry["schema"], entry["direction"]) for entry in MESSAGES}
    for schema in jproxy.PACKETS:
        assert any(name == schema.name for name, _ in covered), schema.name
    for (direction, _), schema in jproxy.MESSAGES.items():
        assert (schema.name, direction.value) in covered, (schema.name, direction)


@pytest.mark.parametrize("entry", MESSAGES, ids=_entry_id)
def test_vector_parses_to_its_fields(entry: dict[str, Any]) -> None:
    schema = SCHEMAS[entry["schema"]]
    fields = parse(schema, _wire(entry), **entry.get("params", {}))
    assert to_json(fields) == entry["fields"]


@pytest.mark.parametrize("entry", MESSAGES, ids=_entry_id)
def test_vector_builds_from_its_fields(entry: dict[str, Any]) -> None:
    schema = SCHEMAS[entry["schema"]]
    fields = from_json(schema, entry["fields"])
    assert build(schema, fields, **entry.get("params", {})) == _wire(entry)


@pytest.mark.parametrize(
    "entry", [e for e in MESSAGES if SCHEMAS[e["schema"]] in TUNNEL_MESSAGES], ids=_entry_id
)
def test_parse_message_dispatches_vector(entry: dict[str, Any]) -> None:
    schema, fields = jproxy.parse_message(_wire(entry), jproxy.Direction(entry["direction"]))
    assert schema.name == entry["schema"]
    assert to_json(fields) == entry["fields"]


@pytest.mark.parametrize("entry", MESSAGES, ids=_entry_id)
def test_every_truncation_raises_wire_error(entry: dict[str, Any]) -> None:
    """Only a prefix that is itself a vector (the 4-byte disconnect in the 5-byte one) parses."""
    schema, wire, params = SCHEMAS[entry["schema"]], _wire(entry), entry.get("params", {})
    valid = {_wire(other) for other in MESSAGES if other["schema"] == entry["schema"]}
    valid_ends = {len(other) for other in valid if wire.startswith(other)}  # not 64 KiB hashed
    for end in range(len(wire)):
        if end in valid_ends:
            parse(schema, wire[:end], **params)
            continue
        with pytest.raises(WireError) as caught:
            parse(schema, wire[:end], **params)
        assert caught.value.packet == schema.name


@pytest.mark.parametrize("entry", NEGATIVE, ids=_entry_id)
def test_negative_vector_raises_wire_error_naming_the_field(entry: dict[str, Any]) -> None:
    with pytest.raises(WireError) as caught:
        if entry["schema"] == "Message":
            jproxy.parse_message(_wire(entry), jproxy.Direction(entry["direction"]))
        else:
            parse(SCHEMAS[entry["schema"]], _wire(entry), **entry.get("params", {}))
    error = caught.value
    assert {"packet": error.packet, "field": error.field} == entry["error"]


def test_build_rejects_values_the_wire_cannot_carry() -> None:
    bad_builds = [
        (jproxy.TcpConnectRequest, {"connection_id": 0, "port": 80, "address": _v4("::1")}),
        (jproxy.TcpConnectRequest, {"connection_id": 0, "port": 80, "address": _name("")}),
        (jproxy.TcpConnectRequest, {"connection_id": 0, "port": 80, "address": _name("a" * 256)}),
        (jproxy.TcpConnectRequest, {"connection_id": 70000, "port": 80, "address": _v4("1.2.3.4")}),
        (jproxy.TcpDisconnect, {"connection_id": 0, "reason": 9}),
        (jproxy.TcpPacket, {"connection_id": 0, "data": bytes(65536)}),
        (jproxy.Frame, {"ciphertext": b""}),
        (jproxy.Frame, {"ciphertext": bytes(256 * 16)}),
    ]
    for schema, fields in bad_builds:
        with pytest.raises(WireError) as caught:
            build(schema, fields)
        assert caught.value.packet == schema.name


def _v4(host: str) -> dict[str, Any]:
    return {"type": jproxy.AddressType.IPV4, "host": host}


def _name(host: str) -> dict[str, Any]:
    return {"type": jproxy.AddressType.DOMAIN, "host": host}


# --- the Java 3.0 capture -----------------------------------------------------------------

_KIND_SCHEMAS = {
    "TCP_CONNECT_REQUEST": jproxy.TcpConnectRequest,
    "TCP_CONNECT_RESPONSE": jproxy.TcpConnectReply,
    "TCP_PACKET": jproxy.TcpPacket,
    "TCP_DISCONNECT": jproxy.TcpDisconnect,
}
"""The capture's message kinds and the schemas that read them."""


def _address_length(host: str) -> int:
    try:
        return len(ipaddress.ip_address(host).packed)
    except ValueError:
        return len(host)


_CAPTURE_FIELDS: dict[str, Callable[[c.Container, bytes], Any]] = {
    "magic": lambda fields, _: fields.type,
    "connection_id": lambda fields, _: fields.connection_id,
    "remote_port": lambda fields, _: fields.port,
    "address_type": lambda fields, _: int(fields.address.type),
    "address_type_name": lambda fields, _: fields.address.type.name.lower(),
    "address_length": lambda fields, _: _address_length(fields.address.host),
    "address_hex": lambda fields, _: ipaddress.ip_address(fields.address.host).packed.hex(),
    "address": lambda fields, _: fields.address.host,
    "status": lambda fields, _: int(fields.status),
    "response_time_ms": lambda fields, _: fields.elapsed_ms,
    "reason": lambda fields, _: int(fields.reason),
    "data_length": lambda fields, _: fields.length,
    "data_sha256": lambda fields, _: hashlib.sha256(fields.data).hexdigest(),
    "data_hex": lambda fields, _: fields.data.hex(),
    "plaintext_length": lambda _, plaintext: len(plaintext),
    "trailing_bytes_hex": lambda fields, _: "00" if fields.get("legacy_pad") == 0 else "",
}
"""How to read each field the capture decoded out of our parsed fields."""


def _assert_matches_capture(fields: c.Container, plaintext: bytes, decoded: dict) -> None:
    for key, expected in decoded.items():
        if key == "type":
            continue  # checked through _KIND_SCHEMAS
        if key == "data_preview_hex":
            assert fields.data.hex().startswith(expected.removesuffix("..."))
            continue
        actual = _CAPTURE_FIELDS[key](fields, plaintext)
        if key == "address_type_name":
            expected = expected.lower()
        assert actual == expected, key


def _captured_frames() -> list[Any]:
    """``(wire, direction, plaintext_hex, decoded)`` of every decrypted frame captured."""
    frames = [
        pytest.param(m["wire_hex"], m["dir"], m["plaintext_hex"], m["decoded"], id=f"tunnel-{i}")
        for i, m in enumerate(JAVA["tunnel"]["messages"])
        if m["encrypted"]
    ]
    frames += [
        pytest.param(
            exchange["hex"],
            exchange["dir"],
            exchange["plaintext_hex"],
            exchange["decoded"],
            id=f"{probe['name']}-{number}",
        )
        for probe in JAVA["probes"]
        for number, exchange in enumerate(probe["exchanges"])
        if "plaintext_hex" in exchange
    ]
    return frames


CAPTURED_FRAMES = _captured_frames()


@pytest.mark.parametrize(("wire_hex", "direction", "plaintext_hex", "decoded"), CAPTURED_FRAMES)
def test_captured_message_parses_and_rebuilds(
    wire_hex: str, direction: str, plaintext_hex: str, decoded: dict
) -> None:
    plaintext = bytes.fromhex(plaintext_hex)
    sender = jproxy.Direction(direction)
    if decoded["type"] == "UNKNOWN" and decoded["magic"] not in set(jproxy.MessageType):
        with pytest.raises(WireError):
            jproxy.parse_message(plaintext, sender)
        return
    schema, fields = jproxy.parse_message(plaintext, sender)
    if decoded["type"] != "UNKNOWN":  # the Java code ignored UDP; gjproxy knows it
        assert schema is _KIND_SCHEMAS[decoded["type"]]
    assert build(schema, fields) == plaintext
    _assert_matches_capture(fields, plaintext, decoded)


@pytest.mark.parametrize(
    ("wire_hex", "plaintext_hex"),
    [pytest.param(frame.values[0], frame.values[2], id=frame.id) for frame in CAPTURED_FRAMES],
)
def test_captured_frame_envelope(wire_hex: str, plaintext_hex: str) -> None:
    """One frame per message; PKCS#7 (3.0) always adds 1..16 bytes, so n = len // 16 + 1."""
    wire = bytes.fromhex(wire_hex)
    frame = parse(jproxy.Frame, wire)
    assert frame.blocks == len(plaintext_hex) // 2 // jproxy.BLOCK_SIZE + 1
    assert len(frame.ciphertext) == frame.blocks * jproxy.BLOCK_SIZE
    assert build(jproxy.Frame, {"ciphertext": frame.ciphertext}) == wire


def _captured(kind: str) -> dict:
    (message,) = [m for m in JAVA["tunnel"]["messages"] if m["kind"] == kind]
    return message


def test_captured_handshake_and_login() -> None:
    hello = _captured("HANDSHAKE_REQUEST")
    fields = parse(jproxy.Hello, bytes.fromhex(hello["wire_hex"]))
    assert (fields.magic.decode(), fields.major, fields.minor) == (
        hello["decoded"]["magic_ascii"],
        hello["decoded"]["major"],
        hello["decoded"]["minor"],
    )
    assert fields.minor == jproxy.Dialect.LEGACY_3_0

    reply = _captured("HANDSHAKE_RESPONSE")
    fields = parse(jproxy.HelloReply, bytes.fromhex(reply["wire_hex"]))
    assert fields.status == reply["decoded"]["status"] == jproxy.HandshakeStatus.OK

    login = _captured("LOGIN_REQUEST")
    fields = parse(jproxy.LoginRequest, bytes.fromhex(login["wire_hex"]))
    assert (
        fields.login_hash.hex()
        == login["decoded"]["login_hash_hex"]
        == JAVA["keys"]["login_hash_hex"]
    )

    login_reply = _captured("LOGIN_RESPONSE")
    fields = parse(jproxy.LoginReply, bytes.fromhex(login_reply["wire_hex"]), key_size=256)
    assert fields.status == login_reply["decoded"]["status"] == jproxy.LoginStatus.OK
    assert fields.wrapped_key.hex() == login_reply["decoded"]["rsa_ciphertext_hex"]

    for kind, schema, params in [
        ("HANDSHAKE_REQUEST", jproxy.Hello, {}),
        ("HANDSHAKE_RESPONSE", jproxy.HelloReply, {}),
        ("LOGIN_REQUEST", jproxy.LoginRequest, {}),
        ("LOGIN_RESPONSE", jproxy.LoginReply, {"key_size": 256}),
    ]:
        wire = bytes.fromhex(_captured(kind)["wire_hex"])
        assert build(schema, parse(schema, wire, **params), **params) == wire


def _probe_exchanges(note: str) -> list[tuple[str, bytes]]:
    return [
        (probe["name"], bytes.fromhex(exchange["hex"]))
        for probe in JAVA["probes"]
        for exchange in probe["exchanges"]
        if exchange.get("note") == note
    ]


def test_probe_handshakes() -> None:
    """Every probe's hello parses except the bad magic; every hello reply parses."""
    hellos = _probe_exchanges("handshake")
    assert len(hellos) > 5
    for name, wire in hellos:
        if name == "bad_magic":
            with pytest.raises(WireError, match="magic"):
                parse(jproxy.Hello, wire)
        else:
            assert build(jproxy.Hello, parse(jproxy.Hello, wire)) == wire
    statuses = {
        parse(jproxy.HelloReply, wire).status for _, wire in _probe_exchanges("handshake response")
    }
    assert statuses == {jproxy.HandshakeStatus.OK, jproxy.HandshakeStatus.REFUSED}


def test_probe_failed_login_reply_has_no_key() -> None:
    (status,) = [wire for name, wire in _probe_exchanges("login status") if name == "unknown_hash"]
    fields = parse(jproxy.LoginReply, status, key_size=256)
    assert (fields.status, fields.wrapped_key) == (jproxy.LoginStatus.FAILED, None)
