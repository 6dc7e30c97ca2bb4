"""The two key files, byte-compatible with the Java jProxy 3.0 (KEYS.md, corrected by the wire).

The client keeps its private key and login hash in ``key.dat``; the server keeps one
``users/<UPPERHEX login hash>.dat`` per user with the name, the salt and the public key.
Lengths are big-endian like everything else Java wrote (KEYS.md says little-endian; it is not).
"""

from __future__ import annotations

import construct as c

from schemas.fields import doc, packet
from schemas.jproxy import HASH_SIZE

SALT_SIZE = 256
RSA_2048_PUBLIC_KEY_SIZE = 294

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
        c.Rebuild(c.Int16ub, lambda this: len(this.user.encode("utf-8"))),
        "n, user name length in bytes",
    ),
    "user" / doc(c.StringEncoded(c.Bytes(c.this.user_length), "utf-8"), "user name, UTF-8"),
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
