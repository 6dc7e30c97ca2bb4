"""Credentials: the scrypt hashes kept in the config file, and slowing password guessing.

The config file stores ``scrypt$n=16384,r=8,p=1$<salt base64>$<hash base64>`` so that a
leaked file does not give the password away. A failed login makes the next attempts from the
same address wait, doubling each time, so guessing over the admin port stays slow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jproxy.config import ConfigError
from schemas.admin import MAX_FIELD_LENGTH

SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_SIZE = 16
HASH_SIZE = 32
_MAX_N = 1 << 20
_MAX_R_P = 32
_MAX_DOUBLINGS = 30
_HASH_PATTERN = re.compile(
    r"scrypt\$n=(?P<n>\d{1,8}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/=]+)\$(?P<hash>[A-Za-z0-9+/=]+)"
)

USER_VARIABLE = "GJPROXY_ADMIN_USER"
PASSWORD_VARIABLE = "GJPROXY_ADMIN_PASSWORD"
SOCKS_PASSWORD_VARIABLE = "GJPROXY_SOCKS_PASSWORD"
"""A SOCKS user's password: the client's ``--socks-user`` and ``hash-password --socks-user``."""


def _encoded(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    # scrypt needs about 128*n*r bytes; OpenSSL's default ceiling (32 MiB) is too low for
    # the larger parameters a config file may ask for.
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=size, maxmem=129 * n * r * p + (1 << 20)
    )


def hash_password(
    password: str | bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> str:
    """The ``scrypt$...`` line for the config file; the salt is fresh each time."""
    salt = os.urandom(SALT_SIZE)
    digest = _scrypt(_encoded(password), salt, n, r, p, HASH_SIZE)
    return (
        f"scrypt$n={n},r={r},p={p}"
        f"${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


@dataclass(frozen=True)
class _ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _parse_hash(stored: str) -> _ScryptHash:
    """The parts of a ``scrypt$...`` line; ValueError names what is wrong, never the hash."""
    match = _HASH_PATTERN.fullmatch(stored)
    if not match:
        raise ValueError("expected scrypt$n=N,r=R,p=P$<salt base64>$<hash base64>")
    n, r, p = int(match["n"]), int(match["r"]), int(match["p"])
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0):
        raise ValueError(f"scrypt n must be a power of two 2..{_MAX_N}")
    if not (1 <= r <= _MAX_R_P and 1 <= p <= _MAX_R_P):
        raise ValueError(f"scrypt r and p must be 1..{_MAX_R_P}")
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        digest = base64.b64decode(match["hash"], validate=True)
    except binascii.Error:
        raise ValueError("salt or hash is not valid base64") from None
    if not salt or len(digest) < 16:
        raise ValueError("salt is empty or hash shorter than 16 bytes")
    return _ScryptHash(n, r, p, salt, digest)


def verify_password(password: str | bytes, stored: str) -> bool:
    """Whether ``password`` matches the ``scrypt$...`` line; compared in constant time."""
    try:
        parts = _parse_hash(stored)
    except ValueError:
        return False
    candidate = _scrypt(
        _encoded(password), parts.salt, parts.n, parts.r, parts.p, len(parts.digest)
    )
    return hmac.compare_digest(candidate, parts.digest)


@dataclass(frozen=True)
class AdminCredentials:
    """The one admin account; ``source`` says where it came from, for the log."""

    user: str
    password_hash: str = field(repr=False)
    source: str

    def check(self, user: bytes, password: bytes) -> bool:
        """Both checks always run, so the answer takes as long for an unknown user."""
        user_matches = hmac.compare_digest(user, self.user.encode("utf-8"))
        password_matches = verify_password(password, self.password_hash)
        return user_matches and password_matches


@dataclass(frozen=True)
class PasswordTable:
    """RFC 1929 users of the server's plain SOCKS port: name -> ``scrypt$...`` hash.

    A browser opens many connections, each with a login, and scrypt takes tens of
    milliseconds: once a user's password has passed scrypt, a keyed digest of it (the key is
    random per process) lets the next logins with the same password pass at once. A wrong
    password always pays scrypt.
    """

    hashes: Mapping[str, str] = field(repr=False)
    decoy: str = field(repr=False, compare=False)
    """A hash checked for unknown names, so they cost as long as known ones."""
    _verified: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    _key: bytes = field(default_factory=lambda: os.urandom(32), repr=False, compare=False)

    def remembered(self, user: bytes, password: bytes) -> bool:
        """Whether this password of this user already passed scrypt (no scrypt now)."""
        name = user.decode("utf-8", "replace")
        proof = hmac.new(self._key, password, hashlib.sha256).digest()
        return name in self.hashes and hmac.compare_digest(proof, self._verified.get(name, b""))

    def check(self, user: bytes, password: bytes) -> bool:
        if self.remembered(user, password):
            return True
        name = user.decode("utf-8", "replace")
        stored = self.hashes.get(name)
        proof = hmac.new(self._key, password, hashlib.sha256).digest()
        matches = verify_password(password, stored or self.decoy)
        if stored is not None and matches:
            self._verified[name] = proof
        return stored is not None and matches


def load_socks_users(config: Mapping[str, Any]) -> PasswordTable:
    """``[socks_users]``: one ``name = "scrypt$..."`` line per user (``gjproxy admin
    hash-password`` prints the hash); a malformed entry is a ConfigError naming the user."""
    table = config.get("socks_users", {})
    if not isinstance(table, Mapping):
        raise ConfigError("config: [socks_users] must be a table")
    for name, stored in table.items():
        check_secret_length(name, "config: [socks_users]: a user name")
        if not isinstance(stored, str):
            raise ConfigError(f"config: [socks_users] {name} must be a string")
        try:
            _parse_hash(stored)
        except ValueError as error:
            raise ConfigError(f"config: [socks_users] {name}: {error}") from None
    decoy = hash_password(os.urandom(16)) if table else ""
    return PasswordTable(dict(table), decoy)


def _admin_string(table: Mapping[str, Any], key: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"config: [admin] {key} must be a string")
    return value


def check_secret_length(value: str, what: str) -> None:
    """The admin protocol carries a user name or password in at most 255 bytes."""
    if not 1 <= len(value.encode("utf-8")) <= MAX_FIELD_LENGTH:
        raise ConfigError(f"{what} must be 1..{MAX_FIELD_LENGTH} bytes of UTF-8")


def load_admin_credentials(
    config: Mapping[str, Any], environ: Mapping[str, str]
) -> AdminCredentials | None:
    """The admin account from ``[admin]`` in the config file, else from the environment.

    ``[admin] password_hash`` wins over GJPROXY_ADMIN_PASSWORD, which is hashed here at once.
    The user name comes from ``[admin] user``, else GJPROXY_ADMIN_USER. Without a password
    there is no admin account (None: the caller decides whether that is an error); a password
    without a user, or a malformed hash, is a ConfigError.
    """
    table = config.get("admin", {})
    if not isinstance(table, Mapping):
        raise ConfigError("config: [admin] must be a table")
    user = _admin_string(table, "user") or environ.get(USER_VARIABLE) or None
    stored = _admin_string(table, "password_hash")
    plain = environ.get(PASSWORD_VARIABLE)
    if stored is None and not plain:
        return None
    if user is None:
        raise ConfigError(
            f"config: an admin password needs a user ([admin] user or {USER_VARIABLE})"
        )
    check_secret_length(user, "admin user name")
    if stored is not None:
        try:
            _parse_hash(stored)
        except ValueError as error:
            raise ConfigError(f"config: [admin] password_hash: {error}") from None
        return AdminCredentials(user, stored, "the config file")
    check_secret_length(plain, PASSWORD_VARIABLE)
    return AdminCredentials(user, hash_password(plain), f"environment variable {PASSWORD_VARIABLE}")


@dataclass
class _Failures:
    count: int
    last: float


class LoginThrottle:
    """Failed-login counts per key that make later attempts wait before they are checked.

    The admin and plain SOCKS listeners key them by (origin, user name)
    (``jproxy.handlers.net.logins``), so guesses from elsewhere or at other names do not delay
    the operator, and run one attempt per key at a time, so parallel connections wait their
    turn instead of guessing in parallel.

    The wait is ``base_delay * 2**(failures-1)``, at most ``max_delay``; a success or
    ``forget_after`` seconds without failure clears it. At most ``max_addresses`` are
    remembered (the longest quiet is dropped first), so a flood of addresses costs bounded memory.
    """

    def __init__(
        self,
        base_delay: float = 0.25,
        max_delay: float = 3.0,
        *,
        forget_after: float = 600.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[Hashable, _Failures] = OrderedDict()

    def delay(self, address: Hashable) -> float:
        """Seconds an attempt for ``address`` waits before its credentials are checked."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        if self._clock() - entry.last > self.forget_after:
            del self._failures[address]
            return 0.0
        doublings = min(entry.count - 1, _MAX_DOUBLINGS)
        return min(self.base_delay * 2**doublings, self.max_delay)

    def failed(self, address: Hashable) -> None:
        entry = self._failures.pop(address, None) or _Failures(0, 0.0)
        entry.count, entry.last = entry.count + 1, self._clock()
        self._failures[address] = entry
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: Hashable) -> None:
        self._failures.pop(address, None)
