"""Pre-login floods at ten times the budget against real servers: 1,280 idle, trickling and
re-opening connections on the tunnel port, from one address and from 300; the admin port
flooded from the operator's own address. Real logins still get through within 2 s.

The real client is given a round trip of 100 ms, as a client across the internet has: its
login (hello, reply, login, reply, first frame) then takes a few hundred milliseconds, while
the flood re-opens every connection the server drops at once (thousands a second).

Bounded: each flood runs only while its logins are timed (about 10 s each).
"""

from __future__ import annotations

import resource
import socket
import time

import gevent
import gevent.socket
import pytest

from jproxy.admin.protocol import login_bytes, request_bytes
from jproxy.handlers.tunnel.handshake import client_login
from jproxy.tunnel.keys import load_client_key
from schemas.jproxy import Dialect
from tests.peers import Flood, count_lines, free_port, poll_until, start_server

FLOOD = 1280  # ten times the default pre-login budget of 128
ADMIN_FLOOD = 640  # ten times the admin port's 64
LOGINS = 4
ROUND_TRIP = 0.1
OPERATOR, PASSWORD = "operator", "operator's password"


class FarAway:
    """A socket whose every message after the first leaves one ``ROUND_TRIP`` late: the time
    a client across the internet takes to hear the server's reply and answer it."""

    def __init__(self, sock: gevent.socket.socket) -> None:
        self.sock, self.sent = sock, 0

    def sendall(self, data: bytes) -> None:
        if self.sent:
            gevent.sleep(ROUND_TRIP)
        self.sent += 1
        self.sock.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)


def _far_login(port: int, workdir) -> None:
    """A real login from far away; ``LoginError`` if it takes more than 2 s."""
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        client_login(FarAway(sock), load_client_key(workdir / "key.dat"), Dialect.SECURE_3_1, 2.0)


@pytest.fixture(autouse=True)
def enough_fds():
    """The flood's sockets live in this process: its soft limit is raised for them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def many_sources(count: int) -> list[str]:
    return [f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(count)]


@pytest.mark.parametrize("sources", [["127.0.0.1"], many_sources(300)], ids=["1", "300"])
def test_tunnel_logins_get_through_ten_times_the_prelogin_budget(workdir, sources) -> None:
    server = start_server(workdir)
    try:
        with Flood(server.port, FLOOD, sources) as flood:
            poll_until(
                lambda: flood.opened >= FLOOD and flood.dropped > FLOOD // 2,
                timeout=60,
                what=flood,  # failing, it says how far the flood got
            )
            for _ in range(LOGINS):
                _far_login(server.port, workdir)
                time.sleep(0.2)
        assert count_lines(server, r"logged in \(dialect 3.1\)", at_least=LOGINS) == LOGINS
        assert count_lines(server, "Traceback") == 0
    finally:
        server.stop()


def _operator_login(port: int) -> bytes:
    """The login first, the request one round trip later, as from far away."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.settimeout(2)
        sock.sendall(login_bytes(OPERATOR, PASSWORD))
        time.sleep(ROUND_TRIP)
        sock.sendall(request_bytes(6))
        return sock.recv(2)


def test_the_operator_gets_in_past_a_flood_from_the_operators_own_address(workdir) -> None:
    admin_port = free_port()
    env = {"GJPROXY_ADMIN_USER": OPERATOR, "GJPROXY_ADMIN_PASSWORD": PASSWORD}
    server = start_server(workdir, "--admin", f"127.0.0.1:{admin_port}", env=env)
    try:
        with Flood(admin_port, ADMIN_FLOOD, ["127.0.0.1"], trickle=b"\x01\x08") as flood:
            poll_until(
                lambda: flood.opened >= ADMIN_FLOOD and flood.dropped > ADMIN_FLOOD // 2,
                timeout=60,
                what=flood,  # failing, it says how far the flood got
            )
            for _ in range(LOGINS):
                started = time.monotonic()
                assert _operator_login(admin_port) == b"\x01\x00"
                assert time.monotonic() - started < 2.0
                time.sleep(0.2)
        assert count_lines(server, "Traceback") == 0
    finally:
        server.stop()
