"""The ciphers of both dialects: the RSA wrap of the session key and the per-frame ciphers.

3.0 is what the Java implementation does (PKCS#1 v1.5 key wrap, AES-128-ECB frames): kept
byte-exact for interoperability, with no protection against tampering. 3.1 wraps the key with
RSA-OAEP-SHA256 and seals frames with AES-128-GCM under a nonce that counts frames, so a
changed, replayed, reordered or dropped frame fails authentication. Both keep the frame
layout of the wire, ``n`` then ``n*16`` bytes, and pad the plaintext with PKCS#7.

Sans-I/O: a sealer turns one message into one whole frame, an opener turns one frame body back
into the message. Framing a byte stream is ``jproxy.session``'s job.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.errors import WireError
from schemas.fast import FRAME_HEADER
from schemas.jproxy import BLOCK_SIZE, MAX_BLOCKS, Dialect, Direction

SESSION_KEY_SIZE = 16
GCM_TAG_SIZE = 16

MAX_MESSAGE: dict[Dialect, int] = {
    # PKCS#7 adds at least one byte: 255 blocks carry 255*16 - 1 message bytes.
    Dialect.LEGACY_3_0: MAX_BLOCKS * BLOCK_SIZE - 1,
    # The GCM tag takes one of the 255 blocks.
    Dialect.SECURE_3_1: (MAX_BLOCKS - 1) * BLOCK_SIZE - 1,
}
"""The largest message one frame carries, per dialect: 4079 bytes (3.0), 4063 bytes (3.1)."""

NONCE_PREFIX: dict[Direction, bytes] = {
    Direction.CLIENT_TO_SERVER: b"\x00\x00\x00\x01",
    Direction.SERVER_TO_CLIENT: b"\x00\x00\x00\x02",
}
"""3.1: the first 4 of the 12 GCM nonce bytes; the frame counter (u64 big-endian) follows."""

COUNTER_LIMIT = 1 << 64
"""3.1: a direction refuses its frame number 2**64; its nonce would repeat."""

_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_KEY_WRAP_PADDING = {Dialect.SECURE_3_1: _OAEP, Dialect.LEGACY_3_0: padding.PKCS1v15()}


class FrameError(WireError):
    """A frame that must not be accepted (bad padding, failed authentication, n=0 in 3.1)."""

    def __init__(self, reason: str) -> None:
        super().__init__("Frame", "ciphertext", reason)


class KeyUnwrapError(ValueError):
    """The wrapped session key does not decrypt with this private key and padding."""


def new_session_key() -> bytes:
    return secrets.token_bytes(SESSION_KEY_SIZE)


def wrap_key(public_key: rsa.RSAPublicKey, session_key: bytes, dialect: Dialect) -> bytes:
    """The session key encrypted to the user's public key, as long as the RSA modulus."""
    return public_key.encrypt(session_key, _KEY_WRAP_PADDING[dialect])


def unwrap_key(private_key: rsa.RSAPrivateKey, wrapped: bytes, dialect: Dialect) -> bytes:
    """The 16-byte session key from a login reply; ``KeyUnwrapError`` if it is not one.

    OpenSSL answers bad PKCS#1 v1.5 padding with random bytes instead of an error (implicit
    rejection, against Bleichenbacher), so in 3.0 a wrong length is the only failure signal.
    """
    try:
        key = private_key.decrypt(wrapped, _KEY_WRAP_PADDING[dialect])
    except ValueError:
        raise KeyUnwrapError("the session key does not decrypt with this key") from None
    if len(key) != SESSION_KEY_SIZE:
        raise KeyUnwrapError(f"the session key is {len(key)} bytes, not {SESSION_KEY_SIZE}")
    return key


_PADDING = [bytes((count,)) * count for count in range(BLOCK_SIZE + 1)]
"""PKCS#7 padding by length (1..16), built once: sealing and opening run for every frame."""
_HEADERS = [b""] + [FRAME_HEADER.build(blocks * BLOCK_SIZE) for blocks in range(1, MAX_BLOCKS + 1)]
"""The frame header of each block count, built once by the schema's codec."""
_HEADER_SIZE = FRAME_HEADER.size


def _pad(message: bytes) -> bytes:
    return message + _PADDING[BLOCK_SIZE - len(message) % BLOCK_SIZE]


def _unpadded_length(padded: bytes | memoryview) -> int:
    """Length of the message inside PKCS#7-padded bytes; ``FrameError`` on bad padding."""
    count = padded[-1] if padded else 0
    if not 1 <= count <= BLOCK_SIZE or padded[-count:] != _PADDING[count]:
        raise FrameError("bad PKCS#7 padding")
    return len(padded) - count


class _Sealer:
    """Turns messages into whole frames for one direction."""

    def __init__(self, dialect: Dialect) -> None:
        self.max_message = MAX_MESSAGE[dialect]

    def _check_size(self, message: bytes) -> None:
        if len(message) > self.max_message:
            raise ValueError(f"message of {len(message)} bytes exceeds {self.max_message}")


class EcbSealer(_Sealer):
    """3.0: AES-128-ECB, every frame padded and encrypted on its own."""

    def __init__(self, key: bytes) -> None:
        super().__init__(Dialect.LEGACY_3_0)
        # ECB keeps no state between blocks, so one context serves every frame.
        self._encrypt = Cipher(algorithms.AES128(key), modes.ECB()).encryptor().update

    def seal(self, message: bytes) -> bytes:
        self._check_size(message)
        ciphertext = self._encrypt(_pad(message))
        return FRAME_HEADER.build(len(ciphertext)) + ciphertext

    def seal_all(self, messages: list[bytes]) -> bytes:
        """The frames of ``messages``, in order, as one piece of bytes to send."""
        return b"".join([self.seal(message) for message in messages])


class EcbOpener:
    """3.0: decrypts one frame body; bad padding is the only error ECB can see."""

    def __init__(self, key: bytes) -> None:
        self._decrypt = Cipher(algorithms.AES128(key), modes.ECB()).decryptor().update

    def open(self, header: bytes | memoryview, body: bytes | memoryview) -> bytes:
        padded = self._decrypt(body)
        return padded[: _unpadded_length(padded)]


class GcmSealer(_Sealer):
    """3.1: AES-128-GCM; the nonce counts frames, the header byte is authenticated."""

    def __init__(self, key: bytes, direction: Direction) -> None:
        super().__init__(Dialect.SECURE_3_1)
        self._aead = AESGCM(key)
        self._prefix = NONCE_PREFIX[direction]
        self._counter = 0

    def seal(self, message: bytes) -> bytes:
        return bytes(self.seal_all([message]))

    def seal_all(self, messages: list[bytes]) -> bytearray:
        """The frames of ``messages``, in order, encrypted straight into one buffer to send."""
        block = BLOCK_SIZE
        padded_sizes = [(len(message) // block + 1) * block for message in messages]
        for message in messages:
            self._check_size(message)
        if self._counter + len(messages) > COUNTER_LIMIT:
            raise FrameError("frame counter exhausted: the tunnel must be re-established")
        wire = bytearray(sum(padded_sizes) + len(messages) * (_HEADER_SIZE + GCM_TAG_SIZE))
        view = memoryview(wire)
        encrypt_into, prefix, counter = self._aead.encrypt_into, self._prefix, self._counter
        offset = 0
        for message, padded_size in zip(messages, padded_sizes, strict=True):
            body_size = padded_size + GCM_TAG_SIZE
            header = _HEADERS[body_size // block]
            view[offset : offset + _HEADER_SIZE] = header
            offset += _HEADER_SIZE
            nonce = prefix + counter.to_bytes(8, "big")
            counter += 1
            plaintext = message + _PADDING[padded_size - len(message)]
            encrypt_into(nonce, plaintext, header, view[offset : offset + body_size])
            offset += body_size
        self._counter = counter
        return wire


class GcmOpener:
    """3.1: authenticates and decrypts frames in order; any failure ends the tunnel."""

    def __init__(self, key: bytes, direction: Direction) -> None:
        self._aead = AESGCM(key)
        self._prefix = NONCE_PREFIX[direction]
        self._counter = 0

    def open(self, header: bytes | memoryview, body: bytes | memoryview) -> bytes:
        if self._counter >= COUNTER_LIMIT:
            raise FrameError("frame counter exhausted: the tunnel must be re-established")
        nonce = self._prefix + self._counter.to_bytes(8, "big")
        try:
            padded = self._aead.decrypt(nonce, body, header)
        except InvalidTag:
            raise FrameError(
                "authentication failed (tampered, replayed, reordered or dropped frame)"
            ) from None
        self._counter += 1
        return padded[: _unpadded_length(padded)]


Sealer = EcbSealer | GcmSealer
Opener = EcbOpener | GcmOpener


def frame_ciphers(dialect: Dialect, key: bytes, sending: Direction) -> tuple[Sealer, Opener]:
    """The sealer for ``sending`` and the opener for the other direction, under one key."""
    if dialect is Dialect.LEGACY_3_0:
        return EcbSealer(key), EcbOpener(key)
    receiving = next(direction for direction in Direction if direction is not sending)
    return GcmSealer(key, sending), GcmOpener(key, receiving)
