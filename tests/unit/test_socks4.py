"""SOCKS4 and SOCKS4a: the schema's reader (fast path and construct agree) and the core."""

from __future__ import annotations

import pytest

from jproxy.socks.socks4 import REPLIES, Socks4Server
from jproxy.socks.socks5 import ConnectRequested, Rejected
from schemas import WireError, build, parse
from schemas.jproxy import ConnectStatus
from schemas.socks4 import REQUEST_READER, Command, ReplyCode, Request, Socks4Reply, Socks4Request

SOCKS4 = b"\x04\x01\x00\x50\x7f\x00\x00\x01bob\x00"
SOCKS4A = b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.org\x00"


def test_reader_and_schema_agree():
    assert REQUEST_READER.read(SOCKS4 + b"more") == (
        len(SOCKS4),
        Request(Command.CONNECT, "127.0.0.1", 80, "bob"),
    )
    assert REQUEST_READER.read(SOCKS4A) == (
        len(SOCKS4A),
        Request(Command.CONNECT, "example.org", 443, ""),
    )
    assert parse(Socks4Request, SOCKS4A).host == "example.org"
    assert parse(Socks4Request, SOCKS4).host is None
    built = build(
        Socks4Request,
        {
            "command": Command.CONNECT,
            "port": 443,
            "address": "0.0.0.1",
            "user_id": "",
            "host": "example.org",
        },
    )
    assert built == SOCKS4A


def test_every_split_waits_for_the_rest():
    for packet in (SOCKS4, SOCKS4A):
        for cut in range(len(packet)):
            assert REQUEST_READER.read(packet[:cut]) is None, cut


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"\x04\x09\x00\x50\x7f\x00\x00\x01\x00", "command"),
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 300, "user_id"),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"h" * 300, "host"),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00", "host"),
    ],
)
def test_defects_name_their_field(data, field):
    with pytest.raises(WireError) as error:
        REQUEST_READER.read(data)
    assert error.value.field == field


def test_core_connect_early_data_and_replies():
    core = Socks4Server()
    assert core.receive(SOCKS4A[:5]) is None
    assert core.receive(SOCKS4A[5:] + b"GET /") == ConnectRequested("example.org", 443)
    assert core.early_data == b"GET /"
    assert core.reply(ConnectStatus.OK) == b"\x00\x5a\x00\x00\x00\x00\x00\x00"
    assert core.reply(ConnectStatus.NOT_ALLOWED)[:2] == b"\x00\x5b"
    assert parse(Socks4Reply, REPLIES[ReplyCode.REJECTED]).reply is ReplyCode.REJECTED


@pytest.mark.parametrize(
    ("core", "data", "reason"),
    [
        (Socks4Server(), b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00", "BIND not supported"),
        (Socks4Server(users_required=True), SOCKS4, "needs a user"),
        (Socks4Server(), b"\x04\x09\x00\x50\x7f\x00\x00\x01\x00", "command"),
    ],
)
def test_refusals_are_answered_91(core, data, reason):
    event = core.receive(data)
    assert isinstance(event, Rejected) and reason in event.reason
    assert event.data == REPLIES[ReplyCode.REJECTED]


def test_too_much_before_the_request_is_refused_silently():
    core = Socks4Server()
    assert core.receive(b"\x04\x01\x00\x50\x7f\x00\x00\x01") is None
    event = core.receive(b"u" * 100_000)
    assert isinstance(event, Rejected) and event.data == b""
