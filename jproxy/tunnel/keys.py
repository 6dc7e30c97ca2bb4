"""Client keys, user records and the server's user directory, in the Java 3.0 file formats.

A user is known by the login hash SHA-256(public key DER || salt). The client keeps the private
key and that hash in ``key.dat``; the server keeps ``users/<UPPERHEX hash>.dat`` and finds the
user by the hash the client sends. Key files hold secrets, so they are created 0600 and never
overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import construct as c
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from schemas import WireError, build, parse
from schemas.keys import SALT_SIZE, ClientKeyFile, UserFile, encode_modified_utf8

log = logging.getLogger(__name__)

RSA_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
MAX_KEY_FILE_SIZE = 64 * 1024
MAX_USER_NAME_SIZE = 0xFFFF
USER_FILE_NAME = re.compile(r"[0-9A-F]{64}\.dat")


class KeyFileError(Exception):
    """A key or user file that cannot be used; the message names the file and what is wrong."""


def login_hash(public_key_der: bytes, salt: bytes) -> bytes:
    return hashlib.sha256(public_key_der + salt).digest()


@dataclass(frozen=True)
class ClientKey:
    """What the client needs to log in: its RSA private key and its login hash."""

    private_key: rsa.RSAPrivateKey
    login_hash: bytes

    @property
    def modulus_size(self) -> int:
        """Bytes of the RSA modulus: the length of the wrapped session key in a login reply."""
        return (self.private_key.key_size + 7) // 8


@dataclass(frozen=True)
class UserRecord:
    """One user the server accepts: name, salt and RSA public key."""

    user: str
    salt: bytes
    public_key_der: bytes

    @cached_property
    def public_key(self) -> rsa.RSAPublicKey:
        return _rsa_public_key(self.public_key_der, "user record")

    @cached_property
    def login_hash(self) -> bytes:
        return login_hash(self.public_key_der, self.salt)

    @property
    def file_name(self) -> str:
        return self.login_hash.hex().upper() + ".dat"


def _check_user_name(user: str) -> None:
    if not user or not user.isprintable():
        raise ValueError("a user name must be non-empty printable text")
    if len(encode_modified_utf8(user)) > MAX_USER_NAME_SIZE:
        raise ValueError(
            f"a user name must be at most {MAX_USER_NAME_SIZE} bytes in Java's modified UTF-8"
        )


def _check_rsa_size(key: rsa.RSAPrivateKey | rsa.RSAPublicKey, where: str) -> None:
    if key.key_size < RSA_BITS:
        raise KeyFileError(f"{where}: RSA key of {key.key_size} bits; {RSA_BITS} or more needed")


def _rsa_public_key(der: bytes, where: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{where}: public key is not X.509 SubjectPublicKeyInfo DER") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError(f"{where}: public key is not an RSA key")
    _check_rsa_size(key, where)
    return key


def generate(user: str) -> tuple[ClientKey, UserRecord]:
    """A fresh RSA-2048 key pair and salt for ``user``: the client's half and the server's."""
    _check_user_name(user)
    private_key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_BITS)
    public_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = UserRecord(user, secrets.token_bytes(SALT_SIZE), public_der)
    return ClientKey(private_key, record.login_hash), record


def _read(path: Path, what: str) -> bytes:
    """The file's bytes; only a regular file is read (a FIFO or device would block or never end).

    O_NONBLOCK makes even opening a FIFO return at once, so no reload can freeze the server.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise KeyFileError(f"{path}: not a regular file, not read as a {what}")
            data = file.read(MAX_KEY_FILE_SIZE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such {what}") from None
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read {what}: {error.strerror}") from None
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KeyFileError(f"{path}: too large for a {what} (over {MAX_KEY_FILE_SIZE} bytes)")
    return data


def _truncated(error: WireError, data: bytes) -> str | None:
    """``truncated at byte N`` when the parser ran out of bytes: the words for a file's owner
    rather than the parser's ("stream read less than specified amount")."""
    if "stream read less than specified amount" in error.reason:
        return f"truncated at byte {len(data)}"
    return None


def _parse(schema: c.Construct, data: bytes, path: Path, what: str) -> c.Container:
    try:
        return parse(schema, data)
    except WireError as error:
        why = _truncated(error, data) or str(error)  # the field says which part of a user file
        raise KeyFileError(f"{path}: not a valid {what} ({why})") from None


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only; never replace an existing file."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as error:
        raise KeyFileError(f"{path}: cannot create: {error.strerror}") from None
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def require_private(path: str | Path) -> None:
    """Refuse a key file that group or others may read or write, as ssh refuses one."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read client key file: {error.strerror}") from None
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: mode {mode:04o} lets group or others read it; a private key must be"
            f" private to its owner: chmod 600 {path}"
        )


def _user_file_name(data: bytes) -> str | None:
    """The user name when ``data`` is a valid server user file, else None."""
    try:
        fields = parse(UserFile, data)
        _rsa_public_key(fields.public_key, "user file")
    except (WireError, KeyFileError):
        return None
    return fields.user


def load_client_key(path: str | Path) -> ClientKey:
    path = Path(path)
    data = _read(path, "client key file")
    try:
        fields = parse(ClientKeyFile, data)
    except WireError as error:
        user = _user_file_name(data)
        if user is not None:
            raise KeyFileError(
                f"{path} is a server user file (user {user!r}), not a client key: the client"
                " needs the key.dat that `gjproxy keygen` wrote with it"
            ) from None
        raise KeyFileError(
            f"{path}: not a valid client key file ({_truncated(error, data) or error.reason})"
        ) from None
    try:
        private_key = serialization.load_der_private_key(fields.private_key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: private key is not unencrypted PKCS#8 DER") from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{path}: private key is not an RSA key")
    _check_rsa_size(private_key, str(path))
    return ClientKey(private_key, fields.login_hash)


def save_client_key(key: ClientKey, path: str | Path) -> None:
    der = key.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(Path(path), build(ClientKeyFile, {"private_key": der, "login_hash": key.login_hash}))


def load_user(path: str | Path) -> UserRecord:
    path = Path(path)
    fields = _parse(UserFile, _read(path, "user file"), path, "user file")
    record = UserRecord(fields.user, fields.salt, fields.public_key)
    _rsa_public_key(record.public_key_der, str(path))
    return record


def save_user(record: UserRecord, users_dir: str | Path) -> Path:
    """Write ``users_dir/<UPPERHEX hash>.dat`` (creating the directory 0700); returns its path."""
    users_dir = Path(users_dir)
    try:
        users_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise KeyFileError(f"{users_dir}: cannot create: {error.strerror}") from None
    path = users_dir / record.file_name
    fields = {"user": record.user, "salt": record.salt, "public_key": record.public_key_der}
    _write_new(path, build(UserFile, fields))
    return path


class UserDirectory:
    """The users a server accepts, read from ``<path>/*.dat`` and looked up by login hash.

    The login hash crosses the network in clear before any encryption, so it is a name, not a
    secret: a dict lookup is fine. Whoever sends it still needs the private key to unwrap the
    session key.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._users: dict[bytes, UserRecord] = {}
        self.reload()

    def __len__(self) -> int:
        return len(self._users)

    def records(self) -> list[UserRecord]:
        """Every user loaded, by name."""
        return sorted(self._users.values(), key=lambda record: (record.user, record.file_name))

    def lookup(self, login_hash: bytes) -> UserRecord | None:
        return self._users.get(login_hash)

    def reload(self) -> None:
        """Reread every user file; ``KeyFileError`` and no change if the directory is unusable.

        The directory is listed with ``os.scandir``, which says when it cannot be read (a glob
        would quietly find nothing, and every login would be refused).
        """
        try:
            with os.scandir(self.path) as entries:
                paths = sorted(
                    self.path / entry.name for entry in entries if entry.name.endswith(".dat")
                )
        except FileNotFoundError:
            raise KeyFileError(f"{self.path}: no such users directory") from None
        except OSError as error:
            raise KeyFileError(
                f"{self.path}: cannot list users directory: {error.strerror or error}"
            ) from None
        users = {}
        for path in paths:
            record = self._load_checked(path)
            if record is not None:
                users[record.login_hash] = record
        self._users = users

    def move_to(self, path: str | Path) -> None:
        """Read the users from ``path`` from now on; ``KeyFileError`` keeps the old folder."""
        old, self.path = self.path, Path(path)
        try:
            self.reload()
        except KeyFileError:
            self.path = old
            raise

    @staticmethod
    def _load_checked(path: Path) -> UserRecord | None:
        if not USER_FILE_NAME.fullmatch(path.name):
            log.warning("skipping %s: the name must be the 64-digit upper-hex login hash", path)
            return None
        try:
            record = load_user(path)
        except KeyFileError as error:
            log.warning("skipping %s", error)
            return None
        if record.file_name != path.name:
            log.warning("skipping %s: its content hashes to %s", path, record.file_name)
            return None
        return record
