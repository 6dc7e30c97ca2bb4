"""An admin listener in the test's own process, with short delays so tests stay fast: for the
listener's own tests and for ``gjproxy admin`` run against it; and the admin protocol's bytes,
built by hand from the layout, sent to it over a real socket."""

from __future__ import annotations

import socket

import gevent.socket

from jproxy.handlers.admin.listener import IPPROTO_SCTP, serve_admin
from jproxy.metrics import Counters
from jproxy.policy.passwords import AdminCredentials, LoginThrottle, hash_password
from jproxy.tuning import RelayTuning

USER, PASSWORD = "alice", "s3cret"
BASE_DELAY = 0.1
MAX_DELAY = 0.4


def start_admin(counters: Counters, tuning: RelayTuning):
    """An admin listener on an ephemeral port, with short delays so tests stay fast."""
    credentials = AdminCredentials(USER, hash_password(PASSWORD, n=1024), "test")
    throttle = LoginThrottle(BASE_DELAY, MAX_DELAY)
    return serve_admin(
        ("127.0.0.1", 0), credentials, counters, tuning, throttle=throttle, deadline=1.0
    )


def login(user: bytes = USER.encode(), password: bytes = PASSWORD.encode(), version=1) -> bytes:
    return bytes([version, len(user)]) + user + bytes([len(password)]) + password


def request(method: int, *params: bytes) -> bytes:
    return bytes([method, len(params)]) + b"".join(bytes([len(p)]) + p for p in params)


def reply(code: int, data: bytes) -> bytes:
    return bytes([code, len(data)]) + data


def connect(server) -> gevent.socket.socket:
    proto = IPPROTO_SCTP if server.transport == "SCTP" else 0
    sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.settimeout(5)
    sock.connect(server.address)
    return sock


def read_to_end(sock) -> bytes:
    received = b""
    while data := sock.recv(4096):
        received += data
    return received


def exchange(server, data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data``, maybe half-close, and return everything the server sent until it closed."""
    with connect(server) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_to_end(sock)
