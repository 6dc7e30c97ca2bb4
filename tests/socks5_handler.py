"""The thinnest handler around the sans-I/O SOCKS5 server, for the tests that put real clients
(python-socks, curl) in front of the core; and the users and replies all SOCKS5 tests share."""

from __future__ import annotations

import socket

from jproxy.socks.socks5 import ConnectRequested, Event, Rejected, Send, Socks5Server
from schemas.socks5 import ReplyCode

USERS = {"alice": "secret", "jörg": "pässwört"}
SELECTED_PASSWORD = Send(b"\x05\x02")
LOGGED_IN = Send(b"\x01\x00")
LOGIN_FAILED = b"\x01\x01"

TIMEOUT = 10.0
BOUND = ("127.0.0.1", 4242)


def _answer_as_destination(conn: socket.socket, received: bytes) -> None:
    """Play the destination: read one HTTP-style request, send back its first line."""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(4096)
        if not chunk:
            return
        received += chunk
    line = received.split(b"\r\n", 1)[0]
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line))


def serve_one(listener: socket.socket, server: Socks5Server) -> list[Event]:
    """The thinnest handler: drive ``server`` for one client; returns the events seen."""
    conn, _ = listener.accept()
    seen: list[Event] = []
    with conn:
        conn.settimeout(TIMEOUT)
        while data := conn.recv(4096):
            for event in server.receive(data):
                seen.append(event)
                if isinstance(event, Send | Rejected):
                    conn.sendall(event.data)
                if isinstance(event, Rejected):
                    return seen
                if isinstance(event, ConnectRequested):
                    conn.sendall(server.reply(ReplyCode.SUCCEEDED, *BOUND))
                    _answer_as_destination(conn, server.early_data)
                    return seen
    return seen
