"""Session: frames out of a byte stream in any pieces, the Java 3.0 streams, 3.1 tampering."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from jproxy.tunnel.handshake import ClientHandshake, Phase, ServerHandshake
from jproxy.tunnel.keys import UserDirectory, load_client_key
from jproxy.tunnel.session import FrameError, Role, Session
from schemas.errors import WireError
from schemas.jproxy import Dialect

JAVA = Path(__file__).parents[1] / "vectors" / "java-3.0"
VECTORS = json.loads((JAVA / "vectors.json").read_text())
TRANSCRIPT = json.loads((JAVA / "transcript.json").read_text())
TUNNEL_KEY = bytes.fromhex(VECTORS["tunnel"]["aes_key_hex"])


def _pair(dialect: Dialect) -> tuple[Session, Session]:
    key = os.urandom(16)
    return Session(dialect, key, Role.CLIENT), Session(dialect, key, Role.SERVER)


def _recorded_chunks(direction: str) -> list[bytes]:
    [connection] = TRANSCRIPT["connections"]
    return [
        bytes.fromhex(event["hex"])
        for event in connection["events"]
        if event.get("dir") == direction and "hex" in event
    ]


def _recorded_plaintexts(direction: str) -> list[bytes]:
    return [
        bytes.fromhex(message["plaintext_hex"])
        for message in VECTORS["tunnel"]["messages"]
        if message["dir"] == direction and message["encrypted"]
    ]


def _feed_bytewise(session: Session, data: bytes) -> list[bytes]:
    messages = []
    for index in range(len(data)):
        messages += session.feed(data[index : index + 1])
    return messages


@pytest.fixture
def java_users(tmp_path: Path) -> UserDirectory:
    users = tmp_path / "users"
    users.mkdir()
    name = VECTORS["keys"]["server_user_file_original_name"]
    shutil.copy(JAVA / "server-user.dat", users / name)
    return UserDirectory(users)


def test_java_client_stream_decrypts_to_the_recorded_messages(java_users: UserDirectory) -> None:
    """The Java client's bytes log in to a gjproxy server core; its frames then decrypt."""
    stream = b"".join(_recorded_chunks("c2s"))
    server = ServerHandshake(java_users, allow_legacy=True)
    server.receive(stream)
    assert server.phase is Phase.DONE
    assert server.user.user == "alice"
    assert server.dialect is Dialect.LEGACY_3_0
    # The server core picked its own random key; the capture's key opens the capture's frames.
    session = Session(Dialect.LEGACY_3_0, TUNNEL_KEY, Role.SERVER)
    assert session.feed(server.leftover) == _recorded_plaintexts("c2s")
    session.finish()


def test_java_server_stream_logs_a_gjproxy_client_in_and_decrypts() -> None:
    """The Java server's bytes, replayed to a gjproxy client core holding the Java key file."""
    client = ClientHandshake(load_client_key(JAVA / "client-key.dat"), Dialect.LEGACY_3_0)
    assert client.start().hex() == VECTORS["tunnel"]["messages"][0]["wire_hex"]
    chunks = _recorded_chunks("s2c")
    login_request = client.receive(chunks[0])
    assert login_request.hex() == VECTORS["tunnel"]["messages"][2]["wire_hex"]
    assert client.receive(b"".join(chunks[1:])) == b""
    assert client.phase is Phase.DONE
    assert client.session.feed(client.leftover) == _recorded_plaintexts("s2c")


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_recorded_streams_decrypt_chunk_by_chunk_and_byte_by_byte(direction: str) -> None:
    role = Role.SERVER if direction == "c2s" else Role.CLIENT
    login_size = 8 + 32 if direction == "c2s" else 7 + 1 + 256
    chunks = _recorded_chunks(direction)
    assert len(chunks[0] + chunks[1]) == login_size  # hello and login, then only frames
    expected = _recorded_plaintexts(direction)

    by_chunk = Session(Dialect.LEGACY_3_0, TUNNEL_KEY, role)
    messages = []
    for chunk in chunks[2:]:
        messages += by_chunk.feed(chunk)
    assert messages == expected

    by_byte = Session(Dialect.LEGACY_3_0, TUNNEL_KEY, role)
    assert _feed_bytewise(by_byte, b"".join(chunks[2:])) == expected
    by_byte.finish()


@pytest.mark.parametrize("dialect", list(Dialect))
def test_frames_in_any_pieces(dialect: Dialect) -> None:
    client, server = _pair(dialect)
    messages = [os.urandom(size) for size in (0, 1, 16, 300, client.max_message, 5)]
    stream = b"".join(client.seal(message) for message in messages)
    assert _feed_bytewise(server, stream) == messages
    for cut in (1, 17, 4000, 4081, 5000):
        client, server = _pair(dialect)
        stream = b"".join(client.seal(message) for message in messages)
        received = []
        for start in range(0, len(stream), cut):
            received += server.feed(stream[start : start + cut])
        assert received == messages, cut


@pytest.mark.parametrize("dialect", list(Dialect))
def test_both_directions_at_once(dialect: Dialect) -> None:
    client, server = _pair(dialect)
    assert server.feed(client.seal(b"hello server")) == [b"hello server"]
    assert client.feed(server.seal(b"hello client")) == [b"hello client"]
    assert server.feed(client.seal(b"again")) == [b"again"]


@pytest.mark.parametrize("dialect", list(Dialect))
def test_partial_frame_is_buffered_and_bounded(dialect: Dialect) -> None:
    client, server = _pair(dialect)
    client_message = os.urandom(client.max_message)
    frame = client.seal(client_message)
    assert server.feed(frame[:-1]) == []
    assert server.buffered == len(frame) - 1
    with pytest.raises(FrameError, match="stream ended 4080 bytes into a frame"):
        server.finish()
    assert server.feed(frame[-1:]) == [client_message]
    assert server.buffered == 0


def test_legacy_skips_an_empty_frame_like_the_java_server() -> None:
    probe = next(p for p in VECTORS["probes"] if p["name"] == "zero_block_frame")
    session = Session(Dialect.LEGACY_3_0, bytes.fromhex(probe["aes_key_hex"]), Role.SERVER)
    zero, connect = [bytes.fromhex(e["hex"]) for e in probe["exchanges"] if e["dir"] == "c2s"][-2:]
    assert session.feed(zero) == []
    assert session.feed(connect) == [bytes.fromhex(probe["exchanges"][-3]["plaintext_hex"])]


def test_secure_refuses_an_empty_frame() -> None:
    client, server = _pair(Dialect.SECURE_3_1)
    with pytest.raises(FrameError, match="empty frame"):
        server.feed(b"\x00" + client.seal(b"after"))


def test_frame_error_is_a_wire_error() -> None:
    assert issubclass(FrameError, WireError)


def test_legacy_bad_padding_closes_like_the_java_server() -> None:
    probe = next(p for p in VECTORS["probes"] if p["name"] == "bad_padding_frame")
    session = Session(Dialect.LEGACY_3_0, bytes.fromhex(probe["aes_key_hex"]), Role.SERVER)
    with pytest.raises(FrameError, match="padding"):
        session.feed(bytes.fromhex(probe["exchanges"][-2]["hex"]))


def _three_frames() -> tuple[Session, list[bytes]]:
    client, server = _pair(Dialect.SECURE_3_1)
    return server, [client.seal(f"frame {number}".encode() * 20) for number in range(3)]


def _truncated(frames: list[bytes]) -> bytes:
    return frames[0][:-1] + frames[1] + frames[2]


def _header_changed(frames: list[bytes]) -> bytes:
    return bytes([frames[0][0] - 1]) + frames[0][1:] + frames[1]


@pytest.mark.parametrize(
    ("accepted", "attack"),
    [
        (0, lambda f: f[0][:1] + bytes([f[0][1] ^ 1]) + f[0][2:]),
        (0, lambda f: f[0][:-1] + bytes([f[0][-1] ^ 0x80])),
        (0, _header_changed),
        (0, _truncated),
        (1, lambda f: f[0] + f[0]),
        (0, lambda f: f[1] + f[0]),
        (1, lambda f: f[0] + f[2]),
    ],
    ids=["ciphertext-bit", "tag-bit", "header", "truncated", "replayed", "reordered", "dropped"],
)
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_secure_detects_tampering(accepted: int, attack, bytewise: bool) -> None:
    server, frames = _three_frames()
    stream = attack(frames)
    received: list[bytes] = []
    with pytest.raises(FrameError, match="authentication failed"):
        if bytewise:
            for index in range(len(stream)):
                received += server.feed(stream[index : index + 1])
        else:
            received += server.feed(stream)
    # Only the frames before the attack came through, and only when fed apart from it.
    assert received == ([b"frame 0" * 20] * accepted if bytewise else [])


def test_secure_ends_inside_a_frame_is_an_error() -> None:
    server, frames = _three_frames()
    assert server.feed(frames[0] + frames[1][:10]) == [b"frame 0" * 20]
    with pytest.raises(FrameError, match="stream ended"):
        server.finish()
