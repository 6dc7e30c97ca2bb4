"""The sans-I/O SOCKS5 server: every handshake fed whole and one byte at a time (real clients
in front of it: tests/io/test_socks5_clients.py and tests/e2e/test_socks5_curl.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jproxy.socks.socks5 import (
    MAX_BUFFERED,
    TOO_MUCH_DATA,
    ConnectRequested,
    Event,
    Rejected,
    Send,
    Socks5Server,
    UdpAssociateRequested,
    build_udp_request,
    parse_udp_request,
    reply_code_for,
)
from schemas import WireError, build
from schemas.jproxy import ConnectStatus
from schemas.socks5 import AddressType, ReplyCode, SocksReply
from tests.socks5_handler import LOGGED_IN, LOGIN_FAILED, SELECTED_PASSWORD, USERS

NO_AUTH = bytes.fromhex("050100")
PASSWORD_AUTH = bytes.fromhex("050102")
CONNECT_IPV4 = bytes.fromhex("050100017f0000010050")

SELECTED_NO_AUTH = Send(b"\x05\x00")
NO_ACCEPTABLE = b"\x05\xff"


def refusal_reply(code: int) -> bytes:
    """A reply with the bound address 0.0.0.0:0, as sent with every refusal."""
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def login(user: str, password: str) -> bytes:
    name, secret = user.encode(), password.encode()
    return bytes([1, len(name)]) + name + bytes([len(secret)]) + secret


@pytest.fixture(params=["whole", "byte by byte"])
def feed(request) -> Callable[[Socks5Server, bytes], list[Event]]:
    """Feeds a client's bytes at once or one at a time, stopping where a handler would close."""

    def feed(server: Socks5Server, data: bytes) -> list[Event]:
        if request.param == "whole":
            return server.receive(data)
        events: list[Event] = []
        for index in range(len(data)):
            events += server.receive(data[index : index + 1])
            if events and isinstance(events[-1], Rejected):
                break
        return events

    return feed


# --- handshakes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_hex", "host", "port"),
    [
        ("050100017f0000010050", "127.0.0.1", 80),
        ("05010004200108800000000000000000000000010016", "2001:880::1", 22),
        ("050100030b6578616d706c652e636f6d01bb", "example.com", 443),
        ("05010003093132372e302e302e311f90", "127.0.0.1", 8080),
    ],
    ids=["ipv4", "ipv6", "domain", "ip-literal-as-name"],
)
def test_connect_without_auth(feed, request_hex, host, port) -> None:
    server = Socks5Server()
    events = feed(server, NO_AUTH + bytes.fromhex(request_hex))
    assert events == [SELECTED_NO_AUTH, ConnectRequested(host, port)]
    assert server.early_data == b""
    assert server.user is None
    assert server.reply(ReplyCode.SUCCEEDED, "10.1.2.3", 4242) == bytes.fromhex(
        "050000010a0102031092"
    )


def test_udp_associate(feed) -> None:
    server = Socks5Server()
    events = feed(server, NO_AUTH + bytes.fromhex("05030001000000000000"))
    assert events == [SELECTED_NO_AUTH, UdpAssociateRequested("0.0.0.0", 0)]
    assert server.reply(ReplyCode.SUCCEEDED, "127.0.0.1", 5353).hex() == "050000017f00000114e9"


def test_client_offering_several_methods_gets_the_one_configured(feed) -> None:
    assert feed(Socks5Server(), bytes.fromhex("0503800200"))[0] == SELECTED_NO_AUTH
    assert feed(Socks5Server(USERS), bytes.fromhex("0503800200"))[0] == SELECTED_PASSWORD


@pytest.mark.parametrize(("user", "password"), list(USERS.items()))
def test_password_login(feed, user, password) -> None:
    server = Socks5Server(USERS)
    events = feed(server, PASSWORD_AUTH + login(user, password) + CONNECT_IPV4)
    assert events == [SELECTED_PASSWORD, LOGGED_IN, ConnectRequested("127.0.0.1", 80)]
    assert server.user == user


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "wrong"), ("alice", ""), ("alice", "secret!"), ("mallory", "secret"), ("", "")],
)
def test_password_login_failure(feed, user, password) -> None:
    events = feed(Socks5Server(USERS), PASSWORD_AUTH + login(user, password) + CONNECT_IPV4)
    assert events[0] == SELECTED_PASSWORD
    assert events[1] == Rejected(LOGIN_FAILED, "wrong user name or password")
    assert len(events) == 2


def test_empty_user_table_lets_nobody_in(feed) -> None:
    events = feed(Socks5Server({}), PASSWORD_AUTH + login("alice", "secret"))
    assert events == [SELECTED_PASSWORD, Rejected(LOGIN_FAILED, "wrong user name or password")]


@pytest.mark.parametrize(
    ("users", "greeting_hex"),
    [
        (None, "050102"),
        (None, "0502010280"),
        (USERS, "050100"),
        (USERS, "0500"),
    ],
    ids=[
        "no-auth-server-offered-password",
        "no-auth-server-offered-others",
        "password-server-offered-none",
        "zero-methods",
    ],
)
def test_no_acceptable_method(feed, users, greeting_hex) -> None:
    events = feed(Socks5Server(users), bytes.fromhex(greeting_hex) + CONNECT_IPV4)
    assert len(events) == 1
    assert events[0].data == NO_ACCEPTABLE
    assert isinstance(events[0], Rejected)


@pytest.mark.parametrize(
    ("request_hex", "code", "reason"),
    [
        ("05020001c0a800011f90", 7, "BIND is not supported"),
        ("05090001c0a800011f90", 7, "SocksRequest.command: unknown Command value 9"),
        ("05000001c0a800011f90", 7, "SocksRequest.command: unknown Command value 0"),
        ("0501000ac0a800011f90", 8, "SocksRequest.address.type: unknown AddressType value 10"),
        ("0501000200", 8, "SocksRequest.address.type: unknown AddressType value 2"),
        ("050100030000", 1, "SocksRequest.address.host: empty domain name"),
        ("050100030261ff0050", 1, "SocksRequest.address.host: domain name is not ASCII"),
    ],
    ids=["bind", "command-9", "command-0", "atyp-10", "atyp-2", "empty-name", "non-ascii-name"],
)
def test_requests_refused_with_a_reply(feed, request_hex, code, reason) -> None:
    events = feed(Socks5Server(), NO_AUTH + bytes.fromhex(request_hex))
    assert events == [SELECTED_NO_AUTH, Rejected(refusal_reply(code), reason)]


@pytest.mark.parametrize(
    ("users", "data_hex", "answered"),
    [
        (None, "040100500a000001", []),  # SOCKS4
        (None, "434f4e4e454354", []),  # "CONNECT" (HTTP)
        (None, "050100 040100017f0000010050", [SELECTED_NO_AUTH]),
        (USERS, "050102 0501610162", [SELECTED_PASSWORD]),
    ],
    ids=["socks4", "http", "request-version", "password-version"],
)
def test_wrong_version_closes_without_answer(feed, users, data_hex, answered) -> None:
    events = feed(Socks5Server(users), bytes.fromhex(data_hex))
    assert events[:-1] == answered
    assert events[-1].data == b""
    assert "version" in events[-1].reason


def test_truncated_handshake_waits() -> None:
    handshake = PASSWORD_AUTH + login("alice", "secret") + CONNECT_IPV4
    login_end = len(PASSWORD_AUTH) + len(login("alice", "secret"))
    for cut in range(len(handshake)):
        events = Socks5Server(USERS).receive(handshake[:cut])
        expected = [SELECTED_PASSWORD] if cut >= len(PASSWORD_AUTH) else []
        assert events == expected + ([LOGGED_IN] if cut >= login_end else [])


def test_early_data_after_the_request(feed) -> None:
    server = Socks5Server()
    events = feed(server, NO_AUTH + CONNECT_IPV4 + b"GET / HTTP/1.1\r\n")
    assert events == [SELECTED_NO_AUTH, ConnectRequested("127.0.0.1", 80)]
    assert feed(server, b"Host: x\r\n\r\n") == []
    assert server.early_data == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    server.reply(ReplyCode.SUCCEEDED)
    assert server.early_data == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_pipelined_second_request_is_early_data() -> None:
    server = Socks5Server()
    events = server.receive(NO_AUTH + CONNECT_IPV4 + CONNECT_IPV4)
    assert events == [SELECTED_NO_AUTH, ConnectRequested("127.0.0.1", 80)]
    assert server.early_data == CONNECT_IPV4


def test_too_much_data_at_once_is_rejected() -> None:
    events = Socks5Server().receive(NO_AUTH + CONNECT_IPV4 + bytes(MAX_BUFFERED))
    assert events == [Rejected(b"", TOO_MUCH_DATA)]


def test_early_data_is_bounded() -> None:
    server = Socks5Server()
    server.receive(NO_AUTH + CONNECT_IPV4)
    assert server.receive(bytes(MAX_BUFFERED)) == []
    assert server.receive(b"x") == [Rejected(b"", TOO_MUCH_DATA)]
    assert server.early_data == b""


HANDSHAKES = [
    (None, NO_AUTH + CONNECT_IPV4),
    (None, NO_AUTH + bytes.fromhex("050100030b6578616d706c652e636f6d01bb") + b"early"),
    (None, NO_AUTH + bytes.fromhex("05010004200108800000000000000000000000010016")),
    (USERS, PASSWORD_AUTH + login("jörg", "pässwört") + CONNECT_IPV4 + CONNECT_IPV4),
    (USERS, PASSWORD_AUTH + login("alice", "wrong") + CONNECT_IPV4),
    (None, NO_AUTH + bytes.fromhex("050100030261ff0050")),
    (None, NO_AUTH + bytes.fromhex("0501000ac0a800011f90")),
    (None, bytes.fromhex("0502010280")),
]


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:], strict=False)]


@settings(deadline=None, max_examples=200)
@given(handshake=st.sampled_from(HANDSHAKES), cuts=st.lists(st.integers(0, 1000), max_size=8))
def test_any_split_gives_the_same_events(handshake, cuts) -> None:
    users, data = handshake
    whole = Socks5Server(users)
    expected = whole.receive(data)
    split = Socks5Server(users)
    events: list[Event] = []
    for chunk in _chunked(data, cuts):
        events += split.receive(chunk)
        if events and isinstance(events[-1], Rejected):
            break
    assert events == expected
    assert split.early_data == whole.early_data


def test_the_largest_handshake_fits() -> None:
    greeting = bytes([5, 255, *range(255)])
    request = bytes([5, 1, 0, 3, 255]) + b"h" * 255 + b"\x00\x50"
    handshake = greeting + login("u" * 255, "p" * 255) + request
    server = Socks5Server({"u" * 255: "p" * 255})
    events = server.receive(handshake + bytes(MAX_BUFFERED - len(handshake)))
    assert events == [SELECTED_PASSWORD, LOGGED_IN, ConnectRequested("h" * 255, 80)]


# --- the reply and the state around it -----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "host", "port", "expected_hex"),
    [
        (ReplyCode.SUCCEEDED, "127.0.0.1", 0x6DB1, "05 00 00 01 7f000001 6db1"),
        (ReplyCode.SUCCEEDED, "::1", 443, "05 00 00 04 00000000000000000000000000000001 01bb"),
        (
            ReplyCode.SUCCEEDED,
            "2001:db8::8:800:200c:417a",
            1,
            "05 00 00 04 20010db80000000000080800200c417a 0001",
        ),
        (ReplyCode.CONNECTION_REFUSED, "0.0.0.0", 0, "05 05 00 01 00000000 0000"),
        (
            ReplyCode.TTL_EXPIRED,
            "proxy.example",
            1080,
            "05 06 00 03 0d 70726f78792e6578616d706c65 0438",
        ),
    ],
)
def test_reply_bytes(code, host, port, expected_hex) -> None:
    server = Socks5Server()
    server.receive(NO_AUTH + CONNECT_IPV4)
    assert server.reply(code, host, port) == bytes.fromhex(expected_hex)


def test_default_reply_address() -> None:
    server = Socks5Server()
    server.receive(NO_AUTH + CONNECT_IPV4)
    assert server.reply(ReplyCode.GENERAL_FAILURE) == refusal_reply(1)


@pytest.mark.parametrize("code", list(ReplyCode))
def test_every_default_reply_is_what_the_schema_builds(code) -> None:
    server = Socks5Server()
    server.receive(NO_AUTH + CONNECT_IPV4)
    address = {"type": AddressType.IPV4, "host": "0.0.0.0"}
    assert server.reply(code) == build(SocksReply, {"reply": code, "address": address, "port": 0})
    with pytest.raises(RuntimeError):  # a cached reply ends the handshake like a built one
        server.reply(code)


def test_reply_only_once_and_only_to_a_request() -> None:
    server = Socks5Server()
    with pytest.raises(RuntimeError):
        server.reply(ReplyCode.SUCCEEDED)
    server.receive(NO_AUTH + CONNECT_IPV4)
    with pytest.raises(WireError):
        server.reply(ReplyCode.SUCCEEDED, "", 1)  # an unbuildable address changes nothing
    with pytest.raises(WireError):
        server.reply(99)  # nor does an unknown code
    server.reply(ReplyCode.SUCCEEDED)
    with pytest.raises(RuntimeError):
        server.reply(ReplyCode.SUCCEEDED)
    with pytest.raises(RuntimeError):
        server.receive(b"relay this yourself")


def test_no_more_input_after_a_refusal() -> None:
    server = Socks5Server()
    server.receive(NO_AUTH + CONNECT_IPV4)
    server.reply(ReplyCode.HOST_UNREACHABLE)
    with pytest.raises(RuntimeError):
        server.receive(b"x")
    rejected = Socks5Server()
    rejected.receive(b"\x04")
    with pytest.raises(RuntimeError):
        rejected.receive(b"x")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (ConnectStatus.OK, ReplyCode.SUCCEEDED),
        (ConnectStatus.GENERAL_FAILURE, ReplyCode.GENERAL_FAILURE),
        (ConnectStatus.REFUSED, ReplyCode.CONNECTION_REFUSED),
        (ConnectStatus.TIMED_OUT, ReplyCode.TTL_EXPIRED),
        (ConnectStatus.UNREACHABLE, ReplyCode.NETWORK_UNREACHABLE),
        (ConnectStatus.UNKNOWN_HOST, ReplyCode.HOST_UNREACHABLE),
        (ConnectStatus.CONNECTION_LIMIT, ReplyCode.NOT_ALLOWED),
        (ConnectStatus.NOT_ALLOWED, ReplyCode.NOT_ALLOWED),
    ],
)
def test_reply_code_for_every_connect_status(status, code) -> None:
    assert reply_code_for(status) is code
    assert reply_code_for(int(status)) is code


def test_reply_code_mapping_covers_every_status() -> None:
    assert {reply_code_for(status) for status in ConnectStatus} == {
        ReplyCode(code) for code in range(7)
    }


# --- UDP header ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "payload", "datagram_hex"),
    [
        ("8.8.8.8", 53, b"query", "0000 00 01 08080808 0035 7175657279"),
        ("::1", 5353, b"", "0000 00 04 00000000000000000000000000000001 14e9"),
        ("dns.example", 53, b"\x00\xff", "0000 00 03 0b 646e732e6578616d706c65 0035 00ff"),
    ],
)
def test_udp_header_both_ways(host, port, payload, datagram_hex) -> None:
    datagram = bytes.fromhex(datagram_hex)
    assert build_udp_request(host, port, payload) == datagram
    assert parse_udp_request(datagram) == (host, port, payload)


def test_udp_fragments_are_refused() -> None:
    datagram = bytearray(build_udp_request("8.8.8.8", 53, b"part"))
    datagram[2] = 1
    with pytest.raises(WireError) as caught:
        parse_udp_request(bytes(datagram))
    assert caught.value.field == "fragment"


@pytest.mark.parametrize("cut", range(10))
def test_udp_truncated_header(cut) -> None:
    with pytest.raises(WireError):
        parse_udp_request(build_udp_request("8.8.8.8", 53, b"")[:cut])
