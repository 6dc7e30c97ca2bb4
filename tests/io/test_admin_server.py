"""``serve_admin`` over real loopback sockets, driven by bytes built by hand from the layout."""

from __future__ import annotations

import logging
import socket
import time

import gevent
import gevent.socket
import pytest

from jproxy.handlers.admin.listener import IPPROTO_SCTP, serve_admin
from jproxy.metrics import Counters
from jproxy.policy.passwords import AdminCredentials, LoginThrottle, hash_password
from tests.admin_listener import (
    BASE_DELAY,
    MAX_DELAY,
    PASSWORD,
    USER,
    connect,
    exchange,
    login,
    read_to_end,
    reply,
    request,
    start_admin,
)

OK = b"\x01\x00"


@pytest.fixture
def counters() -> Counters:
    counters = Counters(connections_total=41, connections_open=5, bytes_transferred=123456789)
    counters.tunnel_opened("carol", "3.1")
    counters.tunnel_opened("alice", "3.0")
    counters.tunnel_opened("carol", "3.1")
    return counters


@pytest.fixture
def admin(counters, tuning):
    server = start_admin(counters, tuning)
    yield server
    server.stop()


@pytest.mark.parametrize(
    "method, value",
    [
        (0, b"41"),
        (1, b"5"),
        (2, b"123456789"),
        (4, b"65536"),
        (5, b"alice=1,carol=2"),
        (6, b"3"),
    ],
)
def test_each_reading_method(admin, method, value) -> None:
    assert exchange(admin, login() + request(method)) == OK + reply(method, value)


def test_values_are_read_live(admin, counters) -> None:
    counters.connection_opened()
    counters.transferred(11)
    assert exchange(admin, login() + request(0)) == OK + reply(0, b"42")
    assert exchange(admin, login() + request(2)) == OK + reply(2, b"123456800")


def test_login_and_request_sent_separately(admin) -> None:
    with connect(admin) as sock:
        sock.sendall(login())
        assert sock.recv(2) == OK
        sock.sendall(request(1))
        assert read_to_end(sock) == reply(1, b"5")


def test_set_buffer_size_changes_the_running_tuning(admin, tuning) -> None:
    assert exchange(admin, login() + request(3, b"8192")) == OK + reply(3, b"8192")
    assert tuning.buffer_size == 8192
    assert exchange(admin, login() + request(4)) == OK + reply(4, b"8192")


@pytest.mark.parametrize(
    "param, reason",
    [
        (b"12x4", b"expected one parameter: the buffer size as ASCII decimal"),
        (b"511", b"buffer size must be 512..1048576"),
        (b"1048577", b"buffer size must be 512..1048576"),
    ],
    ids=["not a number", "too small", "too big"],
)
def test_set_buffer_size_refuses_bad_values(admin, tuning, param, reason) -> None:
    assert exchange(admin, login() + request(3, param)) == OK + reply(254, reason)
    assert tuning.buffer_size == 65536


CUT_SHORT = b"request cut short: NPARAM or a length promises more bytes than were sent"


@pytest.mark.parametrize(
    "partial",
    [b"\x03\x02\x044096", b"\x03\x01\x10" + b"4096", b"\x03"],
    ids=["NPARAM too big", "LPARAM too big", "method byte only"],
)
def test_request_cut_short_at_half_close_gets_254(admin, tuning, partial) -> None:
    assert exchange(admin, login() + partial) == OK + reply(254, CUT_SHORT)
    assert tuning.buffer_size == 65536


def test_request_cut_short_at_the_deadline_gets_254(admin) -> None:
    started = time.monotonic()
    assert exchange(admin, login() + b"\x03\x02\x044096", half_close=False) == OK + reply(
        254, CUT_SHORT
    )
    assert time.monotonic() - started >= 1.0  # the deadline of the fixture


def test_nparam_too_small_gets_254(admin, tuning) -> None:
    sent = login() + b"\x03\x01\x044096\x044096"
    reason = b"bytes follow the last parameter: NPARAM or a length is too small"
    assert exchange(admin, sent) == OK + reply(254, reason)
    assert tuning.buffer_size == 65536


def test_unknown_method_gets_255(admin) -> None:
    assert exchange(admin, login() + request(200, b"x")) == OK + reply(255, b"no method 200")


@pytest.mark.parametrize(
    "attempt",
    [login(password=b"s3creT"), login(user=b"mallory"), login(user=b"", password=b"")],
    ids=["bad password", "unknown user", "empty"],
)
def test_bad_credentials_get_status_1(admin, attempt) -> None:
    assert exchange(admin, attempt + request(0)) == b"\x01\x01"


def test_version_2_gets_status_2(admin) -> None:
    assert exchange(admin, login(version=2) + request(0)) == b"\x01\x02"


def test_login_cut_short_is_closed_without_a_reply(admin) -> None:
    assert exchange(admin, login()[:5]) == b""


def test_failed_logins_slow_down_later_attempts(admin) -> None:
    durations = []
    for _ in range(5):
        started = time.monotonic()
        assert exchange(admin, login(password=b"guess")) == b"\x01\x01"
        durations.append(time.monotonic() - started)
    expected = [0.0, BASE_DELAY, 2 * BASE_DELAY, MAX_DELAY, MAX_DELAY]
    assert all(took >= wait for took, wait in zip(durations, expected, strict=True)), durations
    assert durations[3] > durations[1]
    # The right password still works (after the wait), and clears the count.
    assert exchange(admin, login() + request(1)) == OK + reply(1, b"5")


def test_many_clients_at_once(admin) -> None:
    jobs = [gevent.spawn(exchange, admin, login() + request(6)) for _ in range(20)]
    gevent.joinall(jobs, timeout=20, raise_error=True)
    assert {job.value for job in jobs} == {OK + reply(6, b"3")}


def sctp_probe() -> OSError | None:
    """How the kernel answers for SCTP, probed the way the server does."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP).close()
    except OSError as error:
        return error
    return None


def test_transport_and_its_log_line(counters, tuning, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="jproxy.handlers.admin.listener"):
        server = start_admin(counters, tuning)
    try:
        port = server.address[1]
        error = sctp_probe()
        if error is None:
            assert server.transport == "SCTP"
            line = f"admin: serving the admin protocol over SCTP on 127.0.0.1:{port}"
        else:
            assert server.transport == "TCP"
            line = (
                f"admin: SCTP unavailable ({error.strerror}),"
                f" serving the admin protocol over TCP on 127.0.0.1:{port}"
            )
        assert line in caplog.messages
        assert "admin: account 'alice' from test" in caplog.messages
        assert exchange(server, login() + request(1)) == OK + reply(1, b"5")
    finally:
        server.stop()


def test_logs_name_the_user_never_the_password(admin, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="jproxy.handlers.admin.listener"):
        exchange(admin, login(password=b"guess-1234"))
        exchange(admin, login() + request(0))
    assert "admin: login of 'alice' from 127.0.0.1 refused: BAD_CREDENTIALS" in caplog.messages
    assert "admin: 'alice' logged in from 127.0.0.1" in caplog.messages
    assert "guess-1234" not in caplog.text
    assert PASSWORD not in caplog.text


def _logins_refused(caplog) -> list[str]:
    return [m for m in caplog.messages if "refused: BAD_CREDENTIALS" in m]


def test_parallel_guesses_wait_their_turn(admin, caplog) -> None:
    """32 connections guessing at once get no more checks than one connection would."""
    with caplog.at_level(logging.INFO, logger="jproxy.handlers.admin.listener"):
        jobs = [
            gevent.spawn(exchange, admin, login(password=f"guess-{n}".encode())) for n in range(32)
        ]
        gevent.joinall(jobs, timeout=20, raise_error=True)
    assert {job.value for job in jobs} == {b"\x01\x01"}
    # One at a time, each after the doubling delay (0.1, 0.2, 0.4, 0.4 s), within the 1 s
    # deadline: a handful are checked, the others are refused without a check.
    turned_away = [m for m in caplog.messages if "too many parallel logins from 127.0.0" in m]
    checked = len(_logins_refused(caplog)) - len(turned_away)
    assert 2 <= checked <= 6, caplog.messages


def test_guesses_at_other_names_do_not_delay_the_operator(counters, tuning) -> None:
    """Tunnel users reach the admin port from the server's own address: a throttle per
    address alone made their failures delay the operator's login."""
    credentials = AdminCredentials(USER, hash_password(PASSWORD, n=1024), "test")
    server = serve_admin(
        ("127.0.0.1", 0),
        credentials,
        counters,
        tuning,
        throttle=LoginThrottle(base_delay=30.0, max_delay=30.0),
        deadline=5.0,
    )
    try:
        assert exchange(server, login(user=b"tunnel-user")) == b"\x01\x01"
        with gevent.Timeout(5):  # the same name now waits 30 s; the operator's does not
            assert exchange(server, login() + request(6)) == OK + reply(6, b"3")
    finally:
        server.stop()


def test_idle_connections_do_not_delay_the_operator(admin) -> None:
    """200 idle connections (more than the port's budget) from another address."""

    def idle() -> None:
        with gevent.socket.create_connection(admin.address, source_address=("127.0.0.2", 0)) as s:
            s.settimeout(5)
            try:
                s.recv(1)
            except OSError:
                pass

    flood = [gevent.spawn(idle) for _ in range(200)]
    try:
        gevent.sleep(0.3)
        with gevent.Timeout(2):
            assert exchange(admin, login() + request(6)) == OK + reply(6, b"3")
    finally:
        gevent.killall(flood)
