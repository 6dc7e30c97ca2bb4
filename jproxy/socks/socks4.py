"""The server side of a SOCKS4 or SOCKS4a connection, sans I/O: one request, one reply.

SOCKS4 has no greeting and no authentication (its user id is a name, not a credential), so
a port that requires SOCKS users refuses it. The request is read with the reader that
``schemas.socks4`` derives from its schema; ``reply`` builds the answer from a tunnel or dial
status. The reply carries no bound address: clients ignore it.
"""

from __future__ import annotations

from jproxy.socks.socks5 import MAX_EARLY_DATA, ConnectRequested, Rejected
from schemas import WireError, build
from schemas.jproxy import ConnectStatus
from schemas.socks4 import MAX_TEXT, REQUEST_READER, Command, ReplyCode, Socks4Reply

MAX_BUFFERED = 8 + 2 * (MAX_TEXT + 1) + MAX_EARLY_DATA
"""The largest request (fixed part, user id and name with their NULs) plus early data."""

REPLIES = {
    code: build(Socks4Reply, {"reply": code, "port": 0, "address": "0.0.0.0"})
    for code in (ReplyCode.GRANTED, ReplyCode.REJECTED)
}


class Socks4Server:
    """One SOCKS4/4a client: ``receive`` until it returns ``ConnectRequested`` or
    ``Rejected``; ``early_data`` is what followed the request."""

    def __init__(self, *, users_required: bool = False) -> None:
        self._users_required = users_required
        self._buffer = bytearray()
        self.early_data = b""

    def receive(self, data: bytes) -> ConnectRequested | Rejected | None:
        """Feed bytes; ``None`` while the request is incomplete."""
        if len(self._buffer) + len(data) > MAX_BUFFERED:
            return Rejected(b"", "too much data before the request completed")
        self._buffer += data
        try:
            read = REQUEST_READER.read(self._buffer)
        except WireError as error:
            return Rejected(REPLIES[ReplyCode.REJECTED], str(error))
        if read is None:
            return None
        size, request = read
        if self._users_required:
            return Rejected(
                REPLIES[ReplyCode.REJECTED], "SOCKS4 has no passwords and this port needs a user"
            )
        if request.command is not Command.CONNECT:
            return Rejected(REPLIES[ReplyCode.REJECTED], f"{request.command.name} not supported")
        self.early_data = bytes(self._buffer[size:])
        return ConnectRequested(request.host, request.port)

    @staticmethod
    def reply(status: ConnectStatus) -> bytes:
        """Granted for OK; SOCKS4 has one failure code for every other outcome."""
        code = ReplyCode.GRANTED if status is ConnectStatus.OK else ReplyCode.REJECTED
        return REPLIES[code]
