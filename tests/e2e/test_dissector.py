"""The generated Wireshark dissector, run by a real tshark over captures written here.

Every message tshark shows must carry the fields that schemas/ parse from the same bytes:
the recorded Java 3.0 tunnel (decrypted with its key), a 3.1 tunnel sealed by jproxy.tunnel.crypto
(decrypted by the dissector's own AES-GCM), and an admin exchange.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from jproxy.gen import dissector
from jproxy.tunnel.crypto import MAX_MESSAGE
from schemas import admin, build, jproxy
from schemas.jproxy import Dialect, Direction
from tests.dissection import (
    JAVA,
    KEY,
    VECTORS,
    WRAPPED,
    dissected,
    expected,
    experts,
    frames,
    sealed_tunnel,
    tshark_pdml,
    write_key_log,
)
from tests.pcap import write_pcap


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


# --- captures -------------------------------------------------------------------------


def _java_vectors() -> dict:
    return json.loads((JAVA / "vectors.json").read_text())


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
    key_log = write_key_log(
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


def test_secure_tunnel_every_message_decrypted_by_the_lua_aes_gcm(tmp_path: Path) -> None:
    vectors = _vector_messages()
    big = build(jproxy.TcpPacket, {"connection_id": 7, "data": bytes(range(256)) * 15})
    messages = [(direction, data) for direction, _, data in vectors] + [("s2c", big)]
    chunks = sealed_tunnel(jproxy.Dialect.SECURE_3_1, messages)
    # Several frames in one segment, and one frame across segments (the big one).
    joined = [*chunks[:4], ("c2s", b"".join(d for x, d in chunks[4:] if x == "c2s"))]
    joined += [(x, d) for x, d in chunks[4:] if x == "s2c"]
    pcap = tmp_path / "secure.pcap"
    write_pcap(pcap, joined)
    key_log = write_key_log(tmp_path / "keys.log", WRAPPED, KEY)

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
    chunks = sealed_tunnel(jproxy.Dialect.SECURE_3_1, [("c2s", first), ("c2s", second)])
    direction, frame = chunks[4]
    chunks[4] = (direction, frame[:5] + bytes([frame[5] ^ 0x01]) + frame[6:])
    pcap = tmp_path / "tampered.pcap"
    write_pcap(pcap, chunks)
    key_log = write_key_log(tmp_path / "keys.log", WRAPPED, KEY)

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
    write_pcap(pcap, sealed_tunnel(jproxy.Dialect.SECURE_3_1, [("c2s", message)]))
    (frame,) = frames(tshark_pdml(pcap))
    assert any("set the key log preference" in text for text in experts(frame))


def test_malformed_messages_get_expert_info(tmp_path: Path) -> None:
    short = bytes([jproxy.MessageType.TCP_PACKET, 0, 1, 0, 9]) + b"abc"
    unknown = bytes([0x77, 0, 1])
    bad_enum = build(jproxy.TcpHalfClose, {"connection_id": 1})[:3]
    bad_enum = bytes([jproxy.MessageType.TCP_DISCONNECT]) + bad_enum[1:] + bytes([9])
    trailing = build(jproxy.TcpHalfClose, {"connection_id": 1}) + b"!"
    chunks = sealed_tunnel(
        jproxy.Dialect.LEGACY_3_0,
        [("c2s", short), ("c2s", unknown), ("c2s", bad_enum), ("c2s", trailing)],
    )
    pcap = tmp_path / "malformed.pcap"
    write_pcap(pcap, chunks)
    key_log = write_key_log(tmp_path / "keys.log", WRAPPED, KEY)

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
    chunks = [list(chunk) for chunk in sealed_tunnel(dialect, messages)]
    for _ in range(4):
        chunk = generator.choice(chunks)
        damaged = bytearray(chunk[1])
        damaged[generator.randrange(len(damaged))] ^= 1 + generator.randrange(255)
        chunk[1] = bytes(damaged)
    cut = generator.choice(chunks)
    cut[1] = cut[1][: generator.randrange(len(cut[1]) + 1)]
    pcap = tmp_path / "damaged.pcap"
    write_pcap(pcap, [(direction, data) for direction, data in chunks])
    key_log = write_key_log(tmp_path / "keys.log", WRAPPED, KEY)

    root = tshark_pdml(pcap, "-o", f"jproxy.keylog:{key_log}")

    assert root.findall(".//proto[@name='jproxy']")
