"""Key wrap and frame ciphers: byte-exact against the Java 3.0 capture, tamper-proof in 3.1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jproxy.tunnel import crypto
from jproxy.tunnel.keys import load_client_key, load_user
from schemas.jproxy import BLOCK_SIZE, MAX_BLOCKS, Dialect, Direction

JAVA = Path(__file__).parents[1] / "vectors" / "java-3.0"
VECTORS = json.loads((JAVA / "vectors.json").read_text())
C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT


def _recorded_frames() -> list[tuple[str, str, bytes, bytes, bytes]]:
    """``(where, dir, AES key, wire bytes, plaintext)`` of every encrypted frame recorded."""
    frames = []
    tunnel_key = bytes.fromhex(VECTORS["tunnel"]["aes_key_hex"])
    for message in VECTORS["tunnel"]["messages"]:
        if message["encrypted"]:
            frames.append(
                (
                    f"tunnel-{message['index']}",
                    message["dir"],
                    tunnel_key,
                    bytes.fromhex(message["wire_hex"]),
                    bytes.fromhex(message["plaintext_hex"]),
                )
            )
    for probe in VECTORS["probes"]:
        for number, exchange in enumerate(probe["exchanges"]):
            if "plaintext_hex" in exchange:
                frames.append(
                    (
                        f"{probe['name']}-{number}",
                        exchange["dir"],
                        bytes.fromhex(probe["aes_key_hex"]),
                        bytes.fromhex(exchange["hex"]),
                        bytes.fromhex(exchange["plaintext_hex"]),
                    )
                )
    return frames


RECORDED_FRAMES = _recorded_frames()


def _recorded_login_replies() -> list[tuple[str, bytes, bytes]]:
    """``(where, wrapped key, AES key)`` of every login the capture recorded."""
    tunnel = next(m for m in VECTORS["tunnel"]["messages"] if m["kind"] == "LOGIN_RESPONSE")
    replies = [
        (
            "tunnel",
            bytes.fromhex(tunnel["decoded"]["rsa_ciphertext_hex"]),
            bytes.fromhex(VECTORS["tunnel"]["aes_key_hex"]),
        )
    ]
    for probe in VECTORS["probes"]:
        if "aes_key_hex" in probe:
            [wrapped] = [
                exchange["hex"]
                for exchange in probe["exchanges"]
                if exchange["dir"] == "s2c" and len(exchange["hex"]) == 512
            ]
            replies.append(
                (probe["name"], bytes.fromhex(wrapped), bytes.fromhex(probe["aes_key_hex"]))
            )
    return replies


def _direction(name: str) -> Direction:
    return C2S if name == "c2s" else S2C


def _pair(dialect: Dialect, direction: Direction = C2S, key: bytes | None = None):
    """A sealer for ``direction`` and the opener the other end uses for it."""
    key = key or crypto.new_session_key()
    other = S2C if direction is C2S else C2S
    sealer, _ = crypto.frame_ciphers(dialect, key, direction)
    _, opener = crypto.frame_ciphers(dialect, key, other)
    return sealer, opener


def _open(opener, frame: bytes) -> bytes:
    """The message of one whole frame, which the opener must take entirely."""
    messages: list[bytes] = []
    assert opener.open_frames(memoryview(frame), messages) == len(frame)
    (message,) = messages
    return message


def test_the_capture_has_frames_of_every_size_class() -> None:
    sizes = {len(wire) // BLOCK_SIZE for *_, wire, _ in RECORDED_FRAMES}
    assert len(RECORDED_FRAMES) >= 50
    assert {1, 2, 129, 251} <= sizes


@pytest.mark.parametrize(
    ("direction", "key", "wire", "plaintext"),
    [frame[1:] for frame in RECORDED_FRAMES],
    ids=[frame[0] for frame in RECORDED_FRAMES],
)
def test_legacy_frames_match_java_byte_for_byte(
    direction: str, key: bytes, wire: bytes, plaintext: bytes
) -> None:
    sealer, opener = _pair(Dialect.LEGACY_3_0, _direction(direction), key)
    assert _open(opener, wire) == plaintext
    assert sealer.seal(plaintext) == wire


@pytest.mark.parametrize(
    ("wrapped", "aes_key"),
    [reply[1:] for reply in _recorded_login_replies()],
    ids=[reply[0] for reply in _recorded_login_replies()],
)
def test_java_login_replies_unwrap_with_the_java_client_key(wrapped: bytes, aes_key: bytes) -> None:
    private_key = load_client_key(JAVA / "client-key.dat").private_key
    assert crypto.unwrap_key(private_key, wrapped, Dialect.LEGACY_3_0) == aes_key
    with pytest.raises(crypto.KeyUnwrapError):
        crypto.unwrap_key(private_key, wrapped, Dialect.SECURE_3_1)


@pytest.mark.parametrize("dialect", list(Dialect))
def test_key_wrap_round_trip(dialect: Dialect) -> None:
    public_key = load_user(JAVA / "server-user.dat").public_key
    private_key = load_client_key(JAVA / "client-key.dat").private_key
    session_key = crypto.new_session_key()
    wrapped = crypto.wrap_key(public_key, session_key, dialect)
    assert len(wrapped) == 256
    assert crypto.unwrap_key(private_key, wrapped, dialect) == session_key


def test_oaep_wrap_does_not_unwrap_as_legacy_except_by_chance() -> None:
    """OpenSSL's implicit rejection returns random bytes of random length, rarely 16."""
    public_key = load_user(JAVA / "server-user.dat").public_key
    private_key = load_client_key(JAVA / "client-key.dat").private_key
    failures = 0
    for _ in range(20):
        wrapped = crypto.wrap_key(public_key, crypto.new_session_key(), Dialect.SECURE_3_1)
        try:
            crypto.unwrap_key(private_key, wrapped, Dialect.LEGACY_3_0)
        except crypto.KeyUnwrapError:
            failures += 1
    assert failures >= 18


def test_java_bad_padding_probe_frame_is_a_frame_error() -> None:
    probe = next(p for p in VECTORS["probes"] if p["name"] == "bad_padding_frame")
    frame = bytes.fromhex(probe["exchanges"][-2]["hex"])
    _, opener = _pair(Dialect.LEGACY_3_0, C2S, bytes.fromhex(probe["aes_key_hex"]))
    with pytest.raises(crypto.FrameError, match="padding"):
        _open(opener, frame)


def test_max_message_per_dialect() -> None:
    assert crypto.MAX_MESSAGE == {Dialect.LEGACY_3_0: 4079, Dialect.SECURE_3_1: 4063}


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4063, 4064, 4079])
def test_every_message_size_fits_its_frame(dialect: Dialect, size: int) -> None:
    sealer, opener = _pair(dialect)
    message = os.urandom(size)
    if size > crypto.MAX_MESSAGE[dialect]:
        with pytest.raises(ValueError, match="exceeds"):
            sealer.seal(message)
        return
    frame = sealer.seal(message)
    blocks = frame[0]
    assert len(frame) == 1 + blocks * BLOCK_SIZE
    if size == crypto.MAX_MESSAGE[dialect]:
        assert blocks == MAX_BLOCKS
    assert _open(opener, frame) == message


def test_gcm_sealing_is_deterministic_per_key_direction_and_counter() -> None:
    key = bytes(range(16))
    client_sealer, _ = crypto.frame_ciphers(Dialect.SECURE_3_1, key, C2S)
    server_sealer, _ = crypto.frame_ciphers(Dialect.SECURE_3_1, key, S2C)
    first, second = client_sealer.seal(b"same"), client_sealer.seal(b"same")
    assert first != second  # the counter moved
    assert server_sealer.seal(b"same") != first  # the direction differs
    again, _ = crypto.frame_ciphers(Dialect.SECURE_3_1, key, C2S)
    assert again.seal(b"same") == first


@pytest.mark.parametrize("dialect", list(Dialect))
def test_sealing_many_at_once_gives_the_frames_of_sealing_each(dialect: Dialect) -> None:
    key = bytes(range(16))
    largest = crypto.MAX_MESSAGE[dialect]
    messages = [b"", b"x", bytes(15), bytes(16), bytes(range(200)), bytes(largest)]
    one_by_one, _ = crypto.frame_ciphers(dialect, key, C2S)
    at_once, _ = crypto.frame_ciphers(dialect, key, C2S)
    expected = b"".join(one_by_one.seal(message) for message in messages)
    assert bytes(at_once.seal_all(messages)) == expected
    assert one_by_one.seal(b"next") == at_once.seal(b"next")  # the counters agree
    with pytest.raises(ValueError):
        at_once.seal_all([b"fine", bytes(largest + 1)])


def test_gcm_opener_takes_only_the_other_direction() -> None:
    key = crypto.new_session_key()
    sealer, _ = crypto.frame_ciphers(Dialect.SECURE_3_1, key, C2S)
    _, own_opener = crypto.frame_ciphers(Dialect.SECURE_3_1, key, C2S)  # opens S2C frames
    with pytest.raises(crypto.FrameError, match="authentication failed"):
        _open(own_opener, sealer.seal(b"reflected back"))


def _flip(frame: bytes, index: int, bit: int = 0x01) -> bytes:
    changed = bytearray(frame)
    changed[index] ^= bit
    return bytes(changed)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda frame: _flip(frame, 1),  # first ciphertext byte
        lambda frame: _flip(frame, len(frame) // 2, 0x80),  # middle of the ciphertext
        lambda frame: _flip(frame, len(frame) - 1),  # last tag byte
        lambda frame: _flip(frame, len(frame) - 16),  # first tag byte
    ],
    ids=["ciphertext-start", "ciphertext-middle", "tag-end", "tag-start"],
)
def test_gcm_rejects_a_changed_frame(tamper) -> None:
    sealer, opener = _pair(Dialect.SECURE_3_1)
    frame = sealer.seal(b"x" * 100)
    with pytest.raises(crypto.FrameError, match="authentication failed"):
        _open(opener, tamper(frame))


def test_gcm_authenticates_the_header() -> None:
    """A body sealed under another header byte does not open; under its own it does."""
    key = crypto.new_session_key()
    padded = b"y" * 40 + bytes([8]) * 8  # 3 blocks of ciphertext + tag = 4 blocks
    nonce = crypto.NONCE_PREFIX[C2S] + bytes(8)  # the first frame's
    _, opener = _pair(Dialect.SECURE_3_1, key=key)
    with pytest.raises(crypto.FrameError, match="authentication failed"):
        _open(opener, b"\x04" + AESGCM(key).encrypt(nonce, padded, b"\x05"))
    _, opener = _pair(Dialect.SECURE_3_1, key=key)
    assert _open(opener, b"\x04" + AESGCM(key).encrypt(nonce, padded, b"\x04")) == b"y" * 40


def test_gcm_counter_refuses_to_wrap() -> None:
    sealer, opener = _pair(Dialect.SECURE_3_1)
    # 2**64 frames cannot be sent in a test: start both ends at the last counter value.
    sealer._counter = crypto.COUNTER_LIMIT - 1
    opener._counter = crypto.COUNTER_LIMIT - 1
    assert _open(opener, sealer.seal(b"last")) == b"last"
    with pytest.raises(crypto.FrameError, match="counter exhausted"):
        sealer.seal(b"one too many")
    with pytest.raises(crypto.FrameError, match="counter exhausted"):
        _open(opener, b"\x02" + bytes(32))


def test_legacy_rejects_bad_padding_that_ecb_cannot_hide() -> None:
    key = crypto.new_session_key()
    sealer, opener = _pair(Dialect.LEGACY_3_0, key=key)
    frame = sealer.seal(b"z" * 16)  # a whole block of padding 0x10 follows
    assert frame[0] == 2
    with pytest.raises(crypto.FrameError, match="padding"):
        _open(opener, b"\x01" + frame[1:17])  # the message block alone: no padding at its end


def test_gcm_frame_of_only_a_tag_is_bad_padding_not_a_crash() -> None:
    """n=1 in 3.1 authenticates an empty plaintext: no padding byte, a frame error."""
    key = crypto.new_session_key()
    nonce = crypto.NONCE_PREFIX[C2S] + bytes(8)
    _, opener = _pair(Dialect.SECURE_3_1, key=key)
    with pytest.raises(crypto.FrameError, match="padding"):
        _open(opener, b"\x01" + AESGCM(key).encrypt(nonce, b"", b"\x01"))


@pytest.mark.parametrize("last", [b"\x00", b"\x11", b"\x01\x02"], ids=["zero", "17", "mixed"])
def test_gcm_rejects_authentic_bad_padding(last: bytes) -> None:
    """A peer holding the key that pads wrongly: the frame authenticates, the padding fails."""
    key = crypto.new_session_key()
    nonce = crypto.NONCE_PREFIX[C2S] + bytes(8)
    plaintext = b"x" * (16 - len(last)) + last
    _, opener = _pair(Dialect.SECURE_3_1, key=key)
    with pytest.raises(crypto.FrameError, match="padding"):
        _open(opener, b"\x02" + AESGCM(key).encrypt(nonce, plaintext, b"\x02"))
