"""The admin protocol without I/O: the server side of one exchange, and the client side.

Every message is a few fixed bytes followed by one-byte-length-prefixed items, so where a
message ends is known from its prefix alone: the cores wait for exactly that many bytes and
then parse them with the schemas in ``schemas.admin``. A request that promises more bytes than
arrive is answered 254 when the handler reports the end of input (half-close or deadline).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import construct as c

from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from schemas.admin import (
    ERROR_REPLIES,
    MAX_FIELD_LENGTH,
    MAX_PARAMS,
    VERSION,
    AdminAuthReply,
    AdminAuthRequest,
    AdminReply,
    AdminRequest,
    AuthStatus,
    Method,
)
from schemas.errors import WireError
from schemas.fields import build, parse

MAX_LOGIN_SIZE = 3 + 2 * MAX_FIELD_LENGTH
MAX_REQUEST_SIZE = 2 + MAX_PARAMS * (1 + MAX_FIELD_LENGTH)
_MAX_BUFFERED = MAX_LOGIN_SIZE + MAX_REQUEST_SIZE + 1
"""A pipelined login and request, plus one byte to notice anything sent after them."""

TRUNCATED_SUFFIX = ",..."


class InvalidParam(Exception):
    """A method refused its parameters; the message is sent back in reply 254."""


MethodHandler = Callable[[Sequence[bytes]], str]
CredentialCheck = Callable[[bytes, bytes], bool]


# --- events (the handler logs them; bytes in the same list are to be sent in order) --------


@dataclass(frozen=True)
class LoginAccepted:
    user: str


@dataclass(frozen=True)
class LoginRefused:
    user: str
    status: AuthStatus
    error: Exception | None = None


@dataclass(frozen=True)
class RequestAnswered:
    method: int | None
    """The request's code; None when the request was cut short before it."""
    reply: Method
    data: str


@dataclass(frozen=True)
class ExchangeEnded:
    """The server is done: the handler closes the connection."""

    reason: str


ServerOutput = bytes | LoginAccepted | LoginRefused | RequestAnswered | ExchangeEnded


class _MessageEnd:
    """Finds where a message of fixed header bytes and length-prefixed items ends.

    It resumes where the previous call stopped, so feeding a message one byte at a time
    costs linear time.
    """

    def __init__(self, header_size: int, item_count: Callable[[bytes | bytearray], int]) -> None:
        self._position = header_size
        self._item_count = item_count
        self._items_left: int | None = None

    def find(self, buffer: bytes | bytearray) -> int | None:
        """The message's length once ``buffer`` holds all of it, else None."""
        if self._items_left is None:
            if len(buffer) < self._position:
                return None
            self._items_left = self._item_count(buffer)
        while self._items_left and self._position < len(buffer):
            self._position += 1 + buffer[self._position]
            self._items_left -= 1
        if self._items_left == 0 and self._position <= len(buffer):
            return self._position
        return None


def _user_text(user: bytes) -> str:
    return user.decode("utf-8", "backslashreplace")


class _Phase(enum.Enum):
    LOGIN = "login"
    REQUEST = "request"
    DONE = "done"


class AdminServerConnection:
    """One admin connection, server side: login, one request, one reply, close.

    ``check_credentials(user, password)`` decides the login (an exception in it is answered
    with status 3); ``methods`` maps each offered method to a function of the request's
    parameters that returns the reply's ASCII data or raises ``InvalidParam``.
    """

    def __init__(
        self, check_credentials: CredentialCheck, methods: Mapping[Method, MethodHandler]
    ) -> None:
        self._check_credentials = check_credentials
        self._methods = methods
        self._buffer = bytearray()
        self._phase = _Phase.LOGIN
        self._message_end = _MessageEnd(1, lambda _: 2)

    @property
    def finished(self) -> bool:
        return self._phase is _Phase.DONE

    def receive(self, data: bytes) -> list[ServerOutput]:
        """Bytes from the client -> bytes to send and events, in order."""
        if self._phase is _Phase.DONE:
            return []
        self._buffer += data[: _MAX_BUFFERED - len(self._buffer)]
        outputs: list[ServerOutput] = []
        while self._phase is not _Phase.DONE:
            if self._phase is _Phase.LOGIN and self._buffer and self._buffer[0] != VERSION:
                outputs += self._refuse_login("", AuthStatus.BAD_VERSION)
                break
            end = self._message_end.find(self._buffer)
            if end is None:
                break
            message, self._buffer = bytes(self._buffer[:end]), self._buffer[end:]
            if self._phase is _Phase.LOGIN:
                outputs += self._login(parse(AdminAuthRequest, message))
            elif self._buffer:
                outputs += self._reply(
                    Method.INVALID_PARAM,
                    "bytes follow the last parameter: NPARAM or a length is too small",
                    message[0],
                )
            else:
                outputs += self._answer(parse(AdminRequest, message))
        return outputs

    def end_of_input(self) -> list[ServerOutput]:
        """The client half-closed or its time ran out: answer what is incomplete, then end."""
        if self._phase is _Phase.LOGIN:
            self._finish()
            return [ExchangeEnded("the login request was cut short")]
        if self._phase is _Phase.REQUEST:
            method = self._buffer[0] if self._buffer else None
            return self._reply(
                Method.INVALID_PARAM,
                "request cut short: NPARAM or a length promises more bytes than were sent",
                method,
            )
        return []

    def _finish(self) -> None:
        self._phase = _Phase.DONE
        self._buffer.clear()

    def _refuse_login(
        self, user: str, status: AuthStatus, error: Exception | None = None
    ) -> list[ServerOutput]:
        self._finish()
        return [
            LoginRefused(user, status, error),
            build(AdminAuthReply, {"version": VERSION, "status": status}),
            ExchangeEnded(f"login refused ({status.name})"),
        ]

    def _login(self, login: c.Container) -> list[ServerOutput]:
        user = _user_text(login.user)
        try:
            accepted = self._check_credentials(login.user, login.password)
        except Exception as error:  # answered with status 3, as the protocol says
            return self._refuse_login(user, AuthStatus.INTERNAL_ERROR, error)
        if not accepted:
            return self._refuse_login(user, AuthStatus.BAD_CREDENTIALS)
        self._phase = _Phase.REQUEST
        self._message_end = _MessageEnd(2, lambda buffer: buffer[1])
        return [LoginAccepted(user), build(AdminAuthReply, {"version": VERSION, "status": 0})]

    def _answer(self, request: c.Container) -> list[ServerOutput]:
        handler = self._methods.get(request.method)
        if handler is None:
            return self._reply(Method.INVALID_METHOD, f"no method {request.method}", request.method)
        try:
            data = handler([param.data for param in request.params])
        except InvalidParam as error:
            return self._reply(Method.INVALID_PARAM, str(error), request.method)
        return self._reply(Method(request.method), data, request.method)

    def _reply(self, code: Method, data: str, method: int | None) -> list[ServerOutput]:
        self._finish()
        return [
            RequestAnswered(method, code, data),
            build(AdminReply, {"code": code, "data": data}),
            ExchangeEnded("replied"),
        ]


# --- the methods a gjproxy server offers ---------------------------------------------------


def format_users(users: Mapping[str, int]) -> str:
    """``alice=2,bob=1`` (sorted by name), cut at a name boundary to fit 255 bytes.

    A cut list ends with ``,...`` (just ``...`` when not even the first name fits). Names
    are made ASCII with backslash escapes, since reply data is ASCII.
    """
    entries = [
        f"{name.encode('ascii', 'backslashreplace').decode()}={count}"
        for name, count in sorted(users.items())
    ]
    text = ",".join(entries)
    if len(text) <= MAX_FIELD_LENGTH:
        return text
    kept, size = [], 0
    for entry in entries:
        size += len(entry) + 1
        if size - 1 + len(TRUNCATED_SUFFIX) > MAX_FIELD_LENGTH:
            break
        kept.append(entry)
    return ",".join(kept) + TRUNCATED_SUFFIX if kept else TRUNCATED_SUFFIX[1:]


def format_dns(counters: Counters) -> str:
    """``doh=5,failures=0,ms=42,hits=7,misses=5``: DoH lookups, failed ones and their total
    time in milliseconds, then the DNS cache's hits and misses."""
    return (
        f"doh={counters.doh_lookups},failures={counters.doh_failures},"
        f"ms={round(counters.doh_lookup_seconds * 1000)},"
        f"hits={counters.dns_cache_hits},misses={counters.dns_cache_misses}"
    )


def _reading(value: Callable[[], object]) -> MethodHandler:
    """A method without parameters that reports ``value()``."""

    def handler(params: Sequence[bytes]) -> str:
        if params:
            raise InvalidParam("this method takes no parameters")
        return str(value())

    return handler


def _buffer_size_setter(tuning: RelayTuning) -> MethodHandler:
    def set_buffer_size(params: Sequence[bytes]) -> str:
        if len(params) != 1 or not params[0].isdigit():
            raise InvalidParam("expected one parameter: the buffer size as ASCII decimal")
        try:
            return str(tuning.set_buffer_size(int(params[0])))
        except ValueError as error:
            raise InvalidParam(str(error)) from None

    return set_buffer_size


def server_methods(counters: Counters, tuning: RelayTuning) -> dict[Method, MethodHandler]:
    """Every method of a gjproxy server, reading the live ``counters`` and ``tuning``."""
    return {
        Method.CONNECTIONS_TOTAL: _reading(lambda: counters.connections_total),
        Method.CONNECTIONS_OPEN: _reading(lambda: counters.connections_open),
        Method.BYTES_TRANSFERRED: _reading(lambda: counters.bytes_transferred),
        Method.SET_BUFFER_SIZE: _buffer_size_setter(tuning),
        Method.GET_BUFFER_SIZE: _reading(lambda: tuning.buffer_size),
        Method.USERS_CONNECTED: _reading(lambda: format_users(counters.users_connected)),
        Method.TUNNELS_OPEN: _reading(lambda: counters.tunnels_open),
        Method.DNS_LOOKUPS: _reading(lambda: format_dns(counters)),
        Method.DATAGRAMS_DROPPED: _reading(lambda: format_users(counters.datagrams_dropped)),
    }


# --- client side ---------------------------------------------------------------------------


def login_bytes(user: str, password: str) -> bytes:
    """The login request; WireError if the user name or password exceeds 255 bytes."""
    return build(
        AdminAuthRequest,
        {"version": VERSION, "user": user.encode("utf-8"), "password": password.encode("utf-8")},
    )


def request_bytes(method: int, params: Sequence[str] = ()) -> bytes:
    """The request for ``method`` with ASCII ``params``."""
    return build(AdminRequest, {"method": method, "params": [{"data": p.encode()} for p in params]})


@dataclass(frozen=True)
class LoginReplied:
    status: AuthStatus


@dataclass(frozen=True)
class MethodReplied:
    code: Method
    data: str


class AdminClientConnection:
    """Reads the server's login reply and then its reply to ``method``, byte by byte if need be."""

    def __init__(self, method: int) -> None:
        self._method = method
        self._buffer = bytearray()
        self._expected: list[tuple[c.Construct, _MessageEnd]] = [
            (AdminAuthReply, _MessageEnd(2, lambda _: 0)),
            (AdminReply, _MessageEnd(1, lambda _: 1)),
        ]

    def receive(self, data: bytes) -> list[LoginReplied | MethodReplied]:
        """Bytes from the server -> the replies they complete; bad bytes raise WireError."""
        self._buffer += data
        replies: list[LoginReplied | MethodReplied] = []
        while self._buffer:
            if not self._expected:
                raise WireError("AdminReply", "", "bytes after the method reply")
            schema, message_end = self._expected[0]
            end = message_end.find(self._buffer)
            if end is None:
                break
            fields = parse(schema, bytes(self._buffer[:end]))
            del self._buffer[:end]
            self._expected.pop(0)
            if schema is AdminAuthReply:
                if fields.version != VERSION:
                    raise WireError("AdminAuthReply", "version", f"expected {VERSION}")
                replies.append(LoginReplied(fields.status))
            elif fields.code in ERROR_REPLIES or fields.code == self._method:
                replies.append(MethodReplied(fields.code, fields.data))
            else:
                raise WireError("AdminReply", "code", f"{fields.code} answers no request sent")
        return replies

    def end_of_input(self) -> None:
        """The server closed: WireError if it did so in the middle of a reply."""
        if self._buffer:
            schema = self._expected[0][0]
            raise WireError(schema.name, "", f"cut short after {len(self._buffer)} bytes")
