"""The admin protocol cores, fed by hand-built bytes, whole and one byte at a time."""

from __future__ import annotations

import pytest

from jproxy.admin.protocol import (
    MAX_REQUEST_SIZE,
    AdminClientConnection,
    AdminServerConnection,
    ExchangeEnded,
    LoginAccepted,
    LoginRefused,
    LoginReplied,
    MethodReplied,
    RequestAnswered,
    format_users,
    login_bytes,
    request_bytes,
    server_methods,
)
from jproxy.metrics import Counters
from jproxy.tuning import MAX_BUFFER_SIZE
from schemas.admin import AuthStatus, Method
from schemas.errors import WireError


def login(user: bytes = b"alice", password: bytes = b"s3cret", version: int = 1) -> bytes:
    return bytes([version, len(user)]) + user + bytes([len(password)]) + password


def request(method: int, *params: bytes) -> bytes:
    return bytes([method, len(params)]) + b"".join(bytes([len(p)]) + p for p in params)


OK = b"\x01\x00"


def only_alice(user: bytes, password: bytes) -> bool:
    return (user, password) == (b"alice", b"s3cret")


@pytest.fixture
def counters() -> Counters:
    counters = Counters(connections_total=12, connections_open=3, bytes_transferred=987654)
    counters.tunnel_opened("bob", "3.1")
    counters.tunnel_opened("alice", "3.0")
    counters.tunnel_opened("bob", "3.1")
    return counters


@pytest.fixture
def server(counters, tuning) -> AdminServerConnection:
    return AdminServerConnection(only_alice, server_methods(counters, tuning))


def feed(connection, data: bytes, *, byte_at_a_time: bool) -> list:
    if not byte_at_a_time:
        return connection.receive(data)
    outputs = []
    for index in range(len(data)):
        outputs += connection.receive(data[index : index + 1])
    return outputs


def sent(outputs: list) -> bytes:
    return b"".join(item for item in outputs if isinstance(item, bytes))


def events(outputs: list) -> list:
    return [item for item in outputs if not isinstance(item, bytes)]


EXCHANGES = [
    (request(0), b"\x00\x0212"),
    (request(1), b"\x01\x013"),
    (request(2), b"\x02\x06987654"),
    (request(3, b"4096"), b"\x03\x044096"),
    (request(4), b"\x04\x0565536"),
    (request(5), b"\x05\x0dalice=1,bob=2"),
    (request(6), b"\x06\x013"),
    (request(77), b"\xff\x0cno method 77"),
]


@pytest.mark.parametrize("byte_at_a_time", [False, True])
@pytest.mark.parametrize("request_bytes_, reply", EXCHANGES)
def test_login_then_each_method(server, request_bytes_, reply, byte_at_a_time) -> None:
    outputs = feed(server, login() + request_bytes_, byte_at_a_time=byte_at_a_time)
    assert sent(outputs) == OK + reply
    assert events(outputs)[0] == LoginAccepted("alice")
    assert isinstance(events(outputs)[-1], ExchangeEnded)
    assert server.finished
    assert server.receive(b"more") == []


def test_set_buffer_size_applies_to_the_tuning(server, tuning) -> None:
    outputs = server.receive(login() + request(3, b"1048576"))
    assert sent(outputs) == OK + b"\x03\x071048576"
    assert tuning.buffer_size == MAX_BUFFER_SIZE
    assert RequestAnswered(3, Method.SET_BUFFER_SIZE, "1048576") in outputs


@pytest.mark.parametrize(
    "params, reason",
    [
        ((b"100",), b"buffer size must be 512..1048576"),
        ((b"2000000",), b"buffer size must be 512..1048576"),
        ((b"12ab",), b"expected one parameter: the buffer size as ASCII decimal"),
        ((b"-600",), b"expected one parameter: the buffer size as ASCII decimal"),
        ((b"",), b"expected one parameter: the buffer size as ASCII decimal"),
        ((), b"expected one parameter: the buffer size as ASCII decimal"),
        ((b"4096", b"4096"), b"expected one parameter: the buffer size as ASCII decimal"),
    ],
)
def test_set_buffer_size_refuses_bad_numbers(server, tuning, params, reason) -> None:
    outputs = server.receive(login() + request(3, *params))
    assert sent(outputs) == OK + bytes([254, len(reason)]) + reason
    assert tuning.buffer_size == 65536


def test_a_reading_method_refuses_parameters(server) -> None:
    reason = b"this method takes no parameters"
    assert sent(server.receive(login() + request(0, b"x"))) == OK + b"\xfe\x1f" + reason


def test_bytes_after_the_declared_parameters_get_254(server, tuning) -> None:
    # NPARAM says 1 but two parameters follow.
    outputs = server.receive(login() + request(3, b"4096") + b"\x02xx")
    reason = b"bytes follow the last parameter: NPARAM or a length is too small"
    assert sent(outputs) == OK + bytes([254, len(reason)]) + reason
    assert tuning.buffer_size == 65536


CUT_SHORT = b"request cut short: NPARAM or a length promises more bytes than were sent"


@pytest.mark.parametrize(
    "partial",
    [b"", b"\x03", b"\x03\x02\x044096", b"\x03\x01\x05409", b"\x03\x01"],
    ids=["nothing", "method only", "nparam too big", "lparam too big", "no lparam"],
)
def test_a_request_cut_short_gets_254_at_end_of_input(server, partial) -> None:
    outputs = feed(server, login() + partial, byte_at_a_time=True)
    assert sent(outputs) == OK
    assert not server.finished
    outputs = server.end_of_input()
    assert sent(outputs) == bytes([254, len(CUT_SHORT)]) + CUT_SHORT
    assert events(outputs)[0].method == (partial[0] if partial else None)
    assert server.finished
    assert server.end_of_input() == []


@pytest.mark.parametrize(
    "attempt", [login(password=b"wrong"), login(user=b"mallory"), login(user=b"", password=b"")]
)
def test_bad_credentials_get_status_1_and_the_end(server, attempt) -> None:
    outputs = feed(server, attempt + request(0), byte_at_a_time=True)
    assert sent(outputs) == b"\x01\x01"
    assert isinstance(events(outputs)[0], LoginRefused)
    assert events(outputs)[0].status is AuthStatus.BAD_CREDENTIALS
    assert server.finished


@pytest.mark.parametrize("version", [0, 2, 255])
def test_another_version_gets_status_2_after_its_first_byte(server, version) -> None:
    outputs = server.receive(bytes([version]))
    assert sent(outputs) == b"\x01\x02"
    assert events(outputs)[0] == LoginRefused("", AuthStatus.BAD_VERSION)
    assert server.finished


def test_a_failing_credential_check_gets_status_3(counters, tuning) -> None:
    def broken(user: bytes, password: bytes) -> bool:
        raise OSError("password store unreadable")

    connection = AdminServerConnection(broken, server_methods(counters, tuning))
    outputs = connection.receive(login())
    assert sent(outputs) == b"\x01\x03"
    refused = events(outputs)[0]
    assert refused.status is AuthStatus.INTERNAL_ERROR
    assert isinstance(refused.error, OSError)


def test_a_login_cut_short_ends_without_a_reply(server) -> None:
    assert server.receive(login()[:-1]) == []
    assert server.end_of_input() == [ExchangeEnded("the login request was cut short")]


def test_credentials_are_passed_as_raw_bytes(counters, tuning) -> None:
    seen = []
    connection = AdminServerConnection(
        lambda user, password: seen.append((user, password)) or True,
        server_methods(counters, tuning),
    )
    connection.receive(login(user="żółw".encode(), password=b"\xff\x00pw"))
    assert seen == [("żółw".encode(), b"\xff\x00pw")]


def test_the_largest_request_byte_at_a_time(server) -> None:
    """255 parameters of 255 bytes: found in linear time, then refused for its arity."""
    largest = request(3, *[b"9" * 255] * 255)
    assert len(largest) == MAX_REQUEST_SIZE
    outputs = feed(server, login() + largest, byte_at_a_time=True)
    reason = b"expected one parameter: the buffer size as ASCII decimal"
    assert sent(outputs) == OK + bytes([254, len(reason)]) + reason


def test_a_flood_after_the_request_is_answered_and_dropped(server) -> None:
    outputs = server.receive(login() + request(0) + b"x" * 10_000_000)
    assert sent(outputs)[2] == 254
    assert not server._buffer  # nothing is kept once the exchange is over


# --- method 5: the user list ---------------------------------------------------------------


def test_users_are_sorted_and_counted() -> None:
    assert format_users({"bob": 1, "alice": 2}) == "alice=2,bob=1"
    assert format_users({}) == ""


def test_users_are_cut_at_a_name_boundary_to_fit_255_bytes() -> None:
    users = {f"user{index:03d}": 1 for index in range(40)}  # "user000=1" is 9 bytes
    text = format_users(users)
    assert text.endswith(",...")
    assert len(text) <= 255
    names = text[: -len(",...")].split(",")
    assert names == [f"user{index:03d}=1" for index in range(len(names))]
    assert len(text) + len(",user999=1") > 255  # nothing more would have fitted


def test_users_list_of_exactly_255_bytes_is_not_cut() -> None:
    users = {"a" * 123: 1, "b" * 129: 1}  # "a...=1,b...=1" is 125 + 1 + 131 = 257
    assert format_users(users) == "a" * 123 + "=1,..."
    users = {"a" * 123: 1, "b" * 127: 1}
    assert len(format_users(users)) == 255


def test_a_name_too_long_for_a_reply_leaves_only_the_ellipsis() -> None:
    assert format_users({"x" * 300: 1}) == "..."


def test_non_ascii_user_names_are_escaped() -> None:
    assert format_users({"żółw": 1}) == "\\u017c\\xf3\\u0142w=1"


# --- client side ---------------------------------------------------------------------------


def test_client_bytes_match_the_layout() -> None:
    assert login_bytes("alice", "s3cret") == login()
    assert request_bytes(Method.SET_BUFFER_SIZE, ["4096"]) == request(3, b"4096")
    assert request_bytes(Method.CONNECTIONS_TOTAL) == b"\x00\x00"
    with pytest.raises(WireError):
        login_bytes("alice", "x" * 256)


@pytest.mark.parametrize("byte_at_a_time", [False, True])
def test_client_reads_both_replies(byte_at_a_time) -> None:
    client = AdminClientConnection(Method.SET_BUFFER_SIZE)
    replies = feed(client, OK + b"\x03\x044096", byte_at_a_time=byte_at_a_time)
    assert replies == [LoginReplied(AuthStatus.OK), MethodReplied(Method.SET_BUFFER_SIZE, "4096")]
    client.end_of_input()


@pytest.mark.parametrize("code", [254, 255])
def test_client_accepts_the_error_replies(code) -> None:
    client = AdminClientConnection(Method.SET_BUFFER_SIZE)
    assert client.receive(OK + bytes([code, 2]) + b"no")[1] == MethodReplied(Method(code), "no")


@pytest.mark.parametrize(
    "reply, field",
    [
        (b"\x02\x00", "version"),
        (b"\x01\x09", "status"),
        (OK + b"\x01\x013", "code"),  # answers a method that was not asked
        (OK + b"\x03\x01\xff", ""),  # not ASCII
        (OK + b"\x03\x0124", ""),  # more than LEN bytes
    ],
)
def test_client_rejects_bad_replies(reply, field) -> None:
    client = AdminClientConnection(Method.SET_BUFFER_SIZE)
    with pytest.raises(WireError) as raised:
        client.receive(reply)
    assert raised.value.field == field


def test_client_notices_a_reply_cut_short() -> None:
    client = AdminClientConnection(Method.CONNECTIONS_TOTAL)
    assert client.receive(OK + b"\x00\x0512") == [LoginReplied(AuthStatus.OK)]
    with pytest.raises(WireError, match="cut short after 4 bytes"):
        client.end_of_input()
