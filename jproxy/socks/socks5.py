"""The server side of a SOCKS5 connection as a sans-I/O state machine (like h11).

A handler feeds ``Socks5Server.receive`` whatever the client sent and gets events back: bytes
to write (``Send``), a request to act on (``ConnectRequested``, ``UdpAssociateRequested``), or
``Rejected`` (write its bytes, then close). Once the caller knows the outcome of the request,
``reply`` gives the reply bytes; from then on the connection is a plain relay. Nothing here
touches a socket, resolves a name or reads a clock, so every byte boundary can be tested.

Every new SOCKS connection runs through here, so packets are read with the readers that
``schemas.socks5`` derives from its schemas, and the usual answers are built once at import.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from schemas import WireError, build
from schemas.jproxy import ConnectStatus
from schemas.socks5 import (
    MAX_FIELD_LENGTH,
    METHOD_REQUEST_READER,
    PASSWORD_REQUEST_READER,
    REQUEST_READER,
    UDP_DATAGRAM_READER,
    AddressType,
    Command,
    Greeting,
    Login,
    Method,
    PasswordStatus,
    ReplyCode,
    Request,
    SocksMethodReply,
    SocksMethodRequest,
    SocksPasswordReply,
    SocksPasswordRequest,
    SocksReader,
    SocksReply,
    SocksRequest,
    SocksUdpDatagram,
)


@dataclasses.dataclass(frozen=True)
class Send:
    """Write ``data`` to the client and keep reading."""

    data: bytes


@dataclasses.dataclass(frozen=True)
class ConnectRequested:
    """Open a TCP connection to ``host`` (IP text or a name as sent, unresolved), then reply."""

    host: str
    port: int


@dataclasses.dataclass(frozen=True)
class UdpAssociateRequested:
    """Set up a UDP relay; ``host``/``port`` is where the client says it will send from."""

    host: str
    port: int


@dataclasses.dataclass(frozen=True)
class Rejected:
    """Write ``data`` (possibly empty) to the client, then close; ``reason`` is for the log."""

    data: bytes
    reason: str


Event: TypeAlias = Send | ConnectRequested | UdpAssociateRequested | Rejected

MAX_EARLY_DATA = 64 * 1024
"""Allowance, on top of the largest handshake, for bytes pipelined after the request."""

MAX_HANDSHAKE_SIZE = sum(
    len(build(schema, fields))
    for schema, fields in (
        (SocksMethodRequest, {"methods": [Method.NO_AUTH] * MAX_FIELD_LENGTH}),
        (
            SocksPasswordRequest,
            {"username": bytes(MAX_FIELD_LENGTH), "password": bytes(MAX_FIELD_LENGTH)},
        ),
        (
            SocksRequest,
            {
                "command": Command.CONNECT,
                "address": {"type": AddressType.DOMAIN, "host": "x" * MAX_FIELD_LENGTH},
                "port": 0,
            },
        ),
    )
)
"""The most a client can send up to the end of its request: the largest packet of each step."""

MAX_BUFFERED = MAX_HANDSHAKE_SIZE + MAX_EARLY_DATA
"""The most bytes a ``Socks5Server`` ever holds; a client that sends more is rejected."""

TOO_MUCH_DATA = "too much data before the request completed"

_REPLY_FOR_STATUS = {
    ConnectStatus.OK: ReplyCode.SUCCEEDED,
    ConnectStatus.GENERAL_FAILURE: ReplyCode.GENERAL_FAILURE,
    ConnectStatus.REFUSED: ReplyCode.CONNECTION_REFUSED,
    ConnectStatus.TIMED_OUT: ReplyCode.TTL_EXPIRED,
    ConnectStatus.UNREACHABLE: ReplyCode.NETWORK_UNREACHABLE,
    ConnectStatus.UNKNOWN_HOST: ReplyCode.HOST_UNREACHABLE,
    ConnectStatus.CONNECTION_LIMIT: ReplyCode.NOT_ALLOWED,
    ConnectStatus.NOT_ALLOWED: ReplyCode.NOT_ALLOWED,
}


def reply_code_for(status: ConnectStatus) -> ReplyCode:
    """The SOCKS reply for a tunnel connect status (time-outs as "TTL expired", like dante)."""
    return _REPLY_FOR_STATUS[ConnectStatus(status)]


def _address(host: str) -> dict[str, Any]:
    """The SOCKS address of ``host``: an IP literal as IPv4 or IPv6, anything else as a name."""
    return {"type": AddressType.of(host), "host": host}


def _reply_bytes(code: ReplyCode, host: str = "0.0.0.0", port: int = 0) -> bytes:
    return build(SocksReply, {"reply": code, "address": _address(host), "port": port})


def parse_udp_request(datagram: bytes) -> tuple[str, int, bytes]:
    """``(host, port, payload)`` of a client's datagram; a fragment raises ``WireError``."""
    fields = UDP_DATAGRAM_READER.read(datagram)
    if fields.fragment:
        raise WireError(
            SocksUdpDatagram.name, "fragment", f"fragment {fields.fragment}: not supported"
        )
    return fields.host, fields.port, fields.data


def build_udp_request(host: str, port: int, data: bytes) -> bytes:
    """A whole (unfragmented) datagram for the client, from ``host``:``port``."""
    return build(
        SocksUdpDatagram, {"fragment": 0, "address": _address(host), "port": port, "data": data}
    )


_DEFAULT_REPLIES = {code: _reply_bytes(code) for code in ReplyCode}
"""Every reply with the bound address 0.0.0.0:0, the one the handler sends."""
_METHOD_SELECTED = {
    method: Send(build(SocksMethodReply, {"method": method}))
    for method in (Method.NO_AUTH, Method.USERNAME_PASSWORD)
}
_NO_ACCEPTABLE_METHOD = build(SocksMethodReply, {"method": Method.NO_ACCEPTABLE})
_PASSWORD_ACCEPTED = Send(build(SocksPasswordReply, {"status": PasswordStatus.SUCCESS}))
_PASSWORD_REFUSED = build(SocksPasswordReply, {"status": PasswordStatus.FAILURE})
_REQUEST_REFUSALS = {
    "command": _DEFAULT_REPLIES[ReplyCode.COMMAND_NOT_SUPPORTED],
    "address.type": _DEFAULT_REPLIES[ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED],
    "": _DEFAULT_REPLIES[ReplyCode.GENERAL_FAILURE],
}


CredentialCheck = Callable[[bytes, bytes], bool]
"""``check(user, password)``: whether an RFC 1929 login is good."""


class PlainPasswords:
    """User names and passwords in the clear (the client's own SOCKS port)."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._passwords = {name.encode(): password.encode() for name, password in users.items()}

    def check(self, user: bytes, password: bytes) -> bool:
        expected = self._passwords.get(user)
        matches = hmac.compare_digest(password, expected or b"")  # in constant time
        return expected is not None and matches


class _State(enum.Enum):
    METHODS = "method selection"
    PASSWORD = "user/password authentication"
    REQUEST = "request"
    AWAITING_REPLY = "waiting for the reply"
    ESTABLISHED = "established"
    CLOSED = "closed"


class _Refusal(Exception):
    """Raised inside a step: answer the client with ``data``, then close."""

    def __init__(self, data: bytes, reason: str) -> None:
        super().__init__(reason)
        self.data = data
        self.reason = reason


def _read_or_refuse(
    reader: SocksReader, data: bytearray, answers: Mapping[str, bytes]
) -> tuple[int, Any] | None:
    """``reader.read`` whose defects become a refusal: ``answers`` maps a field ("" any other)
    to the bytes the client gets. A wrong version byte gets nothing: it is not speaking SOCKS5."""
    try:
        return reader.read(data)
    except WireError as error:
        answer = b"" if error.field == "version" else answers.get(error.field, answers[""])
        raise _Refusal(answer, str(error)) from None


class Socks5Server:
    """One accepted SOCKS5 client connection, from its first byte to the request's reply.

    ``users`` None offers only "no authentication"; a mapping of user name to password offers
    only RFC 1929 user/password, and so does ``check_login(user, password) -> bool`` (for
    hashed passwords). ``user`` is the authenticated name once a login succeeded.
    After ``Rejected`` or ``reply()`` the handshake is over and ``receive()`` raises.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        check_login: CredentialCheck | None = None,
    ) -> None:
        if check_login is None and users is not None:
            check_login = PlainPasswords(users).check
        self._check_login = check_login
        self._method = Method.NO_AUTH if check_login is None else Method.USERNAME_PASSWORD
        self._state = _State.METHODS
        self._buffer = bytearray()
        self.user: str | None = None

    @property
    def early_data(self) -> bytes:
        """What the client sent after its request, to forward once the reply is out."""
        if self._state in (_State.AWAITING_REPLY, _State.ESTABLISHED):
            return bytes(self._buffer)
        return b""

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; returns what to do, in order."""
        if self._state in (_State.ESTABLISHED, _State.CLOSED):
            raise RuntimeError(f"receive() after the handshake ended ({self._state.value})")
        if len(self._buffer) + len(data) > MAX_BUFFERED:
            return [self._reject(b"", TOO_MUCH_DATA)]
        self._buffer += data
        events: list[Event] = []
        while self._buffer and self._state in self._STEPS:  # no packet is empty
            reader, answers, step = self._STEPS[self._state]
            try:
                packet = _read_or_refuse(reader, self._buffer, answers)
                if packet is None:
                    break
                size, fields = packet
                del self._buffer[:size]
                events.append(step(self, fields))
            except _Refusal as refusal:
                events.append(self._reject(refusal.data, refusal.reason))
        return events

    def reply(self, code: ReplyCode, host: str = "0.0.0.0", port: int = 0) -> bytes:
        """The reply to the request; after any code but ``SUCCEEDED`` the caller closes."""
        if self._state is not _State.AWAITING_REPLY:
            raise RuntimeError(f"no request to reply to ({self._state.value})")
        data = _DEFAULT_REPLIES.get(code) if (host, port) == ("0.0.0.0", 0) else None
        if data is None:
            data = _reply_bytes(code, host, port)
        self._state = _State.ESTABLISHED if code == ReplyCode.SUCCEEDED else _State.CLOSED
        return data

    def _reject(self, data: bytes, reason: str) -> Rejected:
        self._state = _State.CLOSED
        self._buffer.clear()
        return Rejected(data, reason)

    def _on_methods(self, greeting: Greeting) -> Event:
        if self._method not in greeting.methods:
            offered = ", ".join(str(method) for method in greeting.methods)
            raise _Refusal(
                _NO_ACCEPTABLE_METHOD,
                f"no acceptable method: client offers [{offered}], server needs"
                f" {int(self._method)} ({self._method.name})",
            )
        self._state = (
            _State.PASSWORD if self._method is Method.USERNAME_PASSWORD else _State.REQUEST
        )
        return _METHOD_SELECTED[self._method]

    def _on_password(self, login: Login) -> Event:
        if not self._check_login(login.username, login.password):
            raise _Refusal(_PASSWORD_REFUSED, "wrong user name or password")
        self.user = login.username.decode()
        self._state = _State.REQUEST
        return _PASSWORD_ACCEPTED

    def _on_request(self, request: Request) -> Event:
        if request.command is Command.BIND:
            raise _Refusal(_REQUEST_REFUSALS["command"], "BIND is not supported")
        self._state = _State.AWAITING_REPLY
        if request.command is Command.CONNECT:
            return ConnectRequested(request.host, request.port)
        return UdpAssociateRequested(request.host, request.port)

    _STEPS: Mapping[_State, tuple[SocksReader, Mapping[str, bytes], Callable]] = {
        _State.METHODS: (METHOD_REQUEST_READER, {"": _NO_ACCEPTABLE_METHOD}, _on_methods),
        _State.PASSWORD: (PASSWORD_REQUEST_READER, {"": _PASSWORD_REFUSED}, _on_password),
        _State.REQUEST: (REQUEST_READER, _REQUEST_REFUSALS, _on_request),
    }
    """Per state: the packet the client sends next, the answer to its defects, and the step."""
