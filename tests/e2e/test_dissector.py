"""The generated Wireshark dissector, run by a real tshark over captures written here.

Every message tshark shows must carry the fields that schemas/ parse from the same bytes:
the recorded Java 3.0 tunnel (decrypted with its key), a 3.1 tunnel sealed by jproxy.tunnel.crypto
(decrypted by the dissector's own AES-GCM), and an admin exchange.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from jproxy.gen import dissector
from jproxy.tunnel import keylog
from jproxy.tunnel.crypto import MAX_MESSAGE, EcbSealer, GcmSealer
from schemas import admin, build, introspect, jproxy, parse
from schemas.jproxy import Dialect, Direction
from tests.pcap import CLIENT, write_pcap
from tests.peers import require_tool

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "docs" / "jproxy.lua"
VECTORS = Path(__file__).parents[1] / "vectors"
JAVA = VECTORS / "java-3.0"
TSHARK_TIMEOUT = 120
KEY = bytes(range(16))
WRAPPED = bytes((i * 7 + 3) % 256 for i in range(256))
NAMES = {protocol.name: dissector.field_abbreviations(protocol) for protocol in dissector.PROTOCOLS}


def test_committed_lua_matches_the_schemas() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == dissector.render(), (
        "docs/jproxy.lua is out of date with schemas/: run"
        " `gjproxy dissector -o docs/jproxy.lua` and commit it"
    )


def test_command_writes_the_dissector(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "jproxy.lua"
    run = subprocess.run(
        [sys.executable, "-m", "jproxy", "dissector", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.strip() == f"wrote {out}"
    assert out.read_text(encoding="utf-8") == dissector.render()
    run = subprocess.run(
        [sys.executable, "-m", "jproxy", "dissector"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout == dissector.render()


def test_fields_of_one_layout_share_a_name_and_enums_tell_the_others_apart() -> None:
    names = NAMES["jproxy"]
    assert names[("TcpPacket", "connection_id")] == "jproxy.connection_id"
    assert names[("IcmpEchoReply", "connection_id")] == "jproxy.connection_id"
    assert names[("TcpConnectRequest", "address.host")] == "jproxy.address.host"
    assert names[("TcpConnectReply", "status")] == "jproxy.connect_status"
    assert names[("LoginReply", "status")] == "jproxy.login_status"
    assert NAMES["jproxy_admin"][("AdminRequest", "params.data")] == "jproxy_admin.params.data"


# --- running tshark ---------------------------------------------------------------------


def tshark_pdml(pcap: Path, *options: str) -> ET.Element:
    """tshark's full dissection of ``pcap`` with the committed dissector, as PDML."""
    tool = require_tool("tshark")
    run = subprocess.run(
        [tool, "-n", "-X", f"lua_script:{COMMITTED}", *options, "-r", str(pcap), "-T", "pdml"],
        capture_output=True,
        text=True,
        timeout=TSHARK_TIMEOUT,
        env={**os.environ, "HOME": str(pcap.parent)},
    )
    assert run.returncode == 0, run.stderr
    assert "Lua Error" not in run.stderr + run.stdout, run.stderr
    return ET.fromstring(run.stdout)


def dissected(root: ET.Element, protocol: str = "jproxy") -> dict[str, list[tuple]]:
    """Per direction, each message tshark shows: ``(name, [(field, value), ...], problems)``.

    Frames are looked into: the message a frame carries is listed, not the frame (which has
    a field of its own, ``jproxy.frame``: ``jproxy.message`` is never a frame).
    """
    messages: dict[str, list[tuple]] = {"c2s": [], "s2c": []}
    for packet in root.iter("packet"):
        port = packet.find(".//field[@name='tcp.srcport']")
        direction = "c2s" if port is not None and int(port.get("show")) == CLIENT[1] else "s2c"
        for proto in packet.findall(f"proto[@name='{protocol}']"):
            for item in proto.iter("field"):
                if item.get("name") != f"{protocol}.message":
                    continue
                assert item.get("show") != "Frame", "a frame shown as a message"
                values = [
                    (child.get("name"), _value(child))
                    for child in item
                    if child.get("name") != f"{protocol}.message"
                    and not child.get("name").startswith("_ws.expert")
                ]
                problems = [e.get("showname") for e in item.iter("field") if _expert(e)]
                messages[direction].append((item.get("show"), values, problems))
    return messages


def frames(root: ET.Element) -> list[ET.Element]:
    found = [item for item in root.iter("field") if item.get("name") == "jproxy.frame"]
    assert all(item.get("show") == "Frame" for item in found)
    return found


def experts(element: ET.Element) -> list[str]:
    return [item.get("showname") for item in element.iter("field") if _expert(item)]


def _expert(item: ET.Element) -> bool:
    return item.get("name", "").startswith("_ws.expert") and item.get("name") == "_ws.expert"


class Shown(tuple):
    """A field as PDML shows it, ``(show, value)``; equal to the schema's value it displays."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Shown):
            return tuple(self) == tuple(other)
        show, raw = self
        if isinstance(other, bytes):
            return bytes.fromhex(raw or "") == other
        if isinstance(other, int):
            return show is not None and int(show, 0) == other
        return show == other

    __hash__ = tuple.__hash__


def _value(item: ET.Element) -> Shown:
    return Shown((item.get("show"), item.get("value")))


def expected(protocol: str, schema, data: bytes, **params) -> tuple:
    """What tshark should show for ``data``: the fields schemas/ parse, named as tshark does."""
    fields = parse(schema, data, **params)
    values = []
    for field in introspect.fields(schema):
        if not field.path:
            continue
        value = fields
        for part in field.path.split("."):
            value = value[part]
        if isinstance(field.shape, introspect.Repeat):
            for element in value:
                for sub in field.shape.element.fields:
                    abbr = NAMES[protocol][(schema.name, f"{field.path}.{sub.path}")]
                    values.append((abbr, _plain(element[sub.path])))
        elif value is not None:
            values.append((NAMES[protocol][(schema.name, field.path)], _plain(value)))
    return (schema.name, values, [])


def _plain(value: object) -> object:
    return int(value) if isinstance(value, int) else value


# --- captures -------------------------------------------------------------------------


def _java_vectors() -> dict:
    return json.loads((JAVA / "vectors.json").read_text())


def _key_log(path: Path, wrapped: bytes, key: bytes) -> Path:
    path.write_text("# another tool's line\n" + keylog.key_log_line(wrapped, key))
    return path


def test_java_capture_decrypted_with_its_key_matches_the_schemas(tmp_path: Path) -> None:
    transcript = json.loads((JAVA / "transcript.json").read_text())
    chunks = [
        (event["dir"], bytes.fromhex(event["hex"]))
        for event in transcript["connections"][0]["events"]
        if "hex" in event
    ]
    pcap = tmp_path / "java.pcap"
    write_pcap(pcap, chunks)
    vectors = _java_vectors()
    wire = {"c2s": [], "s2c": []}
    for message in vectors["tunnel"]["messages"]:
        data = bytes.fromhex(message.get("plaintext_hex") or message["wire_hex"])
        wire[message["dir"]].append((message["encrypted"], data))
    reply = wire["s2c"][1][1]
    key_log = _key_log(
        tmp_path / "keys.log", reply[1:], bytes.fromhex(vectors["tunnel"]["aes_key_hex"])
    )

    shown = dissected(tshark_pdml(pcap, "-o", f"jproxy.keylog:{key_log}"))

    # Wireshark's GUI dissects again each packet clicked; tshark -2 does so for all of them.
    assert dissected(tshark_pdml(pcap, "-2", "-o", f"jproxy.keylog:{key_log}")) == shown
    for direction, handshake in (
        ("c2s", dissector.PROTOCOLS[0].sequence[jproxy.C2S]),
        ("s2c", dissector.PROTOCOLS[0].sequence[jproxy.S2C]),
    ):
        want = []
        for index, (encrypted, data) in enumerate(wire[direction]):
            if encrypted:
                schema, _ = jproxy.parse_message(data, Direction(direction))
            else:
                schema = handshake[index]
            want.append(expected("jproxy", schema, data, key_size=256))
        assert shown[direction] == want
    assert len(shown["c2s"]) + len(shown["s2c"]) == len(vectors["tunnel"]["messages"])


def _vector_messages() -> list[tuple[str, object, bytes]]:
    """Every tunnel message of tests/vectors: ``(direction, schema, bytes)``."""
    messages = []
    for vector in json.loads((VECTORS / "jproxy-messages.json").read_text()):
        schema = getattr(jproxy, vector["schema"])
        data = bytes.fromhex(vector["hex"].replace(" ", ""))
        if schema in jproxy.MESSAGES.values() and len(data) <= MAX_MESSAGE[Dialect.SECURE_3_1]:
            messages.append((vector["direction"], schema, data))
    return messages


def _tunnel(dialect: jproxy.Dialect, messages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The chunks of a tunnel in ``dialect`` that carries ``messages`` after its login."""
    hello = build(jproxy.Hello, {"major": 3, "minor": int(dialect)})
    reply = build(jproxy.LoginReply, {"status": "OK", "wrapped_key": WRAPPED}, key_size=256)
    chunks = [
        ("c2s", hello),
        ("s2c", build(jproxy.HelloReply, {"status": "OK"})),
        ("c2s", build(jproxy.LoginRequest, {"login_hash": bytes(32)})),
        ("s2c", reply),
    ]
    sealers = {
        "c2s": GcmSealer(KEY, Direction.CLIENT_TO_SERVER)
        if dialect is jproxy.Dialect.SECURE_3_1
        else EcbSealer(KEY),
        "s2c": GcmSealer(KEY, Direction.SERVER_TO_CLIENT)
        if dialect is jproxy.Dialect.SECURE_3_1
        else EcbSealer(KEY),
    }
    for direction, data in messages:
        chunks.append((direction, sealers[direction].seal(data)))
    return chunks


def test_secure_tunnel_every_message_decrypted_by_the_lua_aes_gcm(tmp_path: Path) -> None:
    vectors = _vector_messages()
    big = build(jproxy.TcpPacket, {"connection_id": 7, "data": bytes(range(256)) * 15})
    messages = [(direction, data) for direction, _, data in vectors] + [("s2c", big)]
    chunks = _tunnel(jproxy.Dialect.SECURE_3_1, messages)
    # Several frames in one segment, and one frame across segments (the big one).
    joined = [*chunks[:4], ("c2s", b"".join(d for x, d in chunks[4:] if x == "c2s"))]
    joined += [(x, d) for x, d in chunks[4:] if x == "s2c"]
    pcap = tmp_path / "secure.pcap"
    write_pcap(pcap, joined)
    key_log = _key_log(tmp_path / "keys.log", WRAPPED, KEY)

    shown = dissected(tshark_pdml(pcap, "-o", f"jproxy.keylog:{key_log}"))

    assert dissected(tshark_pdml(pcap, "-2", "-o", f"jproxy.keylog:{key_log}")) == shown
    for direction in ("c2s", "s2c"):
        sequence = dissector.PROTOCOLS[0].sequence[Direction(direction)]
        want = [
            expected("jproxy", schema, data, key_size=256)
            for schema, (_, data) in zip(
                sequence, [c for c in chunks[:4] if c[0] == direction], strict=True
            )
        ]
        for x, data in messages:
            if x == direction:
                schema, _ = jproxy.parse_message(data, Direction(direction))
                want.append(expected("jproxy", schema, data))
        assert shown[direction] == want
    names = {name for direction in shown.values() for name, _, _ in direction}
    assert {schema.name for schema in jproxy.MESSAGES.values()} <= names


def test_secure_tunnel_altered_frame_fails_authentication(tmp_path: Path) -> None:
    first = build(jproxy.TcpPacket, {"connection_id": 1, "data": b"GET / HTTP/1.1\r\n\r\n"})
    second = build(jproxy.TcpHalfClose, {"connection_id": 1})
    chunks = _tunnel(jproxy.Dialect.SECURE_3_1, [("c2s", first), ("c2s", second)])
    direction, frame = chunks[4]
    chunks[4] = (direction, frame[:5] + bytes([frame[5] ^ 0x01]) + frame[6:])
    pcap = tmp_path / "tampered.pcap"
    write_pcap(pcap, chunks)
    key_log = _key_log(tmp_path / "keys.log", WRAPPED, KEY)

    root = tshark_pdml(pcap, "-o", f"jproxy.keylog:{key_log}")

    altered, intact = frames(root)
    assert any("authentication failed" in text for text in experts(altered))
    assert not experts(intact)
    assert [name for name, _, _ in dissected(root)["c2s"]] == [
        "Hello",
        "LoginRequest",
        "TcpHalfClose",
    ]


def test_without_its_key_a_frame_says_so(tmp_path: Path) -> None:
    message = build(jproxy.TcpHalfClose, {"connection_id": 1})
    pcap = tmp_path / "nokey.pcap"
    write_pcap(pcap, _tunnel(jproxy.Dialect.SECURE_3_1, [("c2s", message)]))
    (frame,) = frames(tshark_pdml(pcap))
    assert any("set the key log preference" in text for text in experts(frame))


def test_malformed_messages_get_expert_info(tmp_path: Path) -> None:
    short = bytes([jproxy.MessageType.TCP_PACKET, 0, 1, 0, 9]) + b"abc"
    unknown = bytes([0x77, 0, 1])
    bad_enum = build(jproxy.TcpHalfClose, {"connection_id": 1})[:3]
    bad_enum = bytes([jproxy.MessageType.TCP_DISCONNECT]) + bad_enum[1:] + bytes([9])
    trailing = build(jproxy.TcpHalfClose, {"connection_id": 1}) + b"!"
    chunks = _tunnel(
        jproxy.Dialect.LEGACY_3_0,
        [("c2s", short), ("c2s", unknown), ("c2s", bad_enum), ("c2s", trailing)],
    )
    pcap = tmp_path / "malformed.pcap"
    write_pcap(pcap, chunks)
    key_log = _key_log(tmp_path / "keys.log", WRAPPED, KEY)

    found = [
        experts(frame) for frame in frames(tshark_pdml(pcap, "-o", f"jproxy.keylog:{key_log}"))
    ]

    assert any("message ends early" in text for text in found[0])
    assert any("unknown message type 0x77" in text for text in found[1])
    assert any("unknown DisconnectReason value 9" in text for text in found[2])
    assert any("1 trailing bytes" in text for text in found[3])


def test_admin_exchange_dissected(tmp_path: Path) -> None:
    packets = [
        ("c2s", admin.AdminAuthRequest, {"version": 1, "user": b"ops", "password": b"secret"}),
        ("s2c", admin.AdminAuthReply, {"version": 1, "status": "OK"}),
        ("c2s", admin.AdminRequest, {"method": 3, "params": [{"data": b"65536"}, {"data": b""}]}),
        ("s2c", admin.AdminReply, {"code": "SET_BUFFER_SIZE", "data": "65536"}),
    ]
    chunks = [(direction, build(schema, fields)) for direction, schema, fields in packets]
    pcap = tmp_path / "admin.pcap"
    write_pcap(pcap, chunks, port=dissector.ADMIN_PORT)

    shown = dissected(tshark_pdml(pcap), "jproxy_admin")

    for direction in ("c2s", "s2c"):
        want = [
            expected("jproxy_admin", schema, data)
            for (x, schema, _), (_, data) in zip(packets, chunks, strict=True)
            if x == direction
        ]
        assert shown[direction] == want


@pytest.mark.parametrize("seed", range(4))
def test_damaged_tunnels_never_break_the_dissector(tmp_path: Path, seed: int) -> None:
    """Bytes changed or cut anywhere: the tunnel is still shown, and never a Lua error."""
    generator = random.Random(seed)
    dialect = list(Dialect)[seed % 2]
    messages = [(direction, data) for direction, _, data in _vector_messages()]
    chunks = [list(chunk) for chunk in _tunnel(dialect, messages)]
    for _ in range(4):
        chunk = generator.choice(chunks)
        damaged = bytearray(chunk[1])
        damaged[generator.randrange(len(damaged))] ^= 1 + generator.randrange(255)
        chunk[1] = bytes(damaged)
    cut = generator.choice(chunks)
    cut[1] = cut[1][: generator.randrange(len(cut[1]) + 1)]
    pcap = tmp_path / "damaged.pcap"
    write_pcap(pcap, [(direction, data) for direction, data in chunks])
    key_log = _key_log(tmp_path / "keys.log", WRAPPED, KEY)

    root = tshark_pdml(pcap, "-o", f"jproxy.keylog:{key_log}")

    assert root.findall(".//proto[@name='jproxy']")
