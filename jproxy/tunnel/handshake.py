"""Handshake and login of a tunnel, sans-I/O: both ends, from the first byte to the Session.

The client sends ``Hello`` (the minor version picks the dialect), the server answers
``HelloReply``; the client sends its login hash, the server answers ``LoginReply`` with a fresh
session key wrapped to the user's public key. Each core takes bytes in any pieces (one at a
time works), returns the bytes to send, and between calls holds only part of the message it
waits for. ``bytes_needed`` says how much is missing, so a driver can read exactly that; bytes
given past the last handshake message end up in ``leftover``, the start of the session.
"""

from __future__ import annotations

import enum

from jproxy.tunnel.crypto import KeyUnwrapError, new_session_key, unwrap_key, wrap_key
from jproxy.tunnel.keys import ClientKey, UserDirectory, UserRecord
from jproxy.tunnel.session import Role, Session
from schemas import WireError, build, parse
from schemas.introspect import field, packed_size
from schemas.jproxy import (
    MAGIC,
    MAJOR_VERSION,
    SECURE_ONLY,
    Dialect,
    HandshakeStatus,
    Hello,
    HelloReply,
    LoginReply,
    LoginRequest,
    LoginStatus,
    message_type_of,
)

HELLO_SIZE = packed_size(Hello)
HELLO_REPLY_SIZE = packed_size(HelloReply)
LOGIN_REQUEST_SIZE = packed_size(LoginRequest)
LOGIN_STATUS_SIZE = field(LoginReply, "status").size

_HELLO_ACCEPTED = build(HelloReply, {"status": HandshakeStatus.OK})
_HELLO_REFUSED = build(HelloReply, {"status": HandshakeStatus.REFUSED})
_LOGIN_FAILED = build(LoginReply, {"status": LoginStatus.FAILED, "wrapped_key": None}, key_size=0)


def version_text(dialect: Dialect) -> str:
    """``"3.1"`` or ``"3.0"``: the protocol version a dialect's hello announces."""
    return f"{MAJOR_VERSION}.{int(dialect)}"


class Phase(enum.Enum):
    """What a handshake core waits for, or how it ended."""

    HELLO = "hello"
    LOGIN = "login"
    DONE = "done"
    REFUSED = "refused"


class _Core:
    """Collects bytes until the message of the current phase is complete.

    Once finished, ``leftover`` holds the bytes that arrived after the last handshake message
    (the start of the session's stream), and on success ``session`` is ready.
    """

    def __init__(self) -> None:
        self.phase = Phase.HELLO
        self.session: Session | None = None
        self.key_log_entry: tuple[bytes, bytes] | None = None
        """on success: the wrapped and the plain session key, for a key log"""
        self.leftover = b""
        self._buffer = bytearray()

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.REFUSED)

    @property
    def bytes_needed(self) -> int:
        """How many more bytes complete the message waited for (0 when finished)."""
        return 0 if self.finished else self._message_size() - len(self._buffer)

    def receive(self, data: bytes) -> bytes:
        """Consume bytes from the peer; returns the bytes to send to it."""
        if self.finished:
            raise RuntimeError("the handshake is already finished")
        self._buffer += data
        replies = b""
        while not self.finished and len(self._buffer) >= self._message_size():
            size = self._message_size()
            message = bytes(self._buffer[:size])
            del self._buffer[:size]
            replies += self._on_message(message)
        if self.finished:
            self.leftover = bytes(self._buffer) if self.phase is Phase.DONE else b""
            self._buffer.clear()
        return replies

    def _message_size(self) -> int:
        raise NotImplementedError

    def _on_message(self, message: bytes) -> bytes:
        raise NotImplementedError


class ServerHandshake(_Core):
    """The server's side: checks the hello, finds the user, sends the wrapped session key.

    Ends in ``Phase.DONE`` (``user``, ``dialect`` and ``session`` set) or ``Phase.REFUSED``
    (``refusal`` says why, for the log; the reply to send says only "refused").
    """

    def __init__(self, users: UserDirectory, allow_legacy: bool) -> None:
        super().__init__()
        self.users = users
        self.allow_legacy = allow_legacy
        self.dialect: Dialect | None = None
        self.user: UserRecord | None = None
        self.proof: LoginProof | None = None
        self.refusal = ""

    def _message_size(self) -> int:
        return HELLO_SIZE if self.phase is Phase.HELLO else LOGIN_REQUEST_SIZE

    def _on_message(self, message: bytes) -> bytes:
        if self.phase is Phase.HELLO:
            return self._on_hello(message)
        return self._on_login(message)

    def _refuse(self, reason: str, reply: bytes) -> bytes:
        self.phase = Phase.REFUSED
        self.refusal = reason
        return reply

    def _on_hello(self, message: bytes) -> bytes:
        if not message.startswith(MAGIC):  # a scanner learns nothing: no reply at all
            return self._refuse(f"not a jProxy hello: {message!r}", b"")
        hello = parse(Hello, message)
        if hello.major != MAJOR_VERSION:
            return self._refuse(f"refused major version {hello.major}", _HELLO_REFUSED)
        try:
            dialect = Dialect(hello.minor)
        except ValueError:
            return self._refuse(f"refused unknown minor version {hello.minor}", _HELLO_REFUSED)
        if dialect is Dialect.LEGACY_3_0 and not self.allow_legacy:
            return self._refuse(
                "refused minor version 0: legacy dialect 3.0 not allowed"
                " (start the server with --allow-legacy)",
                _HELLO_REFUSED,
            )
        self.dialect = dialect
        self.phase = Phase.LOGIN
        return _HELLO_ACCEPTED

    def _on_login(self, message: bytes) -> bytes:
        login_hash = parse(LoginRequest, message).login_hash
        user = self.users.lookup(login_hash)
        if user is None:
            # The hash in full and in upper case: the name of the user file the server lacks.
            name = login_hash.hex().upper()
            return self._refuse(f"unknown login hash {name}: no users/{name}.dat", _LOGIN_FAILED)
        session_key = new_session_key()
        wrapped = wrap_key(user.public_key, session_key, self.dialect)
        self.user = user
        self.session = Session(self.dialect, session_key, Role.SERVER)
        self.key_log_entry = (wrapped, session_key)
        self.proof = LoginProof(self.dialect, session_key)
        self.phase = Phase.DONE
        return build(
            LoginReply, {"status": LoginStatus.OK, "wrapped_key": wrapped}, key_size=len(wrapped)
        )


MAX_PROOF_BYTES = 4 * 4096
"""Bytes a client may send after its login hash without completing one message (3.0 may send
empty frames): beyond them the login is not proven."""


class LoginProof:
    """Checks that the first frame of a fresh session opens to a client message of a known type.

    The login hash travels in clear, so only a frame sealed with the session key (which only
    the holder of the private key can unwrap) proves who logged in. The proof opens frames with
    its own copy of the server's session (opening the same frames twice is safe; only sealing
    must never reuse a nonce) and keeps every byte, so the real session can open them again in
    order: ``received`` is what the tunnel gets as its first bytes. ``WireError`` (or its
    ``FrameError``) when the bytes cannot be a real client's. In 3.1 the frame's tag is the
    proof; in 3.0 (ECB, no MAC) valid padding and a known type are all a frame can show. The
    rest of the message is the tunnel's to judge: a 3.0 connect it cannot parse is answered,
    not taken for a forgery.
    """

    def __init__(self, dialect: Dialect, session_key: bytes) -> None:
        self.dialect = dialect
        self.proven = False
        self.received = b""
        self._session = Session(dialect, session_key, Role.SERVER)

    def receive(self, data: bytes) -> bool:
        """Feed bytes the client sent after login; True once one well-formed message came."""
        if self.proven:
            raise RuntimeError("the login is already proven")
        self.received += data
        for message in self._session.feed(data):
            kind = message_type_of(message)
            if self.dialect is Dialect.LEGACY_3_0 and kind in SECURE_ONLY:
                raise WireError("Message", "type", "a 3.1 message in a 3.0 tunnel")
            self.proven = True
            return True
        if len(self.received) > MAX_PROOF_BYTES:
            raise WireError("Frame", "", f"no message in the first {MAX_PROOF_BYTES} bytes")
        return False


class LoginError(Exception):
    """The client could not log in; the message tells the user why.

    ``fatal`` is True when trying again cannot help (the server or the key is wrong), False
    when it might (the connection dropped or stalled).
    """

    fatal = False


class FatalLoginError(LoginError):
    fatal = True


def what_came_back(data: bytes) -> str:
    """The first bytes a peer sent, as what they look like: a jProxy hello, an HTTP or TLS
    reply, an SSH banner, or so many bytes of something else (shown escaped)."""
    if not data:
        return "nothing"
    return foreign_protocol(data) or f"{len(data)} byte(s) of something else: {data[:16]!r}"


def foreign_protocol(data: bytes) -> str | None:
    """What protocol ``data``'s first bytes belong to, when it is one known here."""
    if data.startswith(MAGIC):
        return "a jProxy hello (a tunnel port)"
    if data.startswith(b"HTTP/"):
        return "an HTTP reply (a web server's port)"
    if len(data) >= 2 and data[0] in TLS_RECORD_TYPES and data[1] == TLS_MAJOR:
        return "a TLS record (a TLS port, such as HTTPS)"
    if data.startswith(b"SSH-"):
        return "an SSH banner"
    return None


TLS_RECORD_TYPES = frozenset({0x15, 0x16})
"""A TLS alert or handshake record's first byte; the second is the major version, 3."""
TLS_MAJOR = 3


class NotJProxyServer(LoginError):
    """The peer is no jProxy server. Not fatal: the address may be right and the server
    behind it about to be replaced (the client backs off and tries again)."""

    def __init__(self, came_back: str) -> None:
        super().__init__(f"this is not a gjproxy server: it answered with {came_back}")


class VersionRefused(FatalLoginError):
    def __init__(self, dialect: Dialect) -> None:
        hint = (
            " (a gjproxy server needs --allow-legacy for it)"
            if dialect is Dialect.LEGACY_3_0
            else ""
        )
        super().__init__(f"server refused protocol version {version_text(dialect)}{hint}")


class KeyRejected(FatalLoginError):
    def __init__(self) -> None:
        super().__init__("server did not accept this key")


class LegacyServer(FatalLoginError):
    def __init__(self) -> None:
        super().__init__(
            "this server looks like a jProxy 3.0 server: for the Java server, use"
            " --dialect 3.0; for a gjproxy server, start it with --allow-legacy and use"
            " --dialect 3.0"
        )


class KeyUnwrapFailed(FatalLoginError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot decrypt the session key the server sent: {reason}")


class ClientHandshake(_Core):
    """The client's side: ``start()`` gives the hello; ends in ``Phase.DONE`` or a LoginError.

    The login hash goes out only after the server accepted the hello: a server that refuses
    closes at once, and unread bytes would turn its close into a reset that can hide the reply.
    A 3.1 client never falls back to 3.0 by itself; it says so when the server looks like 3.0.
    """

    def __init__(self, key: ClientKey, dialect: Dialect) -> None:
        super().__init__()
        self.key = key
        self.dialect = dialect

    def start(self) -> bytes:
        """The first bytes to send."""
        return build(Hello, {"major": MAJOR_VERSION, "minor": int(self.dialect)})

    def _message_size(self) -> int:
        if self.phase is Phase.HELLO:
            return HELLO_REPLY_SIZE
        # The status byte comes first and says whether a wrapped key follows.
        if len(self._buffer) < LOGIN_STATUS_SIZE or self._buffer[0] != LoginStatus.OK:
            return LOGIN_STATUS_SIZE
        return LOGIN_STATUS_SIZE + self.key.modulus_size

    def _on_message(self, message: bytes) -> bytes:
        if self.phase is Phase.HELLO:
            return self._on_hello_reply(message)
        self._on_login_reply(message)
        return b""

    def no_reply(self, timeout: float) -> LoginError:
        """Why the login failed when the server said nothing complete within ``timeout``."""
        if self.phase is Phase.HELLO:
            return LoginError(
                f"no answer to the hello within {timeout:g} s: is this a gjproxy server?"
                f" It sent {what_came_back(bytes(self._buffer))}"
            )
        return LoginError(f"no complete login reply from the server within {timeout:g} s")

    def closed(self, how: str = "closed") -> LoginError:
        """Why the login failed when the server ``how`` ("closed", "reset") the connection
        before it was done."""
        if self.phase is Phase.HELLO and self._buffer:
            return NotJProxyServer(f"{what_came_back(bytes(self._buffer))}, then {how}")
        if self.phase is Phase.HELLO:
            return LoginError(
                f"the server {how} the connection without answering the hello: is this a"
                " gjproxy server? Nothing came back"
            )
        return LoginError(f"the server {how} the connection during login")

    def _on_hello_reply(self, message: bytes) -> bytes:
        try:
            reply = parse(HelloReply, message)
        except WireError:
            if message.startswith(MAGIC):
                raise FatalLoginError(
                    f"the server's hello has an unknown status: {message!r}"
                ) from None
            raise NotJProxyServer(what_came_back(message)) from None
        if reply.status is not HandshakeStatus.OK:
            raise VersionRefused(self.dialect)
        self.phase = Phase.LOGIN
        return build(LoginRequest, {"login_hash": self.key.login_hash})

    def _on_login_reply(self, message: bytes) -> None:
        try:
            reply = parse(LoginReply, message, key_size=self.key.modulus_size)
        except WireError as error:
            raise FatalLoginError(f"the server sent an invalid login reply ({error})") from None
        if reply.status is not LoginStatus.OK:
            raise KeyRejected()
        session_key = self._unwrap(reply.wrapped_key)
        self.session = Session(self.dialect, session_key, Role.CLIENT)
        self.key_log_entry = (reply.wrapped_key, session_key)
        self.phase = Phase.DONE

    def _unwrap(self, wrapped: bytes) -> bytes:
        try:
            return unwrap_key(self.key.private_key, wrapped, self.dialect)
        except KeyUnwrapError as error:
            if self.dialect is Dialect.SECURE_3_1 and self._is_legacy_wrap(wrapped):
                raise LegacyServer() from None
            raise KeyUnwrapFailed(str(error)) from None

    def _is_legacy_wrap(self, wrapped: bytes) -> bool:
        try:
            unwrap_key(self.key.private_key, wrapped, Dialect.LEGACY_3_0)
        except KeyUnwrapError:
            return False
        return True
