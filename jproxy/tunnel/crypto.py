"""The ciphers of both dialects: the RSA wrap of the session key and the per-frame ciphers.

3.0 is what the Java implementation does (PKCS#1 v1.5 key wrap, AES-128-ECB frames): kept
byte-exact for interoperability, with no protection against tampering. 3.1 wraps the key with
RSA-OAEP-SHA256 and seals frames with AES-128-GCM under a nonce that counts frames, so a
changed, replayed, reordered or dropped frame fails authentication. Both keep the frame
layout of the wire, ``n`` then ``n*16`` bytes, and pad the plaintext with PKCS#7.

Sans-I/O: a sealer turns messages into whole frames, an opener turns the whole frames at the
start of a buffer back into messages. Keeping a frame that is cut across receives is
``jproxy.tunnel.session``'s job. Both run for every frame a tunnel carries, so each keeps its loop
free of Python calls but the cipher's.
"""

from __future__ import annotations

import abc
import secrets
import struct

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
_PADDING_AFTER = [_PADDING[BLOCK_SIZE - rest] for rest in range(BLOCK_SIZE)]
"""The padding of a message by its length modulo the block size."""
_HEADERS = [b""] + [FRAME_HEADER.build(blocks * BLOCK_SIZE) for blocks in range(1, MAX_BLOCKS + 1)]
"""The frame header of each block count, built once by the schema's codec."""
_BODY_LENGTHS = FRAME_HEADER.body_lengths
_HEADER_OF = [FRAME_HEADER.header.pack(byte) for byte in range(256)]
"""The header bytes of each header byte value: what 3.1 authenticates, without a slice."""
_HEADER_SIZE = FRAME_HEADER.size
_NONCE = struct.Struct(">4sQ")
"""3.1: a nonce is its direction's prefix, then the frame counter."""


def _unpadded(padded: bytes) -> bytes:
    """The message inside PKCS#7-padded bytes; ``FrameError`` on bad padding."""
    count = padded[-1] if padded else 0
    if not 1 <= count <= BLOCK_SIZE or padded[-count:] != _PADDING[count]:
        raise FrameError("bad PKCS#7 padding")
    return padded[:-count]


class _Sealer(abc.ABC):
    """Turns messages into whole frames for one direction."""

    def __init__(self, dialect: Dialect) -> None:
        self.max_message = MAX_MESSAGE[dialect]

    def seal(self, message: bytes) -> bytes:
        """One whole frame carrying ``message``."""
        return self.seal_all([message])

    @abc.abstractmethod
    def seal_all(self, messages: list[bytes]) -> bytes:
        """The frames of ``messages``, in order, as one piece of bytes to send."""

    def _check_sizes(self, messages: list[bytes]) -> None:
        longest = max(map(len, messages), default=0)
        if longest > self.max_message:
            raise ValueError(f"message of {longest} bytes exceeds {self.max_message}")


class EcbSealer(_Sealer):
    """3.0: AES-128-ECB, every frame padded and encrypted on its own."""

    def __init__(self, key: bytes) -> None:
        super().__init__(Dialect.LEGACY_3_0)
        # ECB keeps no state between blocks, so one context serves every frame.
        self._encrypt = Cipher(algorithms.AES128(key), modes.ECB()).encryptor().update

    def seal_all(self, messages: list[bytes]) -> bytes:
        """The frames of ``messages``, in order, as one piece of bytes to send."""
        self._check_sizes(messages)
        encrypt, headers, block = self._encrypt, _HEADERS, BLOCK_SIZE
        pieces = []
        for message in messages:
            ciphertext = encrypt(message + _PADDING_AFTER[len(message) % block])
            pieces += headers[len(ciphertext) // block], ciphertext
        return b"".join(pieces)


class EcbOpener:
    """3.0: decrypts frame bodies; bad padding is the only error ECB can see."""

    def __init__(self, key: bytes) -> None:
        self._decrypt = Cipher(algorithms.AES128(key), modes.ECB()).decryptor().update

    def open_frames(self, view: memoryview, messages: list[bytes]) -> int:
        """Open every whole frame at the start of ``view`` into ``messages``; returns the
        bytes they took."""
        decrypt, append, lengths = self._decrypt, messages.append, _BODY_LENGTHS
        offset, end = 0, len(view)
        while offset < end:
            body = offset + _HEADER_SIZE
            frame_end = body + lengths[view[offset]]
            if frame_end > end:
                break
            if frame_end > body:  # the Java server skips an empty frame (n=0); so does 3.0
                append(_unpadded(decrypt(view[body:frame_end])))
            offset = frame_end
        return offset


class GcmSealer(_Sealer):
    """3.1: AES-128-GCM; the nonce counts frames, the header byte is authenticated."""

    def __init__(self, key: bytes, direction: Direction) -> None:
        super().__init__(Dialect.SECURE_3_1)
        self._aead = AESGCM(key)
        self._prefix = NONCE_PREFIX[direction]
        self._counter = 0

    def seal_all(self, messages: list[bytes]) -> bytes:
        """The frames of ``messages``, in order, as one piece of bytes to send."""
        self._check_sizes(messages)
        counter = self._counter
        if counter + len(messages) > COUNTER_LIMIT:
            raise FrameError("frame counter exhausted: the tunnel must be re-established")
        # encrypt and one join cost less than encrypt_into a buffer: no memoryview per frame.
        encrypt, nonce, prefix = self._aead.encrypt, _NONCE.pack, self._prefix
        headers, padding_after, block = _HEADERS, _PADDING_AFTER, BLOCK_SIZE
        pieces: list[bytes] = []
        append = pieces.append
        for message in messages:
            plaintext = message + padding_after[len(message) % block]
            header = headers[(len(plaintext) + GCM_TAG_SIZE) // block]
            append(header)
            append(encrypt(nonce(prefix, counter), plaintext, header))
            counter += 1
        self._counter = counter
        return b"".join(pieces)


class GcmOpener:
    """3.1: authenticates and decrypts frames in order; any failure ends the tunnel."""

    def __init__(self, key: bytes, direction: Direction) -> None:
        self._aead = AESGCM(key)
        self._prefix = NONCE_PREFIX[direction]
        self._counter = 0

    def open_frames(self, view: memoryview, messages: list[bytes]) -> int:
        """Open every whole frame at the start of ``view`` into ``messages``; returns the
        bytes they took. One loop with no Python call per frame but the cipher's (the
        padding check is ``_unpadded``'s, inlined): it runs for every frame received.
        ``decrypt_into`` a preallocated buffer measured no faster: the memoryview slice each
        frame needs costs what the allocation saves, and callers want bytes."""
        decrypt, nonce, prefix = self._aead.decrypt, _NONCE.pack, self._prefix
        append, lengths, headers, padding = messages.append, _BODY_LENGTHS, _HEADER_OF, _PADDING
        counter, offset, end = self._counter, 0, len(view)
        while offset < end:
            byte = view[offset]
            body = offset + _HEADER_SIZE
            frame_end = body + lengths[byte]
            if frame_end > end:
                break
            if frame_end == body:
                raise FrameError("empty frame (n=0)")
            if counter >= COUNTER_LIMIT:
                raise FrameError("frame counter exhausted: the tunnel must be re-established")
            try:
                padded = decrypt(nonce(prefix, counter), view[body:frame_end], headers[byte])
            except InvalidTag:
                raise FrameError(
                    "authentication failed (tampered, replayed, reordered or dropped frame)"
                ) from None
            counter += 1
            count = padded[-1] if padded else 0
            if not 0 < count <= BLOCK_SIZE or padded[-count:] != padding[count]:
                raise FrameError("bad PKCS#7 padding")
            append(padded[:-count])
            offset = frame_end
        self._counter = counter
        return offset


Sealer = EcbSealer | GcmSealer
Opener = EcbOpener | GcmOpener


def frame_ciphers(dialect: Dialect, key: bytes, sending: Direction) -> tuple[Sealer, Opener]:
    """The sealer for ``sending`` and the opener for the other direction, under one key."""
    if dialect is Dialect.LEGACY_3_0:
        return EcbSealer(key), EcbOpener(key)
    receiving = next(direction for direction in Direction if direction is not sending)
    return GcmSealer(key, sending), GcmOpener(key, receiving)
