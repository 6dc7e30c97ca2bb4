"""The two key files, byte-compatible with the Java jProxy 3.0 (KEYS.md, corrected by the wire).

The client keeps its private key and login hash in ``key.dat``; the server keeps one
``users/<UPPERHEX login hash>.dat`` per user with the name, the salt and the public key.
Lengths are big-endian like everything else Java wrote (KEYS.md says little-endian; it is not),
and the user name is in Java's modified UTF-8, which is not quite UTF-8.

Keys made by the Java keygen work as they are: its ``key.dat`` goes to the gjproxy client,
its ``users/`` folder to the gjproxy server. The Java keygen writes ``key.dat`` with the mode
the umask leaves (0644 by default), so group and others may read the private key; the gjproxy
client refuses such a file and says how to fix it: ``chmod 600 key.dat``.
"""

from __future__ import annotations

import re

import construct as c

from schemas.fields import doc, packet
from schemas.jproxy import HASH_SIZE

SALT_SIZE = 256
RSA_2048_PUBLIC_KEY_SIZE = 294

_SUPPLEMENTARY = re.compile("[\U00010000-\U0010ffff]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_FOUR_BYTE_LEAD = re.compile(b"[\xf0-\xf4]")
_JAVA_NUL = b"\xc0\x80"


def _as_surrogate_pair(match: re.Match[str]) -> str:
    offset = ord(match.group()) - 0x10000
    return chr(0xD800 | offset >> 10) + chr(0xDC00 | offset & 0x3FF)


def _from_surrogate_pair(match: re.Match[str]) -> str:
    high, low = map(ord, match.group())
    return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))


def encode_modified_utf8(text: str) -> bytes:
    """``text`` as Java's ``DataOutputStream.writeUTF`` writes it, without the length.

    UTF-8 of the text's UTF-16 code units: NUL is C0 80, and a character beyond U+FFFF is its
    surrogate pair, each half in 3 bytes (6 bytes where UTF-8 takes 4). ``ValueError`` for an
    unpaired surrogate, which no UTF-8 can carry.
    """
    lone = _SURROGATE.search(text)
    if lone:
        raise ValueError(f"unpaired UTF-16 surrogate U+{ord(lone.group()):04X} at {lone.start()}")
    units = _SUPPLEMENTARY.sub(_as_surrogate_pair, text)
    return units.encode("utf-8", "surrogatepass").replace(b"\0", _JAVA_NUL)


def decode_modified_utf8(raw: bytes) -> str:
    """The text of bytes that ``encode_modified_utf8`` (and Java's ``writeUTF``) writes.

    Anything else is a ``ValueError`` that says where and why. A 4-byte UTF-8 sequence, how
    gjproxy wrote characters beyond U+FFFF before it followed Java, is refused by Java's
    ``readUTF`` too. ``readUTF`` lets through a raw NUL byte, overlong forms and unpaired
    surrogates, which ``writeUTF`` never writes for well-formed text; a user name is text, so
    gjproxy refuses them.
    """
    if b"\0" in raw:
        raise ValueError(f"NUL byte at {raw.index(0)} (Java writes NUL as C0 80)")
    four_byte = _FOUR_BYTE_LEAD.search(raw)
    if four_byte:
        raise ValueError(
            f"4-byte UTF-8 sequence at {four_byte.start()}: standard UTF-8, not Java's modified"
            " UTF-8 (which writes a character beyond U+FFFF as two 3-byte surrogates);"
            " Java's readUTF refuses it too"
        )
    parts, start = [], 0
    for part in raw.split(_JAVA_NUL):
        try:
            parts.append(part.decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError as error:
            raise ValueError(
                f"not Java's modified UTF-8 at {start + error.start}: {error.reason}"
            ) from None
        start += len(part) + len(_JAVA_NUL)
    text = _SURROGATE_PAIR.sub(_from_surrogate_pair, "\0".join(parts))
    lone = _SURROGATE.search(text)
    if lone:
        raise ValueError(f"unpaired UTF-16 surrogate U+{ord(lone.group()):04X}")
    return text


class JavaModifiedUtf8(c.Adapter):
    """Bytes <-> text in Java's modified UTF-8 (``writeUTF``/``readUTF``), checked both ways."""

    def _decode(self, obj: bytes, context: c.Container, path: str) -> str:
        try:
            return decode_modified_utf8(obj)
        except ValueError as error:
            raise c.ValidationError(str(error), path=path) from None

    def _encode(self, obj: str, context: c.Container, path: str) -> bytes:
        try:
            return encode_modified_utf8(obj)
        except ValueError as error:
            raise c.ValidationError(str(error), path=path) from None


ClientKeyFile = packet(
    "ClientKeyFile",
    "private_key_length"
    / doc(c.Rebuild(c.Int32ub, c.len_(c.this.private_key)), "n, private key length"),
    "private_key" / doc(c.Bytes(c.this.private_key_length), "RSA private key, PKCS#8 DER"),
    "login_hash"
    / doc(c.Bytes(HASH_SIZE), "SHA-256(public key DER || salt): how the server knows this key"),
    doc_text="client key file key.dat; nothing follows the hash",
)

UserFile = packet(
    "UserFile",
    "user_length"
    / doc(
        c.Rebuild(c.Int16ub, lambda this: len(encode_modified_utf8(this.user))),
        "n, user name length in bytes",
    ),
    "user"
    / doc(
        JavaModifiedUtf8(c.Bytes(c.this.user_length)),
        "user name in Java's modified UTF-8 (DataOutputStream.writeUTF): NUL as C0 80, a"
        " character beyond U+FFFF as its two UTF-16 surrogates in 3 bytes each",
    ),
    "salt" / doc(c.Bytes(SALT_SIZE), "random salt, hashed after the public key"),
    "public_key"
    / doc(
        c.GreedyBytes,
        "the rest of the file: RSA public key, X.509 SubjectPublicKeyInfo DER"
        f" ({RSA_2048_PUBLIC_KEY_SIZE} bytes for RSA-2048; KEYS.md wrongly says 296)",
    ),
    doc_text="server user file users/<UPPERHEX login hash>.dat",
)

PACKETS: tuple[c.Construct, ...] = (ClientKeyFile, UserFile)
"""Every top-level packet of this module, in the order docs/protocol.md presents them."""
