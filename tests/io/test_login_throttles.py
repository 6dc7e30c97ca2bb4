"""Login throttles by origin: the plain SOCKS port's RFC 1929 logins, and guesses that arrive
through the server's own outbound connections (a tunnel user's) at the admin port."""

from __future__ import annotations

import time

import gevent
import gevent.socket
import pytest

from jproxy.handlers.admin.listener import serve_admin
from jproxy.handlers.dns.resolver import SystemResolver
from jproxy.handlers.logs.access import AccessLog
from jproxy.handlers.net.dialer import Dialer
from jproxy.handlers.socks.plain import PlainSocks5Port
from jproxy.metrics import Counters
from jproxy.policy.egress import EgressPolicy
from jproxy.policy.passwords import AdminCredentials, LoginThrottle, PasswordTable, hash_password
from jproxy.tuning import RelayTuning
from tests.admin_listener import exchange, login, reply, request

USER, PASSWORD = "alice", "s3cret"


def socks_login(address, user: bytes, password: bytes, source: str = "127.0.0.1") -> bytes:
    """An RFC 1929 login on the SOCKS port: the server's status byte pair."""
    with gevent.socket.create_connection(address, timeout=10, source_address=(source, 0)) as s:
        s.sendall(b"\x05\x01\x02")
        assert s.recv(2) == b"\x05\x02"
        s.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        return s.recv(2)


@pytest.fixture
def socks_port():
    users = PasswordTable({USER: hash_password(PASSWORD, n=1024)}, hash_password("x", n=1024))
    dialer = Dialer(SystemResolver(), EgressPolicy(), 5.0)
    port = PlainSocks5Port(
        ("127.0.0.1", 0),
        dialer,
        users=users,
        counters=Counters(),
        tuning=RelayTuning(),
        access_log=AccessLog(None),
        idle_timeout=60,
    )
    checks = []
    check = port._logins._check
    port._logins._check = lambda user, password: checks.append(user) or check(user, password)
    port.checks = checks
    port.start()
    yield port
    port.stop(timeout=0.1)  # the guessers still waiting are cut


def test_plain_socks_guesses_wait_their_turn_and_spare_other_addresses(socks_port) -> None:
    """32 parallel guesses from one address are checked one at a time with growing delays;
    meanwhile the real user logs in at once from another address."""
    guesses = [
        gevent.spawn(socks_login, socks_port.address, USER.encode(), f"guess-{n}".encode())
        for n in range(32)
    ]
    gevent.sleep(0.5)  # the guessers' delays have grown
    started = time.monotonic()
    assert socks_login(socks_port.address, USER.encode(), PASSWORD.encode(), "127.0.0.2") == (
        b"\x01\x00"
    )
    assert time.monotonic() - started < 1.0
    gevent.sleep(1.0)
    gevent.killall(guesses)
    # One at a time, after 0.25, 0.5, 1 s: a handful checked in 1.5 s, not 32 (nor 64).
    assert 2 <= len(socks_port.checks) - 1 <= 5, socks_port.checks


def test_a_proven_password_is_not_held_up_by_guesses_from_its_own_address(socks_port) -> None:
    assert socks_login(socks_port.address, USER.encode(), PASSWORD.encode()) == b"\x01\x00"
    guesses = [
        gevent.spawn(socks_login, socks_port.address, USER.encode(), f"guess-{n}".encode())
        for n in range(8)
    ]
    gevent.sleep(0.5)
    started = time.monotonic()
    assert socks_login(socks_port.address, USER.encode(), PASSWORD.encode()) == b"\x01\x00"
    assert time.monotonic() - started < 0.5
    gevent.killall(guesses)


def test_guesses_through_the_servers_own_connections_do_not_delay_the_operator() -> None:
    """A tunnel user guessing the operator's own name reaches the admin port from the
    server's address, as the operator does: the throttle keys those guesses by the tunnel
    user (the dialer's ``origins``), so the operator's login is not delayed."""
    credentials = AdminCredentials(USER, hash_password(PASSWORD, n=1024), "test")
    dialer = Dialer(SystemResolver(), EgressPolicy.from_rules(["127.0.0.0/8"], []), 5.0)
    server = serve_admin(
        ("127.0.0.1", 0),
        credentials,
        Counters(),
        RelayTuning(),
        throttle=LoginThrottle(base_delay=30.0, max_delay=30.0),
        deadline=5.0,
        origins=dialer.origins,
    )
    try:
        sock, _ = dialer.connect(*server.address, origin="tunnel user mallory")
        with sock:
            sock.sendall(login(password=b"wrong") + request(6))
            assert sock.recv(2) == b"\x01\x01"
        with gevent.Timeout(5):  # mallory's next guess waits 30 s; the operator's does not
            assert exchange(server, login() + request(6)) == b"\x01\x00" + reply(6, b"0")
    finally:
        server.stop()
